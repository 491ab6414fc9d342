"""mapped-ram ("fixed-ram") per-RAMBlock header (struct MappedRamHeader, migration/ram.c)
and the layout rule QEMU's writer follows.

Written packed, big-endian, right after a RAMBlock's MEM_SIZE list entry. The
offsets are absolute file offsets. The bitmap at `bitmap_offset` is a raw dump
of the writing host's `unsigned long` words (host word size and byte order).

Layout (mapped_ram_setup_ramblock() / ram_save_setup()): the bitmap follows the
header, the pages region starts at the next MAPPED_RAM_FILE_OFFSET_ALIGNMENT
boundary after the bitmap and holds `used_length` bytes, and the next list
entry is written right after the region (QEMU seeks there). A block skipped by
x-ignore-shared (QEMU >= 11) has zero offsets, no bitmap and no region.
`place_ramblock` / `layout_ramblocks` are that rule, in one place.
"""

from collections.abc import Iterable
from typing import NamedTuple

from construct import Int32ub, Int64ub, Struct

MAPPED_RAM_HDR_VERSION = 1
MAPPED_RAM_FILE_OFFSET_ALIGNMENT = 0x100000  # pages_offset rounded up to 1 MiB
MAPPED_RAM_HEADER_SIZE = 28
MAPPED_RAM_LOAD_BUF_SIZE = 0x100000

MappedRamHeader = Struct(
    "version" / Int32ub,
    "page_size" / Int64ub,
    "bitmap_offset" / Int64ub,
    "pages_offset" / Int64ub,
)

assert MappedRamHeader.sizeof() == MAPPED_RAM_HEADER_SIZE


def bitmap_size(num_pages: int, host_long_bytes: int = 8) -> int:
    """Bytes QEMU writes for the bitmap of `num_pages` pages (BITS_TO_LONGS * sizeof(long))."""
    bits = host_long_bytes * 8
    return (num_pages + bits - 1) // bits * host_long_bytes


def pages_offset_for(bitmap_offset: int, num_pages: int, host_long_bytes: int = 8) -> int:
    """Where QEMU puts page 0 of a block whose bitmap starts at `bitmap_offset`."""
    end = bitmap_offset + bitmap_size(num_pages, host_long_bytes)
    a = MAPPED_RAM_FILE_OFFSET_ALIGNMENT
    return (end + a - 1) // a * a


def ramblock_entry_size(idstr_len: int, postcopy_page_size: bool = False,
                        ignore_shared: bool = False) -> int:
    """Bytes of a MEM_SIZE list entry before its MappedRamHeader (`ram.ramblock_entry`
    without `mapped_ram`): counted idstr, be64 used_length, the optional be64 page size
    (postcopy) and be64 mr_addr (x-ignore-shared)."""
    return 1 + idstr_len + 8 + (8 if postcopy_page_size else 0) + (8 if ignore_shared else 0)


class MappedRamPlacement(NamedTuple):
    """Where one RAMBlock's list entry, header, bitmap and pages lie in a mapped-ram file."""

    entry_offset: int
    header_offset: int
    bitmap_offset: int  # 0 for a block skipped by x-ignore-shared
    bitmap_bytes: int
    pages_offset: int  # 0 for a skipped block
    end: int  # where the next list entry starts (pages_offset + used_length)


def place_ramblock(entry_offset: int, entry_size: int, used_length: int, page_size: int,
                   skipped: bool = False, host_long_bytes: int = 8) -> MappedRamPlacement:
    """One block placed as QEMU's mapped-ram writer places it, its list entry (of
    `entry_size` bytes, see `ramblock_entry_size`) starting at `entry_offset`."""
    hdr = entry_offset + entry_size
    if skipped:  # zero offsets, no bitmap, no region, no seek
        return MappedRamPlacement(entry_offset, hdr, 0, 0, 0, hdr + MAPPED_RAM_HEADER_SIZE)
    bmo = hdr + MAPPED_RAM_HEADER_SIZE
    npages = used_length // page_size
    po = pages_offset_for(bmo, npages, host_long_bytes)
    return MappedRamPlacement(entry_offset, hdr, bmo, bitmap_size(npages, host_long_bytes), po,
                              po + used_length)


def layout_ramblocks(start: int, blocks: Iterable[tuple[int, int, int, bool]],
                     host_long_bytes: int = 8) -> list[MappedRamPlacement]:
    """Every block of a MEM_SIZE list placed in order from `start` (the file offset right
    after the be64 MEM_SIZE word); `blocks` yields (entry_size, used_length, page_size,
    skipped)."""
    out = []
    pos = start
    for entry_size, used_length, page_size, skipped in blocks:
        p = place_ramblock(pos, entry_size, used_length, page_size, skipped, host_long_bytes)
        out.append(p)
        pos = p.end
    return out
