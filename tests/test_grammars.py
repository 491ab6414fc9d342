"""Every grammar piece both ways: parse(bytes) == object and build(object) == bytes."""

from __future__ import annotations

import pytest
from construct import ConstructError

from miginspect.formats import configuration as C
from miginspect.formats import libvirt as L
from miginspect.formats import mapped_ram as M
from miginspect.formats import ram as R
from miginspect.formats import stream as S

PS = {"page_size": 4096}

CASES = [
    (S.file_header, b"QEVM\x00\x00\x00\x03", {"version": 3}, {}),
    (S.section_header_full, b"\x00\x00\x00\x02\x03ram\x00\x00\x00\x00\x00\x00\x00\x04",
     {"section_id": 2, "idstr": "ram", "instance_id": 0, "version_id": 4}, {}),
    (S.section_header_part, b"\x00\x00\x00\x2a", {"section_id": 42}, {}),
    (S.section_footer, b"\x7e\x00\x00\x00\x2a", {"section_id": 42}, {}),
    (S.command, b"\x00\x0b\x00\x00", {"cmd": 11, "len": 0, "data": b""}, {}),
    (S.command, b"\x00\x02\x00\x04\x00\x00\x00\x07", {"cmd": 2, "len": 4,
                                                     "data": b"\x00\x00\x00\x07"}, {}),
    (S.vmdescription, b"\x00\x00\x00\x02{}", {"length": 2, "json": b"{}"}, {}),
    (C.configuration_head, b"\x00\x00\x00\x0epc-i440fx-10.0", {"name": "pc-i440fx-10.0"}, {}),
    (C.subsection_capabilities,
     b"\x05\x1aconfiguration/capabilities\x00\x00\x00\x01\x00\x00\x00\x01\x0amapped-ram",
     {"marker": 5, "name": "configuration/capabilities", "version_id": 1,
      "caps": ["mapped-ram"]}, {}),
    (C.target_page_bits, b"\x00\x00\x00\x0c", {"target_page_bits": 12}, {}),
    (M.MappedRamHeader,
     bytes.fromhex("00000001" "0000000000001000" "0000000000000123" "0000000000100000"),
     {"version": 1, "page_size": 4096, "bitmap_offset": 0x123, "pages_offset": 0x100000}, {}),
    (R.ramblock_entry, b"\x06pc.ram" + (0x8000000).to_bytes(8, "big"),
     {"idstr": "pc.ram", "used_length": 0x8000000, "page_size": None, "mr_addr": None,
      "mapped_ram": None},
     {"postcopy_page_size": False, "ignore_shared": False, "mapped_ram": False}),
    (R.ramblock_entry,
     b"\x06pc.ram" + (0x8000000).to_bytes(8, "big") + (0x1000).to_bytes(8, "big")
     + bytes.fromhex("00000001" "0000000000001000" "0000000000000040" "0000000000100000"),
     {"idstr": "pc.ram", "used_length": 0x8000000, "page_size": None, "mr_addr": 0x1000,
      "mapped_ram": {"version": 1, "page_size": 4096, "bitmap_offset": 0x40,
                     "pages_offset": 0x100000}},
     {"postcopy_page_size": False, "ignore_shared": True, "mapped_ram": True}),
    (R.ram_page_record, (0x3000 | 0x08).to_bytes(8, "big") + b"\x06pc.ram" + b"\xab" * 4096,
     {"word": 0x3008, "idstr": "pc.ram", "payload": b"\xab" * 4096}, PS),
    (R.ram_page_record, (0x5000 | 0x22).to_bytes(8, "big") + b"\x00",
     {"word": 0x5022, "idstr": None, "payload": 0}, PS),
    (R.ram_page_record, (0x5000 | 0x60).to_bytes(8, "big") + b"\x01\x00\x03\x01\x01\x07",
     {"word": 0x5060, "idstr": None,
      "payload": {"encoding": 1, "length": 3, "data": b"\x01\x01\x07"}}, PS),
    (R.ram_page_record, (0x10).to_bytes(8, "big"), {"word": 0x10, "idstr": None,
                                                     "payload": None}, PS),
    (L.virQEMUSaveHeader_le,
     b"LibvirtQemudSave" + (2).to_bytes(4, "little") + (70000).to_bytes(4, "little")
     + (1).to_bytes(4, "little") + (6).to_bytes(4, "little") + (0).to_bytes(4, "little")
     + bytes(56),
     {"magic": b"LibvirtQemudSave", "version": 2, "data_len": 70000, "was_running": 1,
      "format": 6, "cookieOffset": 0}, {}),
    (L.virQEMUSaveHeader_be,
     b"LibvirtQemudPart" + (2).to_bytes(4, "big") + (5).to_bytes(4, "big")
     + (0).to_bytes(4, "big") + (0).to_bytes(4, "big") + (0).to_bytes(4, "big") + bytes(56),
     {"magic": b"LibvirtQemudPart", "version": 2, "data_len": 5, "was_running": 0,
      "format": 0, "cookieOffset": 0}, {}),
]


@pytest.mark.parametrize("grammar,data,obj,params", CASES,
                         ids=[f"{i}" for i in range(len(CASES))])
def test_parse_equals_object_and_build_equals_bytes(grammar, data, obj, params):
    parsed = grammar.parse(data, **params)
    for k, v in obj.items():
        got = parsed[k]
        if isinstance(v, dict):
            for k2, v2 in v.items():
                assert got[k2] == v2, (k, k2)
        else:
            assert got == v, k
    assert grammar.build(obj, **params) == data


def test_record_word_splits_flags_and_offset():
    r = R.ram_page_record.parse((0x7FF000 | 0x28).to_bytes(8, "big") + bytes(4096), **PS)
    assert r.flags == R.RAM_SAVE_FLAG_PAGE | R.RAM_SAVE_FLAG_CONTINUE
    assert r.addr == 0x7FF000
    assert R.flag_names(r.flags) == "PAGE|CONTINUE"
    assert R.flag_names(0x1000) == "0x1000"


def test_bad_magic_does_not_parse():
    with pytest.raises(ConstructError):
        S.file_header.parse(b"QEVX\x00\x00\x00\x03")


def test_mapped_ram_offsets_follow_qemu_rule():
    # 128 MiB block: 32768 pages -> 4096 bitmap bytes; pages start at the next 1 MiB
    assert M.bitmap_size(32768) == 4096
    assert M.bitmap_size(1) == 8
    assert M.pages_offset_for(0x1c9, 32768) == 0x100000
    assert M.pages_offset_for(0x100000 - 4096, 32768) == 0x100000
    assert M.pages_offset_for(0x100000 - 4095, 32768) == 0x200000
