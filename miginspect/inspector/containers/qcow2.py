"""qcow2 images: the VM state of an internal snapshot (`savevm`, QMP `snapshot-save`,
virt-manager, `virsh snapshot-create`) as the Source every command reads.

The reader (header, snapshot table, L1/L2 tables, the state's runs) is
`inspector/qcow2.py` over the grammar of `formats/qcow2.py`; this module is the
container kind: which snapshot (`OpenOptions.snapshot`: ID or name as QEMU looks it
up; without it the one snapshot that holds VM state), what `info` shows of it, where a
state offset is in the image, what `check` adds (state bytes not stored in the image)
and how to load it (`loadvm`, `-loadvm`, QMP `snapshot-load`, `virsh snapshot-revert`,
or `convert` into a standalone migration file for `-incoming`).

Offsets in the walk of such a Source are offsets in the VM state; `locate` and
`explain` name the image offset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ...errors import MigError
from ...render.fmt import short_size, size
from .. import qcow2 as R
from ..inflate import Progress
from ..problems import Problem, problem
from ..source import Source
from .base import (
    PLAIN,
    WARN,
    Container,
    ContainerBrief,
    ContainerInfo,
    Fact,
    Incoming,
    Input,
    OpenOptions,
    StreamExtent,
    _extent_facts,
    decompress_command,
    shell_word,
)
from .magic import is_qcow2

if TYPE_CHECKING:
    from ..model import StreamWalk

__all__ = ["Qcow2Container", "Qcow2Info", "StateFacts", "open_state"]


@dataclass
class StateBytes:
    """Bytes of the VM state by where they come from."""

    data: int
    zero: int
    unallocated: int
    compressed: int


@dataclass
class StateFacts:
    """Where the state lives in the image."""

    runs: int  # pieces it is split into
    contiguous: bool  # one data run
    allocated: int  # host bytes of its clusters
    l2_tables: int
    bytes: StateBytes
    zero_copy: bool  # read in place from the image's pages (no copy)

    @classmethod
    def of(cls, lay: R.StateLayout, zero_copy: bool) -> StateFacts:
        b = StateBytes(*(lay.bytes_of(k) for k in range(len(R.KIND_NAMES))))
        return cls(len(lay.runs), lay.contiguous, lay.allocated, lay.l2_tables, b, zero_copy)


@dataclass
class Qcow2Info(ContainerInfo):
    """`info --json` `container` of a qcow2 internal snapshot: `kind` "qcow2", the image,
    the snapshot table entry and where the state is."""

    image: R.ImageFacts | None = None
    snapshot: R.SnapshotFacts | None = None
    state: StateFacts | None = None
    notes: list[str] = field(default_factory=list)

    def wraps(self, what: str) -> str:
        sn = self.snapshot
        label = f"snapshot {sn.name!r} (ID {sn.id})" if sn else "a snapshot"
        return f"{what} in {label} of a qcow2 image" + (
            f" ({self.compression}-compressed)" if self.compression else "")

    def facts(self) -> list[Fact]:
        out: list[Fact] = []
        im, sn, st = self.image, self.snapshot, self.state
        if im is not None:
            bits = [f"qcow2 v{im.version}", f"{short_size(im.cluster_size)} clusters"]
            if im.extended_l2:
                bits.append("extended L2")
            bits += [f"disk {size(im.virtual_size)}", f"{im.compression_type} compression"]
            if im.backing_file:
                bits.append(f"backing file {im.backing_file}")
            out.append(Fact("qcow2 image", [(", ".join(bits), PLAIN)]))
        if sn is not None:
            out.append(Fact("snapshot", [(
                f"ID {sn.id} {sn.name!r}, taken {sn.date[:19].replace('T', ' ')} UTC, VM clock "
                f"{R.vm_clock(sn.vm_clock_ns)}, disk size {size(sn.disk_size)}", PLAIN)]))
            where = f"{size(sn.vm_state_size)} at guest offset 0x{sn.vm_state_offset or 0:x}"
            if st is not None:
                if st.zero_copy:
                    how = "read in place from the image"
                else:
                    how = "copied into a temporary file"
                pieces = "1 run" if st.runs == 1 else f"{st.runs:,} pieces"
                where += (f" ({pieces} in {st.l2_tables:,} L2 table"
                          f"{'s' if st.l2_tables != 1 else ''}, {size(st.allocated)} "
                          f"allocated; {how})")
            out.append(Fact("VM state", [(where, PLAIN)]))
        out += [Fact("note", [(n, WARN)]) for n in self.notes]
        return out + _extent_facts(self, show_stream=True)


@dataclass
class Qcow2Container(Container):
    """What wraps a VM state read from a qcow2 internal snapshot."""

    kind: str = "qcow2"
    image: R.ImageFacts | None = None
    snapshot: R.Qcow2Snapshot | None = None
    layout: R.StateLayout | None = None
    zero_copy: bool = False  # buf is a mapping of the image's own pages
    notes: list[str] = field(default_factory=list)
    #: every entry of the image's snapshot table (the state read is `snapshot`)
    table: list[R.Qcow2Snapshot] = field(default_factory=list)

    @property
    def path(self) -> str:
        return self.image.path if self.image is not None else "?"

    @property
    def offsets_in(self) -> str:
        return "VM state"

    def image_offset(self, state_offset: int) -> int | None:
        return self.layout.image_offset(state_offset) if self.layout else None

    def locate(self, offset: int) -> str | None:
        at = self.image_offset(offset)
        return f"image offset 0x{at:x}" if at is not None else "not stored in the image"

    def stored_size(self, src: Source) -> tuple[int, int]:
        """The state's own bytes in the image (not the whole disk image's). In an image
        compressed as a whole (image.qcow2.zst), the state's disk bytes cannot be told apart:
        its share of the compressed file, by the share of the image its clusters take."""
        if self.layout is None:
            return src.file_size, src.allocated_size
        if self.compression is not None and self.image is not None and self.image.file_size:
            share = min(1.0, self.layout.allocated / self.image.file_size)
            return self.layout.size, int(src.allocated_size * share)
        return self.layout.size, self.layout.allocated

    def describe(self, src: Source, extent: StreamExtent | None) -> ContainerInfo:
        sn = self.snapshot
        return Qcow2Info(
            kind="qcow2", compression=self.compression, stream=extent, image=self.image,
            snapshot=R.SnapshotFacts.of(sn) if sn is not None else None,
            state=StateFacts.of(self.layout, self.zero_copy) if self.layout else None,
            notes=list(self.notes))

    def brief(self) -> ContainerBrief:
        sn = self.snapshot
        return ContainerBrief("qcow2", self.compression,
                              snapshot=f"{sn.id} {sn.name}" if sn is not None else None)

    def explain(self, src: Source, err: MigError) -> MigError:
        """`err` from a walk of the state, with where that is in the image."""
        sn = self.snapshot
        if sn is None or err.offset is None:
            return err
        msg = (f"{err.message} (VM state of {sn.label()} in {self.path}: state offset "
               f"0x{err.offset:x}, {self.locate(err.offset)})")
        return type(err)(msg, err.offset, err.where, code=err.code)

    def problems(self, src: Source, walk: StreamWalk) -> list[Problem]:
        out = self.inflation_problems()
        lay = self.layout
        if lay is None:
            return out
        holes = lay.runs[(lay.runs["kind"] == R.KIND_ZERO)
                         | (lay.runs["kind"] == R.KIND_UNALLOCATED)]
        if len(holes):
            n = int(holes["length"].sum())
            first = int(holes["state_offset"][0])
            out.append(problem("qcow2-state-not-stored", first, "qcow2", f"{n:,} bytes of the "
                               f"VM state of {self.snapshot_label} are zero or unallocated "
                               f"clusters in the image (the first at state offset "
                               f"0x{first:x}); QEMU reads them as zeros" + (
                                   ", or from the backing file" if any(
                                       "backing file" in x for x in self.notes) else "")))
        return out

    @property
    def snapshot_label(self) -> str:
        return self.snapshot.label() if self.snapshot is not None else "the snapshot"

    def how_to_load(self, src: Source, walk: StreamWalk) -> Incoming:
        sn = self.snapshot
        tag = sn.name or sn.id if sn is not None else "NAME"
        img = shell_word(self.path)
        t = shell_word(tag)
        cmds = []
        if self.compression:
            cmds.append(f"decompress the image first (loadvm writes to it): "
                        f"{decompress_command(self.compression)} {img} > disk.qcow2")
        cmds += [
            f"qemu-system-<arch> <the same devices and -machine as when it was saved, with "
            f"this image and the VM's other disks> -loadvm {t}",
            f"or, in a running QEMU with those disks (HMP): loadvm {t}",
            '{"execute": "snapshot-load", "arguments": {"job-id": "load0", "tag": '
            f'"{tag}", "vmstate": "<node-name of this image>", "devices": '
            '["<node-name of every disk>"]}}',
            f"libvirt: virsh snapshot-revert DOMAIN {t}",
            f"or as a migration file: miginspect convert {img} --snapshot {t} STATE.mig "
            "--to legacy, then -incoming defer and migrate-incoming file:STATE.mig (the "
            "disks as they were at the snapshot: qemu-img snapshot -a on copies)",
        ]
        return Incoming([], None, cmds, method="loadvm",
                        needs=[f"loadvm {tag} with the VM's disks (or convert it first)"])


def open_state(img: R.Qcow2Image, snapshot: str | None,
               progress: Progress | None = None, any_snapshot: bool = False) -> Source:
    """The Source of the VM state of `snapshot` of the opened image `img` (which the
    Source owns from then on; `any_snapshot`: see `OpenOptions`)."""
    R.refuse_unreadable(img)
    sn = R.choose_snapshot(img, snapshot, first=any_snapshot)
    layout = img.state_layout(sn)
    c = Qcow2Container(image=R.ImageFacts.of(img), snapshot=sn, layout=layout,
                       table=list(img.snapshots))
    c.notes += R.state_notes(img, layout)
    sb = R.state_buffer(img, layout, progress)
    c.zero_copy = sb.zero_copy
    src = Source(img.path, sb.buf, 0, img.file_size, img.allocated_size, c, fd=sb.fd)
    if sb.zero_copy:
        src._closers += [img, sb.buf]  # the mapping needs the image open
        src.stored = R.stored_runs(img.fd, layout)
    else:
        img.close()
        src._closers += sb.closers()
    return src


class Qcow2Kind:
    name = "qcow2"

    def detect(self, head: bytes) -> bool:
        return is_qcow2(head)

    def open(self, inp: Input, options: OpenOptions, progress: Progress | None) -> Source:
        img = R.open_image(inp.path, inp.fd)
        try:
            src = open_state(img, options.snapshot, progress, options.any_snapshot)
        except BaseException:
            img.close()
            raise
        inp.file.close()  # the image keeps its own descriptor
        return src

    def adopt(self, src: Source, options: OpenOptions, progress: Progress | None) -> Source:
        """A qcow2 image found inside compressed data (`src` holds its inflated bytes)."""
        outer = src.container
        assert src.fd is not None
        img = R.open_image(src.path, src.fd)
        try:
            out = open_state(img, options.snapshot, progress, options.any_snapshot)
        except BaseException:
            img.close()
            raise
        out.container.compression = outer.compression
        out.container.inflation = outer.inflation
        out.file_size, out.allocated_size = src.file_size, src.allocated_size
        src.close()
        return out


KIND = Qcow2Kind()
