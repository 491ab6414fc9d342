"""The page records of a legacy stream sorted by page, one block at a time.

Page maps (last record wins), content replay (every record of a page in stream
order) and the size audit (the first record of a page against its re-sends) all
need the records of a block grouped by page with stream order kept inside a
page. `RecordIndex` is that order, built once per capture: one stable sort of
the (block, page) key, kept as 4-byte row numbers (8-byte past 2**32 rows), so
it adds 4 B to the RecordTable's 24 B per record.
"""

from __future__ import annotations

import numpy as np

from .ramscan import RecordTable


class RecordIndex:
    """Rows of a RecordTable ordered by (block index, page), stream order within a page."""

    def __init__(self, rt: RecordTable, nblocks: int) -> None:
        self.rt = rt
        n = len(rt)
        if n:
            key = (rt.block.astype(np.int64) << 32) | rt.page
            order = np.argsort(key, kind="stable")
            del key
            self.order = order.astype(np.uint32) if n < (1 << 32) else order
            del order
            blocks = rt.block[self.order]
            self.bounds = np.searchsorted(blocks, np.arange(nblocks + 1), side="left")
        else:
            self.order = np.empty(0, np.uint32)
            self.bounds = np.zeros(nblocks + 1, np.int64)

    def rows(self, block: int) -> np.ndarray:
        """RecordTable rows of block index `block`, by page (a view, no copy)."""
        return self.order[int(self.bounds[block]) : int(self.bounds[block + 1])]

    def pages(self, block: int) -> np.ndarray:
        """The page of each row of `rows(block)` (ascending)."""
        return self.rt.page[self.rows(block)]

    @staticmethod
    def last_of_page(pages: np.ndarray) -> np.ndarray:
        """Mask over sorted `pages`: the last record of each page (the one that wins)."""
        last = np.ones(len(pages), bool)
        last[:-1] = pages[1:] != pages[:-1]
        return last

    @staticmethod
    def first_of_page(pages: np.ndarray) -> np.ndarray:
        """Mask over sorted `pages`: the first record of each page (later ones re-send it)."""
        first = np.ones(len(pages), bool)
        first[1:] = pages[1:] != pages[:-1]
        return first

    @property
    def nbytes(self) -> int:
        return self.order.nbytes + self.bounds.nbytes


__all__ = ["RecordIndex"]
