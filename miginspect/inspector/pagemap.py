"""One page-map model for both layouts.

Per RAMBlock and page: the final state (never sent / zero / data), how many
times the page was sent (legacy: records; mapped-ram: 1 where the bitmap bit is
set), the file offset of the final copy and the kind of the final record, all
numpy arrays. Rules, decided here and tested:

* legacy: the last record of a page in stream order wins; PAGE, XBZRLE and
  COMPRESS_PAGE make it data, ZERO makes it zero; pages never sent stay never
  sent (a fresh destination holds zeros there).
* mapped-ram: the bitmap wins over the bytes; a set bit is data at
  pages_offset + index * page_size, a clear bit is a zero page even where old
  bytes still sit in the file ("stale" pages). The file cannot tell a zero page
  from one never written, so no page is never sent. Which bit is which page
  depends on the writing host (`bitmap_bits`); the capture decides the layout
  (`mapped_ram.bitmap_trust`) before it builds the map.

Page states have one name each: the constant below, the word of `STATE_WORDS`
(the reports' vocabulary: never sent / zero / data / re-sent xN) and its JSON key
form (`STATE_KEYS`); per-block counts are `<key>_pages` (`never_sent_pages` in info, size,
extract and convert).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..formats import ram as R
from .ramscan import RecordTable
from .recindex import RecordIndex
from .stream import RamBlock

PAGE_NEVER_SENT = 0
PAGE_ZERO = 1
PAGE_DATA = 2

#: the word for each page state in every report
STATE_WORDS = {PAGE_NEVER_SENT: "never sent", PAGE_ZERO: "zero", PAGE_DATA: "data"}
#: the same as JSON keys
STATE_KEYS = {k: v.replace(" ", "_") for k, v in STATE_WORDS.items()}
#: pages sent more than once (legacy), whatever their final state: "re-sent xN"
RESENT_WORD = "re-sent"
RESENT_KEY = "resent"

KIND_MAPPED = 0xFFFF  # final copy is in a mapped-ram region

#: bitmap layouts: how a writing host's `unsigned long` words hold page bits
LAYOUT_LE64 = "le64"  # little-endian host, any word size (page i = bit i%8 of byte i/8)
LAYOUT_BE64 = "be64"  # big-endian host, 64-bit unsigned long
LAYOUT_BE32 = "be32"  # big-endian host, 32-bit unsigned long
LAYOUTS = (LAYOUT_LE64, LAYOUT_BE64, LAYOUT_BE32)


@dataclass
class BlockMap:
    block: RamBlock
    state: np.ndarray  # uint8 PAGE_*
    sends: np.ndarray  # uint32
    offset: np.ndarray  # int64 file offset of the final copy's payload, -1 if none
    final_kind: np.ndarray  # uint16 RAM_SAVE_FLAG_* of the final record (KIND_MAPPED)
    last_record: np.ndarray | None = None  # int64 index into the RecordTable, -1 if none
    # legacy pages whose final content needs replaying deltas (XBZRLE) or inflating
    replay_pages: np.ndarray | None = None
    layout: str | None = None  # mapped-ram: the bitmap layout the map was read with

    @property
    def name(self) -> str:
        return self.block.name

    @property
    def pages(self) -> int:
        return len(self.state)

    def count(self, state: int) -> int:
        return int(np.count_nonzero(self.state == state))


def legacy_maps(blocks: list[RamBlock], rt: RecordTable,
                index: RecordIndex | None = None) -> dict[str, BlockMap]:
    """Build every block's map from the page records of a legacy stream (`index`: the
    capture's RecordIndex of `rt`, built here when not given)."""
    if index is None:
        index = RecordIndex(rt, len(blocks))
    return {blk.name: _legacy_map(blk, rt, index) for blk in blocks}


def _legacy_map(blk: RamBlock, rt: RecordTable, index: RecordIndex) -> BlockMap:
    n = blk.pages
    rows = index.rows(blk.index)
    pages = rt.page[rows]
    sends = np.bincount(pages, minlength=n).astype(np.uint32)[:n]
    state = np.zeros(n, np.uint8)
    offset = np.full(n, -1, np.int64)
    final_kind = np.zeros(n, np.uint16)
    last_record = np.full(n, -1, np.int64)
    replay = np.empty(0, np.int64)
    if len(rows):
        last = RecordIndex.last_of_page(pages)
        lp = pages[last].astype(np.int64)
        li = rows[last].astype(np.int64)
        kinds = rt.kind[li]
        final_kind[lp] = kinds
        last_record[lp] = li
        zero = kinds == R.RAM_SAVE_FLAG_ZERO
        state[lp] = np.where(zero, PAGE_ZERO, PAGE_DATA)
        offset[lp] = np.where(zero, -1, rt.data_off[li])
        delta = (kinds == R.RAM_SAVE_FLAG_XBZRLE) | (kinds == R.RAM_SAVE_FLAG_COMPRESS_PAGE)
        replay = lp[delta]
    return BlockMap(blk, state, sends, offset, final_kind, last_record, replay)


def bitmap_bits(raw: np.ndarray, npages: int, layout: str = LAYOUT_LE64) -> np.ndarray:
    """Page bits from a raw bitmap dump, `npages` of them; see LAYOUT_*."""
    return all_bitmap_bits(raw, layout)[:npages].astype(bool)


def all_bitmap_bits(raw: np.ndarray, layout: str = LAYOUT_LE64) -> np.ndarray:
    """Every bit of a raw bitmap dump in page order (uint8 0/1), padding included."""
    if layout == LAYOUT_LE64:
        return np.unpackbits(raw, bitorder="little")
    if layout in (LAYOUT_BE64, LAYOUT_BE32):
        wb = 8 if layout == LAYOUT_BE64 else 4
        usable = len(raw) // wb * wb
        words = raw[:usable].reshape(-1, wb)[:, ::-1].reshape(-1)  # to little-endian order
        return np.unpackbits(words, bitorder="little")
    raise ValueError(layout)


def mapped_ram_map(blk: RamBlock, raw_bitmap: np.ndarray,
                   layout: str = LAYOUT_LE64) -> BlockMap:
    """A mapped-ram block's map from its raw bitmap read with `layout`."""
    n = blk.pages
    info = blk.mapped_ram
    assert info is not None
    state = np.full(n, PAGE_ZERO, np.uint8)
    sends = np.zeros(n, np.uint32)
    offset = np.full(n, -1, np.int64)
    final_kind = np.zeros(n, np.uint16)
    if not info.skipped:
        idx = np.flatnonzero(bitmap_bits(raw_bitmap, n, layout))
        state[idx] = PAGE_DATA
        sends[idx] = 1
        offset[idx] = info.pages_offset + idx.astype(np.int64) * blk.page_size
        final_kind[idx] = KIND_MAPPED
    else:
        state[:] = PAGE_NEVER_SENT
    return BlockMap(blk, state, sends, offset, final_kind, layout=layout)


def runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run-length encoding: (starts, ends, value) of runs of equal values."""
    n = len(values)
    if n == 0:
        e = np.empty(0, np.int64)
        return e, e, values[:0]
    cut = np.flatnonzero(values[1:] != values[:-1]) + 1
    starts = np.concatenate(([0], cut)).astype(np.int64)
    ends = np.concatenate((cut, [n])).astype(np.int64)
    return starts, ends, values[starts]
