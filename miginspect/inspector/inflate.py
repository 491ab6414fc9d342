"""Bounded, streaming decompression of a compressed QEMU stream into a file.

gzip, bzip2, xz and zstd are decoded in-process with incremental decoders whose
output per step is bounded, whatever the compressed bytes claim (zstd, whose
decoder has no output bound, is fed 1 KiB of input at a time: at most 32 MiB of
output per step). lzop has no maintained Python reader; it is decoded by the
`lzop` program through a pipe, as libvirt itself does on restore.

Output goes to a file (an unnamed temporary file in practice, see `temp_dir`) with all-zero
runs left as holes, so a mostly-zero guest costs little disk. Concatenated
members (gzip members, bzip2 streams, xz streams with padding, zstd frames) are
followed. Damaged or cut-short data does not raise: what decoded so far is kept
and `Inflation` says where and why it stopped, so the stream inside can still be
walked up to the cut.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import FormatError, UnsupportedError

# The decoders (bz2, lzma, zlib, zstandard), the lzop pipe (shutil, subprocess) and the
# temporary files are imported where data is actually inflated: opening a plain stream
# does not pay for them.

Progress = Callable[[int, int], None]

#: Inflating stops with an error past this many bytes (a guard against
#: decompression bombs filling the disk); MIGINSPECT_MAX_INFLATE overrides it.
DEFAULT_MAX_INFLATE = 256 << 30
#: zstd frames needing a larger window are refused (the decoder would allocate
#: it); MIGINSPECT_ZSTD_WINDOW_LOG raises it (zstd --long=31 needs 31).
DEFAULT_ZSTD_WINDOW_LOG = 27

_IN_CHUNK = 64 << 10  # compressed bytes read per step (also the precision of error offsets)
_OUT_MAX = 4 << 20  # decoded bytes per decoder call (gzip, bzip2, xz)
_ZSTD_FEED = 1 << 10  # compressed bytes per zstd decoder call
_PIECE = 64 << 10  # hole granularity of the output file
_FLUSH = 8 << 20

MEMBER_MAGICS = {
    "gzip": (b"\x1f\x8b",),
    "bzip2": (b"BZh",),
    "xz": (b"\xfd7zXZ\x00",),
    "zstd": (b"\x28\xb5\x2f\xfd",) + tuple(bytes([0x50 + i, 0x2A, 0x4D, 0x18]) for i in range(16)),
    "lzop": (b"\x89LZO\x00\r\n\x1a\n",),
}

#: What to install when the lzop program is missing.
LZOP_HINT = "install the lzop program (Debian/Ubuntu/Fedora package `lzop`)"


@dataclass
class Inflation:
    """How a compressed payload decompressed."""

    compression: str
    start: int  # file offset of the first compressed byte
    end: int  # file offset just past the compressed data that was used
    inflated: int  # bytes of decompressed output
    complete: bool  # the data ended with its end-of-stream marker
    error: str | None = None  # why decoding stopped early
    error_offset: int | None = None  # file offset at (or near) the problem
    truncated: bool = False  # the error is that the data ends too early
    members: int = 0  # complete gzip members / bzip2 or xz streams / zstd frames
    trailing: int = 0  # bytes after the compressed data, ignored

    def describe(self) -> str:
        """One phrase for messages: what happened to the compressed data."""
        if self.error:
            return (f"{self.compression} data {self.error} (file offset {self.error_offset}; "
                    f"{self.inflated:,} bytes decompressed up to there)")
        return f"{self.compression} data complete ({self.inflated:,} bytes decompressed)"


def temp_dir() -> str | None:
    """Where inflated data goes: $MIGINSPECT_TMPDIR, else $TMPDIR, else /var/tmp (on disk
    on most systems, where /tmp may be RAM-backed), else Python's default."""
    for d in (os.environ.get("MIGINSPECT_TMPDIR"), os.environ.get("TMPDIR"), "/var/tmp"):
        if d and os.path.isdir(d) and os.access(d, os.W_OK | os.X_OK):
            return d
    return None


def max_inflate() -> int:
    return int(os.environ.get("MIGINSPECT_MAX_INFLATE", DEFAULT_MAX_INFLATE))


class HoleWriter:
    """Appends to a file by positioned writes, skipping all-zero 64 KiB pieces."""

    def __init__(self, fd: int, limit: int | None = None) -> None:
        self.fd = fd
        self.size = 0  # bytes accepted so far (written or left as holes)
        self.limit = limit
        self._buf = bytearray()

    def write(self, data: bytes) -> None:
        if not data:
            return
        if self.limit is not None and self.size + len(self._buf) + len(data) > self.limit:
            raise FormatError(
                f"the compressed data inflates past {self.limit:,} bytes; raise "
                "MIGINSPECT_MAX_INFLATE if that is expected", None, "container",
                code="inflate-limit")
        self._buf += data
        if len(self._buf) >= _FLUSH:
            self._flush(len(self._buf) // _PIECE * _PIECE)

    def close(self) -> int:
        self._flush(len(self._buf))
        os.ftruncate(self.fd, self.size)
        return self.size

    def _flush(self, n: int) -> None:
        if n <= 0:
            return
        full = n // _PIECE
        nonzero = np.ones(full + (1 if n % _PIECE else 0), dtype=bool)
        if full:
            words = np.frombuffer(self._buf, dtype=np.uint64, count=full * _PIECE // 8)
            nonzero[:full] = words.reshape(full, _PIECE // 8).any(axis=1)
            del words
        if n % _PIECE:
            nonzero[full] = self._buf.count(0, full * _PIECE, n) != n - full * _PIECE
        mv = memoryview(self._buf)
        try:
            i = 0
            while i < len(nonzero):
                if not nonzero[i]:
                    i += 1
                    continue
                j = i
                while j < len(nonzero) and nonzero[j]:
                    j += 1
                a, b = i * _PIECE, min(j * _PIECE, n)
                _pwrite_all(self.fd, mv[a:b], self.size + a)
                i = j
        finally:
            mv.release()
        self.size += n
        del self._buf[:n]


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        k = os.pwrite(fd, data, offset)
        data, offset = data[k:], offset + k


# ---------------------------------------------------------------------------
class _Member:
    """Decoder for one gzip member / bzip2 or xz stream / zstd frame, with output
    bounded per call. After `feed`, `eof` tells whether the member ended and
    `unused` holds the input bytes past its end."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.eof = False
        self.unused = b""
        if kind == "gzip":
            import zlib

            self._d = zlib.decompressobj(31)
        elif kind == "bzip2":
            import bz2

            self._d = bz2.BZ2Decompressor()
        elif kind == "xz":
            import lzma

            self._d = lzma.LZMADecompressor(lzma.FORMAT_XZ)
        elif kind == "zstd":
            import zstandard

            wlog = int(os.environ.get("MIGINSPECT_ZSTD_WINDOW_LOG", DEFAULT_ZSTD_WINDOW_LOG))
            self._d = zstandard.ZstdDecompressor(max_window_size=1 << wlog).decompressobj()
        else:
            raise UnsupportedError(f"unknown compression {kind}", None, "container",
                                   code="unsupported")

    def feed(self, data: bytes) -> Iterator[bytes]:
        d = self._d
        if self.kind == "gzip":
            tail = data
            while True:
                out = d.decompress(tail, _OUT_MAX)
                yield out
                if d.eof:
                    self.eof, self.unused = True, d.unused_data
                    return
                tail = d.unconsumed_tail
                if not tail and len(out) < _OUT_MAX:
                    return
        elif self.kind in ("bzip2", "xz"):
            out = d.decompress(data, _OUT_MAX)
            yield out
            while not d.eof and not d.needs_input:
                yield d.decompress(b"", _OUT_MAX)
            if d.eof:
                self.eof, self.unused = True, d.unused_data
        else:  # zstd: no output bound in the API; bound the input instead
            for i in range(0, len(data), _ZSTD_FEED):
                yield d.decompress(data[i : i + _ZSTD_FEED])
                if d.eof:
                    self.eof, self.unused = True, d.unused_data + data[i + _ZSTD_FEED :]
                    return


def _decode_errors() -> tuple[type[BaseException], ...]:
    """What the decoders raise on damaged data."""
    import lzma
    import zlib

    import zstandard

    return (zlib.error, OSError, EOFError, ValueError, lzma.LZMAError, zstandard.ZstdError)


def _starts_member(kind: str, data: bytes) -> bool:
    return any(data.startswith(m) for m in MEMBER_MAGICS[kind])


def decode(
    fd: int,
    kind: str,
    start: int,
    end: int,
    sink: Callable[[bytes], None],
    progress: Progress | None = None,
    stop_after: int | None = None,
) -> Inflation:
    """Decode the `kind` data in [start, end) of `fd` (gzip, bzip2, xz, zstd) into
    `sink`, member after member. Stops early, without raising, on damaged or cut
    data (the returned `Inflation` says so), or once `stop_after` bytes came out."""
    decode_errors = _decode_errors()
    st = Inflation(kind, start, start, 0, False)
    pos = start  # next file offset to read; `pending` always ends at `pos`
    pending = b""
    member = _Member(kind)
    data_off = start
    while True:
        if not pending:
            pending = os.pread(fd, min(_IN_CHUNK, end - pos), pos) if pos < end else b""
            if not pending:
                st.end = end
                st.error = "ends before its end-of-stream marker (cut short)"
                st.truncated = True
                st.error_offset = end
                return st
            pos += len(pending)
        data, pending = pending, b""
        data_off = pos - len(data)
        try:
            for out in member.feed(data):
                if out:
                    if stop_after is not None and st.inflated + len(out) >= stop_after:
                        sink(out[: stop_after - st.inflated])
                        st.inflated = stop_after
                        st.end = pos
                        return st
                    sink(out)
                    st.inflated += len(out)
            if progress:
                progress(pos - start, end - start)
        except decode_errors as e:
            from .parsing import short_error

            st.end = data_off
            st.error = f"is damaged ({short_error(e)})"
            st.error_offset = data_off
            return st
        if not member.eof:
            continue
        st.members += 1
        rest = member.unused
        member_end = pos - len(rest)
        while len(rest) < 16 and pos < end:  # enough to see the next member's magic
            more = os.pread(fd, min(_IN_CHUNK, end - pos), pos)
            if not more:
                break
            rest += more
            pos += len(more)
        if kind == "xz":  # stream padding: NUL bytes between xz streams
            stripped = rest.lstrip(b"\0")
            if stripped or pos >= end:
                member_end += len(rest) - len(stripped)
                rest = stripped
        if rest and _starts_member(kind, rest):
            member = _Member(kind)
            pending = rest
            continue
        st.end = member_end
        st.complete = True
        st.trailing = end - member_end
        return st


def decode_lzop(
    path: str,
    start: int,
    end: int,
    sink: Callable[[bytes], None],
    progress: Progress | None = None,
    stop_after: int | None = None,
) -> Inflation:
    """lzop data from `start` to the end of `path`, decoded by the `lzop` program."""
    import shutil
    import subprocess
    import tempfile

    exe = shutil.which("lzop")
    if exe is None:
        raise UnsupportedError(
            f"lzop-compressed data at offset {start}: no maintained Python library reads the "
            f"lzop format; {LZOP_HINT} and run again", start, "container", code="unsupported")
    st = Inflation("lzop", start, start, 0, False)
    fd = os.open(path, os.O_RDONLY)
    errf = tempfile.TemporaryFile(prefix="miginspect-lzop-")
    proc = None
    try:
        os.lseek(fd, start, os.SEEK_SET)
        # --ignore-warn: as libvirt restores; stdin shares our file offset, which
        # tells how far lzop has read.
        proc = subprocess.Popen([exe, "-dc", "--ignore-warn"], stdin=fd,
                                stdout=subprocess.PIPE, stderr=errf)
        out_fd = proc.stdout.fileno()  # type: ignore[union-attr]
        while True:
            chunk = os.read(out_fd, 1 << 20)
            if not chunk:
                break
            if stop_after is not None and st.inflated + len(chunk) >= stop_after:
                sink(chunk[: stop_after - st.inflated])
                st.inflated = stop_after
                st.end = os.lseek(fd, 0, os.SEEK_CUR)
                return st
            sink(chunk)
            st.inflated += len(chunk)
            if progress:
                progress(os.lseek(fd, 0, os.SEEK_CUR) - start, end - start)
        rc = proc.wait()
        st.end = os.lseek(fd, 0, os.SEEK_CUR)
        if rc == 0:
            st.complete = True
            st.members = 1
        else:
            errf.seek(0)
            msg = errf.read(4096).decode("utf-8", "replace").strip().splitlines()
            # lzop read everything there was and still wanted more: the data is cut
            st.truncated = st.end >= end
            if st.truncated:
                st.error = "ends before its end-of-stream marker (cut short)"
            else:
                st.error = (f"is damaged (lzop exit {rc}" + (f": {msg[-1]}" if msg else "")
                            + ")")
            st.error_offset = st.end
        return st
    finally:
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout:
                proc.stdout.close()
        errf.close()
        os.close(fd)


def inflate_to_tempfile(
    path: str, fd: int, kind: str, start: int, end: int, progress: Progress | None = None
) -> tuple[object, int, Inflation]:
    """Decompress [start, end) of the open file into an unnamed temporary file.
    Returns (the temporary file object, its size, the Inflation)."""
    import tempfile

    tmp = tempfile.TemporaryFile(prefix="miginspect-", dir=temp_dir())
    try:
        w = HoleWriter(tmp.fileno(), max_inflate())
        if kind == "lzop":
            st = decode_lzop(path, start, end, w.write, progress)
        else:
            st = decode(fd, kind, start, end, w.write, progress)
        size = w.close()
    except BaseException:
        tmp.close()
        raise
    return tmp, size, st


def inflate_head(path: str, fd: int, kind: str, start: int, end: int, n: int) -> bytes:
    """The first `n` decompressed bytes (fewer if the data ends or breaks first)."""
    out = bytearray()
    if kind == "lzop":
        decode_lzop(path, start, end, out.extend, None, stop_after=n)
    else:
        decode(fd, kind, start, end, out.extend, None, stop_after=n)
    return bytes(out)
