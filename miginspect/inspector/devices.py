"""Device state: FULL (VMState) sections decoded with the vmdescription JSON.

Device sections carry no tags, so the trailer's description of each section
is the only key to its bytes. Every field becomes a `StateNode`: integers
decoded by their VMStateInfo type (formats.vmstate), other types as hex,
nested structs, arrays and subsections as children. The walker already
bounded each section (`Section.payload_offset/payload_end`); decoding stays
inside those bounds, and a description that does not fit the bytes is
reported on that device (`DeviceState.error`) instead of stopping the rest.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import xxhash

from ..errors import FormatError, MigError, UnsupportedError
from ..formats import vmstate as V
from ..jsondata import fields_json
from .capture import Capture
from .model import Section
from .parsing import parse_at
from .salvage import DESCRIPTION_WHOLE, DeviceSalvage, description, device_salvage
from .vmdesc import device_index

#: Opaque values longer than this are kept as a prefix plus a digest (`Opaque`).
MAX_HEX_BYTES = 64 << 10
#: Scalar arrays longer than this are kept as hex like opaque data.
MAX_LIST_ITEMS = 1024
#: Nesting deeper than this in a description is refused (a hostile JSON).
MAX_DEPTH = 64
#: Decoded nodes per device; a description that expands to more is refused.
MAX_NODES = 1 << 20



def _dtype(fmt: str) -> np.dtype:
    """numpy dtype of a big-endian struct format of one item (">Q" -> ">u8")."""
    kind = "f" if fmt[-1] in "efd" else ("u" if fmt[-1].isupper() else "i")
    return np.dtype(f">{kind}{struct.calcsize(fmt)}")


_DTYPES: dict[str, np.dtype] = {name: _dtype(ff.fmtstr) for name, ff in V.VMSTATE_SCALARS.items()}


@dataclass(frozen=True)
class Opaque:
    """An opaque value longer than MAX_HEX_BYTES: its first bytes and a digest of all of
    them (two values are equal when their sizes and digests are)."""

    head: str  # hex of the first MAX_HEX_BYTES bytes
    size: int  # bytes in the value
    xxh3: str  # xxh3-64 of the whole value, hex


@dataclass
class DeviceNotice:
    """Something about the device sections that is not one device's decoding error."""

    message: str
    offset: int | None = None
    where: str = ""


@dataclass
class StateNode:
    """One field, array element, struct or subsection of a device's state."""

    name: str
    type: str  # the JSON type, or "array" / "subsection"
    offset: int  # file offset of its first byte
    size: int  # bytes it occupies in the stream
    #: int / float / bool for numbers, None for a NULL pointer, a hex str for opaque bytes
    #: (an `Opaque` past MAX_HEX_BYTES), a list for arrays of numbers
    value: Any = None
    children: list[StateNode] = field(default_factory=list)
    version: int | None = None  # subsections and structs: the version written

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "type": self.type, "offset": self.offset,
                             "size": self.size}
        if self.version is not None:
            d["version"] = self.version
        if self.children:
            d["children"] = [c.to_json() for c in self.children]
        else:
            d["value"] = self.value
        return d


@dataclass
class DeviceState:
    idstr: str
    instance_id: int
    vmsd_name: str | None
    version_id: int | None
    section_offset: int
    payload_offset: int
    payload_end: int
    fields: list[StateNode] = field(default_factory=list)
    error: str | None = None  # why decoding stopped early, if it did
    error_offset: int | None = None  # where it stopped

    @property
    def key(self) -> str:
        return f"{self.idstr}#{self.instance_id}" if self.instance_id else self.idstr

    def leaves(self) -> Iterator[tuple[str, StateNode]]:
        """(path, node) of every value-bearing node, in stream order."""
        yield from _leaves(self.fields, "")

    def to_json(self) -> dict[str, Any]:
        return {
            "idstr": self.idstr,
            "instance_id": self.instance_id,
            "vmsd_name": self.vmsd_name,
            "version_id": self.version_id,
            "section_offset": self.section_offset,
            "payload_offset": self.payload_offset,
            "payload_end": self.payload_end,
            "error": self.error,
            "error_offset": self.error_offset,
            "fields": [f.to_json() for f in self.fields],
        }


@dataclass
class DevicesReport:
    path: str
    devices: list[DeviceState]
    notices: list[DeviceNotice] = field(default_factory=list)
    #: --partial: which device sections the file holds whole, where and why it stops
    salvage: DeviceSalvage | None = None

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "devices": [d.to_json() for d in self.devices],
                "notices": [asdict(n) for n in self.notices],
                "salvage": fields_json(self.salvage) if self.salvage is not None else None}


def _leaves(nodes: list[StateNode], prefix: str) -> Iterator[tuple[str, StateNode]]:
    for n in nodes:
        if n.name.startswith("["):
            path = prefix + n.name
        elif n.type == "subsection":
            path = f"{prefix}{{{n.name}}}" if not prefix else f"{prefix}.{{{n.name}}}"
        else:
            path = f"{prefix}.{n.name}" if prefix else n.name
        if n.children:
            yield from _leaves(n.children, path)
        else:
            yield path, n


class _Decoder:
    def __init__(self, buf: Any, idstr: str) -> None:
        self.buf = buf
        self.idstr = idstr
        self.nodes = 0

    def _count(self, n: int, pos: int) -> None:
        self.nodes += n
        if self.nodes > MAX_NODES:
            raise FormatError(f"the vmdescription expands to more than {MAX_NODES} fields for "
                              "this section", pos, self.idstr, code="vmdesc-mismatch")

    def vmsd(self, desc: dict[str, Any], pos: int, end: int, depth: int) -> tuple[list[StateNode],
                                                                                  int]:
        if depth > MAX_DEPTH:
            raise FormatError(f"vmdescription nests deeper than {MAX_DEPTH} levels", pos,
                              self.idstr, code="vmdesc-mismatch")
        out: list[StateNode] = []
        seen: dict[str, int] = {}
        last_index: dict[str, int] = {}
        for f in _list(desc.get("fields")):
            node, pos = self.field(f, pos, end, depth)
            base = str(f.get("name", "?"))
            if "index" in f:
                last_index[base] = int(f["index"])
            elif base in last_index and "array_len" not in f:
                # QEMU 10 writes no "index" on the last element of an array that is
                # not collapsed (7.2 does): name it like its siblings
                last_index[base] += 1
                node.name = f"{base}[{last_index[base]}]"
            k = seen.get(node.name, 0)
            seen[node.name] = k + 1
            if k:
                node.name = f"{node.name}~{k + 1}"
            out.append(node)
        for sub in _list(desc.get("subsections")):
            want = str(sub.get("vmsd_name", ""))
            hdr, n = parse_at(V.vmstate_subsection_header, self.buf, pos,
                              f"subsection {want!r}", limit=1 + 256 + 4, end=end,
                              code="vmdesc-mismatch")
            if hdr.name != want:
                raise FormatError(f"subsection {hdr.name!r} where the vmdescription lists "
                                  f"{want!r}", pos, self.idstr, code="vmdesc-mismatch")
            children, p = self.vmsd(sub, pos + n, end, depth + 1)
            out.append(StateNode(want, "subsection", pos, p - pos, children=children,
                                 version=hdr.version_id))
            pos = p
        return out, pos

    def field(self, f: dict[str, Any], pos: int, end: int, depth: int) -> tuple[StateNode, int]:
        name = str(f.get("name", "?"))
        if "index" in f:
            name = f"{name}[{int(f['index'])}]"
        typ = str(f.get("type", "?"))
        size = int(f.get("size", 0))
        count = int(f["array_len"]) if "array_len" in f else None
        n = 1 if count is None else count
        if size < 0 or n < 0:
            raise FormatError(f"negative size or array_len for field {name!r}", pos, self.idstr,
                              code="vmdesc-mismatch")
        total = size * n
        if pos + total > end:
            raise FormatError(
                f"field {name!r} ({typ}, {total} bytes) runs {pos + total - end} bytes past the "
                "end of the section: the vmdescription does not match the bytes", pos,
                self.idstr, code="vmdesc-mismatch")
        self._count(1, pos)
        if typ in V.STRUCT_TYPES or typ == V.TMP_TYPE:
            sub = f.get("struct") if typ in V.STRUCT_TYPES else f
            self._count(n, pos)
            if not isinstance(sub, dict):
                return StateNode(name, typ, pos, total, self._hex(pos, total)), pos + total
            elems = []
            for i in range(n):
                p0 = pos + i * size
                children, p = self.vmsd(sub, p0, p0 + size, depth + 1)
                if p != p0 + size:
                    raise FormatError(
                        f"struct {name!r} decodes to {p - p0} bytes, the vmdescription says "
                        f"{size}", p0, self.idstr, code="vmdesc-mismatch")
                ver = sub.get("version")
                elems.append(StateNode(f"[{i}]" if count is not None else name, typ, p0, size,
                                       children=children,
                                       version=int(ver) if isinstance(ver, int) else None))
            if count is None:
                return elems[0], pos + total
            return StateNode(name, "array", pos, total, children=elems), pos + total
        dt = _DTYPES.get(typ)
        if typ == V.NULLPTR_TYPE:
            val: Any = None if self.buf[pos] == V.VMS_NULLPTR_MARKER else self._hex(pos, total)
        elif dt is not None and dt.itemsize == size and n <= MAX_LIST_ITEMS:
            arr = np.frombuffer(self.buf, dt, count=n, offset=pos)
            vals = arr.tolist()
            if typ == "bool":
                vals = [bool(v) for v in vals]
            val = vals if count is not None else vals[0]
        else:
            val = self._hex(pos, total)
        return StateNode(name, typ if count is None else f"{typ}[{count}]", pos, total,
                         val), pos + total

    def _hex(self, pos: int, n: int) -> str | Opaque:
        raw = bytes(self.buf[pos : pos + min(n, MAX_HEX_BYTES)])
        if n <= MAX_HEX_BYTES:
            return raw.hex()
        return Opaque(raw.hex(), n, xxhash.xxh3_64_hexdigest(self.buf[pos : pos + n]))


def _list(v: Any) -> list[Any]:
    return [x for x in v if isinstance(x, dict)] if isinstance(v, list) else []


def decode_devices(cap: Capture, only: str | None = None,
                   partial: bool = False) -> DevicesReport:
    """Decode every FULL section of `cap` that the vmdescription describes.
    `only`: keep devices whose idstr or vmsd name equals it or contains it. `partial`:
    `cap` was opened with strict=False; decode the sections read whole with the
    vmdescription's entries that are whole, and say what is not there (`salvage`)."""
    w = cap.walk
    source = DESCRIPTION_WHOLE
    if partial:
        data, source = description(cap)
    elif w.trailer is None or w.trailer.data is None:
        why = w.trailer.error if w.trailer is not None and w.trailer.error else (
            "the file has no vmdescription trailer (suppress-vmdesc, postcopy or cut short)")
        raise UnsupportedError(f"cannot decode device state: {why}",
                               w.trailer_offset, "vmdescription", code="no-trailer")
    else:
        data = w.trailer.data
    index = device_index(data)
    report = DevicesReport(cap.path, [])
    undescribed: list[Section] = []
    for sec in w.sections:
        if sec.kind != "FULL" or sec.payload_offset is None or \
                (partial and sec.payload_end is None):
            continue
        descs = index.get((sec.idstr or "", sec.instance_id or 0))
        if not descs:
            if partial and source != DESCRIPTION_WHOLE:
                undescribed.append(sec)
                continue
            report.notices.append(DeviceNotice("the section is not in the vmdescription; not "
                                               "decoded", sec.offset, sec.idstr or ""))
            continue
        desc = descs.pop(0)
        end = sec.payload_end if sec.payload_end is not None else sec.payload_offset
        dev = DeviceState(sec.idstr or "", sec.instance_id or 0, desc.get("vmsd_name"),
                          sec.version_id, sec.offset, sec.payload_offset, end)
        if only is not None and not _matches(dev, only, exact=False):
            continue
        dec = _Decoder(cap.source.buf, dev.idstr)
        try:
            dev.fields, p = dec.vmsd(desc, sec.payload_offset, end, 0)
            if p != end:
                dev.error = (f"the vmdescription accounts for {p - sec.payload_offset} bytes, "
                             f"the section holds {end - sec.payload_offset}")
                dev.error_offset = p
        except MigError as e:
            dev.error, dev.error_offset = e.message, e.offset
        except (ValueError, TypeError, KeyError) as e:
            dev.error = f"malformed vmdescription entry ({type(e).__name__}: {e})"
            dev.error_offset = sec.payload_offset
        report.devices.append(dev)
    if only is not None and any(_matches(d, only, exact=True) for d in report.devices):
        report.devices = [d for d in report.devices if _matches(d, only, exact=True)]
    if partial:
        report.salvage = device_salvage(cap, data, source, undescribed)
    elif w.error is not None:
        report.notices.append(DeviceNotice(f"the walk stopped early: {w.error.message}",
                                           w.error.offset, w.error.where))
    return report


def _matches(dev: DeviceState, only: str, exact: bool) -> bool:
    names = (dev.idstr, dev.key, dev.vmsd_name or "")
    return only in names if exact else any(only in n for n in names)


__all__ = ["decode_devices", "DevicesReport", "DeviceState", "StateNode", "Opaque",
           "DeviceNotice"]
