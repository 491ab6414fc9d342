"""mapped-ram ("fixed-ram") per-RAMBlock header (struct MappedRamHeader, migration/ram.c).

Written packed, big-endian, right after a RAMBlock's MEM_SIZE list entry. The
offsets are absolute file offsets. The bitmap at `bitmap_offset` is a raw dump
of the writing host's `unsigned long` words (host word size and byte order).
"""

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
