"""Walk a QEMU migration stream: every top-level record and its byte span.

Sections carry no length. The RAM section is walked record by record (by
`ramscan`); device sections are sized from the vmdescription trailer, or,
without it, by finding their footer. The walk never raises on bad input: it
stops at the first fatal problem and keeps it in `StreamWalk.error`, with
everything read up to there.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ..errors import (
    BadMagicError,
    FormatError,
    InconsistentError,
    MigError,
    TruncatedError,
    UnknownSectionError,
    UnsupportedError,
)
from ..formats import configuration as C
from ..formats import mapped_ram as M
from ..formats import ram as R
from ..formats import stream as S
from .parsing import parse_at
from .ramscan import RamScanner, RecordTable
from .vmdesc import Trailer, device_index, find_trailer, read_trailer_at, vmsd_length

DEFAULT_PAGE_SIZE = 4096
#: Pages a legacy stream may claim beyond one per byte of the file (4 GiB of 4 KiB
#: pages never sent); MIGINSPECT_MAX_UNSENT_PAGES overrides it.
MAX_UNSENT_PAGES = 1 << 20
#: Top-level records kept per walk (each costs a Section object); real files have a few
#: thousand. MIGINSPECT_MAX_SECTIONS overrides it.
MAX_SECTIONS = 200_000


@dataclass
class Notice:
    """Something a reader should know that did not stop the walk."""

    severity: str  # "warning" or "info"
    offset: int | None
    where: str
    message: str


@dataclass
class Configuration:
    offset: int
    end: int
    machine_type: str
    capabilities: list[str] = field(default_factory=list)
    target_page_bits: int | None = None
    uuid: str | None = None
    subsections: list[tuple[str, int, int]] = field(default_factory=list)  # name, version, off


@dataclass
class Section:
    """One top-level record of the stream."""

    kind: str  # START PART END FULL COMMAND EOF VMDESCRIPTION
    type: int
    offset: int
    end: int
    section_id: int | None = None
    idstr: str | None = None
    instance_id: int | None = None
    version_id: int | None = None
    payload_offset: int | None = None
    payload_end: int | None = None
    footer: bool = False
    sized_by: str | None = None  # ram, vmdesc, footer-search, command
    cmd: int | None = None

    @property
    def length(self) -> int:
        return self.end - self.offset


@dataclass
class MappedRamInfo:
    header_offset: int
    version: int
    page_size: int
    bitmap_offset: int
    pages_offset: int
    bitmap_bytes: int
    skipped: bool = False  # x-ignore-shared block with zero offsets


@dataclass
class RamBlock:
    index: int
    name: str
    used_length: int
    entry_offset: int
    page_size: int  # target page size used for the map
    host_page_size: int | None = None
    mr_addr: int | None = None
    mapped_ram: MappedRamInfo | None = None

    @property
    def pages(self) -> int:
        return self.used_length // self.page_size


@dataclass
class StreamWalk:
    base: int
    buf_size: int
    version: int | None = None
    configuration: Configuration | None = None
    sections: list[Section] = field(default_factory=list)
    blocks: list[RamBlock] = field(default_factory=list)
    records: RecordTable | None = None
    page_size: int = DEFAULT_PAGE_SIZE
    page_size_source: str = "default"
    ram_total: int | None = None
    trailer: Trailer | None = None
    eof_offset: int | None = None
    walked_to: int = 0
    footers: bool | None = None
    notices: list[Notice] = field(default_factory=list)
    error: MigError | None = None
    other_ram_records: dict[str, int] = field(default_factory=dict)

    @property
    def capabilities(self) -> list[str]:
        return self.configuration.capabilities if self.configuration else []

    @property
    def mapped_ram(self) -> bool:
        return "mapped-ram" in self.capabilities

    @property
    def ignore_shared(self) -> bool:
        return "x-ignore-shared" in self.capabilities

    @property
    def machine_type(self) -> str | None:
        return self.configuration.machine_type if self.configuration else None

    def note(self, severity: str, offset: int | None, where: str, message: str) -> None:
        self.notices.append(Notice(severity, offset, where, message))


_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_U16X2 = struct.Struct(">HH")
_U32X2 = struct.Struct(">II")


class _FullHeader(NamedTuple):
    section_id: int
    idstr: str
    instance_id: int
    version_id: int


class StreamWalker:
    def __init__(
        self,
        buf: Any,
        base: int = 0,
        progress: Callable[[int, int], None] | None = None,
        page_size: int | None = None,
        release: Callable[[int, int], None] | None = None,
    ) -> None:
        self.release = release
        self.buf = buf
        self.base = base
        self.end = len(buf)
        self.progress = progress
        self.w = StreamWalk(base=base, buf_size=self.end)
        self.forced_page_size = page_size
        self.scanner: RamScanner | None = None
        self.ram_ids: set[int] = set()
        self.open_sections: dict[int, Section] = {}
        self.devdesc: dict[tuple[str, int], list[dict[str, Any]]] = {}
        self.all_clear: list[str] = []  # mapped-ram blocks without a set bit (x-ignore-shared)

    # ------------------------------------------------------------------
    def walk(self) -> StreamWalk:
        w = self.w
        try:
            self._walk()
        except MigError as e:
            w.error = e
        except (struct.error, IndexError, ValueError, OverflowError) as e:
            w.error = FormatError(f"malformed data ({type(e).__name__}: {e})", w.walked_to)
        if w.error is not None:
            # a section the damage cut short ends where reading stopped
            stop = w.error.offset if w.error.offset is not None else w.walked_to
            for sec in w.sections:
                if sec.end == 0:
                    sec.end = max(sec.offset, stop)
        if self.scanner is not None:
            w.records = self.scanner.table()
            w.other_ram_records = dict(self.scanner.other_records)
        return w

    def _walk(self) -> None:
        w, buf, pos = self.w, self.buf, self.base
        if self.end - pos < 8:
            raise TruncatedError(
                f"{self.end - pos} bytes: too short for a QEMU migration stream header", pos,
                "header")
        magic, version = struct.unpack_from(">II", buf, pos)
        if magic != S.QEMU_VM_FILE_MAGIC:
            raise BadMagicError(
                f"not a QEMU migration stream: magic {bytes(buf[pos:pos + 4])!r}, expected "
                "b'QEVM'", pos, "header")
        w.version = version
        if version == S.QEMU_VM_FILE_VERSION_COMPAT:
            raise UnsupportedError("stream version 2 (obsolete; QEMU >= 7.2 refuses it)",
                                   pos + 4, "header")
        if version != S.QEMU_VM_FILE_VERSION:
            raise BadMagicError(f"unsupported stream version {version} (expected 3)", pos + 4,
                                "header")
        pos += 8
        self._find_trailer()
        if pos < self.end and buf[pos] == S.QEMU_VM_CONFIGURATION:
            pos = self._configuration(pos)
        self._set_page_size()
        w.walked_to = pos
        max_sections = int(os.environ.get("MIGINSPECT_MAX_SECTIONS", MAX_SECTIONS))
        while True:
            if pos >= self.end:
                raise TruncatedError(
                    "the stream ends without a QEMU_VM_EOF record (file cut short?)", pos,
                    "stream")
            if len(w.sections) >= max_sections:
                raise UnsupportedError(
                    f"more than {max_sections:,} sections (QEMU writes one PART per ~50 ms "
                    "iteration): a hostile or damaged stream? MIGINSPECT_MAX_SECTIONS raises "
                    "the limit", pos, "stream")
            t = buf[pos]
            if t in (S.QEMU_VM_SECTION_START, S.QEMU_VM_SECTION_FULL):
                pos = self._section_start_full(pos, t)
            elif t in (S.QEMU_VM_SECTION_PART, S.QEMU_VM_SECTION_END):
                pos = self._section_part_end(pos, t)
            elif t == S.QEMU_VM_COMMAND:
                pos = self._command(pos)
            elif t == S.QEMU_VM_EOF:
                w.sections.append(Section("EOF", t, pos, pos + 1))
                w.eof_offset = pos
                pos += 1
                w.walked_to = pos
                self._after_eof(pos)
                return
            else:
                name = S.SECTION_TYPE_NAMES.get(t, f"0x{t:02x}")
                raise UnknownSectionError(
                    f"unknown section type byte 0x{t:02x} ({name}) where a section should start",
                    pos, "stream")
            w.walked_to = pos
            if self.progress:
                self.progress(pos, self.end)

    # -- trailer / configuration ----------------------------------------
    def _find_trailer(self) -> None:
        t = find_trailer(self.buf, self.base)
        self.w.trailer = t
        if t is not None and t.data is not None:
            self.devdesc = device_index(t.data)

    def _configuration(self, pos: int) -> int:
        buf, w = self.buf, self.w
        start = pos
        head, n = parse_at(C.configuration_head, buf, pos + 1, "configuration record",
                           limit=4 + 4096)
        cfg = Configuration(start, 0, head.name)
        pos += 1 + n
        while pos < self.end and buf[pos] == S.QEMU_VM_SUBSECTION:
            sub, n = parse_at(C.subsection_header, buf, pos, "configuration subsection",
                              limit=1 + 256 + 4)
            if not sub.name.startswith("configuration/"):
                break
            body = C.SUBSECTION_BODIES.get(sub.name)
            if body is None:
                raise UnsupportedError(
                    f"unknown configuration subsection {sub.name!r}", pos, "configuration")
            val, m = parse_at(body, buf, pos + n, sub.name, limit=4 + 256 * 257)
            cfg.subsections.append((sub.name, sub.version_id, pos))
            if sub.name == C.SUBSECTION_CAPABILITIES:
                cfg.capabilities = list(val.caps)
            elif sub.name == C.SUBSECTION_TARGET_PAGE_BITS:
                cfg.target_page_bits = val.target_page_bits
            elif sub.name == C.SUBSECTION_UUID:
                cfg.uuid = bytes(val.uuid).hex()
            pos += n + m
        cfg.end = pos
        w.configuration = cfg
        return pos

    def _set_page_size(self) -> None:
        w = self.w
        if self.forced_page_size:
            w.page_size, w.page_size_source = self.forced_page_size, "option"
            return
        t = w.trailer
        if t is not None and t.data is not None and isinstance(t.data.get("page_size"), int):
            ps = t.data["page_size"]
            if 1024 <= ps <= (1 << 30) and not ps & (ps - 1):
                w.page_size, w.page_size_source = ps, "vmdescription"
                return
        cfg = w.configuration
        if cfg is not None and cfg.target_page_bits and 10 <= cfg.target_page_bits <= 30:
            w.page_size, w.page_size_source = 1 << cfg.target_page_bits, "configuration"
            return
        w.note("info", None, "stream",
               "page size not recorded (no vmdescription, no target-page-bits): assuming 4096")

    # -- sections --------------------------------------------------------
    def _footer(self, sec: Section, pos: int) -> int:
        buf, w = self.buf, self.w
        if w.footers is None:
            w.footers = pos < self.end and buf[pos] == S.QEMU_VM_SECTION_FOOTER
        if not w.footers:
            return pos
        if pos + 5 > self.end:
            raise TruncatedError(
                f"the data ends where the footer of section {sec.section_id} "
                f"({sec.idstr}) should be (Read section footer failed)", pos, sec.idstr or "")
        if buf[pos] != S.QEMU_VM_SECTION_FOOTER:
            raise FormatError(
                f"missing section footer for {sec.idstr!r} (section {sec.section_id}): found "
                f"byte 0x{buf[pos]:02x} instead of 0x7e", pos, sec.idstr or "")
        (sid,) = _U32.unpack_from(buf, pos + 1)
        if sid != sec.section_id:
            raise FormatError(
                f"Mismatched section id in footer for {sec.idstr} - read 0x{sid:x} expected "
                f"0x{sec.section_id:x}", pos, sec.idstr or "")
        sec.footer = True
        return pos + 5

    def _full_header(self, off: int) -> tuple[Any, int]:
        """formats.stream.section_header_full at `off`, read with struct (a hostile file may
        hold hundreds of thousands of tiny FULL sections; construct costs ~10 us each)."""
        buf, end = self.buf, self.end
        if off + 5 <= end:
            n = buf[off + 4]
            if off + 5 + n + 8 <= end:
                sid = _U32.unpack_from(buf, off)[0]
                idstr = bytes(buf[off + 5: off + 5 + n]).decode("latin-1")
                inst, ver = _U32X2.unpack_from(buf, off + 5 + n)
                return _FullHeader(sid, idstr, inst, ver), 4 + 1 + n + 8
        raise TruncatedError(
            f"the data ends inside section header ({max(0, end - off)} bytes left)", off,
            "section header")

    def _section_start_full(self, pos: int, t: int) -> int:
        hdr, n = self._full_header(pos + 1)
        if not hdr.idstr:
            raise FormatError("section with an empty idstr", pos, "stream")
        kind = "START" if t == S.QEMU_VM_SECTION_START else "FULL"
        sec = Section(kind, t, pos, 0, hdr.section_id, hdr.idstr, hdr.instance_id,
                      hdr.version_id, pos + 1 + n)
        self.w.sections.append(sec)
        if hdr.idstr == R.RAM_SECTION_IDSTR and hdr.instance_id == 0:
            if hdr.version_id != R.RAM_SECTION_VERSION:
                raise UnsupportedError(
                    f"ram section version {hdr.version_id} (only 4 exists)", pos, "ram")
            if t != S.QEMU_VM_SECTION_START:
                raise FormatError("the ram section arrives as FULL, expected START", pos, "ram")
            self.ram_ids.add(hdr.section_id)
            self.open_sections[hdr.section_id] = sec
            p = self._ram_start(sec.payload_offset)
            p = self._ram_records(sec, p)
        else:
            if t == S.QEMU_VM_SECTION_START:
                self.open_sections[hdr.section_id] = sec
            p = self._device_payload(sec)
        sec.payload_end = p
        sec.end = self._footer(sec, p)
        return sec.end

    def _section_part_end(self, pos: int, t: int) -> int:
        # struct, not construct: a hostile file may hold millions of tiny PART sections
        if pos + 5 > self.end:
            raise TruncatedError(
                f"the data ends inside section header ({max(0, self.end - pos - 1)} bytes left)",
                pos + 1, "section header")
        (section_id,) = _U32.unpack_from(self.buf, pos + 1)
        n = 4
        start = self.open_sections.get(section_id)
        if start is None:
            raise FormatError(
                f"{'PART' if t == S.QEMU_VM_SECTION_PART else 'END'} for section id "
                f"{section_id} that no START opened", pos, "stream")
        kind = "PART" if t == S.QEMU_VM_SECTION_PART else "END"
        sec = Section(kind, t, pos, 0, section_id, start.idstr, start.instance_id,
                      start.version_id, pos + 1 + n)
        self.w.sections.append(sec)
        if section_id in self.ram_ids:
            p = self._ram_records(sec, sec.payload_offset)
        else:
            p = self._device_payload(sec)
        sec.payload_end = p
        sec.end = self._footer(sec, p)
        return sec.end

    def _device_payload(self, sec: Section) -> int:
        w = self.w
        key = (sec.idstr or "", sec.instance_id or 0)
        descs = self.devdesc.get(key)
        if sec.kind == "FULL" and descs:
            desc = descs.pop(0)
            try:
                n = vmsd_length(desc)
            except (ValueError, TypeError) as e:
                raise FormatError(f"vmdescription entry for {sec.idstr} is malformed: {e}",
                                  sec.offset, sec.idstr or "") from e
            end = sec.payload_offset + n
            if end <= self.end and (
                w.footers is False
                or (end + 5 <= self.end and self.buf[end] == S.QEMU_VM_SECTION_FOOTER
                    and _U32.unpack_from(self.buf, end + 1)[0] == sec.section_id)
                or (w.footers is None and end < self.end and self.buf[end] in (0, 1, 2, 3, 4, 8))
            ):
                sec.sized_by = "vmdesc"
                return end
            if end > self.end:
                raise TruncatedError(
                    f"device section {sec.idstr!r} needs {n} bytes (vmdescription), the data "
                    f"ends {end - self.end} bytes short", sec.payload_offset, sec.idstr or "")
            nxt = end + 5
            if (w.footers and nxt <= self.end and self.buf[end] == S.QEMU_VM_SECTION_FOOTER
                    and (nxt == self.end or self.buf[nxt] in (0, 1, 2, 3, 4, 8))):
                # a footer where the description says, with another id: QEMU's loader
                # stops here ("Mismatched section id in footer"); so does _footer()
                sec.sized_by = "vmdesc"
                return end
            w.note("warning", sec.offset, sec.idstr or "",
                   f"vmdescription size {n} of {sec.idstr!r} does not land on its footer; "
                   "sized by footer search instead")
        return self._footer_search(sec)

    def _footer_search(self, sec: Section) -> int:
        w, buf = self.w, self.buf
        if w.footers is False:
            raise UnsupportedError(
                f"cannot size section {sec.idstr!r}: no vmdescription entry and the stream has "
                "no section footers", sec.offset, sec.idstr or "")
        pat = bytes([S.QEMU_VM_SECTION_FOOTER]) + _U32.pack(sec.section_id)
        p = sec.payload_offset
        while True:
            q = _find(buf, pat, p, self.end)
            if q < 0:
                raise TruncatedError(
                    f"cannot find the end of section {sec.idstr!r} (no vmdescription entry, "
                    "no footer found before the end of the data)", sec.offset, sec.idstr or "")
            nxt = q + 5
            if nxt == self.end or (nxt < self.end and buf[nxt] in (0, 1, 2, 3, 4, 8)):
                sec.sized_by = "footer-search"
                if w.trailer is None or w.trailer.data is None:
                    pass
                else:
                    w.note("info", sec.offset, sec.idstr or "",
                           f"section {sec.idstr!r} is not in the vmdescription; sized by its "
                           "footer")
                return q
            p = q + 1

    def _command(self, pos: int) -> int:
        # struct, not construct (same layout as formats.stream.command): a hostile file may
        # hold millions of 5-byte commands
        buf = self.buf
        if pos + 5 > self.end or pos + 5 + _U16X2.unpack_from(buf, pos + 1)[1] > self.end:
            raise TruncatedError(
                f"the data ends inside command ({max(0, self.end - pos - 1)} bytes left)",
                pos + 1, "command")
        cmd, length = _U16X2.unpack_from(buf, pos + 1)
        n = 4 + length
        sec = Section("COMMAND", S.QEMU_VM_COMMAND, pos, pos + 1 + n, cmd=cmd,
                      sized_by="command", payload_offset=pos + 5, payload_end=pos + 1 + n)
        self.w.sections.append(sec)
        if cmd not in S.MIG_CMD_NAMES or cmd == S.MIG_CMD_INVALID:
            raise UnknownSectionError(f"unknown migration command {cmd} (len {length})",
                                      pos, "command")
        if cmd == S.MIG_CMD_PACKAGED:
            if length != 4:
                raise FormatError(f"PACKAGED command with length {length} (expected 4)", pos,
                                  "command")
            (ln,) = _U32.unpack_from(buf, pos + 5)
            if sec.end + ln > self.end:
                raise TruncatedError(f"PACKAGED blob of {ln} bytes runs past the end", pos,
                                     "command")
            self.w.note("warning", pos, "command",
                        f"postcopy PACKAGED blob of {ln} bytes skipped (not decoded)")
            sec.end += ln
        return sec.end

    def _after_eof(self, pos: int) -> None:
        w, buf = self.w, self.buf
        if pos >= self.end:
            w.note("info", pos, "stream", "no vmdescription trailer after EOF (suppress-vmdesc "
                   "or postcopy); device sections were sized by their footers")
            return
        if buf[pos] != S.QEMU_VM_VMDESCRIPTION:
            w.note("warning", pos, "stream",
                   f"{self.end - pos} bytes after EOF that are not a vmdescription trailer "
                   "(QEMU's loader never reads them)")
            return
        t = w.trailer if (w.trailer and w.trailer.offset == pos) else None
        if t is None:
            if pos + 5 > self.end:
                w.note("warning", pos, "vmdescription",
                       "the vmdescription trailer is cut short inside its length field "
                       "(QEMU's loader does not need it)")
                return
            t = read_trailer_at(buf, pos)
            w.trailer = t
        end = min(self.end, t.json_offset + t.length)
        w.sections.append(Section("VMDESCRIPTION", S.QEMU_VM_VMDESCRIPTION, pos, end,
                                  payload_offset=t.json_offset, payload_end=end))
        if t.error:
            w.note("warning", pos, "vmdescription", t.error + " (QEMU's loader does not need it)")
        elif end < self.end:
            w.note("warning", end, "stream",
                   f"{self.end - end} bytes after the vmdescription trailer")
        w.walked_to = end

    # -- RAM ----------------------------------------------------------------
    def _ram_start(self, pos: int) -> int:
        """The MEM_SIZE record and its RAMBlock list (and mapped-ram regions)."""
        w, buf = self.w, self.buf
        if self.scanner is not None:
            raise FormatError("a second ram START section", pos, "ram")
        ps = w.page_size
        word = _read_u64(buf, pos, self.end, "the MEM_SIZE record")
        flags = word & (ps - 1)
        if flags != R.RAM_SAVE_FLAG_MEM_SIZE:
            raise FormatError(
                f"the ram START section begins with flags 0x{flags:x} ({R.flag_names(flags)}), "
                "expected MEM_SIZE", pos, "ram")
        total = word & ~(ps - 1)
        w.ram_total = total
        pos += 8
        remaining = total
        params = dict(postcopy_page_size=False, ignore_shared=w.ignore_shared,
                      mapped_ram=w.mapped_ram)
        while remaining > 0:
            entry, n = parse_at(R.ramblock_entry, buf, pos, "a RAMBlock list entry",
                                limit=256 + 8 * 3 + M.MAPPED_RAM_HEADER_SIZE, **params)
            if entry.used_length > remaining or entry.used_length % ps:
                raise InconsistentError(
                    f"RAMBlock {entry.idstr!r} used_length 0x{entry.used_length:x} does not fit "
                    f"the MEM_SIZE total 0x{total:x} (0x{remaining:x} left) or is not a "
                    "multiple of the page size", pos, "ram")
            if any(b.name == entry.idstr for b in w.blocks):
                raise InconsistentError(f"RAMBlock {entry.idstr!r} listed twice", pos, "ram")
            blk = RamBlock(len(w.blocks), entry.idstr, entry.used_length, pos, ps,
                           mr_addr=entry.mr_addr)
            pos += n
            if w.mapped_ram:
                pos = self._mapped_ram_block(blk, entry.mapped_ram, pos - 28)
            w.blocks.append(blk)
            remaining -= entry.used_length
        if not w.mapped_ram:
            self._check_claimed_pages(total, pos)
        if self.all_clear:
            w.note("warning", None, "ram",
                   "x-ignore-shared is on and these mapped-ram blocks have no page in the file "
                   f"(all bitmap bits clear): {', '.join(self.all_clear)}. Those backed by shared "
                   "memory were skipped (QEMU before 11.0 wrote skipped blocks this way instead "
                   "of with zero offsets): their contents live in the shared memory; here they "
                   "read as all zero")
        self.scanner = RamScanner(
            buf, ps, [b.name for b in w.blocks], [b.used_length for b in w.blocks],
            mapped_ram=w.mapped_ram,
            progress=(lambda p: self.progress(p, self.end)) if self.progress else None,
            release=self.release)
        return pos

    def _check_claimed_pages(self, total: int, pos: int) -> None:
        """Page maps cost ~24 bytes a page, so a legacy stream's claimed RAM must be one the
        file can plausibly describe: at most one page per remaining byte (a page record
        takes >= 9) plus MAX_UNSENT_PAGES never sent (discarded or free-page-hinted RAM).
        Otherwise a damaged length field would make every reader allocate GiBs."""
        pages = total // self.w.page_size
        limit = (self.end - pos) + int(os.environ.get("MIGINSPECT_MAX_UNSENT_PAGES",
                                                      MAX_UNSENT_PAGES))
        if pages > limit:
            raise InconsistentError(
                f"the MEM_SIZE total 0x{total:x} claims {pages:,} pages; this {self.end:,}-byte "
                f"stream can describe at most {limit:,} (damaged length field? "
                "MIGINSPECT_MAX_UNSENT_PAGES raises the limit)", self.w.sections[-1].payload_offset,
                "ram")

    def _mapped_ram_block(self, blk: RamBlock, h: Any, hoff: int) -> int:
        ps = self.w.page_size
        if h.version > M.MAPPED_RAM_HDR_VERSION or h.version < 1:
            raise UnsupportedError(
                f"mapped-ram header version {h.version} for {blk.name!r} (Migration mapped-ram "
                "capability version not supported)", hoff, blk.name)
        if h.bitmap_offset == 0 and h.pages_offset == 0:
            blk.mapped_ram = MappedRamInfo(hoff, h.version, h.page_size, 0, 0, 0, skipped=True)
            if not self.w.ignore_shared:
                raise InconsistentError(
                    f"mapped-ram block {blk.name!r} has zero offsets but x-ignore-shared is off",
                    hoff, blk.name)
            return hoff + M.MAPPED_RAM_HEADER_SIZE
        if h.page_size != ps:
            raise InconsistentError(
                f"mapped-ram header page size {h.page_size} != target page size {ps} "
                f"for {blk.name!r}", hoff, blk.name)
        npages = blk.used_length // ps
        nbytes = M.bitmap_size(npages)
        blk.mapped_ram = MappedRamInfo(hoff, h.version, h.page_size, h.bitmap_offset,
                                       h.pages_offset, nbytes)
        if h.bitmap_offset + nbytes > self.end:
            raise TruncatedError(
                f"bitmap of {blk.name!r} at 0x{h.bitmap_offset:x} (+{nbytes}) lies past the end "
                f"of the data (0x{self.end:x}) (Error reading dirty bitmap)", hoff + 12,
                blk.name)
        hend = hoff + M.MAPPED_RAM_HEADER_SIZE
        if h.bitmap_offset < hend:
            raise InconsistentError(
                f"bitmap of {blk.name!r} at 0x{h.bitmap_offset:x} lies before the end of its own "
                f"header (0x{hend:x}); QEMU writes it right after the header", hoff + 12, blk.name)
        if h.bitmap_offset != hend:
            self.w.note("warning", hoff + 12, blk.name,
                        f"bitmap of {blk.name!r} at 0x{h.bitmap_offset:x}, not right after its "
                        f"header (0x{hend:x}) where QEMU writes it")
        if h.pages_offset % ps:
            raise InconsistentError(
                f"pages region of {blk.name!r} at 0x{h.pages_offset:x} is not page aligned "
                "(region has bad alignment)", hoff + 20, blk.name)
        if h.pages_offset < h.bitmap_offset + nbytes and h.pages_offset + blk.used_length > \
                h.bitmap_offset:
            raise InconsistentError(
                f"pages region of {blk.name!r} overlaps its bitmap", hoff + 20, blk.name)
        if h.pages_offset + blk.used_length > self.end:
            raise TruncatedError(
                f"pages region of {blk.name!r} (0x{h.pages_offset:x}+0x{blk.used_length:x}) "
                f"runs past the end of the data (0x{self.end:x})", hoff + 20, blk.name)
        if self.w.ignore_shared and self.buf[h.bitmap_offset:h.bitmap_offset + nbytes] == \
                bytes(nbytes):
            self.all_clear.append(blk.name)
        return h.pages_offset + blk.used_length

    def _ram_records(self, sec: Section, pos: int) -> int:
        sec.sized_by = "ram"
        assert self.scanner is not None
        return self.scanner.scan(pos, self.end)


def _read_u64(buf: Any, pos: int, end: int, what: str) -> int:
    if pos + 8 > end:
        raise TruncatedError(f"the data ends inside {what}", pos, "ram")
    return _U64.unpack_from(buf, pos)[0]


def _find(buf: Any, pat: bytes, start: int, end: int) -> int:
    if hasattr(buf, "find"):
        return buf.find(pat, start, end)
    return bytes(buf).find(pat, start, end)


def walk_stream(
    buf: Any,
    base: int = 0,
    progress: Callable[[int, int], None] | None = None,
    page_size: int | None = None,
    release: Callable[[int, int], None] | None = None,
) -> StreamWalk:
    """Walk the QEMU stream that starts at `base` in `buf`. `release(start, end)`, if
    given, is called for ranges the walk is done with (see Source.release)."""
    return StreamWalker(buf, base, progress, page_size, release).walk()


__all__ = ["walk_stream", "StreamWalk", "Section", "RamBlock", "MappedRamInfo", "Notice",
           "Configuration"]
