"""libvirt save images: the domain described by the XML and the header summary of
`xml --json`. The container kind itself (header, XML, how to load, the converted
output) is `containers/libvirt.py`; the names below are kept for their callers.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from .containers.base import Container
from .containers.libvirt import Domain, memory_kib, parse_domain

__all__ = ["Domain", "memory_kib", "parse_domain", "image_summary"]


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
