"""libvirt save images (`virsh save`, `managedsave`): the domain described by the
XML, and the container facts that `info` reports (`container` in `info --json`),
including how much of the QEMU stream an image holds.

The XML is parsed with xml.etree; documents that declare a DOCTYPE or entities
are not parsed at all (libvirt never writes them), so no entity is ever expanded
or resolved.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from typing import Any

from .capture import Capture
from .pagemap import PAGE_NEVER_SENT
from .source import Container

#: libvirt's memory units, in bytes (docs: formatdomain "Memory Allocation").
_UNITS = {
    "b": 1, "bytes": 1,
    "kb": 1000, "k": 1024, "kib": 1024,
    "mb": 1000**2, "m": 1024**2, "mib": 1024**2,
    "gb": 1000**3, "g": 1024**3, "gib": 1024**3,
    "tb": 1000**4, "t": 1024**4, "tib": 1024**4,
    "pb": 1000**5, "p": 1024**5, "pib": 1024**5,
    "eb": 1000**6, "e": 1024**6, "eib": 1024**6,
}


@dataclass
class Domain:
    """What the domain XML says about the saved guest."""

    name: str | None = None
    uuid: str | None = None
    memory_kib: int | None = None
    current_memory_kib: int | None = None
    vcpus: int | None = None
    machine: str | None = None
    arch: str | None = None
    error: str | None = None  # why the XML could not be read, if it could not


def memory_kib(value: str | None, unit: str | None) -> int | None:
    """A libvirt memory element's value in KiB (rounded up), None if unreadable."""
    if value is None:
        return None
    try:
        n = int(value.strip())
    except ValueError:
        return None
    factor = _UNITS.get((unit or "KiB").strip().lower())
    if factor is None or n < 0:
        return None
    return -(-n * factor // 1024)


def parse_domain(xml: str) -> Domain:
    """Name, UUID, memory and CPU facts from a domain XML; never raises."""
    if not xml.strip():
        return Domain(error="no domain XML")
    if "<!DOCTYPE" in xml or "<!ENTITY" in xml:
        return Domain(error="the XML declares a DOCTYPE or entities; not parsed")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        return Domain(error=f"the domain XML does not parse: {e}")
    if root.tag != "domain":
        return Domain(error=f"the XML's root element is <{root.tag}>, not <domain>")

    def text(path: str) -> str | None:
        el = root.find(path)
        return el.text.strip() if el is not None and el.text else None

    mem = root.find("memory")
    cur = root.find("currentMemory")
    os_type = root.find("os/type")
    vcpu = text("vcpu")
    return Domain(
        name=text("name"),
        uuid=text("uuid"),
        memory_kib=memory_kib(mem.text, mem.get("unit")) if mem is not None else None,
        current_memory_kib=(memory_kib(cur.text, cur.get("unit"))
                            if cur is not None else None),
        vcpus=int(vcpu) if vcpu and vcpu.isdigit() else None,
        machine=os_type.get("machine") if os_type is not None else None,
        arch=os_type.get("arch") if os_type is not None else None,
    )


def stream_extent(cap: Capture) -> dict[str, Any]:
    """How much of the QEMU stream the file holds, and whether it is whole."""
    w = cap.walk
    src = cap.source
    err = w.error
    pages = absent = 0
    for bm in cap.maps.values():
        pages += bm.pages
        absent += bm.count(PAGE_NEVER_SENT)
    inf = src.container.inflation
    return {
        # the walk reached the EOF record without a fatal problem
        "complete": err is None and w.eof_offset is not None,
        "bytes": len(src.buf) - src.base,  # QEMU stream bytes present
        "stopped_at": err.offset if err is not None else None,
        "stopped": src.explain(err).oneline() if err is not None else None,
        "ram_pages": pages,
        "ram_pages_sent": pages - absent,
        "decompressed": asdict(inf) if inf is not None else None,
    }


def image_summary(c: Container) -> dict[str, Any]:
    """Header fields, domain facts, XML and cookie of a libvirt image (`xml --json`)."""
    h = c.libvirt
    if h is None:
        return {"kind": "none", "compression": c.compression}
    return {
        "kind": "libvirt",
        "magic": h.magic,
        "complete": h.complete,
        "version": h.version,
        "format": h.format_name,
        "was_running": h.was_running,
        "payload_offset": h.payload_offset,
        "data_len": h.data_len,
        "cookie_offset": h.cookie_offset,
        "byte_order": h.byte_order,
        "compression": c.compression,
        "domain": asdict(parse_domain(h.xml)),
        "xml": h.xml,
        "cookie": h.cookie,
    }


def container_report(cap: Capture) -> dict[str, Any]:
    """The `container` object of `info --json`."""
    c: Container = cap.source.container
    h = c.libvirt
    out: dict[str, Any] = {
        "kind": "libvirt" if h is not None else "none",
        "magic": None,
        "complete": None,
        "version": None,
        "format": None,
        "was_running": None,
        "payload_offset": None,
        "domain": None,
        "compression": c.compression,
    }
    if h is not None:
        d = parse_domain(h.xml)
        out.update(
            magic=h.magic,
            complete=h.complete,
            version=h.version,
            format=h.format_name,
            was_running=h.was_running,
            payload_offset=h.payload_offset,
            domain={"name": d.name, "uuid": d.uuid, "memory_kib": d.memory_kib,
                    "current_memory_kib": d.current_memory_kib, "vcpus": d.vcpus,
                    "machine": d.machine, "arch": d.arch, "error": d.error},
            data_len=h.data_len,
            cookie_offset=h.cookie_offset,
            byte_order=h.byte_order,
            xml_length=h.xml_length,
        )
    out["stream"] = stream_extent(cap)
    return out
