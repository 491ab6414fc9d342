"""`audit`: every saved VM state in a file, one row each, with the numbers `size` and
`check` give for it.

A file is recognised by its content, never its name, through the container kinds
(`containers.registry`): a QEMU stream (`QEVM`), a libvirt save or managedsave image,
a qcow2 image whose snapshot table holds snapshots with VM state (one row per such
snapshot), or any of these compressed (only the first decompressed bytes are looked at
to tell). Anything else is not a saved state: it is counted, not listed.

Each state is opened once (`capture.open_capture`, as every command opens it) and
both analyses run on that one walk: `check.check_capture` (what `check --json` says)
and `size.size_report` (what `size --json` says; only where `size` itself would give
figures: a walk that stopped on damage has none). Nothing of a capture is kept: a
`StateRow` holds numbers and the first problem, and the capture is closed before the
next state is opened.

`audit_file` never raises for a file it cannot read: the row says why (`unreadable`,
or the container's own code). The time limit and the loss of a worker are the
runners' (`audit_pool`, `audit_dask`): `failed_result` makes their rows.
"""

from __future__ import annotations

import os
import socket
import stat
from dataclasses import dataclass, field

from ..errors import FormatError, MigError, UsageError
from ..formats import qcow2 as Q
from .capture import Capture, open_capture
from .check import check_capture, check_source_error
from .containers.compressed import sniff_compression
from .containers.registry import inner_kind, kind_of
from .inflate import inflate_head
from .problems import (
    SEVERITY_ERROR,
    VERDICT_LOADABLE,
    VERDICT_REFUSED,
    VERDICT_UNKNOWN,
    Problem,
    problem,
)
from .qcow2 import open_image
from .size import SizeReport, size_report

#: codes of the rows (and counts) the audit makes itself (inspector/problems.py)
CODE_NOT_A_STATE = "not-a-state"  # counted, not listed
CODE_UNREADABLE = "unreadable"
CODE_TIMEOUT = "timeout"
CODE_WORKER_LOST = "worker-lost"
CODE_INTERNAL = "internal-error"

#: bytes looked at to tell what a file holds (decompressed, for compressed data)
HEAD = 512


@dataclass
class StateRow:
    """One saved VM state: where it is, what wraps it, `size`'s figures and `check`'s
    verdict with the first error (`problem`). Sizes are None where `size` gives none
    (the file could not be walked to its end)."""

    path: str
    snapshot: str | None = None  # "ID NAME" of a qcow2 internal snapshot
    host: str | None = None  # the machine the file is on, when it is not this one
    kind: str | None = None  # the container: "none" (a bare stream), "libvirt", "qcow2"
    compression: str | None = None
    format: str | None = None  # "legacy" or "mapped-ram"
    domain_name: str | None = None  # libvirt: the domain's name and UUID
    domain_uuid: str | None = None
    machine_type: str | None = None
    file_size: int | None = None  # apparent (a qcow2 snapshot: its state's size)
    allocated_size: int | None = None  # on disk (a qcow2 snapshot: its state's clusters)
    ram_total: int | None = None
    data_bytes: int | None = None
    amplification: float | None = None
    resend_amplification: float | None = None
    mapped_ram_bound: int | None = None
    mapped_ram_allocated_bound: int | None = None
    #: disk bytes a conversion to mapped-ram gives back: allocated_size -
    #: mapped_ram_allocated_bound when positive, for a loadable legacy stream; else 0
    reclaimable: int | None = None
    verdict: str = VERDICT_UNKNOWN
    problem: Problem | None = None  # the first error (what QEMU stops at), or None

    def sort_key(self) -> tuple[int, str, str, str]:
        """Most reclaimable first, then by host, path and snapshot (a stable order, the
        same whichever worker finished first)."""
        return (-(self.reclaimable or 0), self.host or "", self.path, self.snapshot or "")


@dataclass
class FileRef:
    """A file to audit, as the walk found it (lstat)."""

    path: str
    size: int
    allocated: int


@dataclass
class FileResult:
    """What one file holds: its states (none: not a saved state)."""

    ref: FileRef
    rows: list[StateRow] = field(default_factory=list)
    not_a_state: bool = False
    host: str | None = None  # where it was read (socket.gethostname())


# -- recognising a saved state by its content ---------------------------------------------
@dataclass
class Recognised:
    kind: str  # container kind: "none", "libvirt", "qcow2"
    compression: str | None
    snapshots: int | None = None  # qcow2: nb_snapshots of the header


def _qcow2_snapshots(head: bytes) -> int:
    at = Q.HEADER_FIELD_OFFSETS["nb_snapshots"]
    return int.from_bytes(head[at:at + 4], "big") if len(head) >= at + 4 else 0


def recognise(path: str, fd: int, size: int) -> Recognised | None:
    """What `fd` holds, from its first bytes (decompressed ones for compressed data);
    None when it is not a saved VM state. A qcow2 image counts when its header lists
    snapshots (which of them hold VM state is read later)."""
    head = os.pread(fd, HEAD, 0)
    comp = sniff_compression(head)
    if comp is not None:
        try:
            inner = inflate_head(path, fd, comp, 0, size, HEAD)
        except (MigError, OSError):  # e.g. no lzop program: check says why
            return Recognised("none", comp)
        k = inner_kind(inner)
        if k is not None:
            return Recognised(k.name, comp, _qcow2_snapshots(inner) if k.name == "qcow2"
                              else None)
        return Recognised("none", comp) if inner[:4] == b"QEVM" else None
    k = kind_of(head)
    if k.name == "qcow2":
        return Recognised("qcow2", None, _qcow2_snapshots(head))
    if k.name == "libvirt" or head[:4] == b"QEVM":
        return Recognised(k.name, None)
    return None


# -- one state --------------------------------------------------------------------------------
def _reclaimable(s: SizeReport, verdict: str) -> int:
    if verdict != VERDICT_LOADABLE or s.format != "legacy":
        return 0
    return max(0, s.allocated_size - s.mapped_ram_allocated_bound)


def _sized(cap: Capture) -> SizeReport | None:
    """`size`'s report, where `size` gives one (it refuses a walk stopped by damage)."""
    if isinstance(cap.walk.error, FormatError):
        return None
    try:
        return size_report(cap)
    except MigError:
        return None


def _capture_row(path: str, cap: Capture) -> StateRow:
    src = cap.source
    c = src.container
    rep = check_capture(cap)
    row = StateRow(path, snapshot=c.brief().snapshot, kind=c.kind, compression=c.compression,
                   format=rep.format, machine_type=cap.walk.machine_type,
                   verdict=rep.verdict, problem=rep.primary)
    if c.libvirt is not None:
        from .containers.libvirt import parse_domain

        d = parse_domain(c.libvirt.xml)
        row.domain_name, row.domain_uuid = d.name, d.uuid
    row.file_size, row.allocated_size = c.stored_size(src)
    s = _sized(cap)
    if s is not None:
        row.file_size, row.allocated_size = s.file_size, s.allocated_size
        row.ram_total, row.data_bytes = s.ram_total, s.data_bytes
        row.amplification, row.resend_amplification = s.amplification, s.resend_amplification
        row.mapped_ram_bound = s.mapped_ram_bound
        row.mapped_ram_allocated_bound = s.mapped_ram_allocated_bound
        row.reclaimable = _reclaimable(s, rep.verdict)
    return row


def _error_row(ref: FileRef, err: MigError, snapshot: str | None = None) -> StateRow:
    """A state that could not be opened: check's report for it (container damage)."""
    rep = check_source_error(ref.path, err)
    whole = snapshot is None
    return StateRow(ref.path, snapshot=snapshot, verdict=rep.verdict, problem=rep.primary,
                    file_size=ref.size if whole else None,
                    allocated_size=ref.allocated if whole else None)


def failed_row(ref: FileRef, code: str, message: str) -> StateRow:
    """A file this run could not judge (time limit, a lost worker, an unreadable file)."""
    p = problem(code, None, "", message)
    p.severity = SEVERITY_ERROR
    return StateRow(ref.path, file_size=ref.size, allocated_size=ref.allocated,
                    verdict=VERDICT_UNKNOWN, problem=p)


def failed_result(ref: FileRef, code: str, message: str) -> FileResult:
    return FileResult(ref, [failed_row(ref, code, message)])


def _state(ref: FileRef, snapshot: str | None = None, any_snapshot: bool = False
           ) -> tuple[StateRow, Capture | None]:
    """The row of one state (the capture is closed; returned only for its container)."""
    try:
        cap = open_capture(ref.path, strict=False, snapshot=snapshot, any_snapshot=any_snapshot)
    except UsageError:
        raise
    except MigError as e:
        return _error_row(ref, e, snapshot), None
    with cap:
        return _capture_row(ref.path, cap), cap


def _qcow2_rows(ref: FileRef, what: Recognised) -> list[StateRow] | None:
    """One row per snapshot with VM state (None: no snapshot holds any)."""
    if what.compression is None:
        try:
            with open_image(ref.path) as img:
                keys = [s.id for s in img.snapshots if s.has_vm_state]
        except MigError as e:
            return [_error_row(ref, e)]
        return [_state(ref, k)[0] for k in keys] or None
    try:  # compressed: the table is known once the image is inflated
        row, cap = _state(ref, any_snapshot=True)
    except UsageError:
        return None  # no snapshot with VM state
    rows = [row]
    table = getattr(cap.source.container, "table", []) if cap is not None else []
    first = getattr(cap.source.container, "snapshot", None) if cap is not None else None
    for sn in table:
        if sn.has_vm_state and sn is not first:
            rows.append(_state(ref, sn.id)[0])
    return rows


def _rows(ref: FileRef, fd: int) -> list[StateRow] | None:
    what = recognise(ref.path, fd, ref.size)
    if what is None:
        return None
    if what.kind == "qcow2":
        if not what.snapshots:
            return None  # a disk image without snapshots
        return _qcow2_rows(ref, what)
    return [_state(ref)[0]]


def audit_file(ref: FileRef) -> FileResult:
    """Every saved state in `ref`'s file (none when it is not one). Never raises for
    the file's sake: a file that cannot be read is a row with `unreadable`."""
    res = FileResult(ref, host=socket.gethostname())
    try:
        fd = os.open(ref.path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        res.rows = [failed_row(ref, CODE_UNREADABLE, f"{ref.path}: {e.strerror}")]
        return res
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # replaced since the walk: never read
            res.not_a_state = True
            return res
        rows = _rows(ref, fd)
    except UsageError as e:  # a state this tool cannot choose: say so on its row
        rows = [failed_row(ref, CODE_UNREADABLE, e.message)]
    except OSError as e:
        rows = [failed_row(ref, CODE_UNREADABLE, f"{ref.path}: {e.strerror or e}")]
    except MemoryError:
        rows = [failed_row(ref, CODE_INTERNAL, "out of memory")]
    except Exception as e:  # noqa: BLE001 - one file's bug must not end a fleet's audit
        rows = [failed_row(ref, CODE_INTERNAL, f"{type(e).__name__}: {e}")]
    finally:
        os.close(fd)
    if rows is None:
        res.not_a_state = True
    else:
        res.rows = rows
    return res


__all__ = ["StateRow", "FileRef", "FileResult", "Recognised", "recognise", "audit_file",
           "failed_row", "failed_result", "CODE_NOT_A_STATE", "CODE_UNREADABLE",
           "CODE_TIMEOUT", "CODE_WORKER_LOST", "CODE_INTERNAL", "VERDICT_LOADABLE",
           "VERDICT_REFUSED", "VERDICT_UNKNOWN"]
