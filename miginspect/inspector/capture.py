"""A capture: one opened migration file, its walk and its page maps."""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

import numpy as np

from ..errors import FormatError, MigError, UsageError
from .content import PageReader
from .pagemap import BlockMap, legacy_maps, mapped_ram_map
from .ramscan import empty_records
from .source import Source, open_source
from .stream import RamBlock, StreamWalk, walk_stream

Progress = Callable[[int, int], None]


class Capture:
    def __init__(self, source: Source, walk: StreamWalk) -> None:
        self.source = source
        self.walk = walk
        self.path = source.path
        self.bitmap_layout = "le64"

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
        raise UsageError(f"no RAMBlock named {name!r} (blocks: {names})")

    # -- maps -------------------------------------------------------------
    @cached_property
    def maps(self) -> dict[str, BlockMap]:
        w = self.walk
        if w.mapped_ram:
            out = {}
            for b in w.blocks:
                raw = self.raw_bitmap(b)
                out[b.name] = mapped_ram_map(b, raw, self.bitmap_layout)
            return out
        return legacy_maps(w.blocks, w.records if w.records is not None else empty_records())

    def raw_bitmap(self, b: RamBlock) -> np.ndarray:
        info = b.mapped_ram
        if info is None or info.skipped:
            return np.zeros(0, np.uint8)
        buf = self.source.buf
        return np.frombuffer(buf, np.uint8, count=info.bitmap_bytes, offset=info.bitmap_offset)

    @cached_property
    def reader(self) -> PageReader:
        r = PageReader(self.source.buf, self.page_size, self.walk.records)
        r.release = self.source.release
        return r

    def page(self, block: str, index: int) -> bytes:
        bm = self.maps[block]
        if not 0 <= index < bm.pages:
            raise UsageError(f"page {index} is outside {block!r} ({bm.pages} pages)")
        return self.reader.page(bm, index)

    def hashes(self, block: str, progress: Callable[[int], None] | None = None) -> np.ndarray:
        cache = self.__dict__.setdefault("_hashes", {})
        if block not in cache:
            cache[block] = self.reader.hashes(self.maps[block], progress)
        return cache[block]

    # -- lifetime ----------------------------------------------------------
    def close(self) -> None:
        self.__dict__.pop("reader", None)
        self.__dict__.pop("_hashes", None)
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
) -> Capture:
    """Open and walk `path`. With `strict`, damage (a FormatError) is raised; other
    stops (an unsupported feature) stay in `capture.walk.error` for the caller to show."""
    src = open_source(path, progress)
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
