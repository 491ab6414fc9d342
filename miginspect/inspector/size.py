"""`size`: where a migration file's bytes go, redirty amplification and size bounds.

Accounting (every byte of the QEMU stream lands in exactly one bucket):

* ``ram_bytes_written``: legacy: every page record, i.e. its be64 header word, the
  RAMBlock idstr when CONTINUE is clear, and its payload (PAGE: a page, ZERO: the
  fill byte, XBZRLE: 3-byte header + delta, COMPRESS_PAGE: be32 length + data).
  mapped-ram: the page bytes behind set bitmap bits (the region bytes that count).
* ``device_state_bytes``: START/PART/END/FULL sections of everything but ``ram``,
  with their section headers and footers.
* ``vmdescription_bytes``: the QEMU_VM_VMDESCRIPTION record (type byte, be32, JSON).
* ``other_overhead``: the rest (file header and configuration, ram section headers,
  footers, EOS records and the MEM_SIZE list, commands, EOF; for mapped-ram also the
  per-block headers, bitmaps, 1 MiB alignment padding and the region bytes of zero
  pages), broken down in ``overhead``.

Bounds, from QEMU's layout rules (format-spec §3, §4.3):

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

Amplification (legacy) = ``ram_bytes_written / data_bytes``: the RAM bytes written
per byte of final page data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from ..formats import mapped_ram as M
from ..formats import ram as R
from .capture import Capture
from .pagemap import PAGE_DATA, PAGE_NEVER_SENT, PAGE_ZERO, BlockMap
from .ramscan import RecordTable
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


@dataclass
class BlockSize:
    name: str
    used_length: int
    pages: int
    data_pages: int
    zero_pages: int
    absent_pages: int
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
    send_histogram: dict[str, int]
    mapped_ram_bytes: int  # this block's share of the mapped-ram bound
    xbzrle_saved_bytes: int = 0
    #: extra sends (beyond the first) per 1/HEAT_CELLS of the block: where the hot pages are
    resend_heat: list[int] = field(default_factory=list)


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
    absent_pages: int
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
    overhead: dict[str, int]
    ram_sections: dict[str, int]  # ram START/PART/END section counts (each ends with EOS)
    amplification: float | None
    send_histogram: dict[str, int]
    resent_pages: int
    rounds: list[RoundInfo]
    hot_ranges: list[HotRange]
    mapped_ram_bound: int
    mapped_ram_allocated_bound: int
    legacy_minimum: int | None
    mapped_ram_layout: list[MappedRamLayout]
    mapped_ram_check: dict[str, Any] | None
    xbzrle: dict[str, int] | None
    blocks: list[BlockSize]
    verdict: str
    notices: list[str] = field(default_factory=list)
    stopped: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


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
    """Lay the blocks out as QEMU's mapped-ram writer does, from `start`, the absolute
    file offset of the first MEM_SIZE list entry (right after the be64 MEM_SIZE word)."""
    out = []
    cur = start
    for b in blocks:
        entry = 1 + len(b.name.encode("latin-1")) + 8 + (8 if ignore_shared else 0)
        entry += 8 if b.host_page_size is not None else 0
        hdr = cur + entry
        if b.mapped_ram is not None and b.mapped_ram.skipped:
            # x-ignore-shared block: zero offsets, no bitmap, no region, no seek
            out.append(MappedRamLayout(b.name, cur, hdr, 0, 0, 0,
                                       hdr + M.MAPPED_RAM_HEADER_SIZE))
            cur = hdr + M.MAPPED_RAM_HEADER_SIZE
            continue
        bmo = hdr + M.MAPPED_RAM_HEADER_SIZE
        npages = b.used_length // b.page_size
        bmb = M.bitmap_size(npages, host_long_bytes)
        po = M.pages_offset_for(bmo, npages, host_long_bytes)
        out.append(MappedRamLayout(b.name, cur, hdr, bmo, bmb, po, po + b.used_length))
        cur = po + b.used_length
    return out


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


def send_histogram(sends: np.ndarray) -> dict[str, int]:
    if not len(sends):
        return {}
    h = np.bincount(sends.astype(np.int64))
    return {str(k): int(v) for k, v in enumerate(h.tolist()) if v}


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
# the report


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


def _stream_end(w: StreamWalk, secs: list[Section]) -> int:
    return max([s.end for s in secs] + [w.walked_to])


def size_report(cap: Capture, top: int = 10) -> SizeReport:
    """Compute the size audit of an opened capture (`top`: hottest ranges to keep).

    The walk and the page maps are the capture's; everything here is numpy over the
    RecordTable columns, so it takes a fraction of the walk's time."""
    w = cap.walk
    if w.error is not None and not w.blocks:
        raise w.error  # nothing of the RAM was read: there is nothing to size
    src = cap.source
    buf = src.buf
    ps = cap.page_size
    legacy = not w.mapped_ram
    rt = w.records
    maps = cap.maps
    stream_bytes = len(buf) - src.base
    notices: list[str] = []

    # -- per record sizes (legacy) ------------------------------------------------
    if legacy and rt is not None and len(rt):
        rs = record_sizes(buf, rt, ps)
        rec_total = rs.total
    else:
        rs = None
        rec_total = np.zeros(0, np.int64)

    # -- sections -------------------------------------------------------------------
    secs = _read_sections(w)
    ram_sections = [s for s in secs if s.idstr == R.RAM_SECTION_IDSTR
                    and s.kind in ("START", "PART", "END")]
    ram_section_bytes = sum(s.length for s in ram_sections)
    device = sum(s.length for s in secs
                 if s.kind in ("START", "PART", "END", "FULL") and s.idstr != R.RAM_SECTION_IDSTR)
    vmdesc = sum(s.length for s in secs if s.kind == "VMDESCRIPTION")
    commands = sum(s.length for s in secs if s.kind == "COMMAND")
    eof = sum(s.length for s in secs if s.kind == "EOF")
    first_sec = secs[0].offset if secs else w.walked_to
    header_cfg = first_sec - src.base
    walked_end = _stream_end(w, secs)
    unwalked = len(buf) - walked_end

    # -- blocks ---------------------------------------------------------------------
    blocks: list[BlockSize] = []
    per_page_extra: dict[str, np.ndarray] = {}
    xb_saved_total = 0
    for b in w.blocks:
        bm = maps[b.name]
        data = bm.count(PAGE_DATA)
        counts = dict.fromkeys(R.PAGE_RECORD_FLAGS, 0)
        written = hdr_bytes = page_payload = xb_saved = 0
        nrec = 0
        if rs is not None and rt is not None:
            sel = np.flatnonzero(rt.block == b.index)
            nrec = len(sel)
            kinds = rt.kind[sel]
            counts = rt.kind_counts(sel)
            written = int(rec_total[sel].sum())
            hdr_bytes = int(rs.header[sel].sum())
            page_payload = counts[R.RAM_SAVE_FLAG_PAGE] * ps
            xs = sel[kinds == R.RAM_SAVE_FLAG_XBZRLE]
            xb_saved = int((ps - 3 - rs.xbzrle_len[xs]).sum()) if len(xs) else 0
            # bytes of every record but the first of each page: the cost of re-sending
            pages = rt.page[sel].astype(np.int64)
            order = np.argsort(pages, kind="stable")
            sp = pages[order]
            first = np.ones(len(sp), bool)
            first[1:] = sp[1:] != sp[:-1]
            rep = ~first
            extra = np.bincount(sp[rep], weights=rec_total[sel[order[rep]]],
                                minlength=bm.pages)[:bm.pages].astype(np.int64)
            per_page_extra[b.name] = extra
        elif not legacy:
            counts[R.RAM_SAVE_FLAG_PAGE] = data
            written = data * ps
        xb_saved_total += xb_saved
        blocks.append(BlockSize(
            name=b.name, used_length=b.used_length, pages=bm.pages, data_pages=data,
            zero_pages=bm.count(PAGE_ZERO), absent_pages=bm.count(PAGE_NEVER_SENT),
            data_bytes=data * ps, records=nrec,
            page_records=counts[R.RAM_SAVE_FLAG_PAGE], zero_records=counts[R.RAM_SAVE_FLAG_ZERO],
            xbzrle_records=counts[R.RAM_SAVE_FLAG_XBZRLE],
            compress_records=counts[R.RAM_SAVE_FLAG_COMPRESS_PAGE],
            ram_bytes_written=written, record_header_bytes=hdr_bytes,
            page_payload_bytes=page_payload,
            amplification=(written / (data * ps)) if legacy and data else None,
            resent_pages=int(np.count_nonzero(bm.sends > 1)),
            max_sends=int(bm.sends.max()) if bm.pages else 0,
            send_histogram=send_histogram(bm.sends), mapped_ram_bytes=0,
            xbzrle_saved_bytes=xb_saved, resend_heat=resend_heat(bm.sends),
        ))

    all_sends = np.concatenate([maps[b.name].sends for b in w.blocks]) if w.blocks else \
        np.zeros(0, np.uint32)
    ram_written = sum(b.ram_bytes_written for b in blocks)
    data_pages = sum(b.data_pages for b in blocks)
    data_bytes = data_pages * ps

    # -- overhead breakdown ------------------------------------------------------------
    overhead: dict[str, int] = {
        "container": src.base,
        "header_and_configuration": header_cfg,
        "commands": commands,
        "eof": eof,
    }
    layout: list[MappedRamLayout] = []
    mr_check = None
    start_sec = next((s for s in ram_sections if s.kind == "START"), None)
    if legacy:
        overhead["ram_framing"] = ram_section_bytes - ram_written
    else:
        bitmaps = sum(b.mapped_ram.bitmap_bytes for b in w.blocks
                      if b.mapped_ram and not b.mapped_ram.skipped)
        regions = sum(b.used_length for b in w.blocks
                      if b.mapped_ram and not b.mapped_ram.skipped)
        padding = 0
        for b in w.blocks:
            m = b.mapped_ram
            if m and not m.skipped:
                padding += m.pages_offset - (m.bitmap_offset + m.bitmap_bytes)
        overhead["mapped_ram_bitmaps"] = bitmaps
        overhead["mapped_ram_alignment_padding"] = padding
        overhead["mapped_ram_zero_page_bytes"] = regions - ram_written
        overhead["ram_framing"] = ram_section_bytes - bitmaps - padding - regions
    overhead["unwalked_or_trailing"] = unwalked
    other = stream_bytes - ram_written - device - vmdesc + src.base
    # other == sum(overhead.values()) holds when the walk covered the stream

    # -- mapped-ram bound ----------------------------------------------------------------
    mr_bound = mr_alloc = 0
    start_whole = start_sec is not None and start_sec in w.sections
    if start_whole and start_sec.payload_offset is not None and w.blocks:
        mem_size_word = start_sec.payload_offset + 8
        # everything of the stream that is not ram START's list/regions
        start_tail = start_sec.end - _list_end(w)  # EOS (+ footer) after the list
        after_start = walked_end - start_sec.end
        if legacy:
            extra_cfg = (CAPS_NAME_MAPPED_RAM if w.capabilities else CAPS_SUBSECTION_MAPPED_RAM)
            footer = FOOTER if w.footers else 0
            later_ram = [s for s in ram_sections if s.kind != "START"]
            shrink = sum(s.length - (EOS_ONLY_SECTION + footer) for s in later_ram)
            start_at = mem_size_word + extra_cfg
            layout = mapped_ram_layout(w.blocks, start_at, w.ignore_shared)
            tail = (8 + footer) + after_start - shrink
        else:
            layout = mapped_ram_layout(w.blocks, mem_size_word, w.ignore_shared)
            tail = start_tail + after_start
            for lay, b in zip(layout, w.blocks, strict=True):
                if b.mapped_ram is not None:
                    lay.actual_bitmap_offset = b.mapped_ram.bitmap_offset
                    lay.actual_pages_offset = b.mapped_ram.pages_offset
        mr_bound = (layout[-1].end if layout else mem_size_word) + tail
        dp = [b.data_pages for b in blocks]
        mr_alloc = _allocated(layout, 0, tail, dp, ps)
        for lay, bs in zip(layout, blocks, strict=True):
            bs.mapped_ram_bytes = lay.end - lay.entry_offset
        if not legacy:
            mismatches = [lay.name for lay in layout
                          if (lay.actual_bitmap_offset, lay.actual_pages_offset)
                          != (lay.bitmap_offset, lay.pages_offset)]
            real = len(buf)
            mr_check = {
                "layout_matches_headers": not mismatches,
                "mismatched_blocks": mismatches,
                "bound": mr_bound,
                "stream_end": real,
                "difference": real - mr_bound,
                "allocated_size": src.allocated_size,
                "allocated_bound": mr_alloc,
            }
            notices.append("mapped-ram rewrites pages in place: the file does not record how "
                           "often a page was written (QEMU's ram.normal counts every write)")
            if src.decompressed:
                notices.append("the input was decompressed: holes of the mapped-ram file were "
                               "inflated to zeros, so its allocated size says nothing")
    elif w.blocks:
        notices.append("no ram START section: bounds not computed")

    # -- legacy minimum -------------------------------------------------------------------
    legacy_min = None
    if legacy and w.blocks:
        min_ram = 0
        for b, bs in zip(w.blocks, blocks, strict=True):
            sent = bs.data_pages + bs.zero_pages
            min_ram += sent * 8 + bs.data_pages * ps + bs.zero_pages
            if sent:
                min_ram += 1 + len(b.name.encode("latin-1"))
        legacy_min = src.base + stream_bytes - ram_written + min_ram

    # -- rounds ----------------------------------------------------------------------------
    rounds: list[RoundInfo] = []
    if legacy and rt is not None:
        end_sec = next((s for s in ram_sections if s.kind == "END"), None)
        spans = find_rounds(rt, end_sec.offset if end_sec else None)
        if len(rt):
            cum = np.concatenate([[0], np.cumsum(rec_total)])
            kz = rt.kind == R.RAM_SAVE_FLAG_ZERO
            kx = rt.kind == R.RAM_SAVE_FLAG_XBZRLE
            cz = np.concatenate([[0], np.cumsum(kz)])
            cx = np.concatenate([[0], np.cumsum(kx)])
        for i, (a, z, k) in enumerate(zip(spans.start.tolist(), spans.stop.tolist(), spans.kind,
                                          strict=True)):
            npg = z - a
            if npg and len(rt):
                nb = int(cum[z] - cum[a])
                zr = int(cz[z] - cz[a])
                xr = int(cx[z] - cx[a])
                so = int(rt.rec_off[a])
                eo = int(rt.rec_off[z - 1] + rec_total[z - 1])
            else:
                nb = zr = xr = 0
                so = eo = None
            rounds.append(RoundInfo(i + 1, k, npg, nb, npg - zr - xr, zr, xr, so, eo))
        if spans.wraps_in_final:
            notices.append(f"the stop-and-copy round wraps around the block list "
                           f"{spans.wraps_in_final} time(s) (no sync behind it)")

    # -- xbzrle ------------------------------------------------------------------------------
    xb = None
    if rs is not None and rt is not None:
        x = np.flatnonzero(rt.kind == R.RAM_SAVE_FLAG_XBZRLE)
        if len(x):
            idstr = rs.header[x] - 8
            xb = {
                "records": len(x),
                "encoded_bytes": int((3 + rs.xbzrle_len[x]).sum()),
                "cache_bytes": int((3 + rs.xbzrle_len[x] + idstr).sum()),
                "record_bytes": int(rs.total[x].sum()),
                "saved_bytes": xb_saved_total,
                "final_pages": int(sum(int(np.count_nonzero(
                    maps[b.name].final_kind == R.RAM_SAVE_FLAG_XBZRLE)) for b in w.blocks)),
            }

    hot = hot_ranges(maps, per_page_extra, ps, top=top) if legacy else []
    amp = (ram_written / data_bytes) if legacy and data_bytes else None
    rep = SizeReport(
        path=cap.path, format=cap.format, file_size=src.file_size,
        allocated_size=src.allocated_size, stream_offset=src.base, stream_bytes=stream_bytes,
        compression=src.container.compression, page_size=ps,
        ram_total=w.ram_total or 0, pages=sum(b.pages for b in blocks), data_pages=data_pages,
        zero_pages=sum(b.zero_pages for b in blocks),
        absent_pages=sum(b.absent_pages for b in blocks), data_bytes=data_bytes,
        ram_bytes_written=ram_written, page_records=sum(b.page_records for b in blocks),
        zero_records=sum(b.zero_records for b in blocks),
        xbzrle_records=sum(b.xbzrle_records for b in blocks),
        compress_records=sum(b.compress_records for b in blocks),
        page_payload_bytes=sum(b.page_payload_bytes for b in blocks),
        record_header_bytes=sum(b.record_header_bytes for b in blocks),
        device_state_bytes=device, vmdescription_bytes=vmdesc, other_overhead=other,
        overhead=overhead,
        ram_sections={k: sum(1 for s in ram_sections if s.kind == k)
                      for k in ("START", "PART", "END")},
        amplification=amp, send_histogram=send_histogram(all_sends),
        resent_pages=int(np.count_nonzero(all_sends > 1)), rounds=rounds, hot_ranges=hot,
        mapped_ram_bound=mr_bound, mapped_ram_allocated_bound=mr_alloc,
        legacy_minimum=legacy_min, mapped_ram_layout=layout, mapped_ram_check=mr_check,
        xbzrle=xb, blocks=blocks, verdict="", notices=notices,
        stopped=w.error.oneline() if w.error is not None else None,
    )
    rep.verdict = verdict(rep, maps)
    return rep


def _list_end(w: StreamWalk) -> int:
    """Offset right after the MEM_SIZE list (legacy) or the last block's region."""
    last = w.blocks[-1]
    m = last.mapped_ram
    if m is not None:
        if m.skipped:
            return m.header_offset + M.MAPPED_RAM_HEADER_SIZE
        return m.pages_offset + last.used_length
    n = 1 + len(last.name.encode("latin-1")) + 8
    n += 8 if last.mr_addr is not None else 0
    n += 8 if last.host_page_size is not None else 0
    return last.entry_offset + n


# ----------------------------------------------------------------------------------------
# the verdict


def _hot_summary(r: SizeReport, maps: dict[str, BlockMap]) -> str:
    """'9,753 pc.ram pages sent 2-5 times, 96% of them in 0x0-0x800000'"""
    best = max(r.blocks, key=lambda b: b.resent_pages)
    bm = maps[best.name]
    hot = np.flatnonzero(bm.sends > 1)
    lo, hi = int(bm.sends[hot].min()), int(bm.sends[hot].max())
    times = f"{lo} times" if lo == hi else f"{lo}-{hi} times"
    ranges = hot_ranges({best.name: bm}, {}, r.page_size, top=0)
    ranges.sort(key=lambda h: -h.pages)
    text = f"{len(hot):,} {best.name} pages sent {times}"
    if ranges:
        picked, acc = [], 0
        for h in ranges[:3]:
            picked.append(h)
            acc += h.pages
            if acc >= 0.8 * len(hot):
                break
        share = acc / len(hot)
        spans = ", ".join(f"0x{h.start:x}-0x{h.end:x}" for h in sorted(picked,
                                                                         key=lambda h: h.start))
        text += f", {share:.0%} of them in {spans}"
        if len(ranges) > len(picked):
            text += f" (the rest in {len(ranges) - len(picked)} more ranges)"
    others = r.resent_pages - len(hot)
    if others:
        text += f"; {others:,} more in other blocks"
    return text


def verdict(r: SizeReport, maps: dict[str, BlockMap]) -> str:
    """One line a person can act on."""
    if r.stopped and not r.blocks:
        return f"incomplete: {r.stopped}"
    cut = " (stream cut short: figures cover what was read)" if r.stopped else ""
    if r.format == "mapped-ram":
        c = r.mapped_ram_check or {}
        if not c.get("layout_matches_headers", True):
            return ("mapped-ram headers disagree with QEMU's layout rules for "
                    f"{', '.join(c.get('mismatched_blocks', []))}: the file was not written by "
                    "QEMU's mapped-ram writer or was edited" + cut)
        diff = c.get("difference", 0)
        holes = 1 - r.data_bytes / r.ram_total if r.ram_total else 0.0
        if diff:
            return (f"mapped-ram file is {diff:+,} bytes off its layout bound "
                    f"({r.mapped_ram_bound:,} B): extra data after the stream or a cut-short "
                    "file" + cut)
        return (f"mapped-ram file matches its layout bound exactly ({r.mapped_ram_bound:,} B); "
                f"{holes:.0%} of the RAM regions are zero pages (holes): copy it sparse-aware "
                "(cp --sparse=always, rsync -S), it needs about "
                f"{r.mapped_ram_allocated_bound:,} B on disk" + cut)
    size = r.stream_bytes + r.stream_offset
    bound, alloc = r.mapped_ram_bound, r.mapped_ram_allocated_bound
    what = "the inflated stream is " if r.compression else ""
    if not bound:
        rel = "no mapped-ram bound"
    elif size > bound:
        rel = f"{what}{size / bound:.2f}x its mapped-ram equivalent ({bound:,} B)"
    else:
        rel = (f"{what}{size / alloc:.2f}x the disk space of its mapped-ram equivalent "
               f"({alloc:,} B allocated, {bound:,} B apparent)") if alloc else ""
    if r.resent_pages:
        amp = f"{r.amplification:.2f}x amplification" if r.amplification else "amplified"
        save = ""
        if r.legacy_minimum:
            save = f", {size - r.legacy_minimum:,} B more than sending every page once"
        return (f"{rel}, {amp}{save}: {_hot_summary(r, maps)}. Pause the VM before saving, "
                "or save as mapped-ram, to write each page once" + cut)
    return (f"{rel}: every page sent once, no redirty amplification; as mapped-ram it would "
            f"take {bound:,} B apparent, {alloc:,} B allocated" + cut)


__all__ = ["SizeReport", "BlockSize", "RoundInfo", "HotRange", "MappedRamLayout",
           "size_report", "record_sizes", "mapped_ram_layout", "send_histogram", "hot_ranges",
           "verdict"]
