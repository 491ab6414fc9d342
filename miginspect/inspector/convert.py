"""Convert a capture between the legacy (sequential) and mapped-ram layouts.

The output holds the final state of every page of the input (last record
wins, XBZRLE deltas replayed by `PageReader`) and every non-RAM record of the
input byte for byte, in the input's order. Only three things are rewritten:

* the configuration record: the `configuration/capabilities` subsection gains
  or loses `mapped-ram` (other subsections are copied);
* the `ram` sections. mapped-ram out: the START section holds the MEM_SIZE
  list with a MappedRamHeader per RAMBlock, laid out as QEMU 10 lays it out
  (bitmap right after the header, pages at the next 1 MiB boundary, the next
  entry right after the pages region); data pages are written at their place,
  zero pages are left as holes (never written) with their bitmap bit clear;
  every PART/END holds only EOS. Legacy out: the START holds MEM_SIZE + EOS,
  the first PART (or the END) carries every page once, in block and page
  order (PAGE for data, ZERO for zero pages, CONTINUE after a block's first
  record), every other PART/END holds only EOS;
* the container: the input's container writes what goes in front of the output
  (`Container.output`): a libvirt header (same XML, cookie and padding, `data_len`
  unchanged, the format field set to `sparse` or `raw`; the mapped-ram offsets are
  absolute in the output file, so they include it), or nothing: a compressed input and
  a qcow2 internal snapshot become a standalone migration file.

The output is written to a temporary file in the output's folder and renamed
over OUT once complete (`outfile.AtomicFile`: only a regular file is ever
created or replaced, never through a symlink); the input is opened read-only.
Memory stays bounded: pages are copied from the input file by the shared engine
(`copier.PageCopier`: pread / copy_file_range, preallocated runs) to their place
in the output in runs of at most 1 MiB; only per-page numpy columns are held.
The mapped-ram placement of every block is `formats.mapped_ram.place_ramblock`,
the rule the size audit uses too. A mapped-ram input's bitmaps are read with the
layout its capture found (`Capture.bitmap_trust`).
"""

from __future__ import annotations

import json
import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xxhash

from ..errors import (
    InconsistentError,
    MigError,
    UnsupportedError,
    UsageError,
)
from ..formats import configuration as C
from ..formats import mapped_ram as M
from ..formats import ram as R
from ..formats import stream as S
from ..formats.common import CountedString
from ..outfile import AtomicFile, check_output_file
from .capture import Capture, open_capture
from .choices import TARGETS
from .containers.base import ContainerBrief, OutputPrefix
from .copier import RUN_BYTES, PageCopier, pwrite_all
from .pagemap import PAGE_DATA, PAGE_NEVER_SENT, PAGE_ZERO
from .report import NOTE_BITMAP_UNTRUSTED, SEVERITY_WARNING, Note, note
from .size import mapped_ram_bounds
from .stream import RamBlock, Section

Progress = Callable[[int, int], None]

MAPPED_RAM = "mapped-ram"

#: Sequential output is buffered up to this many bytes.
BUFFER_BYTES = 4 << 20

_U64 = struct.Struct(">Q")
_ZERO_RECORD = np.dtype([("word", ">u8"), ("fill", "u1")])  # ZERO|CONTINUE, fill byte 0


# ---------------------------------------------------------------------------------
# report


@dataclass
class FileSizes:
    apparent: int
    allocated: int


@dataclass
class BlockConversion:
    name: str
    used_length: int
    pages: int
    data_pages: int
    zero_pages: int
    never_sent_pages: int
    input_sends: int  # page records (legacy) or set bits (mapped-ram) in the input
    bitmap_offset: int | None = None  # mapped-ram output only
    pages_offset: int | None = None
    bitmap_layout: str | None = None  # mapped-ram input: the layout its bitmap was read with
    bitmap_verdict: str | None = None  # mapped-ram input: mapped_ram.VERDICT_*
    bitmap_untrusted: str | None = None


@dataclass
class VerifyResult:
    ok: bool
    blocks: int
    pages: int
    data_pages: int
    sections: int  # non-RAM records compared byte for byte
    problems: list[Note] = field(default_factory=list)  # code convert-verify, where: block


@dataclass
class ConvertReport:
    path: str  # the input
    output: str
    from_format: str
    to_format: str
    input_container: ContainerBrief
    output_container: ContainerBrief
    machine_type: str | None
    page_size: int
    capabilities_in: list[str]
    capabilities_out: list[str]
    input_size: FileSizes
    output_size: FileSizes
    stream_offset_out: int
    ram_total: int
    data_bytes: int  # page bytes written
    mapped_ram_bound: int  # apparent size a mapped-ram file of this state takes
    mapped_ram_allocated_bound: int | None  # the same with only data pages allocated
    mapped_ram_bound_source: str
    blocks: list[BlockConversion]
    sections_copied: int
    ram_sections: int
    notices: list[Note]
    seconds: float
    vmdescription_configuration_updated: bool = False
    vmdescription_growth: int = 0  # bytes the updated JSON adds (not in the bound)
    verify: VerifyResult | None = None


# ---------------------------------------------------------------------------------
# output plumbing


class _Output:
    """Positioned, buffered writes into the temporary output file."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.start = 0  # file offset of buf[0]
        self.buf = bytearray()

    @property
    def pos(self) -> int:
        return self.start + len(self.buf)

    def write(self, data: Any) -> None:
        self.buf += memoryview(data)
        if len(self.buf) >= BUFFER_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            pwrite_all(self.fd, self.buf, self.start)
            self.start += len(self.buf)
            self.buf = bytearray()

    def seek(self, pos: int) -> None:
        self.flush()
        self.start = pos


# ---------------------------------------------------------------------------------
# pieces built with the grammars


def configuration_bytes(buf: Any, cap: Capture, caps: list[str]) -> bytes:
    """The input's configuration record with its capabilities list set to `caps`
    (other subsections copied, QEMU's subsection order kept)."""
    cfg = cap.walk.configuration
    assert cfg is not None
    subs = cfg.subsections
    head_end = subs[0][2] if subs else cfg.end
    out = bytearray(buf[cfg.offset : head_end])
    raw: dict[str, bytes] = {}
    versions: dict[str, int] = {}
    for k, (name, version, off) in enumerate(subs):
        nxt = subs[k + 1][2] if k + 1 < len(subs) else cfg.end
        raw[name] = bytes(buf[off:nxt])
        versions[name] = version
    for name in (C.SUBSECTION_TARGET_PAGE_BITS, C.SUBSECTION_CAPABILITIES, C.SUBSECTION_UUID):
        if name == C.SUBSECTION_CAPABILITIES:
            if caps:
                out += C.subsection_capabilities.build(dict(
                    marker=S.QEMU_VM_SUBSECTION, name=name,
                    version_id=versions.get(name, 1), caps=caps))
        elif name in raw:
            out += raw[name]
    return bytes(out)


def output_capabilities(cap: Capture, to: str) -> list[str]:
    caps = [c for c in cap.walk.capabilities if c != MAPPED_RAM]
    if to == MAPPED_RAM:
        caps.append(MAPPED_RAM)
    order = {c: i for i, c in enumerate(C.VALIDATED_CAPABILITIES)}
    return sorted(caps, key=lambda c: order.get(c, len(order)))


def _capabilities_description(caps: list[str]) -> dict[str, Any]:
    """The vmdescription entry QEMU writes for a configuration/capabilities subsection
    (seen in QEMU 10 mapped-ram files; one capability, the only case we write)."""
    return {"vmsd_name": C.SUBSECTION_CAPABILITIES, "version": 1, "fields": [
        {"name": "caps_count", "type": "uint32", "size": 4},
        {"name": "capabilities", "type": "capability",
         "size": sum(1 + len(c.encode("latin-1")) for c in caps)}]}


def vmdescription_bytes(buf: Any, sec: Section, caps: list[str]) -> bytes | None:
    """The vmdescription record with its "configuration" object describing the new
    capabilities subsection, or None to copy the record unchanged (QEMU's loader skips
    the JSON; tools such as analyze-migration.py read the configuration through it).
    Rewritten only when the JSON re-serialises to exactly its original bytes."""
    if sec.payload_offset is None or sec.payload_end is None or len(caps) > 1:
        return None
    raw = bytes(buf[sec.payload_offset : sec.payload_end])
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("configuration"), dict) or \
            json.dumps(data).encode() != raw:
        return None
    cfg = data["configuration"]
    subs = [x for x in cfg.get("subsections", []) if not (
        isinstance(x, dict) and x.get("vmsd_name") == C.SUBSECTION_CAPABILITIES)]
    if caps:
        subs.insert(1 if subs and subs[0].get("vmsd_name") == C.SUBSECTION_TARGET_PAGE_BITS
                    else 0, _capabilities_description(caps))
    if subs:
        cfg["subsections"] = subs
    else:
        cfg.pop("subsections", None)
    js = json.dumps(data).encode()
    return bytes([S.QEMU_VM_VMDESCRIPTION]) + S.vmdescription.build(dict(length=len(js),
                                                                         json=js))


def _footer(sec: Section) -> bytes:
    if not sec.footer:
        return b""
    return S.section_footer.build(dict(section_id=sec.section_id))


def _eos() -> bytes:
    return _U64.pack(R.RAM_SAVE_FLAG_EOS)


def _entry_size(b: RamBlock, ignore_shared: bool) -> int:
    """An output list entry's bytes before its MappedRamHeader (no postcopy page sizes:
    those streams are refused)."""
    return M.ramblock_entry_size(len(b.name.encode("latin-1")), False, ignore_shared)


def libvirt_prefix(cap: Capture, to: str) -> OutputPrefix | None:
    """What goes in front of the output's QEMU stream so that it stays of the input's
    container kind (a libvirt image stays one: the container writes its header); None
    for a plain migration file (also the output of a disk image's snapshot)."""
    return cap.source.container.output(cap.source, to)


# ---------------------------------------------------------------------------------
# layout


def _check_convertible(cap: Capture, to: str) -> None:
    w = cap.walk
    if to not in TARGETS:
        raise UsageError(f"unknown target layout {to!r} (choose {', '.join(TARGETS)})",
                         code="usage")
    if w.error is not None:
        raise w.error
    if w.configuration is None:
        raise UnsupportedError(
            "the stream has no configuration record (machine type <= 2.3 or Xen), so the "
            "mapped-ram capability cannot be recorded", w.base + 8, "configuration",
            code="convert-unsupported")
    if not w.blocks:
        raise UnsupportedError("the stream has no ram section", w.base, "ram",
                               code="convert-unsupported")
    if to == MAPPED_RAM and w.ignore_shared:
        raise UnsupportedError(
            "x-ignore-shared streams: which RAMBlocks are shared is not recorded, and QEMU 10 "
            "refuses mapped-ram with shared blocks", w.configuration.offset, "configuration",
            code="convert-unsupported")
    for b in w.blocks:
        if b.host_page_size is not None:
            raise UnsupportedError("postcopy host page sizes in the RAMBlock list",
                                   b.entry_offset, b.name, code="convert-unsupported")
    secs = w.sections
    expect = w.configuration.end
    for s in secs:
        if s.offset != expect:
            raise InconsistentError(
                f"records are not contiguous: {s.kind} at 0x{s.offset:x}, previous record ends "
                f"at 0x{expect:x}", s.offset, "stream", code="convert-unsupported")
        expect = s.end


def _ram_ids(cap: Capture) -> set[int]:
    return {s.section_id for s in cap.walk.sections
            if s.kind == "START" and s.idstr == R.RAM_SECTION_IDSTR and s.instance_id == 0
            and s.section_id is not None}


def mapped_ram_bound(cap: Capture, prefix_len: int | None = None,
                     update_vmdesc: bool = False) -> int:
    """Size of a mapped-ram file holding this capture's state, per format-spec §4.3:
    the non-RAM records (the configuration with the capabilities subsection; with
    `update_vmdesc` the vmdescription as QEMU writes it with mapped-ram on, else
    unchanged), each RAMBlock's list entry + 28-byte header + bitmap rounded up to
    1 MiB, plus used_length, and an EOS (+ footer) in each ram section."""
    w = cap.walk
    if prefix_len is None:
        prefix = libvirt_prefix(cap, MAPPED_RAM)
        prefix_len = len(prefix) if prefix is not None else 0
    base = prefix_len
    pos = base + 8 + len(configuration_bytes(cap.source.buf, cap, output_capabilities(
        cap, MAPPED_RAM)))
    ram = _ram_ids(cap)
    for s in w.sections:
        if s.section_id in ram and s.kind in ("START", "PART", "END"):
            pos += s.payload_offset - s.offset
            if s.kind == "START":
                pos += 8
                for b in w.blocks:
                    pos = M.place_ramblock(pos, _entry_size(b, w.ignore_shared), b.used_length,
                                           w.page_size).end
            pos += 8 + (5 if s.footer else 0)
        elif s.kind == "VMDESCRIPTION" and update_vmdesc and (desc := vmdescription_bytes(
                cap.source.buf, s, output_capabilities(cap, MAPPED_RAM))) is not None:
            pos += len(desc)  # its "configuration" object describes the capabilities too
        else:
            pos += s.end - s.offset
    return pos


# ---------------------------------------------------------------------------------
# the converter


class _Converter:
    def __init__(self, cap: Capture, to: str, out: _Output, prefix: OutputPrefix | None,
                 progress: Progress | None, update_vmdesc: bool = False) -> None:
        self.cap = cap
        self.w = cap.walk
        self.to = to
        self.out = out
        self.prefix = prefix
        self.progress = progress
        self.ps = cap.page_size
        self.maps = cap.maps
        self.reader = cap.reader
        self.buf = cap.source.buf
        self.pages = PageCopier(cap)
        self.trust = cap.bitmap_trust
        self.ram = _ram_ids(cap)
        self.total_data = sum(m.count(PAGE_DATA) for m in self.maps.values()) * self.ps
        self.done = 0
        self.layout: dict[str, tuple[int, int]] = {}
        self.pages_written = False
        self.copied = 0
        self.ram_sections = 0
        self.update_vmdesc = update_vmdesc
        self.vmdesc_rewritten = False
        self.vmdesc_growth = 0

    def tick(self, n: int) -> None:
        self.done += n
        if self.progress:
            self.progress(self.done, self.total_data)

    def run(self) -> None:
        out, w = self.out, self.w
        if self.prefix is not None:
            self.prefix.write_to(out)
        out.write(bytes(self.buf[w.base : w.base + 8]))  # QEVM + version
        out.write(configuration_bytes(self.buf, self.cap, output_capabilities(self.cap, self.to)))
        for s in w.sections:
            if s.section_id in self.ram and s.kind in ("START", "PART", "END"):
                self.ram_sections += 1
                out.write(bytes(self.buf[s.offset : s.payload_offset]))
                if s.kind == "START":
                    self.ram_start(s)
                elif self.to == "legacy" and not self.pages_written:
                    self.legacy_records()
                    self.pages_written = True
                out.write(_eos())
                out.write(_footer(s))
            elif s.kind == "VMDESCRIPTION" and self.update_vmdesc and (
                    desc := vmdescription_bytes(self.buf, s, output_capabilities(
                        self.cap, self.to))) is not None:
                out.write(desc)
                self.vmdesc_growth = len(desc) - (s.end - s.offset)
                self.copied += 1
                self.vmdesc_rewritten = True
            else:
                self.copy(s.offset, s.end)
                self.copied += 1
        out.flush()

    def copy(self, start: int, end: int) -> None:
        mv = memoryview(self.buf) if not isinstance(self.buf, bytes) else self.buf
        for p in range(start, end, RUN_BYTES):
            self.out.write(mv[p : min(end, p + RUN_BYTES)])

    # -- START: MEM_SIZE list ----------------------------------------------------
    def ram_start(self, s: Section) -> None:
        w, out = self.w, self.out
        total = sum(b.used_length for b in w.blocks)
        out.write(_U64.pack(total | R.RAM_SAVE_FLAG_MEM_SIZE))
        params = dict(postcopy_page_size=False, ignore_shared=w.ignore_shared,
                      mapped_ram=self.to == MAPPED_RAM)
        for b in w.blocks:
            entry: dict[str, Any] = dict(idstr=b.name, used_length=b.used_length,
                                         page_size=None, mr_addr=b.mr_addr, mapped_ram=None)
            if self.to == MAPPED_RAM:
                at = M.place_ramblock(out.pos, _entry_size(b, w.ignore_shared), b.used_length,
                                      self.ps)
                entry["mapped_ram"] = dict(version=M.MAPPED_RAM_HDR_VERSION, page_size=self.ps,
                                           bitmap_offset=at.bitmap_offset,
                                           pages_offset=at.pages_offset)
                out.write(R.ramblock_entry.build(entry, **params))
                assert out.pos == at.bitmap_offset
                bm = self.maps[b.name]
                out.write(bitmap_bytes(bm.state == PAGE_DATA))
                out.flush()
                self.pages.copy_block(bm, out.fd, at.pages_offset, progress=self.tick)
                self.layout[b.name] = (at.bitmap_offset, at.pages_offset)
                out.seek(at.end)
            else:
                out.write(R.ramblock_entry.build(entry, **params))

    # -- legacy page records --------------------------------------------------------
    def legacy_records(self) -> None:
        """Every page once, block by block in page order: PAGE records built a run of
        consecutive data pages at a time, ZERO records a run of zero pages at a time;
        the first record of a block names it, the others carry CONTINUE."""
        out, ps = self.out, self.ps
        zero_word = np.uint64(R.RAM_SAVE_FLAG_ZERO | R.RAM_SAVE_FLAG_CONTINUE)
        page_word = np.uint64(R.RAM_SAVE_FLAG_PAGE | R.RAM_SAVE_FLAG_CONTINUE)
        page_rec = np.dtype([("word", ">u8"), ("data", "u1", (ps,))])
        for b in self.w.blocks:
            bm = self.maps[b.name]
            name = CountedString.build(b.name)
            zeros = np.flatnonzero(bm.state == PAGE_ZERO).astype(np.int64)
            first = True
            z = 0

            def zero_run(k: int, first: bool, z: int, zeros: np.ndarray = zeros,
                         name: bytes = name) -> None:
                idx = zeros[z:k]
                if first:
                    out.write(_U64.pack(int(idx[0]) * ps | R.RAM_SAVE_FLAG_ZERO) + name + b"\0")
                    idx = idx[1:]
                recs = np.zeros(len(idx), _ZERO_RECORD)
                recs["word"] = idx.astype(np.uint64) * np.uint64(ps) | zero_word
                out.write(recs.tobytes())

            for run in self.pages.runs(bm):
                start, n = run.first, run.n
                k = int(np.searchsorted(zeros, np.int64(start)))
                if k > z:
                    zero_run(k, first, z)
                    first, z = False, k
                pages = self.pages.read(run)
                if first:
                    out.write(_U64.pack(start * ps | R.RAM_SAVE_FLAG_PAGE) + name)
                    out.write(pages[0])
                    first = False
                    pages = pages[1:]
                    start += 1
                if len(pages):
                    recs = np.empty(len(pages), page_rec)
                    recs["word"] = (np.arange(start, start + len(pages), dtype=np.uint64)
                                    * np.uint64(ps)) | page_word
                    recs["data"] = pages
                    out.write(recs)
                self.tick(n * ps)
            if len(zeros) > z:
                zero_run(len(zeros), first, z)


def bitmap_bytes(bits: np.ndarray) -> bytes:
    """A mapped-ram bitmap as a 64-bit little-endian host writes it (page i = bit i%8 of
    byte i/8), padded to whole 8-byte words."""
    raw = np.packbits(bits.astype(bool), bitorder="little")
    out = np.zeros(M.bitmap_size(len(bits)), np.uint8)
    out[: len(raw)] = raw
    return out.tobytes()


def _sizes(path: str) -> FileSizes:
    st = os.stat(path)
    return FileSizes(st.st_size, getattr(st, "st_blocks", 0) * 512)


def _check_paths(in_path: str, out_path: str, force: bool) -> None:
    """Refuse an output that may not be written (before the input is read)."""
    check_output_file(out_path, force, protect=in_path)


def convert(
    in_path: str,
    out_path: str,
    to: str,
    force: bool = False,
    verify: bool = False,
    progress: Progress | None = None,
    read_progress: Progress | None = None,
    sync: bool = False,
    update_vmdesc: bool = False,
    snapshot: str | None = None,
) -> ConvertReport:
    """Convert `in_path` into `out_path` with the `to` layout ("mapped-ram" or "legacy").

    The vmdescription is copied byte for byte (QEMU's loader only skips it); with
    `update_vmdesc` its "configuration" object is made to describe the new capabilities
    subsection as QEMU itself writes it (what analyze-migration.py reads). With `sync`
    the output is fsync'ed before the rename (like cp, off by default: it costs the
    time the disk needs to take the whole file). `snapshot`: which internal snapshot of a
    disk image IN is (its output is a standalone migration file)."""
    t0 = time.monotonic()
    if to not in TARGETS:
        raise UsageError(f"unknown target layout {to!r} (choose {', '.join(TARGETS)})",
                         code="usage")
    _check_paths(in_path, out_path, force)
    with open_capture(in_path, progress=read_progress, strict=True, snapshot=snapshot) as cap:
        _check_convertible(cap, to)
        prefix = libvirt_prefix(cap, to)
        with AtomicFile(out_path, force, protect=in_path) as out:
            conv = _Converter(cap, to, _Output(out.fd), prefix, progress, update_vmdesc)
            conv.run()
            out.commit(sync)
        report = _report(cap, conv, in_path, out_path, to, prefix, t0)
    if verify:
        report.verify = verify_conversion(in_path, out_path, to, snapshot)
    report.seconds = round(time.monotonic() - t0, 3)
    return report


def _report(cap: Capture, conv: _Converter, in_path: str, out_path: str, to: str,
            prefix: OutputPrefix | None, t0: float) -> ConvertReport:
    w = cap.walk
    blocks = []
    notices = list(w.notices)
    for b in w.blocks:
        bm = conv.maps[b.name]
        bmo, pgo = conv.layout.get(b.name, (None, None))
        chk = cap.bitmap_trust.check(b.name)
        blocks.append(BlockConversion(
            b.name, b.used_length, bm.pages, bm.count(PAGE_DATA), bm.count(PAGE_ZERO),
            bm.count(PAGE_NEVER_SENT), int(bm.sends.sum()), bmo, pgo,
            chk.layout if chk else None, chk.verdict if chk else None,
            chk.untrusted if chk else None))
        if chk is not None and chk.untrusted:
            notices.append(note(NOTE_BITMAP_UNTRUSTED, chk.untrusted, b.name,
                                severity=SEVERITY_WARNING))
    plen = len(prefix) if prefix is not None else 0
    bound, alloc, source = _bound(cap, plen)
    return ConvertReport(
        path=in_path, output=out_path, from_format=cap.format, to_format=to,
        input_container=cap.source.container.brief(),
        output_container=cap.source.container.output_brief(to),
        machine_type=w.machine_type, page_size=cap.page_size,
        capabilities_in=list(w.capabilities), capabilities_out=output_capabilities(cap, to),
        input_size=FileSizes(cap.source.file_size, cap.source.allocated_size),
        output_size=_sizes(out_path), stream_offset_out=plen,
        ram_total=sum(b.used_length for b in w.blocks), data_bytes=conv.done,
        mapped_ram_bound=bound, mapped_ram_allocated_bound=alloc,
        mapped_ram_bound_source=source, blocks=blocks,
        sections_copied=conv.copied, ram_sections=conv.ram_sections, notices=notices,
        seconds=round(time.monotonic() - t0, 3),
        vmdescription_configuration_updated=conv.vmdesc_rewritten,
        vmdescription_growth=conv.vmdesc_growth)


def _bound(cap: Capture, prefix_len: int) -> tuple[int, int | None, str]:
    """The size audit's mapped-ram bounds (apparent and allocated), else the converter's
    own apparent bound (a stream the audit cannot lay out)."""
    b = mapped_ram_bounds(cap)
    if b.bound:
        # the audit measures the input's buffer: when the container's header is not in
        # it (an inflated libvirt image), the output's prefix comes on top
        extra = prefix_len if cap.source.base == 0 else 0
        return b.bound + extra, b.allocated + extra, "size audit (inspector.size)"
    return mapped_ram_bound(cap, prefix_len), None, "format-spec §4.3 layout (inspector.convert)"


# ---------------------------------------------------------------------------------
# verification


def _expected_state(state: np.ndarray, to: str) -> np.ndarray:
    if to == MAPPED_RAM:  # a mapped-ram file cannot tell never-sent from zero
        return np.where(state == PAGE_NEVER_SENT, PAGE_ZERO, state).astype(np.uint8)
    return state


def _device_digests(cap: Capture) -> list[tuple[str, int]]:
    ram = _ram_ids(cap)
    buf = cap.source.buf
    out = []
    for s in cap.walk.sections:
        if s.section_id in ram and s.kind in ("START", "PART", "END"):
            continue
        h = xxhash.xxh3_64()
        if s.kind == "VMDESCRIPTION" and cap.walk.trailer is not None and \
                isinstance(cap.walk.trailer.data, dict):  # all but the "configuration" object
            data = {k: v for k, v in cap.walk.trailer.data.items() if k != "configuration"}
            h.update(json.dumps(data).encode())
        else:
            for p in range(s.offset, s.end, RUN_BYTES):
                h.update(buf[p : min(s.end, p + RUN_BYTES)])
        out.append((f"{s.kind} {s.idstr or s.cmd or ''}", h.intdigest()))
    return out


def verify_conversion(in_path: str, out_path: str, to: str,
                      snapshot: str | None = None) -> VerifyResult:
    """Read OUT back with our own readers and compare it with IN (`snapshot`: IN's internal
    snapshot): same RAMBlocks, same page states (never-sent counts as zero in mapped-ram),
    same final page contents (xxh3-64 of every page), same non-RAM records byte for byte,
    right layout and container."""
    problems: list[Note] = []

    def fail(message: str, where: str = "") -> None:
        problems.append(note("convert-verify", message, where, severity="error"))

    with open_capture(in_path, snapshot=snapshot) as a, open_capture(out_path) as b:
        if b.format != to:
            fail(f"output reads as {b.format}, expected {to}")
        names_a = [(x.name, x.used_length) for x in a.blocks]
        names_b = [(x.name, x.used_length) for x in b.blocks]
        if names_a != names_b:
            fail(f"RAMBlock lists differ: {names_a} vs {names_b}")
        pages = data = 0
        for blk in a.blocks if names_a == names_b else []:
            ma, mb = a.maps[blk.name], b.maps[blk.name]
            exp = _expected_state(ma.state, to)
            bad = np.flatnonzero(exp != mb.state)
            if len(bad):
                fail(f"{len(bad)} page states differ (first page {int(bad[0])})", blk.name)
            ha, hb = a.hashes(blk.name), b.hashes(blk.name)
            bad = np.flatnonzero(ha != hb)
            if len(bad):
                fail(f"{len(bad)} page contents differ (first page {int(bad[0])})", blk.name)
            if b.bitmap_trust.untrusted(blk.name):
                fail(str(b.bitmap_trust.untrusted(blk.name)), blk.name)
            pages += ma.pages
            data += mb.count(PAGE_DATA)
        da, db = _device_digests(a), _device_digests(b)
        if da != db:
            fail(f"non-RAM records differ ({len(da)} in the input, {len(db)} in the output)")
        known = {n.message for n in a.walk.notices}  # the input's own oddities carry over
        for n in b.walk.notices:
            if n.severity == "warning" and n.message not in known:
                fail(f"output: {n.message}", n.where)
        for m in a.source.container.verify_output(b.source.container, to):
            fail(m, "container")
        return VerifyResult(not problems, len(a.blocks), pages, data, len(da), problems)


__all__ = ["convert", "verify_conversion", "mapped_ram_bound", "ConvertReport", "VerifyResult",
           "TARGETS", "MigError"]
