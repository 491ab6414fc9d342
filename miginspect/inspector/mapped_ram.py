"""mapped-ram bitmaps checked against their pages regions: which host layout the
bitmaps are in, whether they can be trusted, and stale pages.

The bitmap of a mapped-ram block is a dump of the writing host's `unsigned
long` words and the file records neither the word size nor the byte order.
Read as little-endian (`le64`: the layout of every QEMU host in practice, and
the only one whose word size does not matter), it must agree with the pages
region:

* a set bit is a page QEMU wrote, so it is file data (not a hole) and, unless
  zero-page detection was off, not all zero;
* a clear bit is a zero page; bytes that are not zero under a clear bit are
  "stale" (an older copy QEMU later found zero and left in place). The bitmap
  wins: such a page reads as zero, but forensics wants to know;
* bits past the last page (the rest of the last word) are never set by QEMU.

Holes are found with SEEK_DATA/SEEK_HOLE on the file behind the buffer, so
pages in holes are never read. Only clear-bit pages that lie in file data are
read (to count stale pages). When any block disagrees, every data page of every
region is classified zero / non-zero once and each candidate layout (`le64`,
`be64`, `be32`) is scored by how many pages it contradicts, summed over the
file (one host wrote every block). A layout that explains the bytes much better
than little-endian is the file's layout: the maps are read with it (so every
command reads the right pages) and the verdict says the bitmaps are not in the
layout QEMU on a little-endian host reads.

`bitmap_trust` computes all of it once; `Capture.bitmap_trust` caches it and every
command reads its verdict from there.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .pagemap import LAYOUT_LE64, LAYOUTS, all_bitmap_bits, bitmap_bits
from .stream import RamBlock

LAYOUT_NAMES = {
    "le64": "little-endian host (any word size)",
    "be64": "big-endian host, 64-bit unsigned long",
    "be32": "big-endian host, 32-bit unsigned long",
}
#: the bitmap, read as little-endian, is trusted
VERDICT_TRUSTED = "trusted"
#: the pages regions fit another host's layout much better: the maps are read with it
VERDICT_OTHER_HOST = "other-host-layout"
#: bits set past the last page and no layout explains the regions better: damage
VERDICT_PADDING = "bits-past-last-page"
VERDICTS = (VERDICT_TRUSTED, VERDICT_OTHER_HOST, VERDICT_PADDING)

#: pages classified per numpy step (16 MiB of 4 KiB pages)
_WINDOW_PAGES = 4096
#: a layout is the file's when it contradicts fewer than half the pages le64 does, and
#: at least this many fewer
_MIN_MISMATCH_GAIN = 8

Release = Callable[[int, int], None] | None


@dataclass
class BitmapCheck:
    """What the pages region of one mapped-ram block says about its bitmap, read with
    the file's layout (`layout`)."""

    block: str
    layout: str  # layout the map is read with (the file's)
    set_bits: int
    padding_bits: int  # bits set past the last page, in `layout`
    holes_known: bool  # the file system answered SEEK_DATA/SEEK_HOLE
    hole_pages: int  # region pages lying entirely in holes (never written)
    set_bits_over_holes: int  # set bits whose page the file never wrote
    stale_pages: int  # clear bits whose region bytes are not all zero
    zero_data_pages: int | None = None  # set bits whose bytes are zero (if classified)
    mismatches: dict[str, int] | None = None  # pages each layout contradicts (if scored)
    verdict: str = VERDICT_TRUSTED
    le64_padding_bits: int = 0  # bits past the last page as a little-endian host reads it
    #: pages each layout contradicts over the whole file (when scored)
    file_mismatches: dict[str, int] | None = None
    stale_index: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64), repr=False)

    @property
    def trusted(self) -> bool:
        return self.verdict == VERDICT_TRUSTED

    @property
    def untrusted(self) -> str | None:
        """Why the bitmap is not taken as QEMU on a little-endian host reads it (None
        when it is): the one wording every command shows."""
        if self.verdict == VERDICT_PADDING:
            return (f"{self.le64_padding_bits} bit(s) set past the last page: the bitmap was "
                    "not written by a little-endian host, or is damaged")
        if self.verdict == VERDICT_OTHER_HOST:
            m = self.file_mismatches or {}
            return (f"the bitmaps read as {LAYOUT_LE64} contradict the pages regions on "
                    f"{m.get(LAYOUT_LE64, 0)} pages, read as {self.layout} "
                    f"({LAYOUT_NAMES[self.layout]}) on {m.get(self.layout, 0)}: the file was "
                    "written by another kind of host (it does not record which); pages are "
                    f"read as {self.layout}, QEMU on a little-endian host would load them "
                    "wrong")
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "layout": self.layout,
            "verdict": self.verdict,
            "set_bits": self.set_bits,
            "padding_bits": self.padding_bits,
            "holes_known": self.holes_known,
            "hole_pages": self.hole_pages,
            "set_bits_over_holes": self.set_bits_over_holes,
            "stale_pages": self.stale_pages,
            "zero_data_pages": self.zero_data_pages,
            "layout_mismatches": self.mismatches,
            "untrusted": self.untrusted,
        }


@dataclass
class BitmapTrust:
    """The file-level answer: the layout every block's bitmap is read with, and each
    block's check."""

    layout: str = LAYOUT_LE64
    #: pages each layout contradicts, summed over the blocks (None: nothing disagreed,
    #: so the regions were not classified)
    mismatches: dict[str, int] | None = None
    blocks: dict[str, BitmapCheck] = field(default_factory=dict)

    @property
    def trusted(self) -> bool:
        return all(c.trusted for c in self.blocks.values())

    def check(self, block: str) -> BitmapCheck | None:
        return self.blocks.get(block)

    def verdict(self, block: str) -> str | None:
        c = self.blocks.get(block)
        return c.verdict if c is not None else None

    def untrusted(self, block: str) -> str | None:
        c = self.blocks.get(block)
        return c.untrusted if c is not None else None


# -- reading -------------------------------------------------------------------------------
def raw_bitmap(buf: Any, blk: RamBlock) -> np.ndarray:
    """A mapped-ram block's bitmap bytes as written (empty for a skipped block)."""
    info = blk.mapped_ram
    if info is None or info.skipped:
        return np.zeros(0, np.uint8)
    return np.frombuffer(buf, np.uint8, count=info.bitmap_bytes, offset=info.bitmap_offset)


def source_bitmap_trust(src: Any, blocks: Sequence[RamBlock]) -> BitmapTrust:
    """`bitmap_trust` of an opened Source (anything with `buf`, `fd`, `release`) and the
    walk's blocks: for callers that hold no Capture (`Capture.bitmap_trust` is this)."""
    return bitmap_trust(src.buf, getattr(src, "fd", None), blocks,
                        lambda b: raw_bitmap(src.buf, b), getattr(src, "release", None))


# -- the one "bits past the last page" rule ----------------------------------------------
def padding_bits(raw: np.ndarray, npages: int, layout: str = LAYOUT_LE64) -> int:
    """Bits set in a raw bitmap dump past its `npages` pages (QEMU never sets them)."""
    if layout == LAYOUT_LE64:  # only the bytes from the last page's on can hold any
        tail = np.unpackbits(raw[npages // 8 :], bitorder="little")
        return int(np.count_nonzero(tail[npages % 8 :]))
    return int(np.count_nonzero(all_bitmap_bits(raw, layout)[npages:]))


def padding_offset(bitmap_offset: int, npages: int) -> int:
    """File offset of the first bitmap byte that holds a padding bit (little-endian)."""
    return bitmap_offset + npages // 8


# -- regions -------------------------------------------------------------------------------
def data_extents(fd: int | None, start: int, end: int) -> np.ndarray | None:
    """(k, 2) int64 array of [data_start, data_end) file ranges within [start, end),
    or None when the file system cannot tell holes from data."""
    if fd is None or start >= end or not hasattr(os, "SEEK_DATA"):
        return None
    out: list[tuple[int, int]] = []
    pos = start
    try:
        while pos < end:
            try:
                d = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # only a hole up to the end of the file
                    break
                raise
            if d >= end:
                break
            h = os.lseek(fd, d, os.SEEK_HOLE)
            out.append((d, min(h, end)))
            pos = h
    except OSError:
        return None
    return np.asarray(out, np.int64).reshape(-1, 2)


def pages_with_data(extents: np.ndarray | None, region: int, npages: int, ps: int) -> np.ndarray:
    """Bool per page of a region at file offset `region`: does any byte lie in file data."""
    if extents is None:
        return np.ones(npages, bool)
    marks = np.zeros(npages + 1, np.int32)
    if len(extents):
        first = (extents[:, 0] - region) // ps
        last = (extents[:, 1] - region + ps - 1) // ps  # exclusive
        np.add.at(marks, np.clip(first, 0, npages), 1)
        np.add.at(marks, np.clip(last, 0, npages), -1)
    return np.cumsum(marks[:-1]) > 0


def nonzero_pages(buf: Any, region: int, want: np.ndarray, ps: int,
                  release: Release = None) -> np.ndarray:
    """Bool per page of the region: True where the page's bytes are not all zero.
    Only pages flagged in `want` are read (in windows); the rest come back False."""
    n = len(want)
    out = np.zeros(n, bool)
    if not n:
        return out
    words = ps // 8
    for w0 in np.flatnonzero(np.add.reduceat(want, np.arange(0, n, _WINDOW_PAGES)) > 0):
        a = int(w0) * _WINDOW_PAGES
        b = min(n, a + _WINDOW_PAGES)
        v = np.frombuffer(buf, np.uint64, count=(b - a) * words, offset=region + a * ps)
        nz = np.bitwise_or.reduce(v.reshape(b - a, words), axis=1) != 0
        out[a:b] = nz & want[a:b]
        if release is not None:
            release(region + a * ps, region + b * ps)
    return out


# -- one block -------------------------------------------------------------------------------
@dataclass
class _Region:
    """One block's bitmap and what the file holds under it."""

    blk: RamBlock
    raw: np.ndarray
    has_data: np.ndarray  # bool per page
    holes_known: bool
    nonzero: np.ndarray | None = None  # bool per page, once classified
    stale_le64: np.ndarray | None = None  # bool per page: bytes under a clear le64 bit


def _region(buf: Any, fd: int | None, blk: RamBlock, raw: np.ndarray) -> _Region:
    info = blk.mapped_ram
    assert info is not None
    start = info.pages_offset
    ext = data_extents(fd, start, start + blk.used_length)
    return _Region(blk, raw, pages_with_data(ext, start, blk.pages, blk.page_size),
                   ext is not None)


def _disagrees(rg: _Region, buf: Any, release: Release) -> bool:
    """Whether the little-endian reading disagrees with the region anywhere: padding
    bits, a set bit over a hole, bytes under a clear bit (read only where there is data)."""
    n, ps = rg.blk.pages, rg.blk.page_size
    bits = bitmap_bits(rg.raw, n, LAYOUT_LE64)
    if padding_bits(rg.raw, n) or np.any(bits & ~rg.has_data):
        return True
    rg.stale_le64 = nonzero_pages(buf, rg.blk.mapped_ram.pages_offset, ~bits & rg.has_data, ps,
                                  release)
    return bool(rg.stale_le64.any())


def _classify(rg: _Region, buf: Any, release: Release) -> None:
    if rg.nonzero is None:
        rg.nonzero = nonzero_pages(buf, rg.blk.mapped_ram.pages_offset, rg.has_data,
                                   rg.blk.page_size, release)


def _block_check(rg: _Region, buf: Any, layout: str, release: Release,
                 mismatches: dict[str, int] | None) -> BitmapCheck:
    n, ps = rg.blk.pages, rg.blk.page_size
    bits = bitmap_bits(rg.raw, n, layout)
    if rg.nonzero is not None:
        stale_mask = ~bits & rg.nonzero
    elif layout == LAYOUT_LE64 and rg.stale_le64 is not None:
        stale_mask = rg.stale_le64
    else:
        stale_mask = nonzero_pages(buf, rg.blk.mapped_ram.pages_offset, ~bits & rg.has_data,
                                   ps, release)
    stale_index = np.flatnonzero(stale_mask)
    return BitmapCheck(
        block=rg.blk.name,
        layout=layout,
        set_bits=int(np.count_nonzero(bits)),
        padding_bits=padding_bits(rg.raw, n, layout),
        holes_known=rg.holes_known,
        hole_pages=int(np.count_nonzero(~rg.has_data)),
        set_bits_over_holes=int(np.count_nonzero(bits & ~rg.has_data)),
        stale_pages=len(stale_index),
        zero_data_pages=(int(np.count_nonzero(bits & ~rg.nonzero))
                         if rg.nonzero is not None else None),
        mismatches=mismatches,
        le64_padding_bits=padding_bits(rg.raw, n),
        stale_index=stale_index,
    )


def _scores(rg: _Region) -> dict[str, int]:
    assert rg.nonzero is not None
    return {lay: int(np.count_nonzero(bitmap_bits(rg.raw, rg.blk.pages, lay) != rg.nonzero))
            for lay in LAYOUTS}


def best_layout(mismatches: dict[str, int]) -> str:
    """The layout the regions say the bitmaps are in: little-endian unless another
    contradicts fewer than half as many pages, and at least _MIN_MISMATCH_GAIN fewer."""
    own = mismatches[LAYOUT_LE64]
    best = min(LAYOUTS, key=lambda k: mismatches[k])
    if best != LAYOUT_LE64 and mismatches[best] * 2 < own and \
            own - mismatches[best] >= _MIN_MISMATCH_GAIN:
        return best
    return LAYOUT_LE64


# -- the file ----------------------------------------------------------------------------------
def bitmap_trust(buf: Any, fd: int | None, blocks: Sequence[RamBlock],
                 raw_bitmap: Callable[[RamBlock], np.ndarray],
                 release: Release = None) -> BitmapTrust:
    """Check every mapped-ram block's bitmap against its region (module docstring):
    the layout to read the maps with and each block's verdict. `raw_bitmap(block)`
    gives a block's bitmap bytes; `fd` is the file behind `buf` (holes), `release`
    drops read pages from the resident set."""
    regions = [_region(buf, fd, b, raw_bitmap(b)) for b in blocks
               if b.mapped_ram is not None and not b.mapped_ram.skipped and b.pages]
    trust = BitmapTrust()
    per: dict[str, dict[str, int]] = {}
    if any(_disagrees(rg, buf, release) for rg in regions):
        total = dict.fromkeys(LAYOUTS, 0)
        for rg in regions:
            _classify(rg, buf, release)
            per[rg.blk.name] = _scores(rg)
            for lay, v in per[rg.blk.name].items():
                total[lay] += v
        trust.mismatches = total
        trust.layout = best_layout(total)
    for rg in regions:
        chk = _block_check(rg, buf, trust.layout, release,
                           per[rg.blk.name] if trust.mismatches else None)
        chk.file_mismatches = trust.mismatches
        if trust.layout != LAYOUT_LE64:
            chk.verdict = VERDICT_OTHER_HOST
        elif chk.le64_padding_bits:
            chk.verdict = VERDICT_PADDING
        trust.blocks[rg.blk.name] = chk
    for b in blocks:  # skipped and empty blocks: nothing to check
        if b.mapped_ram is not None and b.name not in trust.blocks:
            trust.blocks[b.name] = BitmapCheck(b.name, trust.layout, 0, 0, False, 0, 0, 0)
    return trust


__all__ = ["BitmapCheck", "BitmapTrust", "bitmap_trust", "source_bitmap_trust", "raw_bitmap",
           "best_layout", "padding_bits",
           "padding_offset", "data_extents", "pages_with_data", "nonzero_pages",
           "LAYOUT_NAMES", "VERDICT_TRUSTED", "VERDICT_OTHER_HOST", "VERDICT_PADDING",
           "VERDICTS"]
