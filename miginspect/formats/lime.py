"""LiME memory image (Linux Memory Extractor's "lime" format, as Volatility 3 reads it).

The image is a sequence of ranges, each a 32-byte `lime_mem_range_header` followed by
`e_addr - s_addr + 1` bytes of physical memory (e_addr is inclusive), little-endian.
"""

from construct import Const, Int32ul, Int64ul, Padding, Struct

LIME_MAGIC = 0x4C694D45  # "EMiL" in the file
LIME_VERSION = 1

lime_mem_range_header = Struct(
    "magic" / Const(LIME_MAGIC, Int32ul),
    "version" / Int32ul,
    "s_addr" / Int64ul,
    "e_addr" / Int64ul,
    "reserved" / Padding(8),
)

LIME_HEADER_SIZE = lime_mem_range_header.sizeof()
assert LIME_HEADER_SIZE == 32
