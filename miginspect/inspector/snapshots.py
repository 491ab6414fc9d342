"""`snapshots`: the internal snapshots of one or several qcow2 images, where each
snapshot's VM state is, and how many bytes of the image it occupies.

When a VM has several disks, `savevm` writes the VM state into one of them (QEMU's
`bdrv_all_find_vmstate_bs`: the first writable disk that can hold it, or the `vmstate`
node of QMP `snapshot-save`); the other disks get a snapshot of the same name with
vm_state_size 0. Given all the disks, the report groups snapshots by name and says which
image holds the state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import MigError
from .containers.magic import is_libvirt
from .qcow2 import (
    KIND_UNALLOCATED,
    KIND_ZERO,
    ImageFacts,
    Qcow2Image,
    Qcow2Snapshot,
    is_qcow2,
    open_image,
    snapshot_json,
    state_notes,
)


@dataclass
class SnapshotRow:
    snapshot: Qcow2Snapshot
    vm_state_allocated: int | None = None  # host bytes of the state's clusters
    vm_state_runs: int | None = None  # pieces the state is split into in the image
    vm_state_l2_tables: int | None = None
    vm_state_not_stored: int | None = None  # bytes of zero / unallocated clusters
    notes: list[str] = field(default_factory=list)
    vm_state_in: str | None = None  # the image holding the VM state of this snapshot's name
    problem: str | None = None  # damage found while mapping the state (one line)
    problem_offset: int | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(snapshot_json(self.snapshot), vm_state_allocated=self.vm_state_allocated,
                    vm_state_runs=self.vm_state_runs, vm_state_l2_tables=self.vm_state_l2_tables,
                    vm_state_not_stored=self.vm_state_not_stored, notes=self.notes,
                    vm_state_in=self.vm_state_in, problem=self.problem,
                    problem_offset=self.problem_offset)


@dataclass
class ImageSnapshots:
    path: str
    format: str  # "qcow2", or what else the file is ("libvirt save image", ...)
    facts: ImageFacts | None = None  # the qcow2 header's facts (None: not a qcow2 image)
    snapshots: list[SnapshotRow] = field(default_factory=list)

    @property
    def is_qcow2(self) -> bool:
        return self.facts is not None

    def to_json(self) -> dict[str, Any]:
        head = asdict(self.facts) if self.facts is not None else {"path": self.path}
        return dict(head, format=self.format, snapshots=[r.to_json() for r in self.snapshots])


@dataclass
class StateGroup:
    """The snapshots of one name across the images given."""

    name: str
    images: list[str]  # images with a snapshot of this name, in the order given
    vm_state_images: list[str]  # those whose snapshot holds VM state

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "images": self.images,
                "vm_state_images": self.vm_state_images}


@dataclass
class SnapshotsReport:
    images: list[ImageSnapshots]
    groups: list[StateGroup]  # only for names found in more than one image

    @property
    def snapshot_count(self) -> int:
        return sum(len(i.snapshots) for i in self.images)

    @property
    def with_state(self) -> list[SnapshotRow]:
        return [r for i in self.images for r in i.snapshots if r.snapshot.has_vm_state]

    @property
    def problems(self) -> list[tuple[str, SnapshotRow]]:
        return [(i.path, r) for i in self.images for r in i.snapshots if r.problem]

    def to_json(self) -> dict[str, Any]:
        return {"images": [i.to_json() for i in self.images],
                "vm_states": [g.to_json() for g in self.groups]}


def _row(img: Qcow2Image, sn: Qcow2Snapshot) -> SnapshotRow:
    row = SnapshotRow(sn)
    if not sn.has_vm_state:
        return row
    row.vm_state_in = img.path
    try:
        lay = img.state_layout(sn)
    except MigError as e:
        row.problem, row.problem_offset = e.message, e.offset
        return row
    row.vm_state_allocated = lay.allocated
    row.vm_state_runs = len(lay.runs)
    row.vm_state_l2_tables = lay.l2_tables
    row.vm_state_not_stored = lay.bytes_of(KIND_ZERO) + lay.bytes_of(KIND_UNALLOCATED)
    row.notes = state_notes(img, lay)
    return row


def other_kind(head: bytes) -> str | None:
    """What a file that is not a qcow2 image holds, when it is one of the files the other
    commands read (their VM state is read directly, there are no snapshots to list)."""
    from .containers.compressed import sniff_compression

    if is_libvirt(head):
        return "libvirt save image"
    if head[:4] == b"QEVM":
        return "QEMU migration stream"
    comp = sniff_compression(head)
    return f"{comp}-compressed file" if comp else None


def _image(path: str) -> ImageSnapshots:
    with open(path, "rb") as f:
        head = f.read(16)
    kind = None if is_qcow2(head) else other_kind(head)
    if kind is not None:
        return ImageSnapshots(path, kind)
    with open_image(path) as img:  # not a qcow2 image either: open_image says so
        return ImageSnapshots(path, "qcow2", ImageFacts.of(img),
                              [_row(img, sn) for sn in img.snapshots])


def list_snapshots(paths: list[str]) -> SnapshotsReport:
    """The snapshot tables of `paths` (qcow2 images; a migration file or libvirt save image
    is listed as such, with no snapshots). A damaged header or snapshot table raises;
    damage inside one snapshot's state is reported on its row."""
    images = [_image(p) for p in paths]
    groups: dict[str, StateGroup] = {}
    for im in images:
        for r in im.snapshots:
            g = groups.setdefault(r.snapshot.name, StateGroup(r.snapshot.name, [], []))
            if im.path not in g.images:
                g.images.append(im.path)
            if r.snapshot.has_vm_state and im.path not in g.vm_state_images:
                g.vm_state_images.append(im.path)
    for im in images:
        for r in im.snapshots:
            g = groups[r.snapshot.name]
            if not r.snapshot.has_vm_state and len(g.vm_state_images) == 1:
                r.vm_state_in = g.vm_state_images[0]
    shared = [g for g in groups.values() if len(g.images) > 1]
    return SnapshotsReport(images, shared)
