"""formats/qcow2.py: every grammar piece both ways (parse(bytes) == object, build(object)
== bytes), bytes written out field by field from qcow2.rst, and the layout rules."""

from __future__ import annotations

import struct

import pytest

from miginspect.formats import qcow2 as Q


def _be(fmt: str, *v: int) -> bytes:
    return struct.pack(">" + fmt, *v)


V2_HEADER = (b"QFI\xfb" + _be("IQIIQIIQQIIQ", 2, 0x1000, 7, 16, 1 << 30, 0, 2, 0x30000, 0x10000,
                               1, 3, 0x50000))
V3_HEADER = (b"QFI\xfb" + _be("IQIIQIIQQIIQ", 3, 0, 0, 12, 100 << 20, 2, 1, 0x3000, 0x1000, 1,
                               0, 0)
             + _be("QQQII", Q.QCOW2_INCOMPAT_EXTL2 | Q.QCOW2_INCOMPAT_COMPRESSION,
                   Q.QCOW2_COMPAT_LAZY_REFCOUNTS, Q.QCOW2_AUTOCLEAR_BITMAPS, 6, 112)
             + bytes([Q.QCOW2_COMPRESSION_TYPE_ZSTD]) + bytes(7))
V3_104 = V3_HEADER[:100] + _be("I", 104)

HEADER_COMMON = {"magic": Q.QCOW_MAGIC, "backing_file_offset": 0}

SNAP_ENTRY = (_be("QIHHIIQII", 0x70000, 2, 1, 5, 1700000000, 123456789, 5_259_183_657,
                  35_369_509, 24)
              + _be("QQQ", 35_369_509, 1 << 30, (1 << 64) - 1) + b"1" + b"first")

CASES = [
    # (grammar, bytes, expected object (subset), params)
    (Q.QCowHeader, V2_HEADER,
     {"magic": Q.QCOW_MAGIC, "version": 2, "backing_file_offset": 0x1000, "backing_file_size": 7,
      "cluster_bits": 16, "size": 1 << 30, "crypt_method": 0, "l1_size": 2,
      "l1_table_offset": 0x30000, "refcount_table_offset": 0x10000,
      "refcount_table_clusters": 1, "nb_snapshots": 3, "snapshots_offset": 0x50000,
      "incompatible_features": None, "header_length": None, "compression_type": None}, {}),
    (Q.QCowHeader, V3_HEADER,
     {"version": 3, "cluster_bits": 12, "size": 100 << 20, "crypt_method": 2,
      "incompatible_features": 0x18, "compatible_features": 1, "autoclear_features": 1,
      "refcount_order": 6, "header_length": 112, "compression_type": 1}, {}),
    (Q.QCowHeader, V3_104,
     {"version": 3, "header_length": 104, "compression_type": None}, {}),
    (Q.Qcow2HeaderExtension, _be("II", Q.QCOW2_EXT_MAGIC_BACKING_FORMAT, 5) + b"qcow2" + bytes(3),
     {"magic": Q.QCOW2_EXT_MAGIC_BACKING_FORMAT, "len": 5, "data": b"qcow2"}, {}),
    (Q.Qcow2HeaderExtension, _be("II", Q.QCOW2_EXT_MAGIC_DATA_FILE, 8) + b"data.raw",
     {"magic": Q.QCOW2_EXT_MAGIC_DATA_FILE, "len": 8, "data": b"data.raw"}, {}),
    (Q.Qcow2HeaderExtension, _be("II", Q.QCOW2_EXT_MAGIC_CRYPTO_HEADER, 16)
     + _be("QQ", 0x20000, 2048),
     {"magic": Q.QCOW2_EXT_MAGIC_CRYPTO_HEADER, "len": 16,
      "data": {"offset": 0x20000, "length": 2048}}, {}),
    (Q.Qcow2HeaderExtension, _be("II", Q.QCOW2_EXT_MAGIC_BITMAPS, 24) + _be("IIQQ", 2, 0, 88,
                                                                            0x90000),
     {"magic": Q.QCOW2_EXT_MAGIC_BITMAPS, "len": 24,
      "data": {"nb_bitmaps": 2, "reserved32": 0, "bitmap_directory_size": 88,
               "bitmap_directory_offset": 0x90000}}, {}),
    (Q.Qcow2HeaderExtension, _be("II", Q.QCOW2_EXT_MAGIC_END, 0),
     {"magic": 0, "len": 0, "data": b""}, {}),
    (Q.Qcow2HeaderExtension, _be("II", 0x12345678, 3) + b"abc" + bytes(5),
     {"magic": 0x12345678, "len": 3, "data": b"abc"}, {}),
    (Q.Qcow2Feature, bytes([0, 4]) + b"extended L2 entries".ljust(46, b"\0"),
     {"type": 0, "bit": 4, "name": b"extended L2 entries"}, {}),
    (Q.QCowSnapshotHeader, SNAP_ENTRY[:40],
     {"l1_table_offset": 0x70000, "l1_size": 2, "id_str_size": 1, "name_size": 5,
      "date_sec": 1700000000, "date_nsec": 123456789, "vm_clock_nsec": 5_259_183_657,
      "vm_state_size": 35_369_509, "extra_data_size": 24}, {}),
    (Q.QCowSnapshotEntry, SNAP_ENTRY,
     {"l1_table_offset": 0x70000, "id_str": b"1", "name": b"first", "extra_data_size": 24,
      "extra_data": {"vm_state_size_large": 35_369_509, "disk_size": 1 << 30,
                     "icount": (1 << 64) - 1, "unknown": b""}}, {}),
    (Q.QCowSnapshotEntryPadded, SNAP_ENTRY + bytes(2),
     {"name": b"first", "vm_clock_nsec": 5_259_183_657}, {}),
    # version-2 style entry: no extra data at all
    (Q.QCowSnapshotEntry, _be("QIHHIIQII", 0x80000, 1, 2, 0, 1, 2, 3, 4096, 0) + b"17",
     {"id_str": b"17", "name": b"", "vm_state_size": 4096,
      "extra_data": {"vm_state_size_large": None, "disk_size": None, "icount": None,
                     "unknown": b""}}, {}),
    # 16 bytes of extra data (no icount) and 36 (unknown bytes QEMU keeps)
    (Q.QCowSnapshotEntry, _be("QIHHIIQII", 0x80000, 1, 1, 1, 1, 2, 3, 0, 16) + _be("QQ", 5, 6)
     + b"2x",
     {"extra_data": {"vm_state_size_large": 5, "disk_size": 6, "icount": None}}, {}),
    (Q.QCowSnapshotEntry, _be("QIHHIIQII", 0x80000, 1, 1, 1, 1, 2, 3, 0, 36)
     + _be("QQQ", 5, 6, 7) + b"\xaa" * 12 + b"3y",
     {"extra_data": {"vm_state_size_large": 5, "disk_size": 6, "icount": 7,
                     "unknown": b"\xaa" * 12}}, {}),
    (Q.L1Entry, _be("Q", Q.QCOW_OFLAG_COPIED | 0x2250000),
     {"copied": True, "reserved_hi": 0, "l2_offset": 0x2250000, "reserved_lo": 0}, {}),
    (Q.L1Entry, _be("Q", 0), {"copied": False, "l2_offset": 0}, {}),
    (Q.L2Entry, _be("Q", Q.QCOW_OFLAG_COPIED | 0x50000),
     {"copied": True, "compressed": False,
      "descriptor": {"reserved_hi": 0, "host_offset": 0x50000, "reserved_lo": 0,
                     "zero": False}}, {"cluster_bits": 16}),
    (Q.L2Entry, _be("Q", 0x50000 | Q.QCOW_OFLAG_ZERO),
     {"copied": False, "compressed": False,
      "descriptor": {"host_offset": 0x50000, "zero": True}}, {"cluster_bits": 16}),
    # compressed, 64 KiB clusters: x = 62 - 8 = 54; 3 more sectors, offset 0x123456
    (Q.L2Entry, _be("Q", Q.QCOW_OFLAG_COMPRESSED | (3 << 54) | 0x123456),
     {"copied": False, "compressed": True,
      "descriptor": {"additional_sectors": 3, "host_offset": 0x123456}}, {"cluster_bits": 16}),
    # compressed, 512-byte clusters: x = 61; the sector count is one bit
    (Q.L2Entry, _be("Q", Q.QCOW_OFLAG_COMPRESSED | (1 << 61) | 0xABCDEF),
     {"compressed": True, "descriptor": {"additional_sectors": 1, "host_offset": 0xABCDEF}},
     {"cluster_bits": 9}),
    # compressed, 2 MiB clusters: x = 49
    (Q.L2Entry, _be("Q", Q.QCOW_OFLAG_COMPRESSED | (4095 << 49) | ((1 << 49) - 1)),
     {"compressed": True, "descriptor": {"additional_sectors": 4095,
                                         "host_offset": (1 << 49) - 1}}, {"cluster_bits": 21}),
    (Q.L2EntryExtended, _be("QQ", Q.QCOW_OFLAG_COPIED | 0x80000, (0xF << 32) | 0xFFFF0000),
     {"entry": {"copied": True, "compressed": False, "descriptor": {"host_offset": 0x80000}},
      "bitmap": {"sub_zero": 0xF, "sub_alloc": 0xFFFF0000}}, {"cluster_bits": 15}),
    (Q.SubclusterBitmap, _be("Q", Q.QCOW_L2_BITMAP_ALL_ZEROES),
     {"sub_zero": 0xFFFFFFFF, "sub_alloc": 0}, {}),
]


def _matches(got, want, path=""):  # noqa: ANN001, ANN202
    if isinstance(want, dict):
        for k, v in want.items():
            _matches(got[k], v, f"{path}.{k}")
    else:
        assert got == want, path


@pytest.mark.parametrize("grammar,data,obj,params", CASES, ids=[str(i) for i in range(len(CASES))])
def test_parse_equals_object_and_build_equals_bytes(grammar, data, obj, params):  # noqa: ANN001
    parsed = grammar.parse(data, **params)
    _matches(parsed, obj)
    assert grammar.build(parsed, **params) == data


def test_snapshot_entry_builds_sizes_from_strings():
    obj = dict(l1_table_offset=0x70000, l1_size=2, date_sec=1, date_nsec=2, vm_clock_nsec=3,
               vm_state_size=0, extra_data_size=24,
               extra_data=dict(vm_state_size_large=0, disk_size=1 << 20, icount=(1 << 64) - 1,
                               unknown=b""),
               id_str=b"12", name=b"a name")
    data = Q.QCowSnapshotEntryPadded.build(obj)
    assert data[12:16] == _be("HH", 2, 6)
    assert len(data) == 40 + 24 + 8 and data.endswith(b"a name")
    assert len(data) % 8 == 0
    unpadded = Q.QCowSnapshotEntry.build(obj)
    assert len(unpadded) == 40 + 24 + 2 + 6


def test_header_fields_offsets_match_the_grammar():
    h = Q.QCowHeader.parse(V3_HEADER)
    for name, off in Q.HEADER_FIELD_OFFSETS.items():
        if name == "magic":
            continue
        width = 1 if name == "compression_type" else (
            8 if name.endswith(("offset", "features")) or name == "size" else 4)
        assert int.from_bytes(V3_HEADER[off : off + width], "big") == h[name], name


def test_bad_magic_is_refused():
    from construct import ConstError

    with pytest.raises(ConstError):
        Q.QCowHeader.parse(b"QFI\xfa" + V2_HEADER[4:])


@pytest.mark.parametrize("cluster_bits,extended,coverage", [
    (9, False, 64 * 512), (12, False, 512 * 4096), (16, False, 8192 * 65536),
    (21, False, (1 << 18) * (1 << 21)), (14, True, 1024 * 16384), (16, True, 4096 * 65536),
])
def test_l1_coverage(cluster_bits, extended, coverage):  # noqa: ANN001
    assert Q.l1_coverage(cluster_bits, extended) == coverage
    assert Q.vm_state_offset(coverage, cluster_bits, extended) == coverage
    assert Q.vm_state_offset(coverage + 512, cluster_bits, extended) == 2 * coverage
    assert Q.vm_state_offset(1, cluster_bits, extended) == coverage
    assert Q.vm_state_offset(0, cluster_bits, extended) == 0


def test_compressed_layout_matches_the_descriptor_grammar():
    for cb in range(Q.MIN_CLUSTER_BITS, Q.MAX_CLUSTER_BITS + 1):
        shift, mask, omask = Q.compressed_layout(cb)
        word = Q.QCOW_OFLAG_COMPRESSED | (mask << shift) | omask
        d = Q.L2Entry.parse(_be("Q", word), cluster_bits=cb).descriptor
        assert d.additional_sectors == mask and d.host_offset == omask
