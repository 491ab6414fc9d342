"""`map`: every RAMBlock's pages by final state, as run-length ranges and cells.

Page classes, one per page, from the unified `BlockMap`:

* never sent (legacy only: no record names the page; a fresh destination holds zeros),
* zero (legacy: last record ZERO; mapped-ram: clear bit),
* data (last copy is page bytes; mapped-ram: set bit),
* re-sent k times (legacy: k >= 2 records for the page, whatever the final state).

For mapped-ram files only the bitmaps are read, never the pages regions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .capture import Capture
from .mapped_ram import BitmapCheck
from .pagemap import (
    PAGE_DATA,
    PAGE_NEVER_SENT,
    PAGE_ZERO,
    STATE_KEYS,
    BlockMap,
    runs,
)
from .report import PageCounts, SendHistogram, Stop, stop_of
from .salvage import Salvage, salvage

# Cell classes: the page states, plus re-sent (sent >= 2 times, whatever the final state).
CLASS_NEVER_SENT = PAGE_NEVER_SENT
CLASS_ZERO = PAGE_ZERO
CLASS_DATA = PAGE_DATA
CLASS_RESENT = 3
CLASS_MISSING = 4  # --partial: not in the file (it stops before the page's last copy)


@dataclass
class BlockView:
    name: str
    used_length: int
    page_size: int
    pages: int
    counts: PageCounts  # pages per state; "resent" = sent >= 2 times
    max_sends: int
    resent_histogram: SendHistogram  # pages sent exactly k times (k >= 2)
    mr_addr: int | None = None
    bitmap_untrusted: str | None = None
    bitmap_layout: str | None = None  # mapped-ram: the layout the bitmap was read with
    bitmap_verdict: str | None = None  # mapped-ram: mapped_ram.VERDICT_*
    state: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0, np.uint8))
    sends: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0, np.uint32))
    #: --partial: pages the file does not give (salvage.BlockExtent.missing_mask)
    missing: np.ndarray | None = field(repr=False, default=None)

    def ranges(self) -> dict[str, list[list[int]]]:
        """state -> [[first_page, end_page), ...] run-length ranges."""
        starts, ends, vals = runs(self.state)
        out = {}
        for st, key in STATE_KEYS.items():
            sel = vals == st
            out[key] = np.stack((starts[sel], ends[sel]), axis=1).tolist()
        return out

    def resent_ranges(self) -> list[list[int]]:
        """[[first_page, end_page, k], ...]: runs of pages each sent k >= 2 times."""
        multi = np.where(self.sends >= 2, self.sends, 0)
        rs, re_, rv = runs(multi)
        sel = rv >= 2
        return np.stack((rs[sel], re_[sel], rv[sel].astype(np.int64)), axis=1).tolist()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "used_length": self.used_length,
            "page_size": self.page_size,
            "pages": self.pages,
            "counts": self.counts,
            "max_sends": self.max_sends,
            "resent_histogram": self.resent_histogram,
            "ranges": self.ranges(),
            "resent_ranges": self.resent_ranges(),
            "mr_addr": self.mr_addr,
            "bitmap_untrusted": self.bitmap_untrusted,
            "bitmap_layout": self.bitmap_layout,
            "bitmap_verdict": self.bitmap_verdict,
        }


@dataclass
class MapReport:
    path: str
    format: str
    page_size: int
    blocks: list[BlockView]
    stopped: Stop | None = None  # why the walk stopped early (pages after it are missing)
    salvage: Salvage | None = None  # --partial: the pages the file gives and misses, and why

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "page_size": self.page_size,
            "stopped": self.stopped,
            "salvage": self.salvage,
            "range_convention": "[first_page, end_page) page indices within the block; "
                                "byte offset = page * page_size",
            "blocks": [b.to_json() for b in self.blocks],
        }


def block_view(bm: BlockMap, bitmap: BitmapCheck | None = None) -> BlockView:
    """The view of one block's map (`bitmap`: the capture's verdict on its bitmap)."""
    state, sends = bm.state, bm.sends
    counts = PageCounts(bm.count(PAGE_NEVER_SENT), bm.count(PAGE_ZERO), bm.count(PAGE_DATA),
                        int(np.count_nonzero(sends >= 2)))
    hist = SendHistogram()
    if counts.resent:
        hist = SendHistogram.of(zip(*np.unique(sends[sends >= 2], return_counts=True),
                                    strict=True))
    return BlockView(
        name=bm.name,
        used_length=bm.block.used_length,
        page_size=bm.block.page_size,
        pages=bm.pages,
        counts=counts,
        max_sends=int(sends.max()) if len(sends) else 0,
        resent_histogram=hist,
        mr_addr=bm.block.mr_addr,
        bitmap_untrusted=bitmap.untrusted if bitmap is not None else None,
        bitmap_layout=bitmap.layout if bitmap is not None else None,
        bitmap_verdict=bitmap.verdict if bitmap is not None else None,
        state=state,
        sends=sends,
    )


def page_map(cap: Capture, blocks: list[str] | None = None,
             partial: bool = False) -> MapReport:
    """The map report of `cap`, limited to the named blocks if given. `partial`: `cap`
    was opened with strict=False; pages the file does not give are missing (`salvage`)."""
    trust = cap.bitmap_trust
    if not partial:
        names = [cap.block(n).name for n in blocks] if blocks else [b.name for b in cap.blocks]
        return MapReport(cap.path, cap.format, cap.page_size,
                         [block_view(cap.maps[n], trust.check(n)) for n in names],
                         stop_of(cap.walk.error))
    sal = salvage(cap)
    every = [b.name for b in sal.blocks]
    for n in blocks or []:
        if n not in every:
            cap.block(n)  # raises, naming the blocks
    sal = sal.only(blocks or every)
    views = []
    for ext in sal.blocks:
        assert ext.block_map is not None
        v = block_view(ext.block_map, trust.check(ext.name))
        v.missing = ext.missing_mask
        views.append(v)
    return MapReport(cap.path, cap.format, cap.page_size, views, sal.stopped, sal)


@dataclass
class Cells:
    """Per-cell page counts of one block (cells of `per_cell` consecutive pages)."""

    per_cell: int
    counts: np.ndarray  # (ncells, 5) pages per class (CLASS_*)
    max_sends: np.ndarray  # (ncells,) highest send count in the cell
    size: np.ndarray  # (ncells,) pages in the cell (the last one may be short)

    @property
    def dominant(self) -> np.ndarray:
        """Class shown per cell: re-sent if any page was re-sent, else the class with most
        pages (ties go to data, then zero)."""
        c = self.counts
        order = c[:, [CLASS_NEVER_SENT, CLASS_ZERO, CLASS_DATA]]
        # argmax picks the first maximum: reverse so data wins ties
        dom = 2 - np.argmax(order[:, ::-1], axis=1)
        return np.where(c[:, CLASS_RESENT] > 0, CLASS_RESENT, dom)

    @property
    def purity(self) -> np.ndarray:
        """Fraction of the cell's pages that belong to its dominant class."""
        d = self.dominant
        return self.counts[np.arange(len(d)), d] / np.maximum(self.size, 1)


def cells(view: BlockView, per_cell: int) -> Cells:
    """Bin a block's pages into cells of `per_cell` pages."""
    per_cell = max(1, int(per_cell))
    n = view.pages
    cls = view.state.astype(np.uint8)  # CLASS_* equal PAGE_* for the three states
    resent = view.sends >= 2
    cls = np.where(resent, CLASS_RESENT, cls)
    if view.missing is not None:
        cls = np.where(view.missing, CLASS_MISSING, cls)
    ncells = (n + per_cell - 1) // per_cell
    pad = ncells * per_cell - n
    c = np.concatenate((cls, np.full(pad, 255, np.uint8))).reshape(ncells, per_cell)
    counts = np.stack([(c == k).sum(axis=1) for k in range(5)], axis=1)
    s = np.concatenate((view.sends, np.zeros(pad, view.sends.dtype))).reshape(ncells, per_cell)
    size = np.full(ncells, per_cell, np.int64)
    if pad and ncells:
        size[-1] = per_cell - pad
    return Cells(per_cell, counts, s.max(axis=1) if ncells else np.empty(0, np.uint32), size)
