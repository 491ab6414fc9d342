"""Where a device section's state ends (device sections carry no length).

A FULL section is sized by its entry in the vmdescription trailer (the sum of its
fields' sizes, see vmdesc.vmsd_length); QEMU's loader reads the same number of bytes by
the device's own description and then demands the section footer there. Without an
entry (no trailer, a section the trailer does not describe, a live device's START /
PART / END), the section ends at the first footer with its id that is followed by the
start of a record: a search bounded to a window after the section's start, so a
section this tool cannot size costs at most the window, never the file.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Any

from ..errors import FormatError, MigError, TruncatedError, UnsupportedError
from ..formats import stream as S
from .model import Section, StreamWalk
from .vmdesc import device_index, vmsd_length

#: Bytes after a section's start searched for its footer; MIGINSPECT_FOOTER_WINDOW
#: overrides it. Device state is small (the largest real sections are a few MiB).
FOOTER_WINDOW = 64 << 20
#: A device registered without a legacy alias has alias_id -1: QEMU's find_se() gives a
#: section carrying this instance id to the device of that idstr, whatever its instance;
#: a device with an alias (its legacy I/O base) does not match it. The file cannot tell
#: which devices have one.
ALIAS_NONE = 0xFFFFFFFF

_CHUNK = 4 << 20
_U32 = struct.Struct(">I")


class DeviceSizer:
    """Sizes the device sections of one walk (`w.trailer` must be read already)."""

    def __init__(self, buf: Any, end: int, w: StreamWalk,
                 release: Callable[[int, int], None] | None = None) -> None:
        self.buf = buf
        self.end = end
        self.w = w
        self.release = release
        t = w.trailer
        self.described = t is not None and t.data is not None
        self.descs = device_index(t.data) if self.described and t is not None else {}
        self.known = set(self.descs)  # (idstr, instance_id) of every described device
        # a device list with damaged entries cannot say a section names no device
        devices = t.data.get("devices") if self.described and t is not None and t.data else None
        self.complete = isinstance(devices, list) and len(devices) == sum(
            len(v) for v in self.descs.values())
        self.window = int(os.environ.get("MIGINSPECT_FOOTER_WINDOW", FOOTER_WINDOW))

    def lookup(self, sec: Section) -> tuple[str, int] | None:
        """The described device QEMU's loader would give `sec` to, as find_se() matches:
        the idstr as a C string (up to a NUL) and the instance id."""
        name, inst = qemu_idstr(sec.idstr or ""), sec.instance_id or 0
        if (name, inst) in self.known:
            return (name, inst)
        return None

    def payload_end(self, sec: Section) -> int:
        """Offset where `sec`'s state ends (its footer, if the stream has footers)."""
        key = self.lookup(sec) if sec.kind == S.KIND_FULL else None
        descs = self.descs.get(key) if key is not None else None
        if descs:
            desc = descs.pop(0)
            self._check_version(sec, desc)
            try:
                n = vmsd_length(desc)
            except (ValueError, TypeError, AttributeError, RecursionError):
                self.w.note("warning", sec.offset, sec.idstr or "",
                            f"the vmdescription entry of {sec.idstr!r} is malformed; sized by "
                            "its footer instead", code="trailer-damaged")
                return self._footer_search(sec)
            return self._by_description(sec, n)
        if self.described:  # before the search: QEMU stops at this header
            self._note_undescribed(sec)
        return self._footer_search(sec)

    def _by_description(self, sec: Section, n: int) -> int:
        w, buf, end = self.w, self.buf, self.end
        assert sec.payload_offset is not None
        stop = sec.payload_offset + n
        if stop > end:
            raise TruncatedError(
                f"device section {sec.idstr!r} needs {n} bytes (vmdescription), the data "
                f"ends {stop - end} bytes short", sec.payload_offset, sec.idstr or "",
                code="truncated-device")
        if w.footers is False or stop == end or buf[stop] == S.QEMU_VM_SECTION_FOOTER or (
                w.footers is None and buf[stop] in S.NEXT_RECORD_TYPES):
            # QEMU's loader reads the footer right there: one with another id is its
            # "Mismatched section id in footer", a cut one "Read section footer failed";
            # the walker's footer check says the same
            sec.sized_by = "vmdesc"
            return stop
        # QEMU reads the state and finds no footer after it: "Missing section footer"
        w.note("warning", stop, sec.idstr or "",
               f"Missing section footer for {sec.idstr!r}: the vmdescription says its state "
               f"is {n} bytes, but byte 0x{buf[stop]:02x} at 0x{stop:x} is not a footer (bytes "
               "inserted into or lost from the section?); sized by footer search instead",
               code="footer-missing")
        try:
            return self._footer_search(sec)
        except MigError as e:
            raise FormatError(
                f"Missing section footer for {sec.idstr!r}: no footer at 0x{stop:x}, where "
                f"the vmdescription says its {n} bytes of state end, nor after it "
                f"({e.message})", stop, sec.idstr or "", code="footer-missing") from e

    def _footer_search(self, sec: Section) -> int:
        w = self.w
        assert sec.payload_offset is not None and sec.section_id is not None
        if w.footers is False:
            raise UnsupportedError(
                f"cannot size section {sec.idstr!r}: no vmdescription entry and the stream has "
                "no section footers", sec.offset, sec.idstr or "", code="cannot-size")
        start = sec.payload_offset
        limit = min(self.end, start + self.window)
        q = self._find_footer(sec.section_id, start, limit)
        if q < 0:
            if limit >= self.end:
                raise TruncatedError(
                    f"cannot find the end of section {sec.idstr!r} (no vmdescription entry, "
                    "no footer found before the end of the data)", sec.offset,
                    sec.idstr or "", code="truncated-device")
            raise UnsupportedError(
                f"could not size section {sec.idstr!r} (id {sec.section_id}): no "
                f"vmdescription entry and no footer within {self.window:,} bytes of its start "
                "(MIGINSPECT_FOOTER_WINDOW widens the search)", sec.offset, sec.idstr or "",
                code="cannot-size")
        sec.sized_by = "footer-search"
        return q

    def _find_footer(self, section_id: int, start: int, limit: int) -> int:
        """The first footer of `section_id` in [start, limit) followed by the start of a
        record or the end of the data; -1 if none. Searched in chunks, each handed to
        `release` once passed (the search costs no memory however far it goes)."""
        buf, end = self.buf, self.end
        pat = bytes([S.QEMU_VM_SECTION_FOOTER]) + _U32.pack(section_id)
        p = done = start
        while p < limit:
            hi = min(limit, done + _CHUNK)
            q = _find(buf, pat, p, min(limit, hi + len(pat) - 1))
            if q < 0:
                if self.release is not None:
                    self.release(done, hi)
                p, done = max(p, hi), hi
                continue
            nxt = q + 5
            if nxt == end or (nxt < end and buf[nxt] in S.NEXT_RECORD_TYPES):
                return q
            p = q + 1
        return -1

    def _check_version(self, sec: Section, desc: dict[str, Any]) -> None:
        """The section's version must be the one its description was written with (the
        same QEMU wrote both): another one is a damaged header, refused by QEMU's
        version checks ("unsupported version", "too old")."""
        v = desc.get("version")
        if isinstance(v, int) and sec.version_id != v:
            self.w.note("warning", sec.offset, sec.idstr or "",
                        f"section {sec.idstr!r} instance {sec.instance_id} has version "
                        f"{sec.version_id}, the vmdescription describes version {v} (a damaged "
                        "section header: QEMU checks the version against the device's)",
                        code="section-version")

    def _note_undescribed(self, sec: Section) -> None:
        if sec.kind == S.KIND_FULL and sec.instance_id == ALIAS_NONE and any(
                k[0] == qemu_idstr(sec.idstr or "") for k in self.known):
            self.w.note("warning", sec.offset, sec.idstr or "",
                        f"section {sec.idstr!r} has instance id 0x{ALIAS_NONE:x}: QEMU gives it "
                        "to the device of that idstr unless the device registered a legacy "
                        "instance alias (ISA serial, RTC, PIC, PIT, FDC ...); sized by its "
                        "footer", code="instance-alias")
        elif sec.kind == S.KIND_FULL and self.complete and self.lookup(sec) is None:
            self.w.note("warning", sec.offset, sec.idstr or "",
                        f"section {sec.idstr!r} instance {sec.instance_id} is not a device "
                        "the vmdescription lists (Unknown savevm section or instance for a "
                        "destination with the source's devices); sized by its footer",
                        code="unknown-section")
        else:
            self.w.note("info", sec.offset, sec.idstr or "",
                        f"section {sec.idstr!r} is not in the vmdescription; sized by its "
                        "footer", code="sized-by-footer")


def qemu_idstr(idstr: str) -> str:
    """An idstr as QEMU's loader compares it: a C string, cut at its first NUL."""
    return idstr.split("\0", 1)[0]


def _find(buf: Any, pat: bytes, start: int, end: int) -> int:
    if hasattr(buf, "find"):
        return buf.find(pat, start, end)
    return bytes(buf).find(pat, start, end)
