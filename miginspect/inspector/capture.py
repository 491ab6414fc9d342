"""A capture: one opened migration file, its walk and what is derived from it.

Everything a command reads about a file beyond the walk is computed here, once,
and the same for every command: the record index (records by page), the page
maps, the mapped-ram bitmap verdict (`bitmap_trust`: which host layout the bitmaps
are in, whether they can be trusted; the maps are read with that layout), final
page contents and their hashes.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from ..errors import FormatError, MigError, UsageError
from .containers.base import OpenOptions
from .mapped_ram import BitmapTrust, raw_bitmap, source_bitmap_trust
from .pagemap import BlockMap, legacy_maps, mapped_ram_map
from .ramscan import RecordTable, empty_records
from .recindex import RecordIndex
from .source import Source, open_source
from .stream import RamBlock, StreamWalk, walk_stream

if TYPE_CHECKING:
    from .content import PageReader  # imported by `reader`, when page content is read

Progress = Callable[[int, int], None]


class Capture:
    def __init__(self, source: Source, walk: StreamWalk) -> None:
        self.source = source
        self.walk = walk
        self.path = source.path
        self._hashes: dict[str, np.ndarray] = {}

    # -- basic facts ----------------------------------------------------
    @property
    def format(self) -> str:
        return "mapped-ram" if self.walk.mapped_ram else "legacy"

    @property
    def page_size(self) -> int:
        return self.walk.page_size

    @property
    def blocks(self) -> list[RamBlock]:
        return self.walk.blocks

    def block(self, name: str) -> RamBlock:
        for b in self.walk.blocks:
            if b.name == name:
                return b
        names = ", ".join(b.name for b in self.walk.blocks)
        raise UsageError(f"no RAMBlock named {name!r} (blocks: {names})", code="usage")

    # -- derived facts -----------------------------------------------------
    @property
    def records(self) -> RecordTable:
        """The page records of a legacy stream (empty for mapped-ram)."""
        return self.walk.records if self.walk.records is not None else empty_records()

    @cached_property
    def record_index(self) -> RecordIndex:
        """The page records sorted by (block, page), stream order within a page."""
        return RecordIndex(self.records, len(self.walk.blocks))

    @cached_property
    def bitmap_trust(self) -> BitmapTrust:
        """mapped-ram: the layout the bitmaps are in (found from the pages regions) and
        each block's verdict; empty for a legacy stream. The one answer every command
        reports."""
        if not self.walk.mapped_ram:
            return BitmapTrust()
        return source_bitmap_trust(self.source, self.walk.blocks)

    @property
    def bitmap_layout(self) -> str | None:
        """The layout the mapped-ram maps are read with (None for a legacy stream)."""
        return self.bitmap_trust.layout if self.walk.mapped_ram else None

    @cached_property
    def maps(self) -> dict[str, BlockMap]:
        w = self.walk
        if w.mapped_ram:
            layout = self.bitmap_trust.layout
            return {b.name: mapped_ram_map(b, self.raw_bitmap(b), layout) for b in w.blocks}
        return legacy_maps(w.blocks, self.records, self.record_index)

    def raw_bitmap(self, b: RamBlock) -> np.ndarray:
        return raw_bitmap(self.source.buf, b)

    @cached_property
    def reader(self) -> PageReader:
        from .content import PageReader

        index = self.record_index if self.walk.records is not None else None
        r = PageReader(self.source.buf, self.page_size, self.walk.records, index)
        r.release = self.source.release
        return r

    def page(self, block: str, index: int) -> bytes:
        bm = self.maps[block]
        if not 0 <= index < bm.pages:
            raise UsageError(f"page {index} is outside {block!r} ({bm.pages} pages)", code="usage")
        return self.reader.page(bm, index)

    def hashes(self, block: str, progress: Callable[[int], None] | None = None) -> np.ndarray:
        if block not in self._hashes:
            self._hashes[block] = self.reader.hashes(self.maps[block], progress)
        return self._hashes[block]

    # -- lifetime ----------------------------------------------------------
    def close(self) -> None:
        self.__dict__.pop("reader", None)
        self._hashes.clear()
        self.source.close()

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_capture(
    path: str,
    progress: Progress | None = None,
    strict: bool = True,
    page_size: int | None = None,
    snapshot: str | None = None,
    any_snapshot: bool = False,
) -> Capture:
    """Open and walk `path`. With `strict`, damage (a FormatError) is raised; other
    stops (an unsupported feature) stay in `capture.walk.error` for the caller to show.
    `snapshot`: which internal snapshot of a disk image (ID or name; the container kind
    refuses it for inputs that have none); `any_snapshot`: without one, the first that
    holds VM state (the container's `table` lists the others)."""
    src = open_source(path, progress, OpenOptions(snapshot=snapshot, any_snapshot=any_snapshot))
    try:
        walk = walk_stream(src.buf, src.base, progress, page_size, src.release)
    except BaseException:
        src.close()
        raise
    cap = Capture(src, walk)
    if strict and isinstance(walk.error, FormatError):
        err: MigError = src.explain(walk.error)
        cap.close()
        raise err
    return cap
