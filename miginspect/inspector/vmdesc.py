"""The QEMU_VM_VMDESCRIPTION JSON trailer: finding it and sizing device sections.

Device (VMState) sections carry no length; the trailer's description of each
section lets a reader skip it: the section's payload length is the sum of
its fields' `size` x `array_len`, plus, for each subsection written,
1 (marker) + 1 + len(name) + 4 (version) + the subsection's own length.
A `struct` field's `size` already includes its own subsections.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..formats.stream import QEMU_VM_VMDESCRIPTION

#: Search at most this far back from the end (of the non-zero data) for the trailer.
MAX_TRAILER_SEARCH = 64 << 20
_CHUNK = 4 << 20
#: Trailing zeros are skipped in blocks of this size (each byte is read once).
_ZERO_BLOCK = 1 << 20


@dataclass
class Trailer:
    offset: int  # of the 0x06 type byte
    length: int  # of the JSON
    json_offset: int
    data: dict[str, Any] | None
    error: str | None = None


def data_end(buf: Any, start: int = 0,
             release: Callable[[int, int], None] | None = None) -> int:
    """Where the trailing run of zero bytes of `buf[start:]` begins (len(buf) when the
    last byte is not zero): a state volume is a stream padded with zeros to the volume's
    size. Read backwards in 1 MiB blocks with numpy, each byte once, each block handed to
    `release` once read (a volume whose padding is a hole costs no memory)."""
    end = len(buf)
    while end > start:
        lo = max(start, end - _ZERO_BLOCK)
        block = np.frombuffer(buf, np.uint8, end - lo, lo)
        nz = np.flatnonzero(block) if block.any() else None
        del block
        if nz is not None:
            return lo + int(nz[-1]) + 1
        if release is not None:
            release(lo, end)
        end = lo
    return end


def find_trailer(buf: Any, start: int = 0,
                 release: Callable[[int, int], None] | None = None,
                 end: int | None = None) -> Trailer | None:
    """Backward search: a 0x06 byte whose be32 length reaches exactly to `end` (the end of
    the data before any zero padding: `data_end`), followed by `{`. Returns None when
    there is none. The search reads at most MAX_TRAILER_SEARCH bytes, in chunks it hands
    to `release` once searched (so a file whose tail is a hole costs no memory)."""
    end = len(buf) if end is None else end
    lo = max(start, end - MAX_TRAILER_SEARCH)
    hi = end - 4  # the marker needs its 4 length bytes after it
    # The JSON is text, so the first 0x06 found from the end is at most a few
    # bytes before the real marker (inside the length field).
    tries = 0
    while hi > lo and tries < 64:
        wlo = max(lo, hi - _CHUNK)
        p = _rfind(buf, QEMU_VM_VMDESCRIPTION, wlo, hi)
        if p < 0:
            if release is not None:
                release(wlo, hi)
            hi = wlo
            continue
        tries += 1
        (n,) = struct.unpack_from(">I", buf, p + 1)
        if n == end - (p + 5) and n > 0 and buf[p + 5] == 0x7B:
            return read_trailer_at(buf, p)
        hi = p
    return None


def _rfind(buf: Any, byte: int, lo: int, hi: int) -> int:
    if hasattr(buf, "rfind"):
        return buf.rfind(bytes([byte]), lo, hi)
    return bytes(buf[lo:hi]).rfind(bytes([byte])) + lo if byte in buf[lo:hi] else -1


def read_trailer_at(buf: Any, p: int, end: int | None = None) -> Trailer:
    """Read the trailer whose type byte is at `p` (length checked against `end`, the
    end of the data: the buffer's, or where its zero padding begins)."""
    (n,) = struct.unpack_from(">I", buf, p + 1)
    avail = (len(buf) if end is None else end) - (p + 5)
    t = Trailer(p, n, p + 5, None)
    if n > avail:
        t.error = f"vmdescription says {n} bytes of JSON, only {avail} remain"
        return t
    raw = bytes(buf[p + 5 : p + 5 + n])
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        t.error = f"vmdescription JSON does not parse: {e}"
        return t
    except RecursionError:
        t.error = "vmdescription JSON is nested too deeply to parse (damaged or hostile)"
        return t
    if not isinstance(data, dict):
        t.error = "vmdescription JSON is not an object"
        return t
    t.data = data
    return t


def vmsd_length(desc: dict[str, Any]) -> int:
    """Bytes a VMState section/subsection payload occupies, from its description."""
    total = 0
    for f in desc.get("fields", ()) or ():
        size = int(f.get("size", 0))
        count = int(f.get("array_len", 1)) if "array_len" in f else 1
        if size < 0 or count < 0:
            raise ValueError("negative size in vmdescription")
        total += size * count
    for sub in desc.get("subsections", ()) or ():
        name = str(sub.get("vmsd_name", ""))
        total += 1 + 1 + len(name.encode()) + 4 + vmsd_length(sub)
    return total


def device_index(data: dict[str, Any] | None) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """(section idstr, instance_id) -> descriptions in stream order."""
    out: dict[tuple[str, int], list[dict[str, Any]]] = {}
    if not data:
        return out
    devices = data.get("devices")
    for dev in devices if isinstance(devices, list) else ():
        if not isinstance(dev, dict):
            continue
        try:
            key = (str(dev.get("name", "")), int(dev.get("instance_id", 0)))
        except (TypeError, ValueError, OverflowError):
            continue  # a damaged entry describes nothing (QEMU never reads the trailer)
        out.setdefault(key, []).append(dev)
    return out


_DEVICES_KEY = re.compile(r'"devices"\s*:\s*\[')
_PAGE_SIZE_KEY = re.compile(r'"page_size"\s*:\s*(\d{1,12})\s*[,}]')


def salvage_description(buf: Any, t: Trailer, end: int | None = None) -> dict[str, Any] | None:
    """The device entries a cut (or damaged) vmdescription JSON still holds whole: the
    JSON object QEMU writes (`{"page_size": N, "devices": [{...}, ...]}`) rebuilt from the
    bytes up to `end` (the end of the data), each entry parsed on its own until the first
    one that does not parse. None when no entry is whole."""
    stop = min(len(buf) if end is None else end, t.json_offset + t.length)
    if stop <= t.json_offset:
        return None
    text = bytes(buf[t.json_offset:stop]).decode("utf-8", "replace")
    m = _DEVICES_KEY.search(text)
    if m is None:
        return None
    dec = json.JSONDecoder()
    devices: list[Any] = []
    pos = m.end()
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] != "{":
            break
        try:
            entry, pos = dec.raw_decode(text, pos)
        except (json.JSONDecodeError, RecursionError):
            break
        devices.append(entry)
    if not devices:
        return None
    out: dict[str, Any] = {"devices": devices}
    ps = _PAGE_SIZE_KEY.search(text, 0, m.start())
    if ps is not None:
        out["page_size"] = int(ps.group(1))
    return out
