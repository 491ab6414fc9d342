"""Field-level comparison of one device section: where the target QEMU stops reading it.

A device (VMState) section carries no lengths: QEMU reads it with *its own* field list
(migration/vmstate.c `vmstate_load_state`). The file's vmdescription says how the source
wrote the bytes; the target's own vmdescription (of a state it saved itself) says how the
target will read them. This module walks both descriptions in step over the file's bytes
and does what QEMU's loader does:

* fields in the target's order, each array with the target's element count;
* then the subsection loop: while the next byte is QEMU_VM_SUBSECTION and the counted name
  starts with the device's vmsd name, look the name up (unknown: the load fails), check its
  version, read it with the target's layout;
* then `check_section_footer` in savevm.c: a QEMU_VM_SECTION_FOOTER byte and the section id.

An array whose length the source took from the stream itself (a count field read just
before it, or `field_exists` decided by loaded values, or opaque types such as `virtio`
that size themselves from the stream) reads the file's length on the target too: those
differences are harmless. An array sized by the target's own configuration and not by the
stream (the ACPI CPU hotplug state, sized by the machine's possible CPUs) is read with the
target's length: from there on the target reads the file's bytes at the wrong place, and
the first check that looks at a byte (a subsection marker, the footer) fails -- naming the
section being read, which is often not the device that differs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from ..formats import stream as S
from ..formats import vmstate as V

#: Integer VMState types whose value a later array may take its length from.
_INT_TYPES = {k for k in V.VMSTATE_SCALARS if k not in ("float64", "timer")}
#: Fixed-size encodings: a size difference is a real layout difference.
_FIXED = set(V.VMSTATE_SCALARS)
MAX_DEPTH = 64
#: Elements of one array, and element visits per section, beyond which a (hostile)
#: description is not compared.
MAX_ELEMS = 1 << 20


@dataclass
class LayoutDiff:
    """One place where the file's and the target's descriptions differ."""

    path: str  # field path, subsections in braces: "{piix4_pm/cpuhp}.cpuhp_state.devs"
    offset: int  # file offset of the field (or of the subsection header)
    kind: str  # "array-length", "size", "presence", "unknown-subsection", "subsection-version"
    file_value: int | str | None
    target_value: int | str | None
    harmless: bool  # True: decided by the stream (the target reads it as the file wrote it)
    note: str = ""

    def describe(self) -> str:
        what = {"array-length": "elements", "size": "bytes"}.get(self.kind, "")
        return (f"{self.path}: {self.file_value} {what} in the file, {self.target_value} on "
                f"the target".replace("  ", " "))


@dataclass
class LayoutStop:
    """Where QEMU's loader fails in this section and the line it prints."""

    offset: int  # file offset of the byte QEMU rejects
    line: str  # QEMU's message
    code: str  # target-layout, target-unknown-subsection, target-subsection-version
    diverges: LayoutDiff | None = None  # the field where the two layouts part


@dataclass
class SectionLayout:
    idstr: str
    instance_id: int
    section_offset: int
    diffs: list[LayoutDiff] = field(default_factory=list)
    stop: LayoutStop | None = None
    certain: bool = True  # False: the target read garbage counts; the exact stop may differ

    @property
    def harmful(self) -> list[LayoutDiff]:
        return [d for d in self.diffs if not d.harmless]


@dataclass
class SubsectionInfo:
    """What the target knows of one subsection name (from -dump-vmstate or its own state)."""

    version_id: int | None = None
    minimum_version_id: int | None = None


@dataclass
class _Elem:
    entry: dict[str, Any]
    size: int
    sub: dict[str, Any] | None  # nested VMState of a struct / tmp element


class _Misread(Exception):
    """The loader fails inside the section (subsection lookup or version)."""

    def __init__(self, stop: LayoutStop) -> None:
        super().__init__(stop.line)
        self.stop = stop


def _elems(entry: dict[str, Any]) -> list[_Elem]:
    typ = str(entry.get("type", ""))
    size = int(entry.get("size", 0))
    n = int(entry["array_len"]) if "array_len" in entry else 1
    if size < 0 or n < 0 or n > MAX_ELEMS:
        raise ValueError("bad size or array_len in a vmdescription")
    sub = entry.get("struct") if typ in V.STRUCT_TYPES else (entry if typ == V.TMP_TYPE
                                                              else None)
    return [_Elem(entry, size, sub if isinstance(sub, dict) else None)] * n


def _logical(fields: Any) -> list[tuple[str, list[_Elem]]]:
    """Fields grouped by name: the entries of one array (QEMU writes an array either as
    one entry with array_len or as one entry per element) become one logical field."""
    out: list[tuple[str, list[_Elem]]] = []
    for f in fields if isinstance(fields, list) else []:
        if not isinstance(f, dict):
            continue
        name = str(f.get("name", "?"))
        if out and out[-1][0] == name and ("index" in f or int(out[-1][1][-1].entry.get(
                "index", -2)) >= 0):
            out[-1][1].extend(_elems(f))
        else:
            out.append((name, _elems(f)))
    return out


def _elems_len(elems: list[_Elem]) -> int:
    return sum(e.size for e in elems)


def _subs(desc: dict[str, Any] | None) -> list[dict[str, Any]]:
    v = (desc or {}).get("subsections")
    return [s for s in v if isinstance(s, dict)] if isinstance(v, list) else []


def _sub_len(sub: dict[str, Any]) -> int:
    from .vmdesc import vmsd_length

    return 1 + 1 + len(str(sub.get("vmsd_name", "")).encode()) + 4 + vmsd_length(sub)


class _Sim:
    """The target's read of one section over the file's bytes."""

    def __init__(self, fbuf: Any, tbuf: bytes | None, idstr: str, instance_id: int,
                 known: dict[str, dict[str, SubsectionInfo]] | None) -> None:
        self.fbuf, self.tbuf = fbuf, tbuf
        self.idstr, self.instance_id = idstr, instance_id
        self.known = known
        self.diffs: list[LayoutDiff] = []
        self.misaligned = False
        self.certain = True
        self.tknown = True  # False: no target layout, only what -dump-vmstate knows
        self.visits = 0

    # -- values ------------------------------------------------------------------
    def _int(self, buf: Any, pos: int | None, e: _Elem) -> int | None:
        if buf is None or pos is None or str(e.entry.get("type")) not in _INT_TYPES:
            return None
        if e.size not in (1, 2, 4, 8) or pos < 0 or pos + e.size > len(buf):
            return None
        return int.from_bytes(bytes(buf[pos:pos + e.size]), "big")

    def _from_stream(self, sib: list[tuple[int | None, int | None]], fv: int, tv: int) -> bool:
        """Did the source take this length from the stream? A count field read just before
        it holds the file's length in the file and the target's in the target's state."""
        for a, b in sib:
            if a == fv and (b is None or b == tv):
                return True
        return False

    # -- one VMState: fields, then the subsection loop -------------------------------
    def vmsd(self, fd: dict[str, Any] | None, td: dict[str, Any] | None, fpos: int,
             tpos: int | None, path: str, depth: int) -> int:
        """Bytes the target reads from the file at `fpos` for this VMState."""
        if depth > MAX_DEPTH:
            raise ValueError("vmdescription nests too deeply")
        fd = fd or td or {}
        tf = (td or fd).get("fields")  # no target layout: assume the file's fields
        n = self.fields(fd.get("fields"), tf, fpos, tpos, path, depth)
        tsubpos = None if tpos is None or td is None else tpos + self._target_fields_len(td)
        return n + self.subsections(fd, td, fpos + n, tsubpos, path, depth)

    def _target_fields_len(self, td: dict[str, Any]) -> int:
        return sum(_elems_len(e) for _, e in _logical(td.get("fields")))

    def fields(self, ff: Any, tf: Any, fpos: int, tpos: int | None, path: str,
               depth: int) -> int:
        fl, tl = _logical(ff), _logical(tf)
        read, j = 0, 0
        sib: list[tuple[int | None, int | None]] = []
        for name, fel in fl:
            k = next((i for i in range(j, len(tl)) if tl[i][0] == name), None)
            if k is None:  # the target has no such field here: presence decided by version
                if not self.misaligned:
                    self._note(path, name, fpos + read, "presence", "present", "absent")
                read += _elems_len(fel)
                continue
            if tpos is not None:
                tpos += sum(_elems_len(tl[i][1]) for i in range(j, k))
            tel = tl[k][1]
            j = k + 1
            n = self.field(name, fel, tel, fpos + read, tpos, path, depth, sib)
            if self.misaligned:  # the target reads the rest with its own sizes
                return read + n + sum(_elems_len(e) for _, e in tl[j:])
            read += n
            if tpos is not None:
                tpos += _elems_len(tel)
        return read

    def field(self, name: str, fel: list[_Elem], tel: list[_Elem], fpos: int,
              tpos: int | None, path: str, depth: int,
              sib: list[tuple[int | None, int | None]]) -> int:
        p = f"{path}.{name}" if path else name
        nf, nt = len(fel), len(tel)
        if nf == nt and fel[0].sub is None and all(  # a scalar array alike on both sides
                e is fel[0] for e in fel) and all(e is tel[0] for e in tel) and (
                fel[0].size == tel[0].size) and nf > 1:
            return nf * fel[0].size
        count = nf
        if nf != nt:
            harmless = self._from_stream(sib, nf, nt)
            self.diffs.append(LayoutDiff(p, fpos, "array-length", nf, nt, harmless))
            if not harmless:
                count = nt
        read = 0
        for i in range(count):
            fe = fel[min(i, nf - 1)] if nf else tel[i]
            te = tel[min(i, nt - 1)] if nt else fe
            q = f"{p}[{i}]" if max(nf, nt) > 1 else p
            if i >= nf:  # past the file's elements: the target reads its own layout
                self.misaligned = True
                read += te.size
                continue
            read += self.element(fe, te, fpos + read,
                                 None if tpos is None else tpos + i * te.size, q, depth)
            if self.misaligned:
                return read + sum(e.size for e in tel[i + 1:count])
        if count != nf:
            self.misaligned = True
        if nf == 1 and nt == 1:
            sib.append((self._int(self.fbuf, fpos, fel[0]), self._int(self.tbuf, tpos, tel[0])))
        return read

    def element(self, fe: _Elem, te: _Elem, fpos: int, tpos: int | None, path: str,
                depth: int) -> int:
        self.visits += 1
        if self.visits > MAX_ELEMS:
            raise ValueError("the description expands to too many elements to compare")
        if fe.sub is not None or te.sub is not None:
            if fe.sub is None or te.sub is None:
                self._note(path, "", fpos, "size", fe.size, te.size, harmless=False)
                self.misaligned = True
                return te.size
            return self.vmsd(fe.sub, te.sub, fpos, tpos, path, depth + 1)
        if fe.size == te.size:
            return fe.size
        typ = str(te.entry.get("type", ""))
        if typ in _FIXED:
            self._note(path, "", fpos, "size", fe.size, te.size, harmless=False)
            self.misaligned = True
            return te.size
        # opaque types (virtio, buffer, ...) size themselves from the stream
        self._note(path, "", fpos, "size", fe.size, te.size, harmless=True,
                   note=f"{typ} sizes itself from the stream")
        return fe.size

    def _note(self, path: str, name: str, off: int, kind: str, fv: Any, tv: Any,
              harmless: bool = True, note: str = "") -> None:
        p = f"{path}.{name}" if path and name else (path or name)
        self.diffs.append(LayoutDiff(p, off, kind, fv, tv, harmless, note))

    # -- the subsection loop (vmstate_subsection_load) ----------------------------
    def subsections(self, fd: dict[str, Any], td: dict[str, Any] | None, pos: int,
                    tpos: int | None, path: str, depth: int) -> int:
        vmsd_name = str((td or fd).get("vmsd_name") or "")
        buf = self.fbuf
        start = pos
        fsubs, tsubs = _subs(fd), (_subs(td) if self.tknown else [])
        fat = self._file_sub_offsets(fd, fsubs, pos) if not self.misaligned else {}
        while pos + 2 <= len(buf) and buf[pos] == S.QEMU_VM_SUBSECTION:
            ln = buf[pos + 1]
            if ln < len(vmsd_name) + 1 or pos + 2 + ln + 4 > len(buf):
                break
            name = bytes(buf[pos + 2:pos + 2 + ln]).decode("latin-1")
            if not name.startswith(vmsd_name):
                break
            (ver,) = struct.unpack_from(">I", buf, pos + 2 + ln)
            tsub = next((s for s in tsubs if s.get("vmsd_name") == name), None)
            self._check_sub(vmsd_name, name, ver, tsub, pos, path)
            fsub = fat.get(pos)
            if fsub is not None and fsub.get("vmsd_name") != name:
                fsub = None
            if fsub is None and tsub is None:
                self.certain = False  # misread into bytes no description covers
                break
            tp = None
            if tpos is not None and tsub is not None:
                tp = tpos + sum(_sub_len(s) for s in tsubs[:tsubs.index(tsub)]) + 2 + ln + 4
            body = pos + 2 + ln + 4
            pos = body + self.vmsd(fsub, tsub, body, tp, f"{path}{{{name}}}", depth + 1)
        return pos - start

    def _file_sub_offsets(self, fd: dict[str, Any], fsubs: list[dict[str, Any]],
                          pos: int) -> dict[int, dict[str, Any]]:
        out = {}
        for s in fsubs:
            out[pos] = s
            pos += _sub_len(s)
        return out

    def _check_sub(self, vmsd_name: str, name: str, ver: int, tsub: dict[str, Any] | None,
                   pos: int, path: str) -> None:
        info = (self.known or {}).get(vmsd_name)
        known = info.get(name) if info is not None else None
        where = f"{path}{{{name}}}"
        if tsub is None and info is not None and known is None:
            d = LayoutDiff(where, pos, "unknown-subsection", name, None, False,
                           "the target QEMU has no such subsection")
            self.diffs.append(d)
            raise _Misread(LayoutStop(pos, f"error while loading state for instance "
                                      f"0x{self.instance_id:x} of device '{self.idstr}'",
                                      "target-unknown-subsection", d))
        tver = tsub.get("version") if tsub is not None else None
        tmin = None
        if known is not None:
            tver = known.version_id if tver is None else tver
            tmin = known.minimum_version_id
        if isinstance(tver, int) and ver > tver:
            line = f"{name}: incoming version_id {ver} is too new for local version_id {tver}"
        elif isinstance(tmin, int) and ver < tmin:
            line = (f"{name}: incoming version_id {ver} is too old for local minimum "
                    f"version_id  {tmin}")
        else:
            return
        d = LayoutDiff(where, pos, "subsection-version", ver, tver, False)
        self.diffs.append(d)
        raise _Misread(LayoutStop(pos, line, "target-subsection-version", d))


def compare_section(
    buf: Any,
    sec: Any,
    fdesc: dict[str, Any],
    tdesc: dict[str, Any] | None,
    tpayload: bytes | None = None,
    known: dict[str, dict[str, SubsectionInfo]] | None = None,
    footers: bool = True,
) -> SectionLayout:
    """Read FULL section `sec` of the file (its vmdescription entry `fdesc`) the way a
    target whose own description is `tdesc` (and own payload `tpayload`, for count fields)
    reads it. `known`: vmsd name -> subsection name -> what the target knows of it (from
    -dump-vmstate); without it a subsection the target's state lacks is assumed known."""
    idstr, inst = sec.idstr or "", sec.instance_id or 0
    out = SectionLayout(idstr, inst, sec.offset)
    sim = _Sim(buf, tpayload, idstr, inst, known)
    sim.tknown = tdesc is not None
    try:
        n = sim.vmsd(fdesc, tdesc, sec.payload_offset, 0 if tpayload is not None else None,
                     "", 0)
    except _Misread as e:
        out.diffs, out.stop, out.certain = sim.diffs, e.stop, sim.certain
        return out
    out.diffs, out.certain = sim.diffs, sim.certain
    first = next((d for d in sim.diffs if not d.harmless), None)
    q = sec.payload_offset + n
    if not footers or (first is None and sec.payload_end is not None and q == sec.payload_end):
        return out
    sid = sec.section_id
    if q + 5 > len(buf) or buf[q] != S.QEMU_VM_SECTION_FOOTER:
        out.stop = LayoutStop(q, f"Missing section footer for {idstr}", "target-layout", first)
        return out
    (read,) = struct.unpack_from(">I", buf, q + 1)
    if read != sid:
        out.stop = LayoutStop(q, f"Mismatched section id in footer for {idstr} - read "
                              f"0x{read:x} expected 0x{sid:x}", "target-layout", first)
    return out


__all__ = ["compare_section", "SectionLayout", "LayoutDiff", "LayoutStop", "SubsectionInfo"]
