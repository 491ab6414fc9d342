"""The RAM section's records (migration/ram.c, migration/ram.h).

Every record starts with a be64 word; the bits below the target page size are
flags, the rest is the page's byte offset inside its RAMBlock (or, for
MEM_SIZE, the total RAM size). Without CONTINUE a counted RAMBlock idstr
follows the word. The section is registered as idstr "ram", version 4.
"""

from construct import (
    Bytes,
    Computed,
    If,
    Int8ub,
    Int16ub,
    Int32ub,
    Int64ub,
    Struct,
    Switch,
    this,
)

from .common import CountedString
from .mapped_ram import MappedRamHeader

RAM_SECTION_IDSTR = "ram"
RAM_SECTION_VERSION = 4

RAM_SAVE_FLAG_FULL = 0x01  # obsolete, never emitted
RAM_SAVE_FLAG_ZERO = 0x02  # formerly RAM_SAVE_FLAG_COMPRESS
RAM_SAVE_FLAG_MEM_SIZE = 0x04
RAM_SAVE_FLAG_PAGE = 0x08
RAM_SAVE_FLAG_EOS = 0x10
RAM_SAVE_FLAG_CONTINUE = 0x20
RAM_SAVE_FLAG_XBZRLE = 0x40
RAM_SAVE_FLAG_HOOK = 0x80  # RDMA only
RAM_SAVE_FLAG_COMPRESS_PAGE = 0x100  # removed in QEMU 9.1
RAM_SAVE_FLAG_MULTIFD_FLUSH = 0x200

RAM_SAVE_FLAG_NAMES = {
    RAM_SAVE_FLAG_FULL: "FULL",
    RAM_SAVE_FLAG_ZERO: "ZERO",
    RAM_SAVE_FLAG_MEM_SIZE: "MEM_SIZE",
    RAM_SAVE_FLAG_PAGE: "PAGE",
    RAM_SAVE_FLAG_EOS: "EOS",
    RAM_SAVE_FLAG_CONTINUE: "CONTINUE",
    RAM_SAVE_FLAG_XBZRLE: "XBZRLE",
    RAM_SAVE_FLAG_HOOK: "HOOK",
    RAM_SAVE_FLAG_COMPRESS_PAGE: "COMPRESS_PAGE",
    RAM_SAVE_FLAG_MULTIFD_FLUSH: "MULTIFD_FLUSH",
}

#: Records that carry a page and so a block reference (idstr or CONTINUE).
PAGE_RECORD_FLAGS = (
    RAM_SAVE_FLAG_ZERO,
    RAM_SAVE_FLAG_PAGE,
    RAM_SAVE_FLAG_XBZRLE,
    RAM_SAVE_FLAG_COMPRESS_PAGE,
)

#: ENCODING_FLAG_XBZRLE, the only valid first byte of an XBZRLE payload.
ENCODING_FLAG_XBZRLE = 0x1

#: Every flag QEMU ever defined is below this; masking with it splits the
#: header word the same way for any target page size >= 1 KiB.
RAM_SAVE_FLAG_MASK = 0x3FF


def flag_names(flags: int) -> str:
    """`PAGE|CONTINUE` style rendering of a flags value, unknown bits in hex."""
    names = [n for bit, n in RAM_SAVE_FLAG_NAMES.items() if flags & bit]
    rest = flags & ~sum(RAM_SAVE_FLAG_NAMES)
    if rest:
        names.append(f"0x{rest:x}")
    return "|".join(names) or "0"


#: Header word split with the target page size passed as the `page_size`
#: parse/build parameter.
ram_record_word = Struct(
    "word" / Int64ub,
    "flags" / Computed(this.word & (this._params.page_size - 1)),
    "addr" / Computed(lambda ctx: ctx.word & ~(ctx._params.page_size - 1)),
)

#: One entry of the MEM_SIZE RAMBlock list (parse_ramblock()). The optional
#: fields follow the stream's capabilities, passed as parameters:
#: `postcopy_page_size` (bool), `ignore_shared` (bool), `mapped_ram` (bool).
ramblock_entry = Struct(
    "idstr" / CountedString,
    "used_length" / Int64ub,
    "page_size" / If(this._params.postcopy_page_size, Int64ub),
    "mr_addr" / If(this._params.ignore_shared, Int64ub),
    "mapped_ram" / If(this._params.mapped_ram, MappedRamHeader),
)

#: save_xbzrle_page(): encoding flag, be16 length, delta bytes.
xbzrle_payload = Struct(
    "encoding" / Int8ub,
    "length" / Int16ub,
    "data" / Bytes(this.length),
)

#: COMPRESS_PAGE (<= 9.0): be32 length then zlib data.
compress_page_payload = Struct(
    "length" / Int32ub,
    "data" / Bytes(this.length),
)

_ptype = this.flags & ~RAM_SAVE_FLAG_CONTINUE

#: One RAM record other than MEM_SIZE (whose list needs the running total and,
#: for mapped-ram, a jump in the file; see `ramblock_entry`). The payload of a
#: PAGE is `page_size` raw bytes.
ram_page_record = Struct(
    *ram_record_word.subcons,
    "idstr"
    / If(
        lambda ctx: (ctx.flags & ~RAM_SAVE_FLAG_CONTINUE) in PAGE_RECORD_FLAGS
        and not ctx.flags & RAM_SAVE_FLAG_CONTINUE,
        CountedString,
    ),
    "payload"
    / Switch(
        _ptype,
        {
            RAM_SAVE_FLAG_ZERO: Int8ub,
            RAM_SAVE_FLAG_PAGE: Bytes(this._params.page_size),
            RAM_SAVE_FLAG_XBZRLE: xbzrle_payload,
            RAM_SAVE_FLAG_COMPRESS_PAGE: compress_page_payload,
        },
    ),
)
