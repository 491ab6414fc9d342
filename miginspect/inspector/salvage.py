"""What a cut or damaged file still holds (`--partial` of extract, map and devices).

A file that stops early (a killed `virsh save`, a copy cut short, damage) still holds
every record before the stop. `salvage` says, per RAMBlock, which pages the file gives
(held: the last copy read before the stop, data or zero) and which it does not
(missing), and why, with one reason per page:

* `never-sent-before-stop`: the RAM section stops early and no record of the page came
  before the stop. In a whole file such a page is zero (QEMU never sent it); in a cut
  one it may have been sent after the stop, so its content is unknown.
* `cut-inside-record`: the page whose record the data ends inside (its header read, its
  payload cut). When an older copy of the page was read it is held, and a note says so.
* `block-not-reached`: a RAMBlock of which no page was sent before the stop and that
  comes after every block the stream reached (QEMU's first pass sends the blocks in the
  order of the list).
* `past-end-of-data`: mapped-ram: a page whose bitmap bit is set and whose bytes lie past
  the end of the data.

A RAM section read to its end (`ram_complete`) misses nothing, even when the file stops
later, in the device state or the vmdescription: a never-sent page is zero then. A
mapped-ram file cut inside a pages region names only the blocks listed before the cut
(their list entries follow each region): `unlisted_ram_bytes` counts the rest of the
MEM_SIZE total. The stop is the one `Stop` every report carries, worded with what the
container adds (an incomplete libvirt save, compressed data cut short); `read_to` is
where reading stopped in the QEMU data, in the offsets of every other report.

`device_salvage` does the same for the device sections: which were read whole, which
one the data ends inside, and, where a vmdescription (whole, or the entries a cut one
still holds) lists them, the devices whose sections come after the stop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..formats import stream as S
from .capture import Capture
from .model import RamBlock, Section
from .pagemap import PAGE_DATA, PAGE_NEVER_SENT, BlockMap, mapped_ram_map, runs
from .report import (
    NOTE_NO_BITMAP,
    NOTE_OLDER_COPY,
    NOTE_UNLISTED,
    SEVERITY_WARNING,
    Note,
    Stop,
    note,
    stop_of,
)
from .vmdesc import device_index, salvage_description

#: why a page is missing (the JSON `reason` of a missing range)
MISSING_NEVER_SENT = "never-sent-before-stop"
MISSING_CUT_RECORD = "cut-inside-record"
MISSING_NOT_REACHED = "block-not-reached"
MISSING_PAST_END = "past-end-of-data"
#: index 0 is "held"; reasons[i] is the code stored per page
REASONS = (None, MISSING_NEVER_SENT, MISSING_CUT_RECORD, MISSING_NOT_REACHED, MISSING_PAST_END)
_CODE = {r: i for i, r in enumerate(REASONS) if r}

#: container problems that say the save is incomplete or its data cut
CONTAINER_CUT = ("libvirt-partial", "container-truncated", "container-damaged")


@dataclass
class MissingRange:
    """Pages [first_page, end_page) of a block that the file does not give, and why."""

    first_page: int
    end_page: int
    reason: str  # MISSING_*
    gpa: int | None = None  # guest-physical images: the address of first_page

    @property
    def pages(self) -> int:
        return self.end_page - self.first_page


@dataclass
class CutPage:
    """The page record the data ends inside: where it starts and the page it carried
    (None where the cut took that part of its header)."""

    offset: int
    block: str | None
    page: int | None


@dataclass
class BlockExtent:
    """What the file gives of one RAMBlock."""

    name: str
    pages: int
    held_pages: int  # pages whose final state was read: data or zero
    data_pages: int
    zero_pages: int
    missing_pages: int
    reached: bool  # the stream sent a page of it before the stop
    missing: list[MissingRange] = field(default_factory=list)
    #: per page: 0 held, else the index of its reason in REASONS (not in the JSON)
    reasons: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0, np.uint8))
    #: the page map to read the held pages with (not in the JSON)
    block_map: BlockMap | None = field(repr=False, default=None)

    @property
    def missing_mask(self) -> np.ndarray:
        return self.reasons != 0

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "pages": self.pages, "held_pages": self.held_pages,
                "data_pages": self.data_pages, "zero_pages": self.zero_pages,
                "missing_pages": self.missing_pages, "reached": self.reached,
                "missing": self.missing}


@dataclass
class Salvage:
    """What a file read with --partial holds of its RAM, and where and why it stops."""

    complete: bool  # nothing is missing: the file was read to its end
    stopped: Stop | None
    read_to: int  # where reading stopped in the QEMU data
    ram_complete: bool  # the RAM section was read to its end
    held_pages: int
    missing_pages: int
    cut_record: CutPage | None
    blocks: list[BlockExtent] = field(default_factory=list)
    unlisted_ram_bytes: int = 0  # mapped-ram: RAM of blocks listed past the stop
    notes: list[Note] = field(default_factory=list)

    def extent(self, name: str) -> BlockExtent | None:
        return next((b for b in self.blocks if b.name == name), None)

    def only(self, names: list[str]) -> Salvage:
        """The same salvage with only the named blocks (in that order) in `blocks`."""
        keep = [b for n in names for b in self.blocks if b.name == n]
        return Salvage(self.complete, self.stopped, self.read_to, self.ram_complete,
                       sum(b.held_pages for b in keep), sum(b.missing_pages for b in keep),
                       self.cut_record, keep, self.unlisted_ram_bytes, self.notes)


# -- RAM ---------------------------------------------------------------------------------
def salvage_blocks(cap: Capture) -> list[RamBlock]:
    """The blocks whose pages the file gives some of: the walk's whole blocks, and a
    mapped-ram block whose pages region the data ends inside."""
    w = cap.walk
    return list(w.blocks) + ([w.cut_block] if w.cut_block is not None else [])


def salvage(cap: Capture) -> Salvage:
    """The extent of `cap` (opened with strict=False) per RAMBlock, and its stop."""
    w = cap.walk
    err = w.error
    stop = stop_of(cap.source.explain(err)) if err is not None else None
    read_to = err.offset if err is not None and err.offset is not None else w.walked_to
    ram_done = ram_complete(cap)
    maps = _maps(cap)
    reached = _reached(cap, maps)
    cut = _cut_page(cap)
    notes = _container_notes(cap)
    blocks = []
    for b in salvage_blocks(cap):
        ext = _extent(cap, b, maps[b.name], ram_done, reached, cut)
        blocks.append(ext)
        if cut is not None and cut.block == b.name and cut.page is not None and \
                not ext.reasons[cut.page]:
            notes.append(note(NOTE_OLDER_COPY, f"the data ends inside a newer copy of page "
                              f"{cut.page}; an older copy of it was read and is held", b.name,
                              cut.offset, SEVERITY_WARNING))
    unlisted = _unlisted(cap)
    if unlisted:
        notes.append(note(NOTE_UNLISTED, f"{unlisted:,} bytes of RAM are in blocks the file "
                          "lists after the stop (mapped-ram writes each block's list entry "
                          "after the pages of the one before): their names are not known",
                          "ram", read_to, SEVERITY_WARNING))
    notes += _bitmap_notes(cap, blocks)
    held = sum(b.held_pages for b in blocks)
    missing = sum(b.missing_pages for b in blocks)
    return Salvage(err is None and not missing and not unlisted, stop, read_to, ram_done,
                   held, missing, cut, blocks, unlisted, notes)


def ram_complete(cap: Capture) -> bool:
    """The RAM section was read to its end: legacy: its END section (with its footer)
    lies before the stop; mapped-ram: every block of the MEM_SIZE total is listed and
    its region is whole."""
    w = cap.walk
    if w.error is None:
        return True
    if w.mapped_ram:
        listed = sum(b.used_length for b in w.blocks)
        return w.cut_block is None and w.ram_total is not None and listed == w.ram_total \
            and any(s.kind == S.KIND_START and s.idstr == "ram" and s.payload_end is not None
                    for s in w.sections)
    stop = w.error.offset if w.error.offset is not None else w.walked_to
    return any(s.kind == S.KIND_END and s.idstr == "ram" and s.payload_end is not None
               and s.end <= stop for s in w.sections)


def _maps(cap: Capture) -> dict[str, BlockMap]:
    maps = dict(cap.maps)
    cb = cap.walk.cut_block
    if cb is not None and cb.mapped_ram is not None:
        if cb.mapped_ram.pages_offset >= len(cap.source.buf):  # its region starts past the end
            n = cb.pages  # (a damaged pages_offset can be any 64-bit value)
            maps[cb.name] = BlockMap(cb, np.full(n, PAGE_NEVER_SENT, np.uint8),
                                     np.zeros(n, np.uint32), np.full(n, -1, np.int64),
                                     np.zeros(n, np.uint16))
            return maps
        bm = mapped_ram_map(cb, cap.raw_bitmap(cb), cap.bitmap_layout or "le64")
        # pages whose bytes lie past the end of the data are not data the file holds
        past = bm.offset + cb.page_size > len(cap.source.buf)
        past &= bm.state == PAGE_DATA
        bm.state[past] = PAGE_NEVER_SENT
        bm.offset[past] = -1
        bm.sends[past] = 0
        maps[cb.name] = bm
    return maps


def _reached(cap: Capture, maps: dict[str, BlockMap]) -> int:
    """Index of the last block in list order the stream sent a page of (-1: none)."""
    rt = cap.records
    top = int(rt.block.max()) if len(rt) else -1
    cr = cap.walk.cut_record
    if cr is not None and cr.block is not None:
        top = max(top, cr.block)
    if cap.walk.mapped_ram:
        top = len(salvage_blocks(cap)) - 1
    return top


def _cut_page(cap: Capture) -> CutPage | None:
    cr = cap.walk.cut_record
    if cr is None:
        return None
    name = cap.blocks[cr.block].name if cr.block is not None else None
    return CutPage(cr.offset, name, cr.page if name is not None else None)


def _extent(cap: Capture, b: RamBlock, bm: BlockMap, ram_done: bool, reached: int,
            cut: CutPage | None) -> BlockExtent:
    n = bm.pages
    reasons = np.zeros(n, np.uint8)
    absent = bm.state == PAGE_NEVER_SENT
    sent_any = not bool(absent.all()) if n else False
    if cap.walk.mapped_ram:
        if b is cap.walk.cut_block:
            reasons[absent] = _CODE[MISSING_PAST_END]
    elif not ram_done:
        if not sent_any and b.index > reached:
            reasons[:] = _CODE[MISSING_NOT_REACHED]
        else:
            reasons[absent] = _CODE[MISSING_NEVER_SENT]
        if cut is not None and cut.block == b.name and cut.page is not None and absent[cut.page]:
            reasons[cut.page] = _CODE[MISSING_CUT_RECORD]
    missing = int(np.count_nonzero(reasons))
    held = reasons == 0
    data = int(np.count_nonzero(held & (bm.state == PAGE_DATA)))
    zero = int(np.count_nonzero(held & (bm.state != PAGE_DATA)))
    starts, ends, vals = runs(reasons)
    ranges = [MissingRange(int(s), int(e), str(REASONS[int(v)]))
              for s, e, v in zip(starts.tolist(), ends.tolist(), vals.tolist(), strict=True)
              if v]
    return BlockExtent(b.name, n, n - missing, data, zero, missing,
                       sent_any or b.index <= reached, ranges, reasons, bm)


def _unlisted(cap: Capture) -> int:
    w = cap.walk
    if not w.mapped_ram or w.ram_total is None:
        return 0
    return max(0, w.ram_total - sum(b.used_length for b in salvage_blocks(cap)))


def _container_notes(cap: Capture) -> list[Note]:
    src = cap.source
    return [note(p.code, p.cause, p.where, p.offset, SEVERITY_WARNING)
            for p in src.container.problems(src, cap.walk) if p.code in CONTAINER_CUT]


def _bitmap_notes(cap: Capture, blocks: list[BlockExtent]) -> list[Note]:
    """A mapped-ram file with no bitmap bit set anywhere and a stop: QEMU writes the
    bitmaps when the save completes, so a save killed before that left them clear."""
    w = cap.walk
    if not w.mapped_ram or w.error is None or not blocks or \
            any(b.data_pages or b.missing_pages for b in blocks):
        return []
    return [note(NOTE_NO_BITMAP, "no bitmap bit is set in any block: QEMU writes the "
                 "bitmaps when a save completes, so this one was probably stopped before; the "
                 "pages it wrote are in the file as stale bytes (--include-stale writes those "
                 "of the whole blocks)", "ram", None, SEVERITY_WARNING)]


def physical_missing(ext: BlockExtent, ranges: list[tuple[int, int, int]],
                     page_size: int) -> list[MissingRange]:
    """`ext`'s missing ranges inside the image ranges (gpa, block_offset, length), split
    at their edges, each with its guest-physical address."""
    out = []
    for gpa, off, length in ranges:
        lo, hi = off // page_size, (off + length) // page_size
        for m in ext.missing:
            a, z = max(lo, m.first_page), min(hi, m.end_page)
            if a < z:
                out.append(MissingRange(a, z, m.reason, gpa + (a - lo) * page_size))
    return sorted(out, key=lambda m: m.gpa or 0)


# -- device state --------------------------------------------------------------------------
#: where the description of the device sections comes from
DESCRIPTION_WHOLE = "whole"  # the file's vmdescription
DESCRIPTION_CUT = "cut"  # the entries a cut or damaged vmdescription still holds whole
DESCRIPTION_MISSING = "missing"  # none: past the stop, suppressed, or nothing whole in it


@dataclass
class SectionRef:
    """A device section (or, for one not reached, the device a description lists)."""

    idstr: str
    instance_id: int
    offset: int | None = None  # of its first byte; None for a section not reached

    @property
    def key(self) -> str:
        return f"{self.idstr}#{self.instance_id}" if self.instance_id else self.idstr


@dataclass
class DeviceSalvage:
    """What a file read with --partial holds of its device state."""

    complete: bool  # every device section read whole and described
    stopped: Stop | None
    read_to: int
    description: str  # DESCRIPTION_*
    described_devices: int  # device entries of the description used
    sections_read: int  # device sections read whole
    cut_section: SectionRef | None  # the device section the data ends inside
    undescribed: list[SectionRef] = field(default_factory=list)
    #: devices the description lists whose sections come after the stop; None when no
    #: description says which (their names are in the vmdescription, past the stop)
    not_reached: list[SectionRef] | None = None
    notes: list[Note] = field(default_factory=list)


def description(cap: Capture) -> tuple[dict[str, Any] | None, str]:
    """The vmdescription to decode device sections with: the file's, or the whole
    entries of a cut one; and which (DESCRIPTION_*)."""
    t = cap.walk.trailer
    if t is None:
        return None, DESCRIPTION_MISSING
    if t.data is not None:
        return t.data, DESCRIPTION_WHOLE
    data = salvage_description(cap.source.buf, t)
    return (data, DESCRIPTION_CUT) if data is not None else (None, DESCRIPTION_MISSING)


def device_sections(cap: Capture) -> tuple[list[Section], Section | None]:
    """(device FULL sections read whole, the device section the data ends inside: the
    walk stopped before it knew where its state ends)."""
    whole, cut = [], None
    for s in cap.walk.sections:
        if s.kind not in (S.KIND_FULL, S.KIND_START, S.KIND_PART, S.KIND_END) or \
                s.idstr == "ram":
            continue
        if s.payload_end is None:
            cut = s
        elif s.kind == S.KIND_FULL:
            whole.append(s)
    return whole, cut


def device_salvage(cap: Capture, data: dict[str, Any] | None, source: str,
                   undescribed: list[Section]) -> DeviceSalvage:
    """The device-state extent of `cap` (opened with strict=False): `data` and `source`
    from `description`, `undescribed`: whole sections it has no entry for."""
    w = cap.walk
    err = w.error
    stop = stop_of(cap.source.explain(err)) if err is not None else None
    read_to = err.offset if err is not None and err.offset is not None else w.walked_to
    whole, cut = device_sections(cap)
    listed = device_index(data) if data is not None else {}
    described = sum(len(v) for v in listed.values())
    not_reached: list[SectionRef] | None = [] if err is None else None
    if err is not None and data is not None:
        seen: dict[tuple[str, int], int] = {}
        for s in whole + ([cut] if cut is not None else []):
            seen[s.key] = seen.get(s.key, 0) + 1
        not_reached = []
        for key, entries in listed.items():
            extra = len(entries) - seen.get(key, 0)
            not_reached += [SectionRef(key[0], key[1]) for _ in range(max(0, extra))]
    notes = _container_notes(cap)
    refs = [SectionRef(s.idstr or "", s.instance_id or 0, s.offset) for s in undescribed]
    cut_ref = SectionRef(cut.idstr or "", cut.instance_id or 0, cut.offset) if cut else None
    ok = err is None and source == DESCRIPTION_WHOLE and not refs
    return DeviceSalvage(ok, stop, read_to, source, described, len(whole), cut_ref, refs,
                         not_reached, notes)


__all__ = ["salvage", "Salvage", "BlockExtent", "MissingRange", "CutPage", "ram_complete",
           "salvage_blocks", "physical_missing", "REASONS", "MISSING_NEVER_SENT",
           "MISSING_CUT_RECORD", "MISSING_NOT_REACHED", "MISSING_PAST_END", "description",
           "device_sections", "device_salvage", "DeviceSalvage", "SectionRef",
           "DESCRIPTION_WHOLE", "DESCRIPTION_CUT", "DESCRIPTION_MISSING"]
