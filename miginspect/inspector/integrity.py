"""Integrity of extracted files: the sha256 of what landed on disk, and which mapped-ram
bytes count as memory.

* `sha256_file` hashes an output after it is written, reading only its data extents
  (SEEK_DATA / SEEK_HOLE) and feeding zeros for its holes, so the digest is that of the
  file as any reader sees it, at hashing speed rather than disk speed for the zero part.
* Stale pages (mapped-ram bytes under a clear bitmap bit, inspector/mapped_ram.py) are
  not memory by QEMU's rule: the bitmap wins and the page reads as zero. `with_stale`
  gives a copy of a block's map in which they are data at their region offsets, for
  `--include-stale`. The stale set is the Capture's own bitmap verdict
  (`Capture.bitmap_trust`), so it is the same in every command.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace

import numpy as np

from .capture import Capture
from .pagemap import KIND_MAPPED, PAGE_DATA, BlockMap

_CHUNK = 16 << 20
_ZEROS = bytes(_CHUNK)


def sha256_file(path: str | os.PathLike[str], dir_fd: int | None = None) -> str:
    """sha256 of a (possibly sparse) regular file (`path` relative to `dir_fd` if given,
    never through a symlink)."""
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0), dir_fd=dir_fd)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            data = _next_data(fd, pos, size)
            while pos < data:  # a hole: zeros without reading
                n = min(_CHUNK, data - pos)
                h.update(_ZEROS[:n] if n < _CHUNK else _ZEROS)
                pos += n
            if pos >= size:
                break
            end = _next_hole(fd, pos, size)
            while pos < end:
                chunk = os.pread(fd, min(_CHUNK, end - pos), pos)
                if not chunk:
                    raise OSError(f"{path}: short read at {pos}")
                h.update(chunk)
                pos += len(chunk)
    finally:
        os.close(fd)
    return h.hexdigest()


def _next_data(fd: int, pos: int, size: int) -> int:
    if not hasattr(os, "SEEK_DATA"):
        return pos
    try:
        return min(os.lseek(fd, pos, os.SEEK_DATA), size)
    except OSError:  # ENXIO: only a hole to the end; EINVAL: not supported
        return size if _holes_supported(fd) else pos


def _next_hole(fd: int, pos: int, size: int) -> int:
    if not hasattr(os, "SEEK_HOLE"):
        return size
    try:
        return min(os.lseek(fd, pos, os.SEEK_HOLE), size)
    except OSError:
        return size


def _holes_supported(fd: int) -> bool:
    try:
        os.lseek(fd, 0, os.SEEK_HOLE)
        return True
    except OSError:
        return False


def stale_pages(cap: Capture, block: str) -> np.ndarray:
    """Indexes of the block's stale pages (empty for legacy streams)."""
    if cap.format != "mapped-ram" or cap.block(block).mapped_ram is None:
        return np.empty(0, np.int64)
    chk = cap.bitmap_trust.check(block)
    return chk.stale_index if chk is not None else np.empty(0, np.int64)


def with_stale(cap: Capture, bm: BlockMap) -> BlockMap:
    """A copy of `bm` in which stale pages are data read from their region offsets."""
    idx = stale_pages(cap, bm.name)
    info = bm.block.mapped_ram
    if not len(idx) or info is None:
        return bm
    state, offset, kind = bm.state.copy(), bm.offset.copy(), bm.final_kind.copy()
    state[idx] = PAGE_DATA
    offset[idx] = info.pages_offset + idx.astype(np.int64) * bm.block.page_size
    kind[idx] = KIND_MAPPED
    return replace(bm, state=state, offset=offset, final_kind=kind)


__all__ = ["sha256_file", "stale_pages", "with_stale"]
