"""`check`: will this file restore, and if not, why (as plain data).

Builds on `walk_stream`: the walk's fatal error and notices become problems,
each mapped to the message QEMU's loader prints for the same damage (as seen
when loading damaged real captures into QEMU 10), and the checks the walk does
not make are added here: mapped-ram regions overlapping each other or the
stream, bitmap bits past the used length, odd region placement, the EOF /
vmdescription trailer and its agreement with the sections, sections left open,
a libvirt image that was never completed.

Severities: "error" (QEMU refuses the file), "warning" (QEMU still loads it,
but something is off: damage the loader never reads, for example), "info".
A stop the tool cannot judge (a feature it does not read) makes the verdict
"unknown".
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import (
    BadMagicError,
    MigError,
    TruncatedError,
    UnknownSectionError,
    UnsupportedError,
    UsageError,
)
from ..formats import mapped_ram as M
from ..formats import ram as R
from ..formats import stream as S
from .source import Source, open_source
from .stream import StreamWalk, walk_stream
from .vmdesc import device_index, vmsd_length

if TYPE_CHECKING:
    from .prediction import TargetModel
    from .target import TargetDescription

VERDICT_LOADABLE = "loadable"
VERDICT_REFUSED = "will not load"
VERDICT_UNKNOWN = "could not tell"

#: The generic last lines QEMU prints after the specific message.
QEMU_EIO = "load of migration failed: Input/output error"


@dataclass
class Problem:
    severity: str  # "error", "warning" or "info"
    offset: int | None
    where: str
    cause: str
    fix: str
    code: str = ""  # short stable name of the problem kind
    qemu: list[str] = field(default_factory=list)  # what QEMU prints for it (key phrases)


@dataclass
class Incoming:
    """What the destination QEMU must be told before it can read this file."""

    capabilities: list[str]
    uri: str
    commands: list[str]  # command line + QMP, in order


@dataclass
class CheckReport:
    path: str
    format: str | None
    loadable: bool
    verdict: str
    problems: list[Problem]
    offsets_in: str = "file"  # "file" or "decompressed stream"
    machine_type: str | None = None
    capabilities: list[str] = field(default_factory=list)
    incoming: Incoming | None = None
    target: dict[str, Any] | None = None  # what --target compared against

    @property
    def exit_code(self) -> int:
        if self.verdict == VERDICT_LOADABLE:
            return 0
        if self.verdict == VERDICT_REFUSED:
            return 1
        return 2

    @property
    def primary(self) -> Problem | None:
        """The first error in file order: what QEMU's loader stops at."""
        return next((p for p in self.problems if p.severity == "error"), None)

    def count(self, severity: str) -> int:
        return sum(1 for p in self.problems if p.severity == severity)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["exit_code"] = self.exit_code
        return d


# ---------------------------------------------------------------------------
# The walker's fatal errors, mapped to QEMU's wording and a fix.
#
# (exception class, regex on the message, code, QEMU's phrases, fix). First match wins.
_T = TruncatedError
_RULES: list[tuple[type, str, str, list[str], str]] = [
    (_T, r"too short for a QEMU migration stream header", "truncated-header",
     ["Not a migration stream", "Unsupported migration stream version"],
     "the file is empty or cut off in the first 8 bytes: use an intact copy of the capture"),
    (BadMagicError, r"not a QEMU migration stream", "bad-magic", ["Not a migration stream"],
     "this is not a QEMU migration stream (wrong file, or a container this tool did not "
     "recognise)"),
    (UnsupportedError, r"stream version 2", "version-2",
     ["SaveVM v2 format is obsolete"], "version 2 streams need a QEMU older than 1.x: re-save "
     "the VM with a current QEMU"),
    (BadMagicError, r"unsupported stream version", "bad-version",
     ["Unsupported migration stream version"],
     "the stream version is not 3: the header is damaged or the file is not a migration stream"),
    (UnsupportedError, r"unknown configuration subsection", "config-subsection",
     ["Failed to load configuration"],
     "the configuration record carries a subsection this QEMU does not know: load it with the "
     "QEMU version that wrote it"),
    (MigError, r"configuration", "configuration", ["Failed to load configuration"],
     "the configuration record at the start is damaged or cut short: use an intact copy"),
    (_T, r"ends without a QEMU_VM_EOF", "no-eof", [QEMU_EIO],
     "the file was cut short after the last complete section: the save did not finish or the "
     "copy is incomplete; re-save or re-copy it"),
    (UnknownSectionError, r"unknown section type byte", "unknown-section-type",
     ["Unknown savevm section type"],
     "the stream is damaged here (or written by a QEMU with a newer format): use an intact copy"),
    (UnknownSectionError, r"unknown migration command", "unknown-command",
     ["MIG_CMD", "unknown"],
     "a migration command this QEMU does not know: the stream is damaged here or needs a newer "
     "QEMU"),
    (_T, r"section header", "truncated-section-header", ["Unable to read ID string", QEMU_EIO],
     "the file is cut short inside a section header: re-copy or re-save it"),
    (MigError, r"empty idstr|section header", "section-header", ["Unable to read ID string"],
     "a section header is damaged: use an intact copy"),
    (UnsupportedError, r"ram section version", "ram-version", ["unsupported version"],
     "the RAM section version is not 4: the header is damaged"),
    (MigError, r"that no START opened", "unknown-section-id", ["Unknown savevm section"],
     "a PART/END refers to a section that was never started: the stream is damaged or "
     "sections were lost"),
    (_T, r"device section|cannot find the end of section", "truncated-device",
     ["error while loading state", QEMU_EIO, "Mismatched section id in footer",
      "Read section footer failed"],
     "the file is cut short inside a device's state: re-copy or re-save it"),
    (_T, r"footer", "truncated-footer",
     ["Read section footer failed", "Mismatched section id in footer", QEMU_EIO],
     "the file is cut short at a section footer: re-copy or re-save it"),
    (MigError, r"Mismatched section id in footer", "footer-mismatch",
     ["Mismatched section id in footer"],
     "the section before the footer has the wrong length (damaged data, or a device whose "
     "state format differs from what was expected)"),
    (MigError, r"missing section footer", "footer-missing", ["Missing section footer"],
     "the section before this point is longer or shorter than QEMU expects: damaged data"),
    (UnsupportedError, r"mapped-ram header version|capability version not supported",
     "mapped-ram-version", ["Migration mapped-ram capability version not supported"],
     "the mapped-ram header version is not 1: damaged header or a newer QEMU wrote it"),
    (_T, r"Error reading dirty bitmap|bitmap of", "mapped-ram-bitmap-past-end",
     ["Error reading dirty bitmap"],
     "a mapped-ram bitmap offset points past the end of the file: the header is damaged or the "
     "file was cut short"),
    (MigError, r"region has bad alignment|not page aligned", "mapped-ram-alignment",
     ["region has bad alignment"], "the mapped-ram pages offset is damaged"),
    (_T, r"pages region of", "mapped-ram-truncated",
     ['Unknown ramblock ""', "failed to read page", QEMU_EIO, "Error reading"],
     "the file ends inside a mapped-ram pages region: the copy lost its tail (a sparse file "
     "copied without its holes, or a cut-short save); re-copy it with `cp --sparse=always` or "
     "re-save"),
    (MigError, r"overlaps its bitmap", "mapped-ram-overlap", [],
     "the mapped-ram offsets are damaged: the pages would be read from the bitmap"),
    (MigError, r"mapped-ram", "mapped-ram", [], "the mapped-ram header is damaged"),
    (MigError, r"MEM_SIZE total|listed twice|RAMBlock list entry", "ramblock-list",
     ["Unknown ramblock", "Size mismatch", "Length mismatch"],
     "the RAMBlock list in the ram START section is damaged (total, names or lengths do not "
     "add up)"),
    (MigError, r"ram START section begins", "ram-start", ["Unknown combination of migration flags"],
     "the ram START section does not begin with the RAMBlock list: damaged data"),
    (MigError, r"Unknown ramblock", "unknown-block-in-record", ["Can't find block"],
     "a page record names a RAMBlock that is not in the list: the record or a CONTINUE flag is "
     "damaged"),
    (MigError, r"CONTINUE flag set but no RAMBlock", "continue-without-block",
     ["Ack, bad migration stream", "Can't find block"],
     "the first page record has CONTINUE set: a flipped flag bit"),
    (MigError, r"unknown RAM flags", "unknown-ram-flags",
     ["Unknown combination of migration flags"],
     "a RAM record header carries flags QEMU does not know: a damaged record header"),
    (MigError, r"beyond the used length", "page-offset-beyond",
     ["Illegal RAM offset"],
     "a page record points past its RAMBlock: a damaged record header or a CONTINUE flag that "
     "attributes the page to the wrong block"),
    (MigError, r"fill byte", "zero-fill", ["Found a zero page with value"],
     "a ZERO record with a non-zero fill byte: damaged data"),
    (MigError, r"XBZRLE", "xbzrle", ["Failed to load XBZRLE page"],
     "an XBZRLE record is damaged"),
    (MigError, r"COMPRESS_PAGE", "compress-page", ["compress"], "a COMPRESS_PAGE record is "
     "damaged"),
    (UnsupportedError, r"HOOK", "rdma-hook", ["Unknown combination of migration flags"],
     "an RDMA hook record cannot appear in a file: damaged data"),
    (MigError, r"page record .* in a mapped-ram stream", "page-record-in-mapped-ram",
     ["Unknown combination of migration flags"],
     "a page record inside a mapped-ram stream: damaged data"),
    (_T, r"RAM section|record header|page payload|RAMBlock name|fill byte|payload",
     "truncated-ram", ["Getting RAM address failed", QEMU_EIO],
     "the file is cut short inside the RAM data: the save did not finish or the copy is "
     "incomplete; re-copy or re-save it"),
    (UnsupportedError, r"cannot size section", "cannot-size",
     [], "this tool cannot size a device section without the vmdescription trailer or footers; "
     "only loading the file into QEMU can tell"),
    (_T, r"", "truncated", [QEMU_EIO], "the file is cut short: re-copy or re-save it"),
]

#: Codes whose stop means "this tool cannot tell" rather than "QEMU refuses".
_UNKNOWN_CODES = {"cannot-size", "unsupported"}


def classify(err: MigError) -> Problem:
    """One fatal walker error as a problem with QEMU's wording and a fix."""
    msg = err.message
    for cls, pat, code, qemu, fix in _RULES:
        if isinstance(err, cls) and re.search(pat, msg, re.IGNORECASE):
            return Problem("error", err.offset, err.where, msg, fix, code, list(qemu))
    if isinstance(err, UnsupportedError):
        return Problem("error", err.offset, err.where, msg,
                       "the file uses a feature this tool does not read; only loading it into "
                       "QEMU can tell", "unsupported", [])
    return Problem("error", err.offset, err.where, msg,
                   "the stream is damaged here: use an intact copy", "damaged", [])


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
        p.cause += (f"; these bytes look like a section footer or header: the {sec.kind} "
                    f"section of {sec.idstr!r} at 0x{sec.offset:x} lacks its EOS record")
        p.code = "missing-eos"
    return p


def _qemu_on_bad_flags(p: Problem, src: Source, walk: StreamWalk) -> Problem:
    """What QEMU prints for a record word with unknown flags. Its loader looks the block
    up (and checks the offset) for any word with a ZERO, PAGE or XBZRLE bit *before* it
    rejects the combination, so such a word fails with the lookup's message."""
    buf, off = src.buf, p.offset
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


def _refine(p: Problem, src: Source, walk: StreamWalk) -> Problem:
    """A device section whose vmdescription length lands on a footer with another id is a
    footer mismatch (what QEMU reports), not a lost footer; a RAM record that is a footer
    is a missing EOS; QEMU's message for unknown flags depends on which bits are set."""
    if p.code == "unknown-ram-flags":
        p = _qemu_on_bad_flags(p, src, walk)
    if p.code in _RAM_RECORD_CODES:
        return _missing_eos(p, src, walk)
    if p.code not in ("truncated-device", "truncated-footer") or not walk.sections:
        return p
    sec = walk.sections[-1]
    t = walk.trailer
    if sec.kind != "FULL" or t is None or t.data is None or sec.payload_offset is None:
        return p
    key = (sec.idstr or "", sec.instance_id or 0)
    k = sum(1 for s in walk.sections[:-1] if s.kind == "FULL"
            and (s.idstr or "", s.instance_id or 0) == key)
    descs = device_index(t.data).get(key, [])
    if k >= len(descs):
        return p
    try:
        end = sec.payload_offset + vmsd_length(descs[k])
    except (ValueError, TypeError):
        return p
    buf = src.buf
    if end + 5 <= len(buf) and buf[end] == S.QEMU_VM_SECTION_FOOTER:
        sid = int.from_bytes(bytes(buf[end + 1:end + 5]), "big")
        if sid != sec.section_id:
            return Problem("error", end, sec.idstr or "",
                           f"Mismatched section id in footer for {sec.idstr} - read 0x{sid:x} "
                           f"expected 0x{sec.section_id:x}",
                           "the footer after this device's state is damaged (or the state has "
                           "another length than described): use an intact copy",
                           "footer-mismatch", ["Mismatched section id in footer"])
    return p


# ---------------------------------------------------------------------------
def check_source_error(path: str, err: MigError) -> CheckReport:
    """The report for a file that could not even be opened (container damage)."""
    p = _container_problem(err)
    verdict = VERDICT_UNKNOWN if p.code == "unsupported" else VERDICT_REFUSED
    return CheckReport(path, None, False, verdict, [p])


def _container_problem(err: MigError) -> Problem:
    msg = err.message
    where = err.where or "container"
    if "libvirt header says" in msg:
        return Problem("error", err.offset, where, msg,
                       "the libvirt header's data_len runs past the end of the file: the image "
                       "is cut short or its header is damaged", "libvirt-data-len",
                       ["invalid header data length", "failed to read domain XML"])
    if "libvirt save image version" in msg:
        return Problem("error", err.offset, where, msg,
                       "a libvirt image version this libvirt does not know (or a damaged "
                       "header)", "libvirt-version", ["image version is not supported"])
    if "libvirt save image format" in msg:
        return Problem("error", err.offset, where, msg,
                       "unknown image format number in the libvirt header",
                       "libvirt-format", ["unsupported save image format"])
    if isinstance(err, UnsupportedError):
        return Problem("error", err.offset, where, msg, "this tool cannot read it: decompress "
                       "it first, then check the result", "unsupported", [])
    if isinstance(err, TruncatedError):
        return Problem("error", err.offset, where, msg,
                       "the compressed data is damaged or cut short: re-copy it",
                       "container-truncated", [QEMU_EIO])
    return classify(err)


def check_file(
    path: str,
    progress: Callable[[int, int], None] | None = None,
    page_size: int | None = None,
    target: TargetDescription | TargetModel | None = None,
    target_qemu: str | None = None,
) -> CheckReport:
    """Open, walk and check `path` (and compare it with `target`, or predict the load on
    the QEMU of the `target_qemu` command line). Damage never raises: it becomes a problem
    in the report."""
    try:
        src = open_source(path, progress)
    except UsageError:
        raise
    except MigError as e:
        return check_source_error(path, e)
    with src:
        walk = walk_stream(src.buf, src.base, progress, page_size)
        from .prediction import target_problems  # --target / --target-qemu (issue 14)

        extra, tjson = target_problems(src, walk, target, target_qemu)
        rep = check(src, walk, extra)
    rep.target = tjson
    return rep


def verdict_of(probs: list[Problem]) -> str:
    errors = [p for p in probs if p.severity == "error"]
    if any(p.code not in _UNKNOWN_CODES for p in errors):
        return VERDICT_REFUSED
    if errors:
        return VERDICT_UNKNOWN
    return VERDICT_LOADABLE


def check(src: Source, walk: StreamWalk, extra: list[Problem] | None = None) -> CheckReport:
    """Every problem the file shows, in file order, and the verdict. `extra`: problems
    found elsewhere (the --target comparison)."""
    probs: list[Problem] = list(extra or [])
    probs += _container_checks(src, walk)
    if walk.version == 3:
        probs += _configuration_checks(walk)  # QEMU checks this before anything else
    for n in walk.notices:
        probs.append(_notice_problem(n.severity, n.offset, n.where, n.message))
    if walk.error is not None:
        p = _refine(classify(walk.error), src, walk)
        if p.code.startswith("truncated") or p.code in ("no-eof", "mapped-ram-truncated"):
            p.cause += f" (the data ends at 0x{len(src.buf):x})"
        probs.append(p)
    if walk.version == 3:
        probs += _mapped_ram_checks(src, walk)
        probs += _section_checks(walk)
        probs += _trailer_checks(walk)
    probs += _ram_checks(walk)
    probs += _version_notes(walk)
    probs = _dedupe(probs)
    probs.sort(key=lambda p: (p.offset is None, p.offset or 0))
    verdict = verdict_of(probs)
    fmt = "mapped-ram" if walk.mapped_ram else ("legacy" if walk.version == 3 else None)
    return CheckReport(
        path=src.path,
        format=fmt,
        loadable=verdict == VERDICT_LOADABLE,
        verdict=verdict,
        problems=probs,
        offsets_in="decompressed stream" if src.decompressed else "file",
        machine_type=walk.machine_type,
        capabilities=list(walk.capabilities),
        incoming=incoming_for(src, walk),
    )


def _dedupe(probs: list[Problem]) -> list[Problem]:
    seen: set[tuple[Any, ...]] = set()
    out = []
    for p in probs:
        key = (p.severity, p.offset, p.code, p.cause)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def _notice_problem(severity: str, offset: int | None, where: str, msg: str) -> Problem:
    sev = "warning" if severity == "warning" else "info"
    if "vmdescription" in msg and ("cut short" in msg or "JSON" in msg or "says" in msg):
        return Problem(sev, offset, where, msg, "none needed to load (QEMU skips the trailer); "
                       "tools that need the device layout (analyze-migration.py) will fail",
                       "trailer-damaged", [])
    if "no vmdescription trailer" in msg:
        return Problem("warning", offset, where,
                       "the file ends right after QEMU_VM_EOF: no vmdescription trailer "
                       "(cut short after EOF, or saved with suppress-vmdesc)",
                       "QEMU still loads it; re-copy the file if it should have a trailer",
                       "no-trailer", ["Expected vmdescription section, but got"])
    if "after EOF" in msg or "after the vmdescription" in msg:
        return Problem("warning", offset, where, msg,
                       "QEMU never reads these bytes; they may be a sign of a concatenated or "
                       "overwritten file", "trailing-bytes", [])
    if "page size not recorded" in msg:
        return Problem("info", offset, where, msg, "pass --page-size if the target does not "
                       "use 4 KiB pages", "page-size-assumed", [])
    return Problem(sev, offset, where, msg, "", "notice", [])


def _container_checks(src: Source, walk: StreamWalk) -> list[Problem]:
    out: list[Problem] = []
    c = src.container
    inf = getattr(c, "inflation", None)
    if inf is not None and not inf.complete:
        out.append(Problem("error", inf.error_offset, "container",
                           f"{inf.describe()}; offsets of the QEMU stream below are in the "
                           "decompressed data",
                           "the compressed data is cut short or damaged: re-copy it (QEMU would "
                           "get a stream that stops there)", "container-truncated"
                           if inf.truncated else "container-damaged", [QEMU_EIO]))
    elif inf is not None and inf.trailing:
        out.append(Problem("warning", inf.end, "container",
                           f"{inf.trailing} bytes after the end of the {inf.compression} data",
                           "decompressors ignore them or fail, depending on the tool",
                           "container-trailing", []))
    h = c.libvirt
    if h is None:
        if c.compression:
            out.append(Problem("info", None, "container",
                               f"{c.compression}-compressed stream; offsets are in the "
                               "decompressed data", "QEMU cannot read it from `file:`; feed it "
                               f"through `exec:{_decompress_cmd(c.compression)} FILE`",
                               "compressed", []))
        return out
    if not h.complete:
        out.append(Problem("error", 0, "libvirt",
                           "the libvirt header magic is LibvirtQemudPart: libvirt never "
                           "finished writing this image", "the save was interrupted; the image "
                           "cannot be restored (libvirt refuses it); save the domain again",
                           "libvirt-partial", ["save image is incomplete"]))
    if not h.xml.strip():
        out.append(Problem("error", 92, "libvirt", "the libvirt header holds no domain XML",
                           "libvirt needs the XML to restore; the header area is damaged",
                           "libvirt-no-xml", ["failed to read domain XML"]))
    if h.format_name == "sparse" and walk.version == 3 and walk.configuration is not None \
            and not walk.mapped_ram:
        out.append(Problem("error", 28, "libvirt",
                           "libvirt format is 'sparse' but the QEMU stream is not mapped-ram",
                           "libvirt will turn on mapped-ram for the restore and QEMU will "
                           "refuse the stream; the header's format field is wrong",
                           "libvirt-format-mismatch",
                           ["Capability mapped-ram is on, but received capability is off"]))
    if h.format_name != "sparse" and walk.mapped_ram:
        out.append(Problem("error", 28, "libvirt",
                           f"libvirt format is '{h.format_name}' but the QEMU stream is "
                           "mapped-ram", "libvirt will not turn on mapped-ram for the restore "
                           "and QEMU will refuse the stream; the header's format field is wrong",
                           "libvirt-format-mismatch",
                           ["Capability mapped-ram is off, but received capability is on"]))
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
    sec = next((x for x in walk.sections if x.kind in ("START", "FULL", "PART", "END")
                and x.payload_end is not None), None)
    if sec is None:
        return []
    return [Problem("error", sec.payload_end, sec.idstr or "",
                    f"no section footer after {sec.idstr!r} (section {sec.section_id}), but "
                    f"machine type {walk.machine_type} sends and expects footers",
                    "the stream was written without footers (machine type <= 2.3 or Xen) "
                    "and then mislabelled, or damaged: load it with the machine type that "
                    "wrote it", "footer-missing", ["Missing section footer"])]


def _configuration_checks(walk: StreamWalk) -> list[Problem]:
    if walk.configuration is not None:
        return _footer_checks(walk)
    return [Problem("error", walk.base + 8, "configuration",
                    "no configuration record after the header (machine types up to 2.3 and "
                    "Xen do not send one)",
                    "a current machine type expects it: load with the old machine type that "
                    "wrote the file, or add `-global migration.send-configuration=off`",
                    "no-configuration", ["Configuration section missing"])]


def _section_checks(walk: StreamWalk) -> list[Problem]:
    out: list[Problem] = []
    if walk.error is not None:
        return out
    opened: dict[int, Any] = {}
    ram_end = False
    for s in walk.sections:
        if s.kind == "START":
            opened[s.section_id] = s
        elif s.kind == "END":
            opened.pop(s.section_id, None)
            if s.idstr == R.RAM_SECTION_IDSTR:
                ram_end = True
    for s in opened.values():
        out.append(Problem("warning", s.offset, s.idstr or "",
                           f"live section {s.idstr!r} (id {s.section_id}) was started but never "
                           "ended", "the save may not have completed (postcopy or an interrupted "
                           "migration); QEMU loads what is there", "section-not-ended", []))
    if walk.blocks and not ram_end and not opened:
        out.append(Problem("warning", None, "ram", "no END section for ram",
                           "the RAM state may be incomplete", "ram-not-ended", []))
    return out


def _trailer_checks(walk: StreamWalk) -> list[Problem]:
    """vmdescription agreement with the sections (QEMU never reads it: warnings only)."""
    out: list[Problem] = []
    t = walk.trailer
    if t is None or t.data is None:
        return out
    ps = t.data.get("page_size")
    if isinstance(ps, int) and walk.configuration and walk.configuration.target_page_bits:
        if 1 << walk.configuration.target_page_bits != ps:
            out.append(Problem("warning", t.offset, "vmdescription",
                               f"vmdescription page_size {ps} disagrees with target-page-bits "
                               f"{walk.configuration.target_page_bits}", "", "trailer-page-size",
                               []))
    if walk.error is not None or walk.eof_offset is None:
        return out
    if t.offset != walk.eof_offset + 1:
        out.append(Problem("warning", t.offset, "vmdescription",
                           f"a vmdescription trailer was found at 0x{t.offset:x}, not right "
                           f"after QEMU_VM_EOF at 0x{walk.eof_offset:x}", "QEMU never reads it",
                           "trailer-misplaced", []))
    devs = t.data.get("devices")
    if isinstance(devs, list):
        described = {(str(d.get("name")), _int(d.get("instance_id"))) for d in devs
                     if isinstance(d, dict)}
        full = {(s.idstr, s.instance_id) for s in walk.sections if s.kind == "FULL"}
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
            out.append(Problem("warning", t.offset, "vmdescription",
                               "the vmdescription does not match the device sections: "
                               + "; ".join(parts),
                               "QEMU does not read the trailer; device decoding that relies on "
                               "it may be wrong", "trailer-mismatch", []))
    return out


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _version_notes(walk: StreamWalk) -> list[Problem]:
    """What the file needs of the destination QEMU's version (info)."""
    out: list[Problem] = []
    sw = next((s for s in walk.sections if s.kind == "COMMAND"
               and s.cmd == S.MIG_CMD_SWITCHOVER_START), None)
    if sw is not None:
        out.append(Problem("info", sw.offset, "command",
                           "SWITCHOVER_START command: written by QEMU >= 10.0",
                           "load it with QEMU >= 10.0 (older ones stop with 'MIG_CMD 0xb "
                           "unknown')", "needs-qemu-10", ["MIG_CMD 0xb unknown"]))
    if walk.mapped_ram and walk.configuration is not None:
        out.append(Problem("info", walk.configuration.offset, "configuration",
                           "mapped-ram capability: needs QEMU >= 9.0 and the capability set "
                           "on the destination before migrate-incoming",
                           "see 'to load it' below", "needs-mapped-ram",
                           ["Capability mapped-ram is off, but received capability is on"]))
    return out


def _ram_checks(walk: StreamWalk) -> list[Problem]:
    out: list[Problem] = []
    if walk.other_ram_records.get("MULTIFD_FLUSH"):
        out.append(Problem("info", None, "ram", f"{walk.other_ram_records['MULTIFD_FLUSH']} "
                           "MULTIFD_FLUSH records", "", "multifd-flush", []))
    rt = walk.records
    if rt is not None and len(rt) and not walk.mapped_ram:
        ncomp = int(np.count_nonzero(rt.kind == R.RAM_SAVE_FLAG_COMPRESS_PAGE))
        if ncomp:
            first = int(rt.rec_off[int(np.argmax(rt.kind == R.RAM_SAVE_FLAG_COMPRESS_PAGE))])
            out.append(Problem("warning", first, "ram",
                               f"{ncomp} COMPRESS_PAGE records (the old `compress` capability)",
                               "QEMU 9.1 and later cannot load compressed pages: restore with "
                               "QEMU <= 9.0", "compress-page", []))
    return out


def _mapped_ram_checks(src: Source, walk: StreamWalk) -> list[Problem]:
    """Region layout and bitmaps; only for blocks the walk accepted."""
    out: list[Problem] = []
    if not walk.mapped_ram:
        return out
    buf = src.buf
    regions: list[tuple[int, int, str, int]] = []  # start, end, label, offset of the field
    for b in walk.blocks:
        m = b.mapped_ram
        if m is None or m.skipped:
            continue
        regions.append((m.bitmap_offset, m.bitmap_offset + m.bitmap_bytes, f"bitmap of {b.name}",
                        m.header_offset + 12))
        regions.append((m.pages_offset, m.pages_offset + b.used_length, f"pages of {b.name}",
                        m.header_offset + 20))
        if m.bitmap_offset != m.header_offset + M.MAPPED_RAM_HEADER_SIZE:
            out.append(Problem("warning", m.header_offset + 12, b.name,
                               f"bitmap of {b.name!r} at 0x{m.bitmap_offset:x} does not follow "
                               f"its header (0x{m.header_offset + 28:x}) as QEMU writes it",
                               "QEMU reads it where the header says; check the header is intact",
                               "mapped-ram-odd-placement", []))
        if m.pages_offset % M.MAPPED_RAM_FILE_OFFSET_ALIGNMENT:
            out.append(Problem("info", m.header_offset + 20, b.name,
                               f"pages region of {b.name!r} at 0x{m.pages_offset:x} is not "
                               "1 MiB aligned (QEMU writes it aligned; it only needs page "
                               "alignment to load)", "", "mapped-ram-odd-placement", []))
        # bitmap bits past the used length (QEMU ignores them)
        end = m.bitmap_offset + m.bitmap_bytes
        if 0 <= m.bitmap_offset and end <= len(buf) and m.bitmap_bytes:
            raw = np.frombuffer(buf, np.uint8, count=m.bitmap_bytes, offset=m.bitmap_offset)
            full = b.pages // 8  # bytes whose 8 bits are all pages (le64: page i = bit i%8)
            tail = np.unpackbits(raw[full:], bitorder="little")  # at most the last word
            extra = int(np.count_nonzero(tail[b.pages % 8:]))
            if extra:
                out.append(Problem("warning", m.bitmap_offset + full, b.name,
                                   f"{extra} bit(s) set in the bitmap of {b.name!r} past its "
                                   f"{b.pages} pages", "QEMU ignores them; the bitmap is "
                                   "damaged or was written by a big-endian host",
                                   "bitmap-past-used-length", []))
            if b.pages and not raw[:full].any() and not tail[: b.pages % 8].any():
                out.append(Problem("info", m.bitmap_offset, b.name,
                                   f"bitmap of {b.name!r} has no bit set: every page loads as "
                                   "zero (an all-zero block, or a save interrupted before the "
                                   "bitmaps were written)", "", "bitmap-empty", []))
    # the sequential stream bytes: section spans, minus the regions the ram START jumps over
    stream: list[tuple[int, int, str, int]] = []
    for s in walk.sections:
        if s.kind == "START" and s.idstr == R.RAM_SECTION_IDSTR:
            p = s.offset
            for b in walk.blocks:
                m = b.mapped_ram
                if m is None:
                    continue
                stream.append((p, m.header_offset + M.MAPPED_RAM_HEADER_SIZE,
                               f"ram START entry of {b.name}", p))
                p = m.pages_offset + b.used_length if not m.skipped else \
                    m.header_offset + M.MAPPED_RAM_HEADER_SIZE
            stream.append((p, s.end, "ram START tail", p))
        else:
            stream.append((s.offset, s.end, f"{s.kind} {s.idstr or ''}".strip(), s.offset))
    allr = sorted(r for r in regions + stream if r[1] > r[0])
    reported = 0
    widest = None  # the interval seen so far that reaches furthest
    for cur in allr:
        if widest is not None and cur[0] < widest[1] and reported < 8:
            a0, a1, al, _ = widest
            b0, b1, bl, boff = cur
            out.append(Problem("error", boff, bl.split(" of ")[-1],
                               f"{bl} (0x{b0:x}-0x{b1:x}) overlaps {al} (0x{a0:x}-0x{a1:x})",
                               "the mapped-ram offsets are damaged: QEMU would load the "
                               "overlapping bytes as pages or bitmap", "mapped-ram-overlap", []))
            reported += 1
        if widest is None or cur[1] > widest[1]:
            widest = cur
    return out


# ---------------------------------------------------------------------------
def _decompress_cmd(kind: str) -> str:
    return {"gzip": "gzip -dc", "bzip2": "bzip2 -dc", "xz": "xz -dc", "zstd": "zstd -dc",
            "lzop": "lzop -dc"}.get(kind, f"{kind} -dc")


def incoming_for(src: Source, walk: StreamWalk) -> Incoming:
    """The destination setup the file needs, with the exact QMP."""
    caps = [c for c in walk.capabilities if c in ("mapped-ram", "x-ignore-shared")]
    path = _sh(src.path)
    c = src.container
    comp = c.compression
    inner = c.kind == "libvirt" and c.libvirt is not None and src.base == 0 and bool(comp)
    pipe = None  # a shell pipeline that yields the QEMU stream from its first byte
    seek_off = src.base  # where the stream starts in the file QEMU is given
    if comp and inner:
        assert c.libvirt is not None
        pipe = f"tail -c +{c.libvirt.payload_offset + 1} {path} | {_decompress_cmd(comp)}"
        seek_off = 0
    elif comp:  # the whole file is compressed (a libvirt header may be inside)
        pipe = f"{_decompress_cmd(comp)} {path}"
    cmds: list[str] = []
    if pipe is None:
        uri = f"file:{src.path}" + (f",offset=0x{seek_off:x}" if seek_off else "")
    elif "mapped-ram" in caps:
        # mapped-ram reads pages at file offsets: QEMU refuses a pipe ("Migration requires
        # seekable transport (e.g. file)"), so decompress into a file first
        out = "/path/to/decompressed.mig"
        cmds.append(f"{pipe} > {out}   (mapped-ram needs a seekable file, not a pipe)")
        uri = f"file:{out}" + (f",offset=0x{seek_off:x}" if seek_off else "")
    else:
        tail = f" | tail -c +{seek_off + 1}" if seek_off else ""
        uri = f"exec:{pipe}{tail}"
    cmds.append("qemu-system-<arch> <the same devices and -machine as the source> "
                "-incoming defer")
    if caps:
        cap_json = ", ".join(f'{{"capability": "{x}", "state": true}}' for x in caps)
        cmds.append('{"execute": "migrate-set-capabilities", "arguments": '
                    f'{{"capabilities": [{cap_json}]}}}}')
    cmds.append(f'{{"execute": "migrate-incoming", "arguments": {{"uri": {json.dumps(uri)}}}}}')
    if "mapped-ram" in caps:
        cmds.append("optional, faster: also set the `multifd` capability and "
                    '{"execute": "migrate-set-parameters", "arguments": {"multifd-channels": 4}} '
                    "before migrate-incoming")
    if c.kind == "libvirt":
        cmds.append(f"or let libvirt do all of it: virsh restore {path}")
    return Incoming(caps, uri, cmds)


def _sh(s: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_./+:=,-]+", s):
        return s
    return "'" + s.replace("'", "'\\''") + "'"


__all__ = ["check", "check_file", "verdict_of", "check_source_error", "classify", "CheckReport",
           "Problem", "Incoming", "VERDICT_LOADABLE", "VERDICT_REFUSED", "VERDICT_UNKNOWN"]
