"""One page-map model for both layouts.

Per RAMBlock and page: the final state (never sent / zero / data), how many
times the page was sent (legacy: records; mapped-ram: 1 where the bitmap bit is
set), the file offset of the final copy and the kind of the final record, all
numpy arrays. Rules, decided here and tested:

* legacy: the last record of a page in stream order wins; PAGE, XBZRLE and
  COMPRESS_PAGE make it data, ZERO makes it zero; pages never sent stay absent
  (a fresh destination holds zeros there).
* mapped-ram: the bitmap wins over the bytes; a set bit is data at
  pages_offset + index * page_size, a clear bit is a zero page even where old
  bytes still sit in the file ("stale" pages). The file cannot tell a zero page
  from one never written, so no page is absent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..formats import ram as R
from .ramscan import RecordTable
from .stream import RamBlock

PAGE_ABSENT = 0
PAGE_ZERO = 1
PAGE_DATA = 2

KIND_MAPPED = 0xFFFF  # final copy is in a mapped-ram region


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
    # mapped-ram: clear-bit pages whose region bytes are not zero (filled lazily)
    stale_pages: np.ndarray | None = None
    bitmap_untrusted: str | None = None

    @property
    def name(self) -> str:
        return self.block.name

    @property
    def pages(self) -> int:
        return len(self.state)

    def count(self, state: int) -> int:
        return int(np.count_nonzero(self.state == state))


def legacy_maps(blocks: list[RamBlock], rt: RecordTable) -> dict[str, BlockMap]:
    """Build every block's map from the page records of a legacy stream."""
    out: dict[str, BlockMap] = {}
    for blk in blocks:
        n = blk.pages
        sel = np.flatnonzero(rt.block == blk.index)
        pages = rt.page[sel].astype(np.int64)
        sends = np.bincount(pages, minlength=n).astype(np.uint32)[:n]
        state = np.zeros(n, np.uint8)
        offset = np.full(n, -1, np.int64)
        final_kind = np.zeros(n, np.uint16)
        last_record = np.full(n, -1, np.int64)
        if len(sel):
            order = np.argsort(pages, kind="stable")  # stream order kept within a page
            sp = pages[order]
            last = np.ones(len(sp), bool)
            last[:-1] = sp[1:] != sp[:-1]
            lp = sp[last]
            li = sel[order[last]]
            kinds = rt.kind[li]
            final_kind[lp] = kinds
            last_record[lp] = li
            state[lp] = np.where(kinds == R.RAM_SAVE_FLAG_ZERO, PAGE_ZERO, PAGE_DATA)
            offset[lp] = np.where(kinds == R.RAM_SAVE_FLAG_ZERO, -1, rt.data_off[li])
            delta = (kinds == R.RAM_SAVE_FLAG_XBZRLE) | (kinds == R.RAM_SAVE_FLAG_COMPRESS_PAGE)
            replay = lp[delta]
        else:
            replay = np.empty(0, np.int64)
        out[blk.name] = BlockMap(blk, state, sends, offset, final_kind, last_record, replay)
    return out


def bitmap_bits(raw: np.ndarray, npages: int, layout: str = "le64") -> np.ndarray:
    """Page bits from a raw bitmap dump. `le64`: little-endian host (any word size);
    `be64` / `be32`: big-endian host with 64/32-bit unsigned long."""
    if layout == "le64":
        bits = np.unpackbits(raw, bitorder="little")
    elif layout in ("be64", "be32"):
        wb = 8 if layout == "be64" else 4
        usable = len(raw) // wb * wb
        words = raw[:usable].reshape(-1, wb)[:, ::-1].reshape(-1)  # to little-endian order
        bits = np.unpackbits(words, bitorder="little")
    else:
        raise ValueError(layout)
    return bits[:npages].astype(bool)


def mapped_ram_map(blk: RamBlock, raw_bitmap: np.ndarray, layout: str = "le64") -> BlockMap:
    n = blk.pages
    info = blk.mapped_ram
    assert info is not None
    state = np.full(n, PAGE_ZERO, np.uint8)
    sends = np.zeros(n, np.uint32)
    offset = np.full(n, -1, np.int64)
    final_kind = np.zeros(n, np.uint16)
    untrusted = None
    if not info.skipped:
        bits = bitmap_bits(raw_bitmap, n, layout)
        allbits = np.unpackbits(raw_bitmap, bitorder="little") if layout == "le64" else None
        if allbits is not None and allbits[n:].any():
            untrusted = (
                f"{int(allbits[n:].sum())} bit(s) set past the last page: the bitmap was not "
                "written by a little-endian host, or is damaged"
            )
        idx = np.flatnonzero(bits)
        state[idx] = PAGE_DATA
        sends[idx] = 1
        offset[idx] = info.pages_offset + idx.astype(np.int64) * blk.page_size
        final_kind[idx] = KIND_MAPPED
    else:
        state[:] = PAGE_ABSENT
    return BlockMap(blk, state, sends, offset, final_kind, bitmap_untrusted=untrusted)
