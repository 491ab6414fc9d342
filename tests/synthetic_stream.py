"""Hand-built legacy QEMU streams for edge cases real captures do not show
(a block missing on one side, a used-length mismatch, a never-sent page, a
device description that does not fit). Built with the construct grammars."""

from __future__ import annotations

import json
from typing import Any

from miginspect.formats import ram as R
from miginspect.formats import stream as S
from miginspect.formats.common import CountedString

PS = 4096


def page_record(block: str, page: int, data: bytes | tuple | None, cont: bool = False
                ) -> bytes:
    """A PAGE record (data), a ZERO record (data None) or an XBZRLE record
    (data = ("xbzrle", encoded delta)) for `page` of `block`."""
    if isinstance(data, tuple):
        flags = R.RAM_SAVE_FLAG_XBZRLE
        payload: object = {"encoding": R.ENCODING_FLAG_XBZRLE, "length": len(data[1]),
                           "data": data[1]}
    else:
        flags = R.RAM_SAVE_FLAG_ZERO if data is None else R.RAM_SAVE_FLAG_PAGE
        payload = 0 if data is None else data
    if cont:
        flags |= R.RAM_SAVE_FLAG_CONTINUE
    return R.ram_page_record.build(
        {"word": page * PS | flags, "idstr": None if cont else block, "payload": payload},
        page_size=PS)


def build_stream(
    blocks: dict[str, int],
    pages: list[tuple[str, int, bytes | tuple | None]],
    devices: list[tuple[str, dict[str, Any], bytes]] = (),
    machine: str = "pc-i440fx-10.0",
) -> bytes:
    """blocks: name -> used_length; pages: (block, index, bytes or None for ZERO) in
    stream order; devices: (idstr, vmdescription entry without name/instance, payload)."""
    out = bytearray(S.file_header.build({"version": 3}))
    name = machine.encode()
    out += bytes([S.QEMU_VM_CONFIGURATION]) + len(name).to_bytes(4, "big") + name
    total = sum(blocks.values())
    sid = 2
    out += bytes([S.QEMU_VM_SECTION_START]) + S.section_header_full.build(
        {"section_id": sid, "idstr": "ram", "instance_id": 0, "version_id": 4})
    out += (total | R.RAM_SAVE_FLAG_MEM_SIZE).to_bytes(8, "big")
    for b, ln in blocks.items():
        out += R.ramblock_entry.build({"idstr": b, "used_length": ln, "page_size": None,
                                       "mr_addr": None, "mapped_ram": None},
                                      postcopy_page_size=False,
                                      ignore_shared=False, mapped_ram=False)
    out += R.RAM_SAVE_FLAG_EOS.to_bytes(8, "big")
    out += S.section_footer.build({"section_id": sid})
    out += bytes([S.QEMU_VM_SECTION_END]) + S.section_header_part.build({"section_id": sid})
    last = None
    for b, i, data in pages:
        out += page_record(b, i, data, cont=(b == last))
        last = b
    out += R.RAM_SAVE_FLAG_EOS.to_bytes(8, "big")
    out += S.section_footer.build({"section_id": sid})
    descs = []
    for k, (idstr, desc, payload) in enumerate(devices):
        dsid = 10 + k
        out += bytes([S.QEMU_VM_SECTION_FULL]) + S.section_header_full.build(
            {"section_id": dsid, "idstr": idstr, "instance_id": 0,
             "version_id": desc.get("version", 1)})
        out += payload
        out += S.section_footer.build({"section_id": dsid})
        descs.append({"name": idstr, "instance_id": 0, **desc})
    out += bytes([S.QEMU_VM_EOF])
    js = json.dumps({"page_size": PS, "devices": descs}).encode()
    out += bytes([S.QEMU_VM_VMDESCRIPTION]) + len(js).to_bytes(4, "big") + js
    return bytes(out)


def subsection(name: str, version: int, body: bytes) -> bytes:
    return bytes([S.QEMU_VM_SUBSECTION]) + CountedString.build(name) + \
        version.to_bytes(4, "big") + body
