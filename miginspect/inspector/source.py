"""Opening an input file: read-only, mmapped, decompressed into a private
temporary file when compressed, with a libvirt save header recognised.

A `Source` exposes `buf` (a read-only buffer of the QEMU-level bytes) and
`base`, the offset in `buf` where the QEMU stream starts. Offsets reported by
the readers are offsets in `buf`: for plain and libvirt raw/sparse files they
are file offsets; for compressed files, offsets in the decompressed data.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import mmap
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import zstandard

from ..errors import BadMagicError, FormatError, TruncatedError, UnsupportedError
from ..formats import libvirt as lv
from .parsing import parse_at

Progress = Callable[[int, int], None]

COMPRESSION_MAGICS = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x89LZO\x00\r\n\x1a\n", "lzop"),
)

#: Decompressing stops with an error past this many bytes (a guard against
#: decompression bombs); MIGINSPECT_MAX_INFLATE overrides it.
DEFAULT_MAX_INFLATE = 256 << 30

_CHUNK = 4 << 20


def sniff_compression(head: bytes) -> str | None:
    for magic, name in COMPRESSION_MAGICS:
        if head.startswith(magic):
            return name
    return None


@dataclass
class LibvirtHeader:
    magic: str
    complete: bool
    version: int
    data_len: int
    was_running: bool
    format: int
    format_name: str
    cookie_offset: int
    byte_order: str
    payload_offset: int
    xml: str
    cookie: str | None


@dataclass
class Container:
    """What wraps the QEMU stream: nothing, a compressor, a libvirt header."""

    kind: str = "none"  # "none" or "libvirt"
    compression: str | None = None  # compressor of the QEMU stream, if any
    libvirt: LibvirtHeader | None = None


@dataclass
class Source:
    path: str
    buf: Any  # mmap.mmap or bytes
    base: int  # where the QEMU stream starts in buf
    file_size: int  # apparent size of the input file
    allocated_size: int  # bytes allocated on disk for the input file
    container: Container = field(default_factory=Container)
    decompressed: bool = False
    #: descriptor of the file behind `buf` (the input, or the temporary file a
    #: compressed input was inflated into), for SEEK_DATA/SEEK_HOLE queries
    fd: int | None = None
    _closers: list[Any] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.buf)

    def release(self, start: int, end: int) -> None:
        """Drop the mapping's pages in [start, end) from this process's resident set
        (the data stays in the page cache), so RSS follows the work, not the file."""
        buf = self.buf
        if not isinstance(buf, mmap.mmap) or end <= start:
            return
        g = mmap.PAGESIZE
        s = start // g * g
        e = min(end, len(buf)) // g * g
        if e > s:
            try:
                buf.madvise(mmap.MADV_DONTNEED, s, e - s)
            except (AttributeError, OSError, ValueError):
                pass

    def close(self) -> None:
        for c in reversed(self._closers):
            try:
                c.close()
            except (OSError, ValueError, BufferError):
                pass
        self._closers.clear()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _mmap_fd(fd: int, size: int) -> Any:
    if size == 0:
        return b""
    mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    try:
        mm.madvise(mmap.MADV_SEQUENTIAL)
    except (AttributeError, OSError):
        pass
    return mm


def _decompressor(kind: str, f: BinaryIO) -> BinaryIO:
    if kind == "gzip":
        return gzip.GzipFile(fileobj=f, mode="rb")
    if kind == "bzip2":
        return bz2.BZ2File(f, mode="rb")
    if kind == "xz":
        return lzma.LZMAFile(f, mode="rb")
    if kind == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
    if kind == "lzop":
        raise UnsupportedError(
            "lzop-compressed data: no maintained Python lzop reader is bundled; decompress it "
            "first with `lzop -dc FILE > FILE.raw` (Debian package lzop)",
            0,
            "container",
        )
    raise UnsupportedError(f"unknown compression {kind}")


def _inflate(
    f: BinaryIO, kind: str, start: int, total: int, progress: Progress | None
) -> tuple[Any, Any]:
    """Stream-decompress `f` from `start` into an unnamed temporary file; mmap it."""
    limit = int(os.environ.get("MIGINSPECT_MAX_INFLATE", DEFAULT_MAX_INFLATE))
    f.seek(start)
    tmp = tempfile.TemporaryFile(prefix="miginspect-")
    written = 0
    try:
        with _decompressor(kind, f) as d:
            while True:
                try:
                    chunk = d.read(_CHUNK)
                except (EOFError, OSError, lzma.LZMAError, zstandard.ZstdError) as e:
                    raise TruncatedError(
                        f"{kind} data is damaged or cut short after {written} decompressed "
                        f"bytes: {e}",
                        f.tell() if not f.closed else None,
                        "container",
                    ) from e
                if not chunk:
                    break
                written += len(chunk)
                if written > limit:
                    raise FormatError(
                        f"{kind} data inflates past {limit} bytes (MIGINSPECT_MAX_INFLATE)",
                        start,
                        "container",
                    )
                _write_sparse(tmp, chunk)
                if progress:
                    progress(min(f.tell(), total), total)
    except BaseException:
        tmp.close()
        raise
    tmp.truncate(written)
    tmp.flush()
    return tmp, _mmap_fd(tmp.fileno(), written)


_ZERO = bytes(_CHUNK)


def _write_sparse(tmp: BinaryIO, chunk: bytes) -> None:
    # Leave holes for all-zero chunks so inflating a mostly zero image costs no disk.
    if len(chunk) == _CHUNK and chunk == _ZERO:
        tmp.seek(len(chunk), os.SEEK_CUR)
    else:
        tmp.write(chunk)


def _parse_libvirt(buf: Any) -> LibvirtHeader:
    magic = bytes(buf[:16])
    hdr, _ = parse_at(lv.virQEMUSaveHeader_le, buf, 0, "libvirt save header")
    order = "little"
    if hdr.version > lv.QEMU_SAVE_VERSION or hdr.version < 0:
        hdr, _ = parse_at(lv.virQEMUSaveHeader_be, buf, 0, "libvirt save header")
        order = "big"
    if hdr.version < 1 or hdr.version > lv.QEMU_SAVE_VERSION:
        raise BadMagicError(
            f"libvirt save image version {hdr.version} is not supported (1..2)", 16, "libvirt"
        )
    if hdr.data_len < 0 or lv.QEMU_SAVE_HEADER_SIZE + hdr.data_len > len(buf):
        raise TruncatedError(
            f"libvirt header says {hdr.data_len} bytes of XML follow, the file has "
            f"{len(buf) - lv.QEMU_SAVE_HEADER_SIZE}",
            20,
            "libvirt",
        )
    fmt = hdr.format if hdr.version == 2 else lv.QEMU_SAVE_FORMAT_RAW
    if fmt not in lv.QEMU_SAVE_FORMAT_NAMES:
        raise UnsupportedError(f"unknown libvirt save image format {fmt}", 28, "libvirt")
    start = lv.QEMU_SAVE_HEADER_SIZE
    data = bytes(buf[start : start + hdr.data_len])
    cookie = None
    if 0 < hdr.cookieOffset <= hdr.data_len:
        xml_raw = data[: hdr.cookieOffset]
        cookie = data[hdr.cookieOffset :].split(b"\0", 1)[0].decode("utf-8", "replace")
    else:
        xml_raw = data
    xml = xml_raw.split(b"\0", 1)[0].decode("utf-8", "replace")
    return LibvirtHeader(
        magic=magic.decode("latin-1"),
        complete=magic == lv.QEMU_SAVE_MAGIC,
        version=hdr.version,
        data_len=hdr.data_len,
        was_running=bool(hdr.was_running),
        format=fmt,
        format_name=lv.QEMU_SAVE_FORMAT_NAMES[fmt],
        cookie_offset=hdr.cookieOffset,
        byte_order=order,
        payload_offset=start + hdr.data_len,
        xml=xml,
        cookie=cookie,
    )


def open_source(path: str, progress: Progress | None = None) -> Source:
    """Open `path` read-only and find the QEMU stream in it."""
    f = open(path, "rb")  # noqa: SIM115 - kept open as long as the Source
    try:
        st = os.fstat(f.fileno())
        size = st.st_size
        allocated = getattr(st, "st_blocks", 0) * 512
        mm = _mmap_fd(f.fileno(), size)
        src = Source(path, mm, 0, size, allocated, fd=f.fileno())
        src._closers.append(f)
        if mm:
            src._closers.append(mm)
        head = bytes(mm[:16])
        if head in (lv.QEMU_SAVE_MAGIC, lv.QEMU_SAVE_PARTIAL):
            hdr = _parse_libvirt(mm)
            src.container = Container("libvirt", None, hdr)
            src.base = hdr.payload_offset
            comp = hdr.format_name if hdr.format_name not in ("raw", "sparse") else None
            if comp:
                src.container.compression = comp
                tmp, mm2 = _inflate(f, comp, hdr.payload_offset, size, progress)
                src._closers += [tmp, mm2] if mm2 else [tmp]
                src.buf, src.base, src.decompressed = mm2, 0, True
                src.fd = tmp.fileno()
            return src
        comp = sniff_compression(head)
        if comp:
            src.container = Container("none", comp, None)
            tmp, mm2 = _inflate(f, comp, 0, size, progress)
            src._closers += [tmp, mm2] if mm2 else [tmp]
            src.buf, src.base, src.decompressed = mm2, 0, True
            src.fd = tmp.fileno()
            # a compressed libvirt image (e.g. `virsh save` output run through zstd)
            inner = bytes(mm2[:16])
            if inner in (lv.QEMU_SAVE_MAGIC, lv.QEMU_SAVE_PARTIAL):
                hdr = _parse_libvirt(mm2)
                src.container.kind = "libvirt"
                src.container.libvirt = hdr
                src.base = hdr.payload_offset
                if hdr.format_name not in ("raw", "sparse"):
                    raise UnsupportedError(
                        f"a {hdr.format_name} libvirt image inside {comp} data", 0, "container"
                    )
        return src
    except BaseException:
        f.close()
        raise

