"""`size`: where a migration file's bytes go, redirty amplification and size bounds.

Accounting (every byte of the QEMU stream lands in exactly one bucket):

* ``ram_bytes_written``: legacy: every page record, i.e. its be64 header word, the
  RAMBlock idstr when CONTINUE is clear, and its payload (PAGE: a page, ZERO: the
  fill byte, XBZRLE: 3-byte header + delta, COMPRESS_PAGE: be32 length + data).
  mapped-ram: the page bytes behind set bitmap bits (the region bytes that count).
* ``device_state_bytes``: START/PART/END/FULL sections of everything but ``ram``,
  with their section headers and footers.
* ``vmdescription_bytes``: the QEMU_VM_VMDESCRIPTION record (type byte, be32, JSON).
* ``other_overhead``: the rest (file header and configuration, *ram section framing*:
  the ram sections' headers, footers, EOS records and the MEM_SIZE list, commands, EOF;
  for mapped-ram also the per-block bitmaps, 1 MiB alignment padding and the region bytes
  of zero pages), broken down in ``overhead``.

The page records split two ways (legacy):

* ``resent_bytes``: every record of a page after its first one: the cost of the
  guest re-dirtying pages while it ran (redirty amplification);
* ``record_framing_bytes``: the bytes of the records that are not page content: be64
  words, idstrs, ZERO fill bytes, XBZRLE and COMPRESS_PAGE length headers. A
  paused VM's stream has framing but no re-sends.

``amplification`` = ram_bytes_written / data_bytes (both of the above in it);
``resend_amplification`` = ram_bytes_written / (ram_bytes_written - resent_bytes),
exactly 1 when no page was sent twice.

Bounds, from QEMU's layout rules (format-spec §3, §4.3; the placement of a block is
`formats.mapped_ram.place_ramblock`, the converter's rule too):

* ``mapped_ram_bound``: the apparent size this VM state takes as a mapped-ram file:
  the same stream around the RAM (header, configuration plus the capabilities
  subsection naming ``mapped-ram``, device sections, commands, EOF, vmdescription),
  and per RAMBlock its MEM_SIZE entry, the 28-byte MappedRamHeader, the bitmap, padding
  up to the next 1 MiB file offset and ``used_length`` bytes of pages; ram PART/END
  sections carry only EOS. For a mapped-ram file the layout is recomputed from the
  rules and checked against its headers; the bound then equals the file size.
* ``mapped_ram_allocated_bound``: the same file with only data pages allocated (4 KiB
  filesystem blocks; zero pages are holes).
* ``legacy_minimum``: this stream with every page sent once (data pages as PAGE, zero
  pages as ZERO, one idstr per block), the rest of the stream unchanged.

The verdict (`SizeVerdict`) compares like with like: apparent sizes with apparent
sizes, allocated with allocated (for a compressed file: its size on disk with what
the mapped-ram file would take on disk), and names re-sends, never framing, as
amplification. The renderer words it from those numbers only (render/size.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from ..formats import mapped_ram as M
from ..formats import ram as R
from .capture import Capture
from .pagemap import PAGE_DATA, PAGE_NEVER_SENT, PAGE_ZERO, BlockMap
from .ramscan import RecordTable
from .recindex import RecordIndex
from .report import (
    NOTE_INFLATED_HOLES,
    NOTE_MAPPED_RAM_REWRITES,
    NOTE_NO_BOUND,
    NOTE_ROUND_WRAPS,
    Note,
    SendHistogram,
    Stop,
    note,
    stop_of,
)
from .rounds import find_rounds
from .stream import RamBlock, Section, StreamWalk

FS_BLOCK = 4096
HEAT_CELLS = 64
#: `05 1a "configuration/capabilities" be32 1 be32 1 0a "mapped-ram"`
CAPS_SUBSECTION_MAPPED_RAM = 1 + 1 + len("configuration/capabilities") + 4 + 4 + 1 + 10
#: one more capability name in an existing capabilities subsection
CAPS_NAME_MAPPED_RAM = 1 + len("mapped-ram")
#: a ram PART/END section holding only EOS: type, be32 id, be64 EOS (+ 5-byte footer)
EOS_ONLY_SECTION = 1 + 4 + 8
FOOTER = 5
#: bytes of each record kind's payload that are not page content (fill byte, length headers)
_PAYLOAD_FRAMING = {R.RAM_SAVE_FLAG_PAGE: 0, R.RAM_SAVE_FLAG_ZERO: 1,
                    R.RAM_SAVE_FLAG_XBZRLE: 3, R.RAM_SAVE_FLAG_COMPRESS_PAGE: 4}
#: advise another layout only when it saves at least this share of the disk space
_WORTH_SAVING = 0.05

# verdict kinds (SizeVerdict.kind)
V_INCOMPLETE = "incomplete"  # nothing of the RAM was read
V_MAPPED_LAYOUT_MISMATCH = "mapped-ram-layout-mismatch"  # headers break QEMU's rules
V_MAPPED_OFF_BOUND = "mapped-ram-off-bound"  # file size != layout bound
V_MAPPED_AT_BOUND = "mapped-ram-at-bound"
V_AMPLIFIED = "redirty-amplified"  # legacy with re-sent pages
V_SENT_ONCE = "sent-once"  # legacy, every page sent once
V_NO_BOUND = "no-bound"  # legacy without a ram START section: nothing to compare with
# advice (SizeVerdict.advice)
A_PAUSE = "pause-before-saving"  # re-sends cost bytes: stop the VM first
A_SAVE_MAPPED_RAM = "save-as-mapped-ram"  # it takes less disk (allocated vs allocated)
A_COPY_SPARSE = "copy-sparse-aware"  # holes are zero pages: keep them holes when copying


@dataclass
class BlockSize:
    name: str
    used_length: int
    pages: int
    data_pages: int
    zero_pages: int
    never_sent_pages: int
    data_bytes: int
    records: int
    page_records: int
    zero_records: int
    xbzrle_records: int
    compress_records: int
    ram_bytes_written: int
    record_header_bytes: int  # be64 words + idstrs
    page_payload_bytes: int  # PAGE payloads only (QEMU's normal-bytes)
    amplification: float | None
    resent_pages: int
    max_sends: int
    send_histogram: SendHistogram
    mapped_ram_bytes: int  # this block's share of the mapped-ram bound
    xbzrle_saved_bytes: int = 0
    #: extra sends (beyond the first) per 1/HEAT_CELLS of the block: where the hot pages are
    resend_heat: list[int] = field(default_factory=list)
    resent_bytes: int = 0  # records after a page's first one
    record_framing_bytes: int = 0  # record bytes that are not page content
    resend_amplification: float | None = None  # written / written without re-sends
    bitmap_layout: str | None = None  # mapped-ram: the layout the bitmap was read with
    bitmap_verdict: str | None = None  # mapped-ram: mapped_ram.VERDICT_*
    bitmap_untrusted: str | None = None


@dataclass
class RoundInfo:
    index: int
    kind: str  # bulk, iteration, stop-and-copy
    pages: int  # page records in the round
    bytes: int  # bytes of those records
    data_records: int
    zero_records: int
    xbzrle_records: int
    start_offset: int | None
    end_offset: int | None


@dataclass
class HotRange:
    block: str
    start: int  # byte offset in the block
    end: int  # exclusive
    pages: int  # pages sent more than once in the range
    sends: int  # records for those pages
    extra_sends: int  # sends beyond the first
    extra_bytes: int  # bytes of those extra records


@dataclass
class MappedRamLayout:
    """One block as QEMU would lay it out in a mapped-ram file."""

    name: str
    entry_offset: int
    header_offset: int
    bitmap_offset: int
    bitmap_bytes: int
    pages_offset: int
    end: int  # pages_offset + used_length
    actual_bitmap_offset: int | None = None  # from the file's header, for mapped-ram files
    actual_pages_offset: int | None = None


@dataclass
class HotSummary:
    """Where the re-sent pages of the block with most of them are."""

    block: str
    pages: int  # re-sent pages of that block
    min_sends: int
    max_sends: int
    spans: list[list[int]]  # [start, end) block offsets of the ranges holding most of them
    share: float  # of the block's re-sent pages inside `spans`
    more_ranges: int  # further ranges not in `spans`
    other_blocks_pages: int  # re-sent pages in other blocks


@dataclass
class SizeVerdict:
    """What the verdict says and every number it rests on; each comparison is like with
    like (the ratios are the ones the bounds table shows)."""

    kind: str  # V_*
    advice: list[str]  # A_*
    stopped: bool  # figures cover what was read of a cut or damaged file
    compressed: bool  # the file is compressed: its on-disk size is the compressed size
    apparent_size: int  # this file's QEMU stream with its container (inflated if compressed)
    allocated_size: int  # this file on disk
    mapped_ram_bound: int  # apparent
    mapped_ram_allocated_bound: int  # on disk
    apparent_ratio: float | None  # apparent_size / mapped_ram_bound
    allocated_ratio: float | None  # allocated_size / mapped_ram_allocated_bound
    legacy_minimum: int | None  # apparent, every page sent once
    above_legacy_minimum: int | None  # apparent_size - legacy_minimum
    resent_pages: int
    resent_bytes: int
    record_framing_bytes: int
    ram_bytes_written: int
    resend_amplification: float | None
    zero_share: float | None  # of the RAM regions that are zero pages (mapped-ram)
    mismatched_blocks: list[str] = field(default_factory=list)
    bound_difference: int = 0  # mapped-ram: file size - bound
    hot: HotSummary | None = None


@dataclass
class Overhead:
    """The stream bytes that are neither RAM page records, device state nor the
    vmdescription (`other_overhead`), by kind; the mapped-ram parts are None for legacy."""

    container: int  # before the QEMU stream (a libvirt header)
    header_and_configuration: int
    commands: int
    eof: int
    #: ram section framing: the ram sections' headers, footers, EOS records and the MEM_SIZE
    #: RAMBlock list (mapped-ram: with the block headers); not the page records' own framing
    ram_section_framing: int = 0
    mapped_ram_bitmaps: int | None = None
    mapped_ram_alignment_padding: int | None = None
    mapped_ram_zero_page_bytes: int | None = None
    unwalked_or_trailing: int = 0  # after where the walk stopped, or after the trailer

    def parts(self) -> list[tuple[str, int]]:
        """(field name, bytes) of every part that applies, in field order."""
        return [(f.name, v) for f in fields(self) if (v := getattr(self, f.name)) is not None]

    @property
    def total(self) -> int:
        return sum(v for _, v in self.parts())


@dataclass
class RamSections:
    """How many ram sections of each type the stream has (each ends with an EOS record)."""

    start: int
    part: int
    end: int


@dataclass
class MappedRamCheck:
    """A mapped-ram file against the layout QEMU's rules give its blocks."""

    layout_matches_headers: bool
    mismatched_blocks: list[str]  # blocks whose header offsets break the rules
    bound: int
    stream_end: int
    difference: int  # stream end - bound
    allocated_size: int
    allocated_bound: int


@dataclass
class XbzrleSize:
    """XBZRLE delta records: their bytes and what they saved."""

    records: int
    encoded_bytes: int  # 3-byte headers + deltas
    cache_bytes: int  # query-migrate's xbzrle-cache.bytes
    record_bytes: int  # whole records (be64 words and idstrs too)
    saved_bytes: int  # against sending those pages as PAGE records
    final_pages: int  # pages whose last record is a delta


@dataclass
class SizeReport:
    path: str
    format: str
    file_size: int
    allocated_size: int
    stream_offset: int
    stream_bytes: int  # QEMU stream bytes (decompressed when the input is compressed)
    compression: str | None
    page_size: int
    ram_total: int
    pages: int
    data_pages: int
    zero_pages: int
    never_sent_pages: int
    data_bytes: int
    ram_bytes_written: int
    page_records: int
    zero_records: int
    xbzrle_records: int
    compress_records: int
    page_payload_bytes: int
    record_header_bytes: int
    device_state_bytes: int
    vmdescription_bytes: int
    other_overhead: int
    overhead: Overhead
    ram_sections: RamSections
    amplification: float | None
    send_histogram: SendHistogram
    resent_pages: int
    rounds: list[RoundInfo]
    hot_ranges: list[HotRange]
    mapped_ram_bound: int
    mapped_ram_allocated_bound: int
    legacy_minimum: int | None
    mapped_ram_layout: list[MappedRamLayout]
    mapped_ram_check: MappedRamCheck | None
    xbzrle: XbzrleSize | None
    blocks: list[BlockSize]
    notices: list[Note] = field(default_factory=list)
    stopped: Stop | None = None
    resent_bytes: int = 0
    record_framing_bytes: int = 0
    resend_amplification: float | None = None
    verdict_basis: SizeVerdict | None = None


# ----------------------------------------------------------------------------------------
# record sizes


@dataclass
class RecordSizes:
    """Per record (numpy, one row per RecordTable row): header and payload bytes."""

    header: np.ndarray  # int64: be64 word + idstr
    payload: np.ndarray  # int64
    xbzrle_len: np.ndarray  # int64: L of XBZRLE records, 0 elsewhere

    @property
    def total(self) -> np.ndarray:
        return self.header + self.payload


def record_sizes(buf: Any, rt: RecordTable, page_size: int) -> RecordSizes:
    """Bytes of every page record, from the RecordTable columns and the length fields."""
    n = len(rt)
    header = (rt.data_off - rt.rec_off).astype(np.int64)
    payload = np.zeros(n, np.int64)
    xlen = np.zeros(n, np.int64)
    kind = rt.kind
    payload[kind == R.RAM_SAVE_FLAG_PAGE] = page_size
    payload[kind == R.RAM_SAVE_FLAG_ZERO] = 1
    u8 = None
    x = np.flatnonzero(kind == R.RAM_SAVE_FLAG_XBZRLE)
    if len(x):
        u8 = np.frombuffer(buf, np.uint8)
        d = rt.data_off[x]
        ln = (u8[d + 1].astype(np.int64) << 8) | u8[d + 2]
        xlen[x] = ln
        payload[x] = 3 + ln
    c = np.flatnonzero(kind == R.RAM_SAVE_FLAG_COMPRESS_PAGE)
    if len(c):
        if u8 is None:
            u8 = np.frombuffer(buf, np.uint8)
        d = rt.data_off[c]
        ln = np.zeros(len(c), np.int64)
        for k in range(4):
            ln = (ln << 8) | u8[d + k]
        payload[c] = 4 + ln
    return RecordSizes(header, payload, xlen)


# ----------------------------------------------------------------------------------------
# mapped-ram layout


def _round_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def mapped_ram_layout(blocks: list[RamBlock], start: int, ignore_shared: bool = False,
                      host_long_bytes: int = 8) -> list[MappedRamLayout]:
    """Lay the blocks out as QEMU's mapped-ram writer does (`M.layout_ramblocks`), from
    `start`, the absolute file offset of the first MEM_SIZE list entry (right after the
    be64 MEM_SIZE word)."""
    spec = [(M.ramblock_entry_size(len(b.name.encode("latin-1")), b.host_page_size is not None,
                                   ignore_shared),
             b.used_length, b.page_size, b.mapped_ram is not None and b.mapped_ram.skipped)
            for b in blocks]
    return [MappedRamLayout(b.name, *p) for b, p in
            zip(blocks, M.layout_ramblocks(start, spec, host_long_bytes), strict=True)]


def _allocated(layout: list[MappedRamLayout], prefix_start: int, tail: int,
               data_pages_per_block: list[int], page_size: int) -> int:
    """Filesystem blocks a mapped-ram file needs when only data pages are written: the
    metadata written before each region (entry, header, bitmap), the data pages, the
    tail; 4 KiB blocks."""
    total = 0
    prev_end = prefix_start
    for lay, dp in zip(layout, data_pages_per_block, strict=True):
        if not lay.pages_offset:  # skipped block: its header sits in the metadata run
            continue
        meta_lo = prev_end // FS_BLOCK * FS_BLOCK
        meta_hi = _round_up(lay.bitmap_offset + lay.bitmap_bytes, FS_BLOCK)
        total += meta_hi - meta_lo
        total += _round_up(dp * page_size, FS_BLOCK)
        prev_end = lay.end
    if tail:
        lo = prev_end // FS_BLOCK * FS_BLOCK
        total += _round_up(prev_end + tail, FS_BLOCK) - lo
    return total


# ----------------------------------------------------------------------------------------
# histogram, hot ranges


def resend_heat(sends: np.ndarray, cells: int = HEAT_CELLS) -> list[int]:
    """Extra sends (beyond the first) summed over `cells` equal slices of the block."""
    n = len(sends)
    if not n:
        return []
    cells = min(cells, n)
    extra = np.maximum(sends.astype(np.int64) - 1, 0)
    edges = (np.arange(cells + 1, dtype=np.int64) * n) // cells
    return np.add.reduceat(extra, edges[:-1]).tolist()


def send_histogram(sends: np.ndarray) -> SendHistogram:
    """Pages by times sent (0: never sent)."""
    if not len(sends):
        return SendHistogram()
    return SendHistogram.of(enumerate(np.bincount(sends.astype(np.int64)).tolist()))


def hot_ranges(maps: dict[str, BlockMap], per_page_bytes: dict[str, np.ndarray],
               page_size: int, top: int = 10, gap_pages: int | None = None) -> list[HotRange]:
    """Runs of pages sent more than once, merged across gaps of up to `gap_pages`
    (default: 1/256 of the block, at least 16 pages), ranked by extra bytes."""
    out: list[HotRange] = []
    for name, bm in maps.items():
        hot = np.flatnonzero(bm.sends > 1)
        if not len(hot):
            continue
        gap = gap_pages if gap_pages is not None else max(16, bm.pages // 256)
        cuts = np.flatnonzero(np.diff(hot) > gap) + 1
        groups = np.split(hot, cuts)
        pb = per_page_bytes.get(name)
        for g in groups:
            s = bm.sends[g].astype(np.int64)
            extra = s - 1
            eb = int(pb[g].sum()) if pb is not None else int(extra.sum()) * page_size
            out.append(HotRange(name, int(g[0]) * page_size, (int(g[-1]) + 1) * page_size,
                                len(g), int(s.sum()), int(extra.sum()), eb))
    out.sort(key=lambda r: (-r.extra_bytes, r.block, r.start))
    return out[:top] if top else out


# ----------------------------------------------------------------------------------------
# phase: sections


@dataclass
class _Sections:
    """The walk's top-level records by bucket."""

    read: list[Section]  # the walk's sections, a damaged one cut at the damage
    ram: list[Section]  # ram START/PART/END
    ram_bytes: int
    device: int
    vmdesc: int
    commands: int
    eof: int
    header_cfg: int  # file header and configuration record
    walked_end: int  # where the walk's knowledge of the stream ends
    unwalked: int  # bytes after that

    def counts(self) -> RamSections:
        return RamSections(*(sum(1 for s in self.ram if s.kind == k)
                             for k in ("START", "PART", "END")))

    @property
    def start(self) -> Section | None:
        return next((s for s in self.ram if s.kind == "START"), None)


def _read_sections(w: StreamWalk) -> list[Section]:
    """The walk's sections; a section cut short by damage (the walk stopped inside it)
    is counted up to the damage."""
    out = []
    for s in w.sections:
        if s.end > s.offset:
            out.append(s)
        elif w.error is not None and w.error.offset is not None and w.error.offset > s.offset:
            out.append(replace(s, end=w.error.offset))
    return out


def _sections(cap: Capture) -> _Sections:
    w, src = cap.walk, cap.source
    secs = _read_sections(w)
    ram = [s for s in secs if s.idstr == R.RAM_SECTION_IDSTR and s.kind in ("START", "PART",
                                                                             "END")]
    first = secs[0].offset if secs else w.walked_to
    walked_end = max([s.end for s in secs] + [w.walked_to])
    return _Sections(
        read=secs, ram=ram, ram_bytes=sum(s.length for s in ram),
        device=sum(s.length for s in secs if s.kind in ("START", "PART", "END", "FULL")
                   and s.idstr != R.RAM_SECTION_IDSTR),
        vmdesc=sum(s.length for s in secs if s.kind == "VMDESCRIPTION"),
        commands=sum(s.length for s in secs if s.kind == "COMMAND"),
        eof=sum(s.length for s in secs if s.kind == "EOF"),
        header_cfg=first - src.base, walked_end=walked_end, unwalked=len(src.buf) - walked_end)


# ----------------------------------------------------------------------------------------
# phase: blocks


def _legacy_block(b: RamBlock, bm: BlockMap, cap: Capture, rs: RecordSizes,
                  out: BlockSize) -> np.ndarray:
    """Fill `out` from the block's page records; returns the bytes of every re-send per
    page (every record of a page after its first)."""
    rt, ps = cap.records, cap.page_size
    rows = cap.record_index.rows(b.index)  # the block's records by page, stream order kept
    counts = rt.kind_counts(rows)
    tot = rs.total[rows]
    out.records = len(rows)
    out.page_records = counts[R.RAM_SAVE_FLAG_PAGE]
    out.zero_records = counts[R.RAM_SAVE_FLAG_ZERO]
    out.xbzrle_records = counts[R.RAM_SAVE_FLAG_XBZRLE]
    out.compress_records = counts[R.RAM_SAVE_FLAG_COMPRESS_PAGE]
    out.ram_bytes_written = int(tot.sum())
    out.record_header_bytes = int(rs.header[rows].sum())
    out.page_payload_bytes = out.page_records * ps
    out.record_framing_bytes = out.record_header_bytes + sum(
        counts[k] * v for k, v in _PAYLOAD_FRAMING.items())
    xs = rows[rt.kind[rows] == R.RAM_SAVE_FLAG_XBZRLE]
    out.xbzrle_saved_bytes = int((ps - 3 - rs.xbzrle_len[xs]).sum()) if len(xs) else 0
    pages = rt.page[rows]
    rep = ~RecordIndex.first_of_page(pages)
    extra = np.bincount(pages[rep], weights=tot[rep],
                        minlength=bm.pages)[:bm.pages].astype(np.int64)
    out.resent_bytes = int(tot[rep].sum())
    once = out.ram_bytes_written - out.resent_bytes
    out.resend_amplification = out.ram_bytes_written / once if once else None
    data_bytes = out.data_pages * ps
    out.amplification = out.ram_bytes_written / data_bytes if data_bytes else None
    return extra


def _blocks(cap: Capture, rs: RecordSizes | None) -> tuple[list[BlockSize],
                                                           dict[str, np.ndarray]]:
    """Per-block sizes, and per legacy block the bytes of re-sends per page."""
    ps, maps = cap.page_size, cap.maps
    blocks: list[BlockSize] = []
    extra: dict[str, np.ndarray] = {}
    for b in cap.blocks:
        bm = maps[b.name]
        data = bm.count(PAGE_DATA)
        chk = cap.bitmap_trust.check(b.name)
        bs = BlockSize(
            name=b.name, used_length=b.used_length, pages=bm.pages, data_pages=data,
            zero_pages=bm.count(PAGE_ZERO), never_sent_pages=bm.count(PAGE_NEVER_SENT),
            data_bytes=data * ps, records=0, page_records=0, zero_records=0,
            xbzrle_records=0, compress_records=0, ram_bytes_written=0, record_header_bytes=0,
            page_payload_bytes=0, amplification=None,
            resent_pages=int(np.count_nonzero(bm.sends > 1)),
            max_sends=int(bm.sends.max()) if bm.pages else 0,
            send_histogram=send_histogram(bm.sends), mapped_ram_bytes=0,
            resend_heat=resend_heat(bm.sends),
            bitmap_layout=chk.layout if chk else None, bitmap_verdict=chk.verdict if chk else None,
            bitmap_untrusted=chk.untrusted if chk else None)
        if rs is not None:
            extra[b.name] = _legacy_block(b, bm, cap, rs, bs)
        elif cap.walk.mapped_ram:
            bs.page_records = data
            bs.ram_bytes_written = data * ps
        blocks.append(bs)
    return blocks, extra


# ----------------------------------------------------------------------------------------
# phase: overhead


def _overhead(cap: Capture, secs: _Sections, ram_written: int) -> Overhead:
    w, src = cap.walk, cap.source
    out = Overhead(container=src.base, header_and_configuration=secs.header_cfg,
                   commands=secs.commands, eof=secs.eof, unwalked_or_trailing=secs.unwalked)
    if not w.mapped_ram:
        out.ram_section_framing = secs.ram_bytes - ram_written
        return out
    mr = [(b, b.mapped_ram) for b in w.blocks if b.mapped_ram and not b.mapped_ram.skipped]
    bitmaps = sum(m.bitmap_bytes for _, m in mr)
    regions = sum(b.used_length for b, _ in mr)
    padding = sum(m.pages_offset - (m.bitmap_offset + m.bitmap_bytes) for _, m in mr)
    out.mapped_ram_bitmaps = bitmaps
    out.mapped_ram_alignment_padding = padding
    out.mapped_ram_zero_page_bytes = regions - ram_written
    out.ram_section_framing = secs.ram_bytes - bitmaps - padding - regions
    return out


# ----------------------------------------------------------------------------------------
# phase: bounds


@dataclass
class MappedRamBounds:
    """This state laid out as a mapped-ram file (see the module docstring)."""

    bound: int = 0
    allocated: int = 0
    layout: list[MappedRamLayout] = field(default_factory=list)
    check: MappedRamCheck | None = None  # mapped-ram input: the layout against its headers
    notices: list[Note] = field(default_factory=list)


def _list_end(w: StreamWalk) -> int:
    """Offset right after the MEM_SIZE list (legacy) or the last block's region."""
    last = w.blocks[-1]
    m = last.mapped_ram
    if m is not None:
        if m.skipped:
            return m.header_offset + M.MAPPED_RAM_HEADER_SIZE
        return m.pages_offset + last.used_length
    n = M.ramblock_entry_size(len(last.name.encode("latin-1")),
                              last.host_page_size is not None, last.mr_addr is not None)
    return last.entry_offset + n


def _bound_layout(cap: Capture, secs: _Sections,
                  start_sec: Section) -> tuple[list[MappedRamLayout], int]:
    """The blocks' mapped-ram layout and the bytes of the stream after the last region."""
    w = cap.walk
    mem_size_word = start_sec.payload_offset + 8
    after_start = secs.walked_end - start_sec.end
    if w.mapped_ram:
        layout = mapped_ram_layout(w.blocks, mem_size_word, w.ignore_shared)
        for lay, b in zip(layout, w.blocks, strict=True):
            if b.mapped_ram is not None:
                lay.actual_bitmap_offset = b.mapped_ram.bitmap_offset
                lay.actual_pages_offset = b.mapped_ram.pages_offset
        return layout, (start_sec.end - _list_end(w)) + after_start
    extra_cfg = CAPS_NAME_MAPPED_RAM if w.capabilities else CAPS_SUBSECTION_MAPPED_RAM
    footer = FOOTER if w.footers else 0
    shrink = sum(s.length - (EOS_ONLY_SECTION + footer) for s in secs.ram if s.kind != "START")
    layout = mapped_ram_layout(w.blocks, mem_size_word + extra_cfg, w.ignore_shared)
    return layout, (8 + footer) + after_start - shrink


def _bounds(cap: Capture, secs: _Sections, data_pages: list[int]) -> MappedRamBounds:
    w, src = cap.walk, cap.source
    out = MappedRamBounds()
    start_sec = secs.start
    if start_sec is None or start_sec not in w.sections or start_sec.payload_offset is None \
            or not w.blocks:
        if w.blocks:
            out.notices.append(note(NOTE_NO_BOUND, "no ram START section: bounds not "
                                    "computed"))
        return out
    out.layout, tail = _bound_layout(cap, secs, start_sec)
    out.bound = out.layout[-1].end + tail
    out.allocated = _allocated(out.layout, 0, tail, data_pages, cap.page_size)
    if w.mapped_ram:
        mismatches = [lay.name for lay in out.layout
                      if (lay.actual_bitmap_offset, lay.actual_pages_offset)
                      != (lay.bitmap_offset, lay.pages_offset)]
        allocated = src.container.stored_size(src)[1]
        out.check = MappedRamCheck(not mismatches, mismatches, out.bound, len(src.buf),
                                   len(src.buf) - out.bound, allocated, out.allocated)
        out.notices.append(note(NOTE_MAPPED_RAM_REWRITES, "mapped-ram rewrites pages in place: "
                                "the file does not record how often a page was written "
                                "(QEMU's ram.normal counts every write)"))
        if src.decompressed:
            out.notices.append(note(NOTE_INFLATED_HOLES, "the input was decompressed: holes of "
                                    "the mapped-ram file were inflated to zeros, so its "
                                    "allocated size says nothing"))
    return out


def mapped_ram_bounds(cap: Capture) -> MappedRamBounds:
    """The mapped-ram bound of a capture alone (what `convert` reports)."""
    maps = cap.maps
    return _bounds(cap, _sections(cap), [maps[b.name].count(PAGE_DATA) for b in cap.blocks])


def _legacy_minimum(cap: Capture, blocks: list[BlockSize], ram_written: int) -> int | None:
    """This stream with every page sent once (legacy only)."""
    if cap.walk.mapped_ram or not blocks:
        return None
    ps = cap.page_size
    min_ram = 0
    for bs in blocks:
        sent = bs.data_pages + bs.zero_pages
        min_ram += sent * 8 + bs.data_pages * ps + bs.zero_pages
        if sent:
            min_ram += 1 + len(bs.name.encode("latin-1"))
    return len(cap.source.buf) - ram_written + min_ram


# ----------------------------------------------------------------------------------------
# phase: rounds, xbzrle


def _rounds(cap: Capture, secs: _Sections, rs: RecordSizes | None,
            notices: list[Note]) -> list[RoundInfo]:
    rt = cap.walk.records
    if cap.walk.mapped_ram or rt is None:
        return []
    end_sec = next((s for s in secs.ram if s.kind == "END"), None)
    spans = find_rounds(rt, end_sec.offset if end_sec else None)
    out: list[RoundInfo] = []
    if len(rt):
        assert rs is not None
        rec_total = rs.total
        cum = np.concatenate([[0], np.cumsum(rec_total)])
        cz = np.concatenate([[0], np.cumsum(rt.kind == R.RAM_SAVE_FLAG_ZERO)])
        cx = np.concatenate([[0], np.cumsum(rt.kind == R.RAM_SAVE_FLAG_XBZRLE)])
    for i, (a, z, k) in enumerate(zip(spans.start.tolist(), spans.stop.tolist(), spans.kind,
                                      strict=True)):
        npg = z - a
        if npg and len(rt):
            nb, zr, xr = int(cum[z] - cum[a]), int(cz[z] - cz[a]), int(cx[z] - cx[a])
            so, eo = int(rt.rec_off[a]), int(rt.rec_off[z - 1] + rec_total[z - 1])
        else:
            nb = zr = xr = 0
            so = eo = None
        out.append(RoundInfo(i + 1, k, npg, nb, npg - zr - xr, zr, xr, so, eo))
    if spans.wraps_in_final:
        notices.append(note(NOTE_ROUND_WRAPS, f"the stop-and-copy round wraps around the "
                            f"block list {spans.wraps_in_final} time(s) (no sync behind it)",
                            "ram"))
    return out


def _xbzrle(cap: Capture, rs: RecordSizes | None, blocks: list[BlockSize]) -> XbzrleSize | None:
    rt = cap.walk.records
    if rs is None or rt is None:
        return None
    x = np.flatnonzero(rt.kind == R.RAM_SAVE_FLAG_XBZRLE)
    if not len(x):
        return None
    idstr = rs.header[x] - 8
    return XbzrleSize(
        records=len(x), encoded_bytes=int((3 + rs.xbzrle_len[x]).sum()),
        cache_bytes=int((3 + rs.xbzrle_len[x] + idstr).sum()),
        record_bytes=int(rs.total[x].sum()),
        saved_bytes=sum(b.xbzrle_saved_bytes for b in blocks),
        final_pages=int(sum(int(np.count_nonzero(m.final_kind == R.RAM_SAVE_FLAG_XBZRLE))
                            for m in cap.maps.values())))


# ----------------------------------------------------------------------------------------
# the report


def size_report(cap: Capture, top: int = 10) -> SizeReport:
    """Compute the size audit of an opened capture (`top`: hottest ranges to keep).

    The walk and the page maps are the capture's; everything here is numpy over the
    RecordTable columns, so it takes a fraction of the walk's time."""
    w, src = cap.walk, cap.source
    if w.error is not None and not w.blocks:
        raise w.error  # nothing of the RAM was read: there is nothing to size
    legacy = not w.mapped_ram
    rs = record_sizes(src.buf, w.records, cap.page_size) \
        if legacy and w.records is not None and len(w.records) else None
    secs = _sections(cap)
    blocks, per_page_extra = _blocks(cap, rs)
    ram_written = sum(b.ram_bytes_written for b in blocks)
    bounds = _bounds(cap, secs, [b.data_pages for b in blocks])
    for lay, bs in zip(bounds.layout, blocks, strict=False):
        bs.mapped_ram_bytes = lay.end - lay.entry_offset
    notices = list(bounds.notices)
    rounds = _rounds(cap, secs, rs, notices)
    rep = _assemble(cap, secs, blocks, ram_written, bounds, rounds, notices)
    rep.xbzrle = _xbzrle(cap, rs, blocks)
    rep.hot_ranges = hot_ranges(cap.maps, per_page_extra, cap.page_size, top=top) \
        if legacy else []
    rep.verdict_basis = size_verdict(rep, cap.maps)
    return rep


def _assemble(cap: Capture, secs: _Sections, blocks: list[BlockSize], ram_written: int,
              bounds: MappedRamBounds, rounds: list[RoundInfo],
              notices: list[Note]) -> SizeReport:
    w, src, ps = cap.walk, cap.source, cap.page_size
    legacy = not w.mapped_ram
    stream_bytes = len(src.buf) - src.base
    all_sends = np.concatenate([cap.maps[b.name].sends for b in w.blocks]) if w.blocks else \
        np.zeros(0, np.uint32)
    data_bytes = sum(b.data_pages for b in blocks) * ps
    resent = sum(b.resent_bytes for b in blocks)
    once = ram_written - resent

    def total(k: str) -> int:
        return sum(getattr(b, k) for b in blocks)

    stored, allocated = src.container.stored_size(src)  # a disk image: the state's own
    return SizeReport(
        path=cap.path, format=cap.format, file_size=stored,
        allocated_size=allocated, stream_offset=src.base, stream_bytes=stream_bytes,
        compression=src.container.compression, page_size=ps, ram_total=w.ram_total or 0,
        pages=total("pages"), data_pages=total("data_pages"), zero_pages=total("zero_pages"),
        never_sent_pages=total("never_sent_pages"), data_bytes=data_bytes,
        ram_bytes_written=ram_written, page_records=total("page_records"),
        zero_records=total("zero_records"), xbzrle_records=total("xbzrle_records"),
        compress_records=total("compress_records"),
        page_payload_bytes=total("page_payload_bytes"),
        record_header_bytes=total("record_header_bytes"), device_state_bytes=secs.device,
        vmdescription_bytes=secs.vmdesc,
        other_overhead=stream_bytes - ram_written - secs.device - secs.vmdesc + src.base,
        overhead=_overhead(cap, secs, ram_written), ram_sections=secs.counts(),
        amplification=(ram_written / data_bytes) if legacy and data_bytes else None,
        send_histogram=send_histogram(all_sends),
        resent_pages=int(np.count_nonzero(all_sends > 1)), rounds=rounds, hot_ranges=[],
        mapped_ram_bound=bounds.bound, mapped_ram_allocated_bound=bounds.allocated,
        legacy_minimum=_legacy_minimum(cap, blocks, ram_written),
        mapped_ram_layout=bounds.layout, mapped_ram_check=bounds.check, xbzrle=None,
        blocks=blocks, notices=notices, stopped=stop_of(w.error),
        resent_bytes=resent, record_framing_bytes=total("record_framing_bytes"),
        resend_amplification=(ram_written / once) if legacy and once else None)


# ----------------------------------------------------------------------------------------
# the verdict


def hot_summary(r: SizeReport, maps: dict[str, BlockMap]) -> HotSummary | None:
    """The block with most re-sent pages and the few ranges holding most of them."""
    if not r.resent_pages or not r.blocks:
        return None
    best = max(r.blocks, key=lambda b: b.resent_pages)
    bm = maps[best.name]
    hot = np.flatnonzero(bm.sends > 1)
    ranges = hot_ranges({best.name: bm}, {}, r.page_size, top=0)
    ranges.sort(key=lambda h: -h.pages)
    picked, acc = [], 0
    for h in ranges[:3]:
        picked.append(h)
        acc += h.pages
        if acc >= 0.8 * len(hot):
            break
    return HotSummary(
        block=best.name, pages=len(hot), min_sends=int(bm.sends[hot].min()),
        max_sends=int(bm.sends[hot].max()),
        spans=[[h.start, h.end] for h in sorted(picked, key=lambda h: h.start)],
        share=acc / len(hot) if len(hot) else 0.0, more_ranges=len(ranges) - len(picked),
        other_blocks_pages=r.resent_pages - len(hot))


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def size_verdict(r: SizeReport, maps: dict[str, BlockMap]) -> SizeVerdict:
    """The verdict's kind, advice and the numbers it rests on."""
    apparent = r.stream_bytes + r.stream_offset
    c = r.mapped_ram_check
    v = SizeVerdict(
        kind=V_SENT_ONCE, advice=[], stopped=r.stopped is not None,
        compressed=r.compression is not None, apparent_size=apparent,
        allocated_size=r.allocated_size, mapped_ram_bound=r.mapped_ram_bound,
        mapped_ram_allocated_bound=r.mapped_ram_allocated_bound,
        apparent_ratio=_ratio(apparent, r.mapped_ram_bound),
        allocated_ratio=_ratio(r.allocated_size, r.mapped_ram_allocated_bound),
        legacy_minimum=r.legacy_minimum,
        above_legacy_minimum=apparent - r.legacy_minimum if r.legacy_minimum else None,
        resent_pages=r.resent_pages, resent_bytes=r.resent_bytes,
        record_framing_bytes=r.record_framing_bytes, ram_bytes_written=r.ram_bytes_written,
        resend_amplification=r.resend_amplification,
        zero_share=(1 - r.data_bytes / r.ram_total) if r.ram_total else None,
        mismatched_blocks=list(c.mismatched_blocks) if c else [],
        bound_difference=c.difference if c else 0, hot=hot_summary(r, maps))
    smaller_on_disk = (r.mapped_ram_allocated_bound > 0 and r.allocated_size > 0 and
                       r.mapped_ram_allocated_bound < (1 - _WORTH_SAVING) * r.allocated_size)
    if r.stopped and not r.blocks:
        v.kind = V_INCOMPLETE
    elif r.format == "mapped-ram":
        v.kind = (V_MAPPED_LAYOUT_MISMATCH if v.mismatched_blocks else
                  V_MAPPED_OFF_BOUND if v.bound_difference else V_MAPPED_AT_BOUND)
        if v.kind == V_MAPPED_AT_BOUND and not v.compressed:
            v.advice.append(A_COPY_SPARSE)
    else:
        v.kind = V_AMPLIFIED if r.resent_pages else \
            (V_SENT_ONCE if r.mapped_ram_bound else V_NO_BOUND)
        if r.resent_pages:
            v.advice.append(A_PAUSE)
        if smaller_on_disk:
            v.advice.append(A_SAVE_MAPPED_RAM)
    return v


__all__ = ["SizeReport", "BlockSize", "RoundInfo", "HotRange", "MappedRamLayout",
           "MappedRamBounds", "SizeVerdict", "HotSummary", "size_report", "record_sizes",
           "mapped_ram_layout", "mapped_ram_bounds", "send_histogram", "hot_ranges",
           "size_verdict", "hot_summary", "Overhead", "RamSections", "MappedRamCheck",
           "XbzrleSize"]
