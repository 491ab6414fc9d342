"""`check`: will this file restore, and if not, why (as plain data).

Builds on the walk of the file (opened by `capture.open_capture`, as every command
opens it): the walk's fatal error and notices become problems through their codes
(`problems.PROBLEMS` holds QEMU's message and a fix for each), and the checks the walk
does not make are added here: mapped-ram regions overlapping each other or the
stream, bitmap bits past the used length, odd region placement, the EOF /
vmdescription trailer and its agreement with the sections, sections left open, an
EOF that comes too early, a libvirt image that was never completed.

Severities: "error" (QEMU refuses the file), "warning" (QEMU still loads it,
but something is off: damage the loader never reads, for example), "info".
A stop the tool cannot judge (a feature it does not read) makes the verdict
"could not tell".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import MigError, UsageError
from ..formats import mapped_ram as M
from ..formats import ram as R
from ..formats import stream as S
from ..jsondata import fields_json
from .capture import Capture, Progress, open_capture
from .containers.base import Incoming, decompress_command
from .mapped_ram import (
    VERDICT_OTHER_HOST,
    BitmapTrust,
    padding_bits,
    padding_offset,
    raw_bitmap,
)
from .model import Section, StreamWalk
from .pagemap import LAYOUT_LE64, bitmap_bits
from .prediction import GUEST_MAY_NOT_RUN, TargetReport
from .problems import (
    PROBLEMS,
    QEMU_EIO,
    SEVERITY_ERROR,
    VERDICT_GUEST_MAY_NOT_RUN,
    VERDICT_LOADABLE,
    VERDICT_REFUSED,
    VERDICT_UNKNOWN,
    Problem,
    from_error,
    is_cut,
    problem,
    verdict_of,
)
from .source import Source
from .vmdesc import device_index

if TYPE_CHECKING:
    from .prediction import TargetModel
    from .target import TargetDescription


#: how the destination reads the file (Requirements.transport)
TRANSPORT_FILE = "file"  # migrate-incoming file:PATH (a libvirt image: with its offset)
TRANSPORT_EXEC = "exec"  # the stream fed through a pipe: exec:COMMAND
TRANSPORT_DECOMPRESSED_FILE = "decompressed-file"  # decompressed into a seekable file first
TRANSPORT_LOADVM = "loadvm"  # a disk image's internal snapshot, restored by loadvm


@dataclass
class Requirements:
    """What the destination must be to load the file, found with its problems: the QEMU
    versions that load it (from the problems table's `min_qemu` / `max_qemu`), the
    capabilities to set before migrate-incoming, and how it is fed to QEMU."""

    min_qemu: str | None  # oldest QEMU that loads it, e.g. "10.0"
    max_qemu: str | None  # newest QEMU that loads it
    because: list[str]  # the problem codes that set the range
    capabilities: list[str]
    transport: str  # TRANSPORT_*
    decompressor: str | None = None  # the command that inflates a compressed input


@dataclass
class CheckReport:
    path: str
    format: str | None
    loadable: bool
    verdict: str
    problems: list[Problem]
    offsets_in: str = "file"  # "file", "decompressed stream", "VM state" (the container's)
    machine_type: str | None = None
    capabilities: list[str] = field(default_factory=list)
    incoming: Incoming | None = None
    requirements: Requirements | None = None
    target: TargetReport | None = None  # what --target / --target-qemu compared with

    @property
    def exit_code(self) -> int:
        if self.verdict == VERDICT_LOADABLE:
            return 0
        if self.verdict in (VERDICT_REFUSED, VERDICT_GUEST_MAY_NOT_RUN):
            return 1
        return 2

    @property
    def primary(self) -> Problem | None:
        """The first error in file order: what QEMU's loader stops at."""
        return next((p for p in self.problems if p.severity == SEVERITY_ERROR), None)

    def count(self, severity: str) -> int:
        return sum(1 for p in self.problems if p.severity == severity)

    def to_json(self) -> dict[str, Any]:
        return fields_json(self) | {"exit_code": self.exit_code}


# ---------------------------------------------------------------------------
# The walk's fatal error, made more precise where the bytes tell more than the
# place the walk stopped at (never by reading the message text).
_RAM_RECORD_CODES = ("unknown-ram-flags", "unknown-block-in-record", "page-offset-beyond",
                     "continue-without-block", "page-record-in-mapped-ram")


def _missing_eos(p: Problem, src: Source, walk: StreamWalk) -> Problem:
    """A RAM "record" that is really a section footer or the next section's header: the
    section before it lacks its EOS record."""
    sec = walk.sections[-1] if walk.sections else None
    buf, off = src.buf, p.offset
    if sec is None or off is None or off + 5 > len(buf) or sec.section_id is None:
        return p
    sid = int.from_bytes(bytes(buf[off + 1:off + 5]), "big")
    looks = (buf[off] == S.QEMU_VM_SECTION_FOOTER and sid == sec.section_id) or (
        buf[off] in (S.QEMU_VM_SECTION_PART, S.QEMU_VM_SECTION_END,
                     S.QEMU_VM_SECTION_FULL, S.QEMU_VM_SECTION_START)
        and any(s.section_id == sid for s in walk.sections[:-1]))
    if looks:
        return problem("missing-eos", p.offset, p.where,
                       p.cause + f"; these bytes look like a section footer or header: the "
                       f"{sec.kind} section of {sec.idstr!r} at 0x{sec.offset:x} lacks its EOS "
                       "record", qemu=p.qemu)
    return p


def _qemu_on_bad_flags(p: Problem, src: Source, walk: StreamWalk) -> Problem:
    """What QEMU prints for a record word with unknown flags. Its loader looks the block
    up (and checks the offset) for any word with a ZERO, PAGE or XBZRLE bit *before* it
    rejects the combination, so such a word fails with the lookup's message."""
    buf, off = src.buf, p.offset
    p.qemu = ["Unknown combination of migration flags"]
    if off is None or off + 8 > len(buf):
        return p
    word = int.from_bytes(bytes(buf[off:off + 8]), "big")
    ps = walk.page_size
    flags, addr = word & (ps - 1), word & ~(ps - 1)
    page_bits = R.RAM_SAVE_FLAG_ZERO | R.RAM_SAVE_FLAG_PAGE | R.RAM_SAVE_FLAG_XBZRLE
    if not flags & page_bits:
        return p
    lengths = {b.name: b.used_length for b in walk.blocks}
    if flags & R.RAM_SAVE_FLAG_CONTINUE:
        if addr + ps > max(lengths.values(), default=0):
            p.qemu = ["Illegal RAM offset"]
        else:
            p.qemu = ["Illegal RAM offset", "Unknown combination of migration flags"]
        return p
    n = buf[off + 8] if off + 8 < len(buf) else 0
    name = bytes(buf[off + 9:off + 9 + n]).decode("latin-1")
    if name not in lengths:
        p.qemu = ["Can't find block"]
    elif addr + ps > lengths[name]:
        p.qemu = ["Illegal RAM offset"]
    return p


def _walk_error(src: Source, walk: StreamWalk) -> Problem:
    """The walk's fatal error as a problem: a RAM record that is a footer is a missing
    EOS; QEMU's message for unknown flags depends on which bits are set; a cut says
    where the data ends."""
    assert walk.error is not None
    p = from_error(walk.error)
    if p.code == "unknown-ram-flags":
        p = _qemu_on_bad_flags(p, src, walk)
    if p.code in _RAM_RECORD_CODES:
        p = _missing_eos(p, src, walk)
    if is_cut(p):
        p.cause += f" (the data ends at 0x{len(src.buf):x})"
    where = src.container.locate(p.offset) if p.offset is not None else None
    if where is not None:  # e.g. the image offset of a snapshot's state offset
        p.cause += f" [{where}]"
    return p


# ---------------------------------------------------------------------------
def check_source_error(path: str, err: MigError) -> CheckReport:
    """The report for a file that could not even be opened (container damage)."""
    p = from_error(err)
    p.where = err.where or "container"
    return CheckReport(path, None, False, verdict_of([p]), [p])


def check_file(
    path: str,
    progress: Progress | None = None,
    page_size: int | None = None,
    target: TargetDescription | TargetModel | None = None,
    target_qemu: str | None = None,
    snapshot: str | None = None,
) -> CheckReport:
    """Open, walk and check `path` (and compare it with `target`, or predict the load on
    the QEMU of the `target_qemu` command line). Damage never raises: it becomes a problem
    in the report. `snapshot`: which internal snapshot of a disk image."""
    try:
        cap = open_capture(path, progress, strict=False, page_size=page_size,
                           snapshot=snapshot)
    except UsageError:
        raise
    except MigError as e:
        return check_source_error(path, e)
    with cap:
        return check_capture(cap, target, target_qemu)


def check_capture(cap: Capture, target: TargetDescription | TargetModel | None = None,
                  target_qemu: str | None = None) -> CheckReport:
    """`check_file` on a capture opened with `strict=False` (the caller closes it)."""
    from .prediction import target_problems  # --target / --target-qemu (issue 14)

    extra, treport = target_problems(cap.source, cap.walk, target, target_qemu)
    trust = cap.bitmap_trust if cap.walk.mapped_ram and cap.walk.error is None else None
    return check(cap.source, cap.walk, extra, trust, treport)


def check(src: Source, walk: StreamWalk, extra: list[Problem] | None = None,
          trust: BitmapTrust | None = None,
          target: TargetReport | None = None) -> CheckReport:
    """Every problem the file shows, in file order, and the verdict. `extra`: problems
    found elsewhere (the --target comparison); `trust`: the capture's bitmap verdict;
    `target`: the target compared with and its prediction."""
    probs: list[Problem] = list(extra or [])
    probs += src.container.problems(src, walk)
    if walk.version == 3:
        probs += _configuration_checks(walk)  # QEMU checks this before anything else
    probs += [problem(n.code, n.offset, n.where, n.message) for n in walk.notices]
    if walk.error is not None:
        probs.append(_walk_error(src, walk))
    if walk.version == 3:
        probs += _mapped_ram_checks(src, walk, trust)
        probs += _section_checks(walk)
        probs += _trailer_checks(walk)
    probs += _ram_checks(walk)
    probs += _version_notes(walk)
    probs = _dedupe(probs)
    probs.sort(key=lambda p: (p.offset is None, p.offset or 0))
    verdict = verdict_of(probs)
    pred = target.prediction if target is not None else None
    if verdict == VERDICT_LOADABLE and pred is not None and pred.outcome == GUEST_MAY_NOT_RUN:
        verdict = VERDICT_GUEST_MAY_NOT_RUN  # QEMU loads it: a script must still notice
    fmt = "mapped-ram" if walk.mapped_ram else ("legacy" if walk.version == 3 else None)
    incoming = incoming_for(src, walk)
    return CheckReport(
        path=src.path,
        format=fmt,
        loadable=verdict in (VERDICT_LOADABLE, VERDICT_GUEST_MAY_NOT_RUN),
        verdict=verdict,
        problems=probs,
        offsets_in=src.container.offsets_in,
        machine_type=walk.machine_type,
        capabilities=list(walk.capabilities),
        incoming=incoming,
        requirements=requirements(probs, incoming, src),
        target=target,
    )


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split(".") if x.isdigit())


def requirements(probs: list[Problem], incoming: Incoming, src: Source) -> Requirements:
    """The QEMU versions, capabilities and transport the file needs (see Requirements)."""
    mins = [(PROBLEMS[p.code].min_qemu, p.code) for p in probs if PROBLEMS[p.code].min_qemu]
    maxs = [(PROBLEMS[p.code].max_qemu, p.code) for p in probs if PROBLEMS[p.code].max_qemu]
    lo = max(mins, key=lambda m: _version_key(m[0] or "")) if mins else None
    hi = min(maxs, key=lambda m: _version_key(m[0] or "")) if maxs else None
    comp = src.container.compression
    if incoming.method == "loadvm" or incoming.uri is None:
        transport = TRANSPORT_LOADVM
    elif incoming.uri.startswith("exec:"):
        transport = TRANSPORT_EXEC
    elif comp:
        transport = TRANSPORT_DECOMPRESSED_FILE
    else:
        transport = TRANSPORT_FILE
    return Requirements(
        min_qemu=lo[0] if lo else None, max_qemu=hi[0] if hi else None,
        because=list(dict.fromkeys(c for _, c in ([lo] if lo else []) + ([hi] if hi else []))),
        capabilities=list(incoming.capabilities), transport=transport,
        decompressor=decompress_command(comp) if comp else None)


def _dedupe(probs: list[Problem]) -> list[Problem]:
    seen: set[tuple[Any, ...]] = set()
    out = []
    for p in probs:
        key = (p.severity, p.offset, p.code, p.cause)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _old_machine(name: str) -> bool | None:
    """True for machine types up to 2.3 (no configuration, no footers), None if unknown."""
    m = re.search(r"-(\d+)\.(\d+)$", name)
    if m is None:
        return None
    return (int(m[1]), int(m[2])) <= (2, 3)


def _footer_checks(walk: StreamWalk) -> list[Problem]:
    """A stream without section footers loads only on machine types up to 2.3."""
    if walk.footers is not False or walk.machine_type is None or not walk.sections:
        return []
    if _old_machine(walk.machine_type) is not False:
        return []
    sec = next((x for x in walk.kinds(S.KIND_START, S.KIND_FULL, S.KIND_PART, S.KIND_END)
                if x.payload_end is not None), None)
    if sec is None:
        return []
    return [problem("footer-missing", sec.payload_end, sec.idstr or "",
                    f"no section footer after {sec.idstr!r} (section {sec.section_id}), but "
                    f"machine type {walk.machine_type} sends and expects footers (a stream "
                    "written without footers, by machine type <= 2.3 or Xen, and then "
                    "mislabelled?)")]


def _configuration_checks(walk: StreamWalk) -> list[Problem]:
    if walk.configuration is not None:
        return _footer_checks(walk)
    return [problem("no-configuration", walk.base + 8, "configuration",
                    "no configuration record after the header (machine types up to 2.3 and "
                    "Xen do not send one)")]


def _section_checks(walk: StreamWalk) -> list[Problem]:
    out: list[Problem] = []
    if walk.error is not None:
        return out
    opened: dict[int | None, Section] = {}
    ram_end = False
    for s in walk.sections:
        if s.kind == S.KIND_START:
            opened[s.section_id] = s
        elif s.kind == S.KIND_END:
            opened.pop(s.section_id, None)
            if s.idstr == R.RAM_SECTION_IDSTR:
                ram_end = True
    for s in opened.values():
        out.append(problem("section-not-ended", s.offset, s.idstr or "",
                           f"live section {s.idstr!r} (id {s.section_id}) was started but "
                           "never ended"))
    if walk.blocks and not ram_end and not opened:
        out.append(problem("ram-not-ended", None, "ram", "no END section for ram"))
    return out + _early_eof(walk, list(opened.values()))


def _early_eof(walk: StreamWalk, opened: list[Section]) -> list[Problem]:
    """An EOF record with sections still open and more data after it than a trailer:
    most likely a damaged type byte. QEMU stops there and loads what came before."""
    eof = walk.eof_offset
    if eof is None or not opened or walk.walked_to >= walk.buf_size:
        return []
    what = [f"before the {s.idstr!r} section (START at 0x{s.offset:x}) ended" for s in opened]
    t = walk.trailer
    if t is not None and t.data is not None:
        sent = {s.key for s in walk.kinds(S.KIND_FULL)}
        unsent = [k for k in device_index(t.data) if k not in sent]
        if unsent:
            what.append(f"before {len(unsent)} device section(s) the vmdescription lists "
                        f"(e.g. {unsent[0][0]!r})")
    return [problem("early-eof", eof, "stream",
                    f"QEMU_VM_EOF at 0x{eof:x} comes " + " and ".join(what)
                    + f", with {walk.buf_size - walk.walked_to} more bytes after it")]


def _trailer_checks(walk: StreamWalk) -> list[Problem]:
    """vmdescription agreement with the sections (QEMU never reads it: warnings only)."""
    out: list[Problem] = []
    t = walk.trailer
    if t is None or t.data is None:
        return out
    ps = t.data.get("page_size")
    if isinstance(ps, int) and walk.configuration and walk.configuration.target_page_bits:
        if 1 << walk.configuration.target_page_bits != ps:
            out.append(problem("trailer-page-size", t.offset, "vmdescription",
                               f"vmdescription page_size {ps} disagrees with target-page-bits "
                               f"{walk.configuration.target_page_bits}"))
    if walk.error is not None or walk.eof_offset is None:
        return out
    if t.offset != walk.eof_offset + 1:
        out.append(problem("trailer-misplaced", t.offset, "vmdescription",
                           f"a vmdescription trailer was found at 0x{t.offset:x}, not right "
                           f"after QEMU_VM_EOF at 0x{walk.eof_offset:x}"))
    devs = t.data.get("devices")
    if isinstance(devs, list):
        described = {(str(d.get("name")), _int(d.get("instance_id"))) for d in devs
                     if isinstance(d, dict)}
        full = {(s.idstr, s.instance_id) for s in walk.kinds(S.KIND_FULL)}
        missing = sorted(full - described, key=str)
        extra = sorted(described - full, key=str)
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"{len(missing)} FULL section(s) not described (e.g. "
                             f"{missing[0][0]!r})")
            if extra:
                parts.append(f"{len(extra)} described device(s) with no FULL section (e.g. "
                             f"{extra[0][0]!r})")
            out.append(problem("trailer-mismatch", t.offset, "vmdescription",
                               "the vmdescription does not match the device sections: "
                               + "; ".join(parts)))
    return out


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _version_notes(walk: StreamWalk) -> list[Problem]:
    """What the file needs of the destination QEMU's version (info)."""
    out: list[Problem] = []
    sw = next((s for s in walk.kinds(S.KIND_COMMAND) if s.cmd == S.MIG_CMD_SWITCHOVER_START),
              None)
    if sw is not None:
        out.append(problem("needs-qemu-10", sw.offset, "command",
                           "SWITCHOVER_START command: written by QEMU >= 10.0"))
    if walk.mapped_ram and walk.configuration is not None:
        out.append(problem("needs-mapped-ram", walk.configuration.offset, "configuration",
                           "mapped-ram capability: needs QEMU >= 9.0 and the capability set "
                           "on the destination before migrate-incoming"))
    return out


def _ram_checks(walk: StreamWalk) -> list[Problem]:
    out: list[Problem] = []
    if walk.other_ram_records.multifd_flush:
        out.append(problem("multifd-flush", None, "ram",
                           f"{walk.other_ram_records.multifd_flush} MULTIFD_FLUSH records"))
    rt = walk.records
    if rt is not None and len(rt) and not walk.mapped_ram:
        comp = rt.kind == R.RAM_SAVE_FLAG_COMPRESS_PAGE
        ncomp = int(np.count_nonzero(comp))
        if ncomp:
            first = int(rt.rec_off[int(np.argmax(comp))])
            out.append(problem("compress-page", first, "ram",
                               f"{ncomp} COMPRESS_PAGE records (the old `compress` "
                               "capability)"))
    return out


def _mapped_ram_checks(src: Source, walk: StreamWalk,
                       trust: BitmapTrust | None = None) -> list[Problem]:
    """Region placement, bitmaps and overlaps; only for blocks the walk accepted."""
    if not walk.mapped_ram:
        return []
    out: list[Problem] = []
    for b in walk.blocks:
        m = b.mapped_ram
        if m is None or m.skipped:
            continue
        if m.pages_offset % M.MAPPED_RAM_FILE_OFFSET_ALIGNMENT:
            out.append(problem("mapped-ram-unaligned", m.header_offset + 20, b.name,
                               f"pages region of {b.name!r} at 0x{m.pages_offset:x} is not "
                               "1 MiB aligned (QEMU writes it aligned; it only needs page "
                               "alignment to load)"))
        out += _bitmap_checks(src, b, trust)
    return out + _overlap_checks(walk)


def _bitmap_checks(src: Source, b: Any, trust: BitmapTrust | None) -> list[Problem]:
    """Bits past the used length (QEMU ignores them), a bitmap with no bit set, and a
    bitmap the pages region shows was written by another kind of host (the capture's
    one bitmap verdict, as every command reports it)."""
    m = b.mapped_ram
    end = m.bitmap_offset + m.bitmap_bytes
    if not (0 <= m.bitmap_offset and end <= len(src.buf) and m.bitmap_bytes):
        return []
    out: list[Problem] = []
    raw = raw_bitmap(src.buf, b)
    extra = padding_bits(raw, b.pages)
    if extra:
        out.append(problem("bitmap-past-used-length", padding_offset(m.bitmap_offset, b.pages),
                           b.name, f"{extra} bit(s) set in the bitmap of {b.name!r} past its "
                           f"{b.pages} pages"))
    chk = trust.blocks.get(b.name) if trust is not None else None
    if chk is not None and chk.verdict == VERDICT_OTHER_HOST:
        out.append(problem("bitmap-other-host", m.bitmap_offset, b.name,
                           f"bitmap of {b.name!r}: {chk.untrusted}"))
    if b.pages and not bitmap_bits(raw, b.pages, LAYOUT_LE64).any():
        out.append(problem("bitmap-empty", m.bitmap_offset, b.name,
                           f"bitmap of {b.name!r} has no bit set: every page loads as zero (an "
                           "all-zero block, or a save interrupted before the bitmaps were "
                           "written)"))
    return out


def _overlap_checks(walk: StreamWalk) -> list[Problem]:
    """Bitmaps, pages regions and the sequential stream bytes (section spans, minus the
    regions the ram START jumps over) must not overlap."""
    regions: list[tuple[int, int, str, int]] = []  # start, end, label, offset of the field
    for b in walk.blocks:
        m = b.mapped_ram
        if m is None or m.skipped:
            continue
        regions.append((m.bitmap_offset, m.bitmap_offset + m.bitmap_bytes, f"bitmap of {b.name}",
                        m.header_offset + 12))
        regions.append((m.pages_offset, m.pages_offset + b.used_length, f"pages of {b.name}",
                        m.header_offset + 20))
    for s in walk.sections:
        if s.kind == S.KIND_START and s.idstr == R.RAM_SECTION_IDSTR:
            p = s.offset
            for b in walk.blocks:
                m = b.mapped_ram
                if m is None:
                    continue
                regions.append((p, m.header_offset + M.MAPPED_RAM_HEADER_SIZE,
                                f"ram START entry of {b.name}", p))
                p = m.pages_offset + b.used_length if not m.skipped else \
                    m.header_offset + M.MAPPED_RAM_HEADER_SIZE
            regions.append((p, s.end, "ram START tail", p))
        else:
            regions.append((s.offset, s.end, f"{s.kind} {s.idstr or ''}".strip(), s.offset))
    out: list[Problem] = []
    widest = None  # the interval seen so far that reaches furthest
    for cur in sorted(r for r in regions if r[1] > r[0]):
        if widest is not None and cur[0] < widest[1] and len(out) < 8:
            a0, a1, al, _ = widest
            b0, b1, bl, boff = cur
            out.append(problem("mapped-ram-overlap", boff, bl.split(" of ")[-1],
                               f"{bl} (0x{b0:x}-0x{b1:x}) overlaps {al} (0x{a0:x}-0x{a1:x})"))
        if widest is None or cur[1] > widest[1]:
            widest = cur
    return out


# ---------------------------------------------------------------------------
def incoming_for(src: Source, walk: StreamWalk) -> Incoming:
    """How to load the file: its container says (`-incoming defer` + migrate-incoming for
    a migration file, `loadvm` for a disk image's internal snapshot, ...)."""
    return src.container.how_to_load(src, walk)


__all__ = ["check", "check_file", "verdict_of", "check_source_error", "CheckReport", "Problem",
           "Incoming", "Requirements", "requirements", "VERDICT_LOADABLE", "VERDICT_REFUSED",
           "VERDICT_UNKNOWN", "VERDICT_GUEST_MAY_NOT_RUN", "QEMU_EIO"]
