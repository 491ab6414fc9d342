"""Walk a QEMU migration stream: every top-level record and its byte span.

Sections carry no length. The RAM section is walked record by record (by
`ramscan`); a mapped-ram block's header is checked by `mrheader`; device sections
are sized by `devsize` (from the vmdescription trailer, or by finding their footer
within a bounded window). The walk never raises on bad input: it stops at the first
fatal problem, as QEMU's loader would, and keeps it in `StreamWalk.error` (with its
problem code), with everything read up to there; what does not stop it is a `Notice`
(with a code too). The result's types live in `model`.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
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
from .devsize import DeviceSizer, qemu_idstr
from .model import (
    DEFAULT_PAGE_SIZE,
    Configuration,
    CutRecord,
    MappedRamInfo,
    Notice,
    OtherRamRecords,
    RamBlock,
    Section,
    StreamWalk,
)
from .mrheader import bitmap_all_clear, check_version, read_block_header
from .parsing import parse_at
from .ramscan import RamScanner
from .vmdesc import data_end, find_trailer, read_trailer_at

#: Pages a legacy stream may claim beyond one per byte of the file (4 GiB of 4 KiB
#: pages never sent); MIGINSPECT_MAX_UNSENT_PAGES overrides it.
MAX_UNSENT_PAGES = 1 << 20
#: Top-level records kept per walk (each costs a Section object); real files have a few
#: thousand. MIGINSPECT_MAX_SECTIONS overrides it.
MAX_SECTIONS = 200_000


_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_U16X2 = struct.Struct(">HH")
_U32X2 = struct.Struct(">II")


#: type byte, section id, idstr length, "ram", instance id, version id
_RAM_HEADER_LEN = 1 + 4 + 1 + len(R.RAM_SECTION_IDSTR) + 4 + 4


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
        self.data_end = self.end  # where trailing zero padding begins (_find_trailer)
        self.progress = progress
        self.w = StreamWalk(base=base, buf_size=self.end)
        self.forced_page_size = page_size
        self.scanner: RamScanner | None = None
        self.ram_ids: set[int] = set()
        self.open_sections: dict[int, Section] = {}
        self.sizer: DeviceSizer | None = None

    # ------------------------------------------------------------------
    def walk(self) -> StreamWalk:
        w = self.w
        try:
            self._walk()
        except MigError as e:
            w.error = e
        except (struct.error, IndexError, ValueError, OverflowError) as e:
            w.error = FormatError(f"malformed data ({type(e).__name__}: {e})", w.walked_to,
                                  code="damaged")
        if w.error is not None:
            # a section the damage cut short ends where reading stopped
            stop = w.error.offset if w.error.offset is not None else w.walked_to
            for sec in w.sections:
                if sec.end == 0:
                    sec.end = max(sec.offset, stop)
        if self.scanner is not None:
            self._cut_record()
            w.records = self.scanner.table()
            other = self.scanner.other_records
            w.other_ram_records = OtherRamRecords(other["EOS"], other["MULTIFD_FLUSH"])
        return w

    def _cut_record(self) -> None:
        """A walk that stopped inside a page record: which page that record carried."""
        err, scanner = self.w.error, self.scanner
        if not isinstance(err, TruncatedError) or err.code != "truncated-ram" or \
                err.offset is None or scanner is None:
            return
        blk, page, kind = scanner.cut_record(err.offset, self.end)
        self.w.cut_record = CutRecord(err.offset, blk, page, kind)

    def _walk(self) -> None:
        w, buf = self.w, self.buf
        pos = self._header(self.base)
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
                    "stream", code="no-eof")
            if len(w.sections) >= max_sections:
                raise UnsupportedError(
                    f"more than {max_sections:,} sections (QEMU writes one PART per ~50 ms "
                    "iteration): a hostile or damaged stream? MIGINSPECT_MAX_SECTIONS raises "
                    "the limit", pos, "stream", code="section-limit")
            t = buf[pos]
            if t in (S.QEMU_VM_SECTION_START, S.QEMU_VM_SECTION_FULL):
                pos = self._section_start_full(pos, t)
            elif t in (S.QEMU_VM_SECTION_PART, S.QEMU_VM_SECTION_END):
                pos = self._section_part_end(pos, t)
            elif t == S.QEMU_VM_COMMAND:
                pos = self._command(pos)
            elif t == S.QEMU_VM_EOF:
                w.sections.append(Section(S.KIND_EOF, t, pos, pos + 1))
                w.eof_offset = pos
                pos += 1
                w.walked_to = pos
                self._after_eof(pos)
                return
            else:
                name = S.SECTION_TYPE_NAMES.get(t, f"0x{t:02x}")
                raise UnknownSectionError(
                    f"unknown section type byte 0x{t:02x} ({name}) where a section should start",
                    pos, "stream", code="unknown-section-type")
            w.walked_to = pos
            if self.progress:
                self.progress(pos, self.end)

    def _header(self, pos: int) -> int:
        """qemu_savevm_state_header(): magic and version; the offset after them."""
        buf, w = self.buf, self.w
        if self.end - pos < 8:
            raise TruncatedError(
                f"{self.end - pos} bytes: too short for a QEMU migration stream header", pos,
                "header", code="truncated-header")
        magic, version = struct.unpack_from(">II", buf, pos)
        if magic != S.QEMU_VM_FILE_MAGIC:
            raise BadMagicError(
                f"not a QEMU migration stream: magic {bytes(buf[pos:pos + 4])!r}, expected "
                "b'QEVM'", pos, "header", code="bad-magic")
        w.version = version
        if version == S.QEMU_VM_FILE_VERSION_COMPAT:
            raise UnsupportedError("stream version 2 (obsolete; QEMU >= 7.2 refuses it)",
                                   pos + 4, "header", code="version-2")
        if version != S.QEMU_VM_FILE_VERSION:
            raise BadMagicError(f"unsupported stream version {version} (expected 3)", pos + 4,
                                "header", code="bad-version")
        return pos + 8

    # -- trailer / configuration ----------------------------------------
    def _find_trailer(self) -> None:
        # a state volume pads the stream with zeros up to its size: the trailer ends
        # where the non-zero data does
        self.data_end = max(self.base, data_end(self.buf, self.base, self.release))
        self.w.trailer = find_trailer(self.buf, self.base, self.release, self.data_end)
        self.sizer = DeviceSizer(self.buf, self.end, self.w, self.release)

    def _configuration(self, pos: int) -> int:
        buf, w = self.buf, self.w
        start = pos
        head, n = parse_at(C.configuration_head, buf, pos + 1, "configuration record",
                           limit=4 + 4096, code="configuration")
        cfg = Configuration(start, 0, head.name)
        pos += 1 + n
        while pos < self.end and buf[pos] == S.QEMU_VM_SUBSECTION:
            sub, n = parse_at(C.subsection_header, buf, pos, "configuration subsection",
                              limit=1 + 256 + 4, code="configuration")
            if not sub.name.startswith("configuration/"):
                break
            body = C.SUBSECTION_BODIES.get(sub.name)
            if body is None:
                raise UnsupportedError(
                    f"unknown configuration subsection {sub.name!r}", pos, "configuration",
                    code="config-subsection")
            val, m = parse_at(body, buf, pos + n, sub.name, limit=4 + 256 * 257,
                              code="configuration")
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
               "page size not recorded (no vmdescription, no target-page-bits): assuming 4096",
               code="page-size-assumed")

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
                f"({sec.idstr}) should be (Read section footer failed)", pos, sec.idstr or "",
                code="truncated-footer")
        if buf[pos] != S.QEMU_VM_SECTION_FOOTER:
            raise FormatError(
                f"missing section footer for {sec.idstr!r} (section {sec.section_id}): found "
                f"byte 0x{buf[pos]:02x} instead of 0x7e", pos, sec.idstr or "",
                code="footer-missing")
        (sid,) = _U32.unpack_from(buf, pos + 1)
        if sid != sec.section_id:
            raise FormatError(
                f"Mismatched section id in footer for {sec.idstr} - read 0x{sid:x} expected "
                f"0x{sec.section_id:x}", pos, sec.idstr or "", code="footer-mismatch")
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
            "section header", code="truncated-section-header")

    def _section_start_full(self, pos: int, t: int) -> int:
        hdr, n = self._full_header(pos + 1)
        if not hdr.idstr:
            raise FormatError("section with an empty idstr", pos, "stream",
                              code="section-header")
        kind = S.KIND_START if t == S.QEMU_VM_SECTION_START else S.KIND_FULL
        sec = Section(kind, t, pos, 0, hdr.section_id, hdr.idstr, hdr.instance_id,
                      hdr.version_id, pos + 1 + n)
        self.w.sections.append(sec)
        if qemu_idstr(hdr.idstr) == R.RAM_SECTION_IDSTR:
            self._check_ram_header(sec)
            self.ram_ids.add(hdr.section_id)
            self.open_sections[hdr.section_id] = sec
            p = self._ram_start(pos + 1 + n)
            p = self._ram_records(sec, p)
        else:
            if t == S.QEMU_VM_SECTION_START:
                self._check_not_ram(sec)
                self.open_sections[hdr.section_id] = sec
            p = self._device_payload(sec)
        sec.payload_end = p
        sec.end = self._footer(sec, p)
        return sec.end

    def _check_ram_header(self, sec: Section) -> None:
        """The ram section as QEMU registers it: instance 0, version 4, sent as START."""
        if sec.instance_id != 0:
            # QEMU looks the handler up by idstr *and* instance: no "ram" but instance 0
            raise UnknownSectionError(
                f"Unknown savevm section or instance 'ram' {sec.instance_id}: QEMU's RAM "
                "handler is instance 0 (a damaged section header)", sec.offset, "ram",
                code="unknown-section")
        if sec.version_id != R.RAM_SECTION_VERSION:
            raise UnsupportedError(
                f"ram section version {sec.version_id} (only 4 exists)", sec.offset, "ram",
                code="ram-version")
        if sec.kind != S.KIND_START:
            raise FormatError("the ram section arrives as FULL, expected START", sec.offset,
                              "ram", code="ram-section-kind")

    def _check_not_ram(self, sec: Section) -> None:
        """A live section under another name that carries the RAM state (a MEM_SIZE record
        and a RAMBlock list, where the section's payload starts or where it would start
        after a 3-byte idstr) before any ram section: its idstr or idstr length is
        damaged, and QEMU has no handler by the name it reads."""
        if self.scanner is not None or sec.payload_offset is None:
            return
        ps = self.w.page_size
        for p in (sec.payload_offset, sec.offset + _RAM_HEADER_LEN):
            if p + 9 > self.end:
                continue
            word = _U64.unpack_from(self.buf, p)[0]
            if word & (ps - 1) == R.RAM_SAVE_FLAG_MEM_SIZE and word >= ps and self.buf[p + 8]:
                raise UnknownSectionError(
                    f"Unknown savevm section or instance {sec.idstr!r} {sec.instance_id}: the "
                    "section carries the RAM state (a MEM_SIZE record and a RAMBlock list) "
                    "under another name (a damaged section header)", sec.offset,
                    sec.idstr or "", code="unknown-section")

    def _section_part_end(self, pos: int, t: int) -> int:
        # struct, not construct: a hostile file may hold millions of tiny PART sections
        if pos + 5 > self.end:
            raise TruncatedError(
                f"the data ends inside section header ({max(0, self.end - pos - 1)} bytes left)",
                pos + 1, "section header", code="truncated-section-header")
        (section_id,) = _U32.unpack_from(self.buf, pos + 1)
        kind = S.KIND_PART if t == S.QEMU_VM_SECTION_PART else S.KIND_END
        start = self.open_sections.get(section_id)
        if start is None:
            raise FormatError(
                f"{kind} for section id {section_id} that no START opened", pos, "stream",
                code="unknown-section-id")
        sec = Section(kind, t, pos, 0, section_id, start.idstr, start.instance_id,
                      start.version_id, pos + 5)
        self.w.sections.append(sec)
        if section_id in self.ram_ids:
            p = self._ram_records(sec, pos + 5)
        else:
            p = self._device_payload(sec)
        sec.payload_end = p
        sec.end = self._footer(sec, p)
        return sec.end

    def _device_payload(self, sec: Section) -> int:
        assert self.sizer is not None
        return self.sizer.payload_end(sec)

    def _command(self, pos: int) -> int:
        # struct, not construct (same layout as formats.stream.command): a hostile file may
        # hold millions of 5-byte commands
        buf = self.buf
        if pos + 5 > self.end:
            raise TruncatedError(
                f"the data ends inside command ({max(0, self.end - pos - 1)} bytes left)",
                pos + 1, "command", code="truncated")
        cmd, length = _U16X2.unpack_from(buf, pos + 1)
        end = min(pos + 5 + length, self.end)
        sec = Section(S.KIND_COMMAND, S.QEMU_VM_COMMAND, pos, end, cmd=cmd, sized_by="command",
                      payload_offset=pos + 5, payload_end=end)
        self.w.sections.append(sec)
        # loadvm_process_command(): the command, then its length, then its data
        if cmd not in S.MIG_CMD_NAMES or cmd == S.MIG_CMD_INVALID:
            raise UnknownSectionError(f"unknown migration command {cmd} (len {length})",
                                      pos, "command", code="unknown-command")
        want = S.MIG_CMD_LEN.get(cmd)
        if want is not None and length != want:
            raise FormatError(
                f"{S.MIG_CMD_NAMES[cmd]} received with bad length - expecting {want}, got "
                f"{length}", pos, "command", code="command-length")
        if pos + 5 + length > self.end:
            raise TruncatedError(
                f"the data ends inside command ({max(0, self.end - pos - 1)} bytes left)",
                pos + 1, "command", code="truncated")
        if cmd == S.MIG_CMD_PACKAGED:
            (ln,) = _U32.unpack_from(buf, pos + 5)
            if sec.end + ln > self.end:
                raise TruncatedError(f"PACKAGED blob of {ln} bytes runs past the end", pos,
                                     "command", code="truncated")
            self.w.note("warning", pos, "command",
                        f"postcopy PACKAGED blob of {ln} bytes skipped (not decoded)",
                        code="postcopy-packaged")
            sec.end += ln
        return sec.end

    def _after_eof(self, pos: int) -> None:
        w, buf = self.w, self.buf
        if pos >= self.end:
            w.note("info", pos, "stream", "no vmdescription trailer after EOF (suppress-vmdesc "
                   "or postcopy); device sections were sized by their footers",
                   code="no-trailer")
            return
        if pos >= self.data_end:
            w.note("info", pos, "stream", "no vmdescription trailer after EOF (suppress-vmdesc "
                   "or postcopy); device sections were sized by their footers",
                   code="no-trailer")
            self._padding(pos)
            return
        if buf[pos] != S.QEMU_VM_VMDESCRIPTION:
            w.note("warning", pos, "stream",
                   f"{self.end - pos} bytes after EOF that are not a vmdescription trailer "
                   f"(QEMU's loader reads the first, 0x{buf[pos]:02x}, says 'Expected "
                   f"vmdescription section, but got {buf[pos]}' and loads the file)",
                   code="bytes-after-eof")
            return
        t = w.trailer if (w.trailer and w.trailer.offset == pos) else None
        if t is None:
            if pos + 5 > self.end:
                w.note("warning", pos, "vmdescription",
                       "the vmdescription trailer is cut short inside its length field "
                       "(QEMU's loader does not need it)", code="trailer-damaged")
                return
            t = read_trailer_at(buf, pos, self.data_end)
            w.trailer = t
        end = min(self.end, t.json_offset + t.length)
        w.sections.append(Section(S.KIND_VMDESCRIPTION, S.QEMU_VM_VMDESCRIPTION, pos, end,
                                  payload_offset=t.json_offset, payload_end=end))
        if t.error:
            w.note("warning", pos, "vmdescription", t.error + " (QEMU's loader does not need it)",
                   code="trailer-damaged")
        elif end < self.data_end:
            w.note("warning", end, "stream",
                   f"{self.end - end} bytes after the vmdescription trailer",
                   code="trailing-bytes")
        else:
            self._padding(end)
        w.walked_to = end

    def _padding(self, pos: int) -> None:
        """Zeros from `pos` to the end: a state volume's padding (not damage)."""
        if pos < self.end:
            self.w.note("info", pos, "stream",
                        f"{self.end - pos} zero bytes after the end of the stream (padding up "
                        "to the size of a volume or file; QEMU never reads them)",
                        code="zero-padding")

    # -- RAM ----------------------------------------------------------------
    def _ram_start(self, pos: int) -> int:
        """The MEM_SIZE record and its RAMBlock list (and mapped-ram regions)."""
        w, buf = self.w, self.buf
        if self.scanner is not None:
            raise FormatError("a second ram START section", pos, "ram", code="second-ram-start")
        ps = w.page_size
        if pos + 8 > self.end:
            raise TruncatedError("the data ends inside the MEM_SIZE record", pos, "ram",
                                 code="truncated-ram")
        word = _U64.unpack_from(buf, pos)[0]
        flags = word & (ps - 1)
        if flags != R.RAM_SAVE_FLAG_MEM_SIZE:
            raise FormatError(
                f"the ram START section begins with flags 0x{flags:x} ({R.flag_names(flags)}), "
                "expected MEM_SIZE", pos, "ram", code="ram-start")
        total = word & ~(ps - 1)
        w.ram_total = total
        pos = self._ramblock_list(pos + 8, total)
        if not w.mapped_ram:
            self._check_claimed_pages(total, pos)
        clear = [b.name for b in w.blocks if w.ignore_shared and bitmap_all_clear(buf, b)]
        if clear:
            w.note("warning", None, "ram",
                   "x-ignore-shared is on and these mapped-ram blocks have no page in the file "
                   f"(all bitmap bits clear): {', '.join(clear)}. Those backed by shared "
                   "memory were skipped (QEMU before 11.0 wrote skipped blocks this way instead "
                   "of with zero offsets): their contents live in the shared memory; here they "
                   "read as all zero", code="ignore-shared-empty")
        self.scanner = RamScanner(
            buf, ps, [b.name for b in w.blocks], [b.used_length for b in w.blocks],
            mapped_ram=w.mapped_ram,
            progress=(lambda p: self.progress(p, self.end)) if self.progress else None,
            release=self.release)
        return pos

    def _ramblock_list(self, pos: int, total: int) -> int:
        """The RAMBlock list entries (and mapped-ram headers) after MEM_SIZE."""
        w, ps = self.w, self.w.page_size
        remaining = total
        params = dict(postcopy_page_size=False, ignore_shared=w.ignore_shared,
                      mapped_ram=w.mapped_ram)
        while remaining > 0:
            entry, n = parse_at(R.ramblock_entry, self.buf, pos, "a RAMBlock list entry",
                                limit=256 + 8 * 3 + M.MAPPED_RAM_HEADER_SIZE,
                                code="ramblock-list", cut_code="truncated-ram", **params)
            if w.mapped_ram:
                check_version(entry.idstr, entry.mapped_ram, pos + n - M.MAPPED_RAM_HEADER_SIZE)
            if entry.used_length > remaining or entry.used_length % ps:
                raise InconsistentError(
                    f"RAMBlock {entry.idstr!r} used_length 0x{entry.used_length:x} does not fit "
                    f"the MEM_SIZE total 0x{total:x} (0x{remaining:x} left) or is not a "
                    "multiple of the page size", pos, "ram", code="ramblock-list")
            if any(b.name == entry.idstr for b in w.blocks):
                raise InconsistentError(f"RAMBlock {entry.idstr!r} listed twice", pos, "ram",
                                        code="ramblock-list")
            blk = RamBlock(len(w.blocks), entry.idstr, entry.used_length, pos, ps,
                           mr_addr=entry.mr_addr)
            pos += n
            if w.mapped_ram:
                try:
                    pos = read_block_header(w, self.buf, self.end, blk, entry.mapped_ram,
                                            pos - M.MAPPED_RAM_HEADER_SIZE)
                except TruncatedError as e:
                    if e.code == "mapped-ram-truncated":
                        w.cut_block = blk  # its bitmap is whole: what it holds is known
                    raise
            w.blocks.append(blk)
            remaining -= entry.used_length
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
                "ram", code="ramblock-list")

    def _ram_records(self, sec: Section, pos: int) -> int:
        sec.sized_by = "ram"
        assert self.scanner is not None
        return self.scanner.scan(pos, self.end)


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
           "Configuration", "DEFAULT_PAGE_SIZE"]
