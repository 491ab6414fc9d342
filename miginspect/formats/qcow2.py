"""qcow2 image metadata (QEMU's docs/interop/qcow2.rst, block/qcow2.h).

Everything is big-endian. The header (`QCowHeader`, 72 bytes for version 2, at
least 104 for version 3) is followed by header extensions up to the end of the
first cluster. Guest offsets map to host offsets through a two-level table: the
L1 table (`l1_size` 64-bit entries) points to L2 tables of one cluster each,
whose entries describe one cluster each (16 bytes with Extended L2 Entries,
which add a 32-subcluster allocation / zero bitmap).

Internal snapshots are listed in the snapshot table: entries of a 40-byte
`QCowSnapshotHeader`, `extra_data_size` bytes of extra data
(`QCowSnapshotExtraData`), the ID and the name (not NUL-terminated), each entry
padded to a multiple of 8 (the last may end unpadded at the end of the file).
A snapshot's VM state is a QEMU migration stream of `vm_state_size` bytes
stored "like guest disk content" at guest offsets from the first L1 boundary at
or after the snapshot's `disk_size`, mapped by the snapshot's own L1 table
(`qcow2_vm_state_offset` in block/qcow2.h; see `vm_state_offset`).
"""

from __future__ import annotations

from construct import (
    Aligned,
    BitsInteger,
    BitStruct,
    Bytes,
    Const,
    ExprAdapter,
    FixedSized,
    Flag,
    GreedyBytes,
    GreedyRange,
    If,
    Int8ub,
    Int16ub,
    Int32ub,
    Int64ub,
    NullStripped,
    Padding,
    Rebuild,
    Struct,
    Switch,
    len_,
    this,
)

QCOW_MAGIC = b"QFI\xfb"

QCOW_CRYPT_NONE = 0
QCOW_CRYPT_AES = 1
QCOW_CRYPT_LUKS = 2
QCOW_CRYPT_NAMES = {QCOW_CRYPT_NONE: "none", QCOW_CRYPT_AES: "AES", QCOW_CRYPT_LUKS: "LUKS"}

# Implementation limits of QEMU's reader (block/qcow2.h); an image above them does not open.
QCOW_MAX_SNAPSHOTS = 65536
QCOW_MAX_L1_SIZE = 32 << 20  # bytes of an L1 table
QCOW_MAX_SNAPSHOTS_SIZE = 1024 * QCOW_MAX_SNAPSHOTS  # bytes of the snapshot table
QCOW_MAX_SNAPSHOT_EXTRA_DATA = 1024
MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21
MAX_BACKING_FILE_SIZE = 1023
MAX_REFCOUNT_ORDER = 6

QCOW2_V2_HEADER_LENGTH = 72
QCOW2_V3_MIN_HEADER_LENGTH = 104

QCOW_OFLAG_COPIED = 1 << 63
QCOW_OFLAG_COMPRESSED = 1 << 62
QCOW_OFLAG_ZERO = 1 << 0
QCOW_EXTL2_SUBCLUSTERS_PER_CLUSTER = 32
QCOW_L2_BITMAP_ALL_ALLOC = (1 << 32) - 1
QCOW_L2_BITMAP_ALL_ZEROES = QCOW_L2_BITMAP_ALL_ALLOC << 32
L1E_SIZE = 8
L2E_SIZE_NORMAL = 8
L2E_SIZE_EXTENDED = 16
L1E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L1E_RESERVED_MASK = 0x7F000000000001FF
L2E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L2E_STD_RESERVED_MASK = 0x3F000000000001FE
QCOW2_COMPRESSED_SECTOR_SIZE = 512

# Incompatible feature bits (an implementation must refuse an image with an unknown one).
QCOW2_INCOMPAT_DIRTY = 1 << 0
QCOW2_INCOMPAT_CORRUPT = 1 << 1
QCOW2_INCOMPAT_DATA_FILE = 1 << 2
QCOW2_INCOMPAT_COMPRESSION = 1 << 3
QCOW2_INCOMPAT_EXTL2 = 1 << 4
QCOW2_INCOMPAT_MASK = 0x1F
QCOW2_INCOMPAT_NAMES = {0: "dirty bit", 1: "corrupt bit", 2: "external data file",
                        3: "compression type", 4: "extended L2 entries"}
# Compatible and autoclear feature bits.
QCOW2_COMPAT_LAZY_REFCOUNTS = 1 << 0
QCOW2_COMPAT_NAMES = {0: "lazy refcounts"}
QCOW2_AUTOCLEAR_BITMAPS = 1 << 0
QCOW2_AUTOCLEAR_DATA_FILE_RAW = 1 << 1
QCOW2_AUTOCLEAR_NAMES = {0: "bitmaps", 1: "raw external data"}

# Qcow2CompressionType (qapi/block-core.json); stored in the header's compression_type.
QCOW2_COMPRESSION_TYPE_ZLIB = 0  # raw deflate, no zlib header, window 2^12
QCOW2_COMPRESSION_TYPE_ZSTD = 1
QCOW2_COMPRESSION_NAMES = {QCOW2_COMPRESSION_TYPE_ZLIB: "zlib",
                           QCOW2_COMPRESSION_TYPE_ZSTD: "zstd"}

# Header extension types (block/qcow2.c).
QCOW2_EXT_MAGIC_END = 0
QCOW2_EXT_MAGIC_BACKING_FORMAT = 0xE2792ACA
QCOW2_EXT_MAGIC_FEATURE_TABLE = 0x6803F857
QCOW2_EXT_MAGIC_CRYPTO_HEADER = 0x0537BE77
QCOW2_EXT_MAGIC_BITMAPS = 0x23852875
QCOW2_EXT_MAGIC_DATA_FILE = 0x44415441
QCOW2_EXT_NAMES = {
    QCOW2_EXT_MAGIC_END: "end",
    QCOW2_EXT_MAGIC_BACKING_FORMAT: "backing format",
    QCOW2_EXT_MAGIC_FEATURE_TABLE: "feature table",
    QCOW2_EXT_MAGIC_CRYPTO_HEADER: "full disk encryption header pointer",
    QCOW2_EXT_MAGIC_BITMAPS: "bitmaps",
    QCOW2_EXT_MAGIC_DATA_FILE: "external data file name",
}
# Qcow2Feature.type
QCOW2_FEAT_TYPE_INCOMPATIBLE = 0
QCOW2_FEAT_TYPE_COMPATIBLE = 1
QCOW2_FEAT_TYPE_AUTOCLEAR = 2


def _v3(ctx) -> bool:  # noqa: ANN001 - construct context
    return ctx.version >= 3


def _has_compression_type(ctx) -> bool:  # noqa: ANN001
    return ctx.version >= 3 and ctx.header_length > QCOW2_V3_MIN_HEADER_LENGTH


#: The image header (QCowHeader). Fields after `snapshots_offset` exist from
#: version 3 on; `compression_type` (and 7 bytes of padding) when header_length > 104.
QCowHeader = Struct(
    "magic" / Const(QCOW_MAGIC),
    "version" / Int32ub,
    "backing_file_offset" / Int64ub,
    "backing_file_size" / Int32ub,
    "cluster_bits" / Int32ub,
    "size" / Int64ub,
    "crypt_method" / Int32ub,
    "l1_size" / Int32ub,
    "l1_table_offset" / Int64ub,
    "refcount_table_offset" / Int64ub,
    "refcount_table_clusters" / Int32ub,
    "nb_snapshots" / Int32ub,
    "snapshots_offset" / Int64ub,
    "incompatible_features" / If(_v3, Int64ub),
    "compatible_features" / If(_v3, Int64ub),
    "autoclear_features" / If(_v3, Int64ub),
    "refcount_order" / If(_v3, Int32ub),
    "header_length" / If(_v3, Int32ub),
    "compression_type" / If(_has_compression_type, Int8ub),
    "padding" / If(_has_compression_type, Padding(7)),
)

#: Byte offsets of header fields, for error messages.
HEADER_FIELD_OFFSETS = {
    "magic": 0, "version": 4, "backing_file_offset": 8, "backing_file_size": 16,
    "cluster_bits": 20, "size": 24, "crypt_method": 32, "l1_size": 36,
    "l1_table_offset": 40, "refcount_table_offset": 48, "refcount_table_clusters": 56,
    "nb_snapshots": 60, "snapshots_offset": 64, "incompatible_features": 72,
    "compatible_features": 80, "autoclear_features": 88, "refcount_order": 96,
    "header_length": 100, "compression_type": 104,
}

#: One entry of the feature name table extension.
Qcow2Feature = Struct(
    "type" / Int8ub,
    "bit" / Int8ub,
    "name" / FixedSized(46, NullStripped(GreedyBytes)),
)

Qcow2BitmapHeaderExt = Struct(
    "nb_bitmaps" / Int32ub,
    "reserved32" / Int32ub,
    "bitmap_directory_size" / Int64ub,
    "bitmap_directory_offset" / Int64ub,
)

Qcow2CryptoHeaderExtension = Struct(
    "offset" / Int64ub,
    "length" / Int64ub,
)

#: A header extension: type, length, data, padding to a multiple of 8. String
#: extensions (backing format, data file name) are raw bytes, not NUL-terminated.
Qcow2HeaderExtension = Struct(
    "magic" / Int32ub,
    "len" / Int32ub,
    "data" / FixedSized(this.len, Switch(this.magic, {
        QCOW2_EXT_MAGIC_BACKING_FORMAT: GreedyBytes,
        QCOW2_EXT_MAGIC_FEATURE_TABLE: GreedyRange(Qcow2Feature),
        QCOW2_EXT_MAGIC_CRYPTO_HEADER: Qcow2CryptoHeaderExtension,
        QCOW2_EXT_MAGIC_BITMAPS: Qcow2BitmapHeaderExt,
        QCOW2_EXT_MAGIC_DATA_FILE: GreedyBytes,
    }, default=GreedyBytes)),
    Padding(lambda ctx: -ctx.len % 8),
)

#: The fixed part of a snapshot table entry (QCowSnapshotHeader).
QCOW_SNAPSHOT_HEADER_SIZE = 40
QCowSnapshotHeader = Struct(
    "l1_table_offset" / Int64ub,
    "l1_size" / Int32ub,
    "id_str_size" / Int16ub,
    "name_size" / Int16ub,
    "date_sec" / Int32ub,
    "date_nsec" / Int32ub,
    "vm_clock_nsec" / Int64ub,
    "vm_state_size" / Int32ub,
    "extra_data_size" / Int32ub,
)

#: Extra data (QCowSnapshotExtraData), read as far as `extra_data_size` reaches:
#: a field counts only when the extra data covers it whole; the rest is kept as
#: `unknown` (QEMU's unknown_extra_data). Parsed inside a snapshot table entry.
QCowSnapshotExtraData = Struct(
    "vm_state_size_large" / If(this._.extra_data_size >= 8, Int64ub),
    "disk_size" / If(this._.extra_data_size >= 16, Int64ub),
    "icount" / If(this._.extra_data_size >= 24, Int64ub),
    "unknown" / GreedyBytes,
)

#: A snapshot table entry without its trailing padding (the last entry of a
#: table may end at the end of the file). Sizes are rebuilt from the strings.
QCowSnapshotEntry = Struct(
    "l1_table_offset" / Int64ub,
    "l1_size" / Int32ub,
    "id_str_size" / Rebuild(Int16ub, len_(this.id_str)),
    "name_size" / Rebuild(Int16ub, len_(this.name)),
    "date_sec" / Int32ub,
    "date_nsec" / Int32ub,
    "vm_clock_nsec" / Int64ub,
    "vm_state_size" / Int32ub,
    "extra_data_size" / Int32ub,
    "extra_data" / FixedSized(this.extra_data_size, QCowSnapshotExtraData),
    "id_str" / Bytes(this.id_str_size),
    "name" / Bytes(this.name_size),
)

#: A snapshot table entry with its padding to a multiple of 8 (how QEMU writes it).
QCowSnapshotEntryPadded = Aligned(8, QCowSnapshotEntry)


def _shift9(bits: int) -> ExprAdapter:
    """An offset stored as its bits 9.. (cluster- or sector-aligned offsets)."""
    return ExprAdapter(BitsInteger(bits), lambda obj, ctx: obj << 9,
                       lambda obj, ctx: obj >> 9)


#: L1 table entry: bits 9-55 offset of the L2 table, bit 63 "refcount is exactly one".
L1Entry = BitStruct(
    "copied" / Flag,  # bit 63
    "reserved_hi" / BitsInteger(7),  # bits 56-62
    "l2_offset" / _shift9(47),  # bits 9-55
    "reserved_lo" / BitsInteger(9),  # bits 0-8
)

#: Standard cluster descriptor (bits 0-61 of an L2 entry without bit 62).
StandardClusterDescriptor = Struct(
    "reserved_hi" / BitsInteger(6),  # bits 56-61
    "host_offset" / _shift9(47),  # bits 9-55
    "reserved_lo" / BitsInteger(8),  # bits 1-8
    "zero" / Flag,  # bit 0: reads as zeros (v3 without extended L2)
)


def _csize_bits(ctx) -> int:  # noqa: ANN001
    return ctx._params.cluster_bits - 8


def _coffset_bits(ctx) -> int:  # noqa: ANN001
    return 62 - (ctx._params.cluster_bits - 8)


#: Compressed cluster descriptor; its split depends on cluster_bits (a parse/build
#: parameter): x = 62 - (cluster_bits - 8); bits 0..x-1 host offset (any byte),
#: bits x..61 number of 512-byte sectors beyond the one holding the offset.
CompressedClusterDescriptor = Struct(
    "additional_sectors" / BitsInteger(_csize_bits),
    "host_offset" / BitsInteger(_coffset_bits),
)

#: L2 table entry (standard, 8 bytes). Parse/build with cluster_bits=N.
L2Entry = BitStruct(
    "copied" / Flag,  # bit 63
    "compressed" / Flag,  # bit 62
    "descriptor" / Switch(this.compressed, {True: CompressedClusterDescriptor},
                          default=StandardClusterDescriptor),
)

#: Subcluster allocation bitmap of an extended L2 entry (its second 64-bit word):
#: bits 32-63 "reads as zeros", bits 0-31 "allocated", bit x for subcluster x.
SubclusterBitmap = Struct(
    "sub_zero" / Int32ub,
    "sub_alloc" / Int32ub,
)

#: Extended L2 table entry (16 bytes). Parse/build with cluster_bits=N.
L2EntryExtended = Struct(
    "entry" / L2Entry,
    "bitmap" / SubclusterBitmap,
)


# -- layout rules ---------------------------------------------------------------------------
def l2_bits(cluster_bits: int, extended_l2: bool) -> int:
    """log2 of the entries in an L2 table (one cluster of 8- or 16-byte entries)."""
    return cluster_bits - (4 if extended_l2 else 3)


def l1_coverage(cluster_bits: int, extended_l2: bool) -> int:
    """Guest bytes one L1 entry maps."""
    return 1 << (cluster_bits + l2_bits(cluster_bits, extended_l2))


def size_to_l1(size: int, cluster_bits: int, extended_l2: bool) -> int:
    """L1 entries needed to map `size` guest bytes (size_to_l1 in block/qcow2.h)."""
    shift = cluster_bits + l2_bits(cluster_bits, extended_l2)
    return (size + (1 << shift) - 1) >> shift


def vm_state_offset(disk_size: int, cluster_bits: int, extended_l2: bool) -> int:
    """Guest offset where the VM state of a snapshot whose disk had `disk_size` bytes
    starts: the first L1 boundary at or after the disk's end. QEMU keeps
    l1_vm_state_index = size_to_l1(current size) and, before loadvm reads a snapshot's
    state, resizes the disk to the snapshot's disk_size (qcow2_snapshot_goto)."""
    return size_to_l1(disk_size, cluster_bits, extended_l2) * l1_coverage(cluster_bits,
                                                                          extended_l2)


def compressed_layout(cluster_bits: int) -> tuple[int, int, int]:
    """(csize_shift, csize_mask, cluster_offset_mask) of qcow2_do_open."""
    shift = 62 - (cluster_bits - 8)
    return shift, (1 << (cluster_bits - 8)) - 1, (1 << shift) - 1
