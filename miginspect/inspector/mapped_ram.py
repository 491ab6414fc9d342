"""mapped-ram regions checked against their bitmaps: stale pages and bitmap trust.

The bitmap of a mapped-ram block is a dump of the writing host's `unsigned
long` words and the file records neither the word size nor the byte order.
Read as little-endian (the only layout QEMU hosts in practice write, and the
only one whose word size does not matter), it must agree with the pages region:

* a set bit is a page QEMU wrote, so it is file data (not a hole) and, unless
  zero-page detection was off, not all zero;
* a clear bit is a zero page; bytes that are not zero under a clear bit are
  "stale" (an older copy QEMU later found zero and left in place). The bitmap
  wins: such a page reads as zero, but forensics wants to know.

Holes are found with SEEK_DATA/SEEK_HOLE on the file behind the buffer, so
pages in holes are never read. Only clear-bit pages that lie in file data are
read (to count stale pages). When that turns up disagreement, every data page
of the region is classified zero / non-zero once and each candidate layout
(`le64`, `be64`, `be32`) is scored by how many pages it contradicts; a layout
that explains the bytes much better than little-endian marks the bitmap as
untrusted (reported, never silently switched).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .pagemap import BlockMap, bitmap_bits
from .stream import RamBlock

LAYOUTS = ("le64", "be64", "be32")
LAYOUT_NAMES = {
    "le64": "little-endian host (any word size)",
    "be64": "big-endian host, 64-bit unsigned long",
    "be32": "big-endian host, 32-bit unsigned long",
}
#: pages classified per numpy step (16 MiB of 4 KiB pages)
_WINDOW_PAGES = 4096


@dataclass
class BitmapCheck:
    """What the pages region of one mapped-ram block says about its bitmap."""

    block: str
    layout: str  # layout the map was read with
    set_bits: int
    padding_bits: int  # bits set past the last page
    holes_known: bool  # the file system answered SEEK_DATA/SEEK_HOLE
    hole_pages: int  # region pages lying entirely in holes (never written)
    set_bits_over_holes: int  # set bits whose page the file never wrote
    stale_pages: int  # clear bits whose region bytes are not all zero
    zero_data_pages: int | None = None  # set bits whose bytes are zero (if classified)
    mismatches: dict[str, int] | None = None  # pages each layout contradicts (if scored)
    untrusted: str | None = None
    stale_index: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64), repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "layout": self.layout,
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
                  release: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Bool per page of the region: True where the page's bytes are not all zero.
    Only pages flagged in `want` are read (in windows); the rest come back False."""
    n = len(want)
    out = np.zeros(n, bool)
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


def check_block(
    buf: Any, fd: int | None, blk: RamBlock, raw_bitmap: np.ndarray, layout: str = "le64",
    release: Callable[[int, int], None] | None = None,
) -> BitmapCheck:
    """Compare one block's bitmap with its pages region (see the module docstring)."""
    info = blk.mapped_ram
    assert info is not None
    n, ps = blk.pages, blk.page_size
    if info.skipped or n == 0:
        return BitmapCheck(blk.name, layout, 0, 0, False, 0, 0, 0)
    bits = bitmap_bits(raw_bitmap, n, layout)
    allbits = np.unpackbits(raw_bitmap, bitorder="little")
    padding = int(allbits[n:].sum()) if layout == "le64" else 0
    region = info.pages_offset
    ext = data_extents(fd, region, region + blk.used_length)
    has_data = pages_with_data(ext, region, n, ps)
    over_holes = int(np.count_nonzero(bits & ~has_data))
    stale_mask = nonzero_pages(buf, region, ~bits & has_data, ps, release)
    stale_index = np.flatnonzero(stale_mask)
    chk = BitmapCheck(
        block=blk.name,
        layout=layout,
        set_bits=int(np.count_nonzero(bits)),
        padding_bits=padding,
        holes_known=ext is not None,
        hole_pages=int(np.count_nonzero(~has_data)),
        set_bits_over_holes=over_holes,
        stale_pages=len(stale_index),
        stale_index=stale_index,
    )
    if padding:
        chk.untrusted = (f"{padding} bit(s) set past the last page: the bitmap was not written "
                         "by a little-endian host, or is damaged")
    if chk.stale_pages or over_holes or padding:
        _score_layouts(chk, buf, raw_bitmap, region, n, ps, has_data, bits, release)
    return chk


def _score_layouts(chk: BitmapCheck, buf: Any, raw: np.ndarray, region: int, n: int, ps: int,
                   has_data: np.ndarray, bits: np.ndarray,
                   release: Callable[[int, int], None] | None) -> None:
    nonzero = nonzero_pages(buf, region, has_data, ps, release)
    chk.zero_data_pages = int(np.count_nonzero(bits & ~nonzero))
    scores = {}
    for lay in LAYOUTS:
        b = bitmap_bits(raw, n, lay)
        scores[lay] = int(np.count_nonzero(b != nonzero))
    chk.mismatches = scores
    own = scores[chk.layout]
    best = min(scores, key=lambda k: scores[k])
    if best != chk.layout and scores[best] * 2 < own and own - scores[best] >= 8:
        chk.untrusted = (
            f"the bitmap read as {chk.layout} contradicts the region on {own} pages, read as "
            f"{best} ({LAYOUT_NAMES[best]}) on {scores[best]}: it was probably written by "
            "another kind of host (the file does not record which)")


def check_bitmaps(cap: Any) -> dict[str, BitmapCheck]:
    """Checks of every mapped-ram block of a Capture (cached on it). Fills
    `BlockMap.stale_pages` and, if untrusted, `BlockMap.bitmap_untrusted`."""
    cache = cap.__dict__.get("_bitmap_checks")
    if cache is not None:
        return cache
    out: dict[str, BitmapCheck] = {}
    src = cap.source
    for b in cap.blocks:
        if b.mapped_ram is None:
            continue
        chk = check_block(src.buf, getattr(src, "fd", None), b, cap.raw_bitmap(b),
                          cap.bitmap_layout, getattr(src, "release", None))
        bm: BlockMap = cap.maps[b.name]
        bm.stale_pages = chk.stale_index
        if chk.untrusted and not bm.bitmap_untrusted:
            bm.bitmap_untrusted = chk.untrusted
        out[b.name] = chk
    cap.__dict__["_bitmap_checks"] = out
    return out
