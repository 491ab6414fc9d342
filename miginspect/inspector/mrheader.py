"""A mapped-ram RAMBlock header checked against the data it points into.

The ram START section of a mapped-ram stream follows each RAMBlock list entry with a
`MappedRamHeader` (formats.mapped_ram): where the block's bitmap and pages region are.
QEMU's loader reads the bitmap and then each set page at those offsets; this module
refuses what it would refuse (with QEMU's words), notes what is merely odd, and says
where the sequential stream resumes.
"""

from __future__ import annotations

from typing import Any

from ..errors import InconsistentError, TruncatedError, UnsupportedError
from ..formats import mapped_ram as M
from .model import MappedRamInfo, RamBlock, StreamWalk


def read_block_header(w: StreamWalk, buf: Any, end: int, blk: RamBlock, h: Any,
                      hoff: int) -> int:
    """Check block `blk`'s header `h` (parsed at `hoff`; the data ends at `end`), set
    `blk.mapped_ram` and return the offset where the stream continues (after the pages
    region, or after the header for a block x-ignore-shared skipped)."""
    ps = w.page_size
    check_version(blk.name, h, hoff)
    if h.bitmap_offset == 0 and h.pages_offset == 0:
        blk.mapped_ram = MappedRamInfo(hoff, h.version, h.page_size, 0, 0, 0, skipped=True)
        if not w.ignore_shared:
            raise InconsistentError(
                f"mapped-ram block {blk.name!r} has zero offsets but x-ignore-shared is off",
                hoff, blk.name, code="mapped-ram")
        return hoff + M.MAPPED_RAM_HEADER_SIZE
    if h.page_size != ps:
        raise InconsistentError(
            f"mapped-ram header page size {h.page_size} != target page size {ps} "
            f"for {blk.name!r}", hoff, blk.name, code="mapped-ram")
    nbytes = M.bitmap_size(blk.used_length // ps)
    blk.mapped_ram = MappedRamInfo(hoff, h.version, h.page_size, h.bitmap_offset,
                                   h.pages_offset, nbytes)
    _check_bitmap(w, end, blk, h, hoff, nbytes)
    _check_pages(end, blk, h, hoff, nbytes, ps)
    return h.pages_offset + blk.used_length


def check_version(name: str, h: Any, hoff: int) -> None:
    """QEMU reads the header right after the entry's name and length and checks its
    version before anything else about the block."""
    if h.version > M.MAPPED_RAM_HDR_VERSION or h.version < 1:
        raise UnsupportedError(
            f"mapped-ram header version {h.version} for {name!r} (Migration mapped-ram "
            "capability version not supported)", hoff, name, code="mapped-ram-version")


def _check_bitmap(w: StreamWalk, end: int, blk: RamBlock, h: Any, hoff: int,
                  nbytes: int) -> None:
    if h.bitmap_offset + nbytes > end:
        raise TruncatedError(
            f"bitmap of {blk.name!r} at 0x{h.bitmap_offset:x} (+{nbytes}) lies past the end "
            f"of the data (0x{end:x}) (Error reading dirty bitmap)", hoff + 12, blk.name,
            code="mapped-ram-bitmap-past-end")
    hend = hoff + M.MAPPED_RAM_HEADER_SIZE
    if h.bitmap_offset < hend:
        raise InconsistentError(
            f"bitmap of {blk.name!r} at 0x{h.bitmap_offset:x} lies before the end of its own "
            f"header (0x{hend:x}); QEMU writes it right after the header", hoff + 12, blk.name,
            code="mapped-ram-overlap")
    if h.bitmap_offset != hend:
        w.note("warning", hoff + 12, blk.name,
               f"bitmap of {blk.name!r} at 0x{h.bitmap_offset:x}, not right after its "
               f"header (0x{hend:x}) where QEMU writes it", code="mapped-ram-odd-placement")


def _check_pages(end: int, blk: RamBlock, h: Any, hoff: int, nbytes: int, ps: int) -> None:
    if h.pages_offset % ps:
        raise InconsistentError(
            f"pages region of {blk.name!r} at 0x{h.pages_offset:x} is not page aligned "
            "(region has bad alignment)", hoff + 20, blk.name, code="mapped-ram-alignment")
    if h.pages_offset < h.bitmap_offset + nbytes and \
            h.pages_offset + blk.used_length > h.bitmap_offset:
        raise InconsistentError(
            f"pages region of {blk.name!r} overlaps its bitmap", hoff + 20, blk.name,
            code="mapped-ram-overlap")
    if h.pages_offset + blk.used_length > end:
        raise TruncatedError(
            f"pages region of {blk.name!r} (0x{h.pages_offset:x}+0x{blk.used_length:x}) "
            f"runs past the end of the data (0x{end:x})", hoff + 20, blk.name,
            code="mapped-ram-truncated")


def bitmap_all_clear(buf: Any, blk: RamBlock) -> bool:
    """No bit set in the block's bitmap (an x-ignore-shared block QEMU before 11.0 skipped
    this way)."""
    m = blk.mapped_ram
    if m is None or m.skipped:
        return False
    return buf[m.bitmap_offset:m.bitmap_offset + m.bitmap_bytes] == bytes(m.bitmap_bytes)
