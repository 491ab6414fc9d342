"""Fast scanner for the RAM section's page records (the hot path).

`formats.ram` is the specification; this module reads the same bytes with
`struct.unpack_from` over the mmap and, for runs of same-kind CONTINUE
records (the bulk of any stream), with strided numpy views that touch one
word per record. It fills numpy columns, one row per page record, and never
keeps page payloads. tests/test_ramscan.py checks it against the grammar.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import FormatError, InconsistentError, TruncatedError, UnsupportedError
from ..formats import ram as R

_U64 = struct.Struct(">Q")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")

PAGE_CONT = R.RAM_SAVE_FLAG_PAGE | R.RAM_SAVE_FLAG_CONTINUE
ZERO_CONT = R.RAM_SAVE_FLAG_ZERO | R.RAM_SAVE_FLAG_CONTINUE

#: Record types that carry a page (and so name a block or CONTINUE).
_PAGE_TYPES = frozenset(R.PAGE_RECORD_FLAGS)

#: Known record types (flags without CONTINUE).
_KNOWN_TYPES = {
    R.RAM_SAVE_FLAG_ZERO,
    R.RAM_SAVE_FLAG_MEM_SIZE,
    R.RAM_SAVE_FLAG_PAGE,
    R.RAM_SAVE_FLAG_EOS,
    R.RAM_SAVE_FLAG_XBZRLE,
    R.RAM_SAVE_FLAG_HOOK,
    R.RAM_SAVE_FLAG_COMPRESS_PAGE,
    R.RAM_SAVE_FLAG_MULTIFD_FLUSH,
}


@dataclass
class RecordTable:
    """One row per page record, in stream order."""

    rec_off: np.ndarray  # int64: offset of the record's header word
    data_off: np.ndarray  # int64: offset of its payload
    block: np.ndarray  # int16: index into the block list
    page: np.ndarray  # uint32: page index inside the block
    kind: np.ndarray  # uint16: RAM_SAVE_FLAG_{PAGE,ZERO,XBZRLE,COMPRESS_PAGE}

    def __len__(self) -> int:
        return len(self.rec_off)

    def kind_counts(self, rows: np.ndarray | None = None) -> dict[int, int]:
        """Records of each page kind (RAM_SAVE_FLAG_ZERO/PAGE/XBZRLE/COMPRESS_PAGE), over
        all rows or the selected ones (indices or a mask)."""
        out = dict.fromkeys(R.PAGE_RECORD_FLAGS, 0)
        vals, cnt = np.unique(self.kind if rows is None else self.kind[rows],
                              return_counts=True)
        out.update(zip(vals.tolist(), cnt.tolist(), strict=True))
        return out

    @property
    def nbytes(self) -> int:
        cols = (self.rec_off, self.data_off, self.block, self.page, self.kind)
        return sum(a.nbytes for a in cols)


class _Columns:
    """Append-only columns: small appends go to array.array, vector runs to numpy chunks."""

    CODES = (("rec_off", "q", np.int64), ("data_off", "q", np.int64), ("block", "h", np.int16),
             ("page", "I", np.uint32), ("kind", "H", np.uint16))

    def __init__(self) -> None:
        self.chunks: list[tuple[np.ndarray, ...]] = []
        self._new()

    def _new(self) -> None:
        self.a_rec = array("q")
        self.a_data = array("q")
        self.a_block = array("h")
        self.a_page = array("I")
        self.a_kind = array("H")

    def flush(self) -> None:
        if len(self.a_rec):
            self.chunks.append(
                tuple(
                    np.frombuffer(a, dtype=dt).copy()
                    for a, dt in zip(
                        (self.a_rec, self.a_data, self.a_block, self.a_page, self.a_kind),
                        (np.int64, np.int64, np.int16, np.uint32, np.uint16),
                        strict=True,
                    )
                )
            )
            self._new()

    def add_chunk(self, rec, data, block, page, kind) -> None:  # noqa: ANN001
        self.flush()
        self.chunks.append((rec, data, block, page, kind))

    def __len__(self) -> int:
        return sum(len(c[0]) for c in self.chunks) + len(self.a_rec)

    def table(self) -> RecordTable:
        self.flush()
        cols = []
        for i, (_, _, dt) in enumerate(self.CODES):
            parts = [c[i] for c in self.chunks]
            cols.append(np.concatenate(parts).astype(dt, copy=False) if parts else np.empty(0, dt))
        return RecordTable(*cols)


def empty_records() -> RecordTable:
    """A table with no rows (a stream whose RAM section was never reached)."""
    return _Columns().table()


class RamScanner:
    """Walks RAM records, keeping the per-stream CONTINUE state across sections."""

    def __init__(
        self,
        buf: Any,
        page_size: int,
        block_names: list[str],
        block_lengths: list[int],
        mapped_ram: bool = False,
        progress: Callable[[int], None] | None = None,
        release: Callable[[int, int], None] | None = None,
    ) -> None:
        if page_size < 1024 or page_size & (page_size - 1):
            raise UnsupportedError(f"page size {page_size} is not a power of two >= 1 KiB",
                                   code="unsupported")
        self.buf = buf
        self.ps = page_size
        self.shift = page_size.bit_length() - 1
        self.mask = page_size - 1
        self.names = {n: i for i, n in enumerate(block_names)}
        self.cnames = {n.split("\0", 1)[0]: i for i, n in reversed(list(enumerate(block_names)))}
        self.block_names = list(block_names)
        self.lengths = list(block_lengths)
        self.mapped_ram = mapped_ram
        self.cur = -1  # index of the block named by the last non-CONTINUE record
        self.cols = _Columns()
        self.progress = progress
        self.release = release  # drop scanned mmap pages from RSS
        self._released = 0
        self.other_records = {"EOS": 0, "MULTIFD_FLUSH": 0}
        self.fill_nonzero = 0

    # -- helpers -------------------------------------------------------
    def _word(self, pos: int, end: int) -> int:
        if pos + 8 > end:
            raise TruncatedError(
                "the RAM section ends inside a record header (8 bytes expected, "
                f"{max(0, end - pos)} left)",
                pos,
                "ram",
                code="truncated-ram",
            )
        return _U64.unpack_from(self.buf, pos)[0]

    def _need(self, pos: int, n: int, end: int, what: str, rec: int) -> None:
        if pos + n > end:
            raise TruncatedError(
                f"the data ends inside {what} ({n} bytes expected, {max(0, end - pos)} left)",
                rec,
                "ram",
                code="truncated-ram",
            )

    def _check_page(self, blk: int, addr: int, rec: int) -> int:
        if addr + self.ps > self.lengths[blk]:
            raise InconsistentError(
                f"page offset 0x{addr:x} is beyond the used length 0x{self.lengths[blk]:x} of "
                f"RAMBlock {self.block_names[blk]!r}",
                rec,
                "ram",
                code="page-offset-beyond",
            )
        return addr >> self.shift

    # -- the scan ------------------------------------------------------
    def scan(self, pos: int, end: int) -> int:
        """Read records from `pos` up to and including EOS; return the offset after it."""
        buf = self.buf
        ps = self.ps
        mask = self.mask
        unpack = _U64.unpack_from
        cols = self.cols
        a_rec, a_data, a_block, a_page, a_kind = (
            cols.a_rec, cols.a_data, cols.a_block, cols.a_page, cols.a_kind)
        page_stride = 8 + ps
        lengths = self.lengths
        shift = self.shift
        count = 0
        while True:
            if pos + 8 > end:
                self._word(pos, end)  # raises
            w = unpack(buf, pos)[0]
            flags = w & mask
            if flags == PAGE_CONT or flags == ZERO_CONT:
                cur = self.cur
                if cur < 0:
                    raise FormatError(
                        "CONTINUE flag set but no RAMBlock was named before (Ack, bad migration "
                        "stream!)",
                        pos,
                        "ram",
                        code="continue-without-block",
                    )
                if self.mapped_ram:
                    self._mapped_ram_page(pos, flags)
                stride = page_stride if flags == PAGE_CONT else 9
                # vector path for a run of identical CONTINUE records
                if pos + 2 * stride + 8 <= end and (unpack(buf, pos + stride)[0] & mask) == flags:
                    n = self._vector_run(pos, end, flags, stride, cur)
                    if n:
                        a_rec, a_data, a_block, a_page, a_kind = (
                            cols.a_rec, cols.a_data, cols.a_block, cols.a_page, cols.a_kind)
                        pos += n * stride
                        count += n
                        if count >= 16384:
                            self._tick(pos)
                            count = 0
                        continue
                addr = w ^ flags
                if addr + ps > lengths[cur]:
                    self._check_page(cur, addr, pos)
                if pos + stride > end:
                    self._need(pos + 8, stride - 8, end, "a page payload", pos)
                if flags == ZERO_CONT and buf[pos + 8]:
                    raise FormatError(
                        f"ZERO record with fill byte 0x{buf[pos + 8]:02x} (QEMU: Found a zero "
                        "page with value)",
                        pos,
                        "ram",
                        code="zero-fill",
                    )
                a_rec.append(pos)
                a_data.append(pos + 8)
                a_block.append(cur)
                a_page.append(addr >> shift)
                a_kind.append(flags ^ R.RAM_SAVE_FLAG_CONTINUE)
                pos += stride
                count += 1
                if count >= 16384:
                    self._tick(pos)
                    count = 0
                continue
            # slow path: everything else
            pos = self._slow_record(pos, end, w, flags)
            a_rec, a_data, a_block, a_page, a_kind = (
                cols.a_rec, cols.a_data, cols.a_block, cols.a_page, cols.a_kind)
            if pos < 0:  # EOS
                return -pos

    def _tick(self, pos: int) -> None:
        if self.progress:
            self.progress(pos)
        if self.release and pos - self._released >= 32 << 20:
            self.release(self._released, pos)
            self._released = pos

    def _vector_run(self, pos: int, end: int, flags: int, stride: int, cur: int) -> int:
        """Consume as many consecutive `flags` records as the data holds; return how many.

        Each chunk's header words are read from the buffer once, into a contiguous array
        (a strided read touches one page per record: a second pass would pay the TLB
        misses again); everything after works on that copy."""
        total = 0
        chunk = 256
        buf = self.buf
        limit = self.lengths[cur] - self.ps
        mask = np.uint64(self.mask)
        want = np.uint64(flags)
        kind = flags ^ R.RAM_SAVE_FLAG_CONTINUE
        while True:
            k = min(chunk, (end - pos - 8) // stride)
            if k <= 0:
                return total
            words = np.ndarray((k,), dtype=">u8", buffer=buf, offset=pos,
                               strides=(stride,)).astype(np.uint64)
            low = words & mask
            ok = low == want
            m = k if ok.all() else int(np.argmin(ok))
            if m == 0:
                return total
            addrs = (words[:m] ^ want).view(np.int64)
            bad = np.flatnonzero((addrs > limit) | (addrs < 0))
            if len(bad):
                m = int(bad[0])  # stop before; the slow path reports it
            if flags == ZERO_CONT and m:
                fills = np.ndarray((m,), dtype=np.uint8, buffer=buf, offset=pos + 8,
                                   strides=(stride,))
                nz = np.flatnonzero(fills)
                if len(nz):
                    m = int(nz[0])
            if m == 0:
                return total
            rec = np.arange(pos, pos + stride * m, stride, dtype=np.int64)
            self.cols.add_chunk(
                rec,
                rec + 8,
                np.full(m, cur, dtype=np.int16),
                (addrs[:m] >> self.shift).astype(np.uint32),
                np.full(m, kind, dtype=np.uint16),
            )
            total += m
            pos += m * stride
            if m < k:
                return total
            self._tick(pos)
            chunk = min(chunk * 4, 1 << 14)

    def _mapped_ram_page(self, pos: int, flags: int) -> None:
        raise FormatError(
            f"page record ({R.flag_names(flags)}) in a mapped-ram stream; mapped-ram files keep "
            "pages at fixed offsets, QEMU refuses these records",
            pos,
            "ram",
            code="page-record-in-mapped-ram",
        )

    def _slow_record(self, pos: int, end: int, w: int, flags: int) -> int:
        """Handle one record other than PAGE|CONT/ZERO|CONT. Returns the next offset, or
        -(offset after EOS) at the end of the section."""
        rec = pos
        ptype = flags & ~R.RAM_SAVE_FLAG_CONTINUE
        if ptype not in _PAGE_TYPES:
            return self._control_record(pos, w, flags, ptype)
        if self.mapped_ram:
            self._mapped_ram_page(pos, flags)
        buf = self.buf
        pos += 8
        if flags & R.RAM_SAVE_FLAG_CONTINUE:
            if self.cur < 0:
                raise FormatError(
                    "CONTINUE flag set but no RAMBlock was named before", rec, "ram",
                    code="continue-without-block")
        else:
            self._need(pos, 1, end, "a RAMBlock name", rec)
            n = buf[pos]
            self._need(pos + 1, n, end, "a RAMBlock name", rec)
            self.cur = self._block_index(bytes(buf[pos + 1 : pos + 1 + n]), rec)
            pos += 1 + n
        page = self._check_page(self.cur, w ^ flags, rec)
        data = pos
        if ptype == R.RAM_SAVE_FLAG_PAGE:
            self._need(pos, self.ps, end, "a page payload", rec)
            pos += self.ps
        elif ptype == R.RAM_SAVE_FLAG_ZERO:
            self._need(pos, 1, end, "a zero-page fill byte", rec)
            if buf[pos]:
                raise FormatError(
                    f"ZERO record with fill byte 0x{buf[pos]:02x} (QEMU: Found a zero page with "
                    "value)", rec, "ram", code="zero-fill")
            pos += 1
        elif ptype == R.RAM_SAVE_FLAG_XBZRLE:
            self._need(pos, 3, end, "an XBZRLE header", rec)
            enc = buf[pos]
            (ln,) = _U16.unpack_from(buf, pos + 1)
            if enc != R.ENCODING_FLAG_XBZRLE:
                raise FormatError(
                    f"XBZRLE record with encoding flag 0x{enc:02x} (must be 0x01: Failed to load "
                    "XBZRLE page - wrong compression!)", rec, "ram", code="xbzrle")
            if ln > self.ps:  # QEMU's loader accepts 0 (its encoder never writes it)
                raise FormatError(
                    f"XBZRLE record length {ln} exceeds the page size {self.ps} (Failed to "
                    "load XBZRLE page - len overflow!)", rec, "ram", code="xbzrle")
            self._need(pos + 3, ln, end, "an XBZRLE payload", rec)
            pos += 3 + ln  # the data kept is the payload incl. its 3-byte header
        else:  # RAM_SAVE_FLAG_COMPRESS_PAGE
            self._need(pos, 4, end, "a COMPRESS_PAGE length", rec)
            (ln,) = _U32.unpack_from(buf, pos)
            if ln > self.ps + self.ps // 1000 + 64:
                raise FormatError(
                    f"COMPRESS_PAGE length {ln} exceeds a page's compressBound", rec, "ram",
                    code="compress-page-damaged")
            self._need(pos + 4, ln, end, "a COMPRESS_PAGE payload", rec)
            pos += 4 + ln
        c = self.cols
        c.a_rec.append(rec)
        c.a_data.append(data)
        c.a_block.append(self.cur)
        c.a_page.append(page)
        c.a_kind.append(ptype)
        return pos

    def _control_record(self, pos: int, w: int, flags: int, ptype: int) -> int:
        """A record that carries no page: EOS (returns -(offset after it)), MULTIFD_FLUSH,
        or one this position cannot hold."""
        if ptype not in _KNOWN_TYPES or flags & R.RAM_SAVE_FLAG_CONTINUE:
            raise FormatError(
                f"unknown RAM flags 0x{flags:x} ({R.flag_names(flags)}) in record word "
                f"0x{w:016x}", pos, "ram", code="unknown-ram-flags")
        if ptype == R.RAM_SAVE_FLAG_EOS:
            self.other_records["EOS"] += 1
            return -(pos + 8)
        if ptype == R.RAM_SAVE_FLAG_MULTIFD_FLUSH:
            self.other_records["MULTIFD_FLUSH"] += 1
            return pos + 8
        if ptype == R.RAM_SAVE_FLAG_MEM_SIZE:
            raise FormatError("MEM_SIZE record outside the ram START section", pos, "ram",
                              code="mem-size-misplaced")
        raise UnsupportedError("RAM_SAVE_FLAG_HOOK (RDMA) record in a file", pos, "ram",
                               code="rdma-hook")

    def _block_index(self, raw_name: bytes, rec: int) -> int:
        """The block a record's idstr names (QEMU looks it up as a C string, up to a NUL)."""
        name = raw_name.decode("latin-1")
        cur = self.names.get(name)
        if cur is None:
            cur = self.cnames.get(name.split("\0", 1)[0])
        if cur is None:
            raise InconsistentError(
                f"Unknown ramblock {name!r}: not in the MEM_SIZE block list", rec, "ram",
                code="unknown-block-in-record")
        return cur

    def table(self) -> RecordTable:
        return self.cols.table()

    def cut_record(self, rec: int, end: int) -> tuple[int | None, int | None, int | None]:
        """(block index, page, kind) of the page record at `rec` that the data (ending at
        `end`) cuts short, as far as its header is there: (None, None, None) when the
        record word itself is cut; block None when its RAMBlock name is."""
        if rec < 0 or rec + 8 > end:
            return None, None, None
        w = _U64.unpack_from(self.buf, rec)[0]
        flags = w & self.mask
        ptype = flags & ~R.RAM_SAVE_FLAG_CONTINUE
        if ptype not in _PAGE_TYPES:
            return None, None, None
        page = (w ^ flags) >> self.shift
        if flags & R.RAM_SAVE_FLAG_CONTINUE:
            blk = self.cur if self.cur >= 0 else None
        else:
            n = self.buf[rec + 8] if rec + 9 <= end else -1
            blk = self.cur if 0 <= n and rec + 9 + n <= end and self.cur >= 0 else None
        if blk is not None and (page + 1) << self.shift > self.lengths[blk]:
            page = None
        return blk, page, ptype
