"""Opening an input file: read-only, mmapped, decompressed into a private
temporary file when compressed, with a libvirt save header recognised.

A `Source` exposes `buf` (a read-only buffer of the QEMU-level bytes) and
`base`, the offset in `buf` where the QEMU stream starts. Offsets reported by
the readers are offsets in `buf`: for plain and libvirt raw/sparse files they
are file offsets; for compressed files (and libvirt gzip/bzip2/xz/lzop/zstd
images), offsets in the decompressed data, which starts with the QEMU stream.

Compressed data is inflated by `inflate` with bounded memory. Damaged or cut
compressed data does not fail here: what decoded is kept and
`Container.inflation` says where it stopped, so the stream can be walked up to
the cut; `Source.explain` words a walk's error with that context.

mapped-ram inside compressed data (a bare mapped-ram file run through a
compressor by hand; libvirt never compresses its `sparse` format) works through
the temporary file: its offsets count from the start of the decompressed data,
which is where QEMU's offsets counted from.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import (
    BadMagicError,
    FormatError,
    MigError,
    TruncatedError,
    UnsupportedError,
)
from ..formats import libvirt as lv
from .inflate import Inflation, Progress, inflate_head, inflate_to_tempfile
from .parsing import parse_at
from .spool import is_stream_input, open_stream_input

COMPRESSION_MAGICS = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bzip2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x89LZO\x00\r\n\x1a\n", "lzop"),
)

#: The domain XML and the cookie are each read up to this size; libvirt's own
#: are a few KiB. Longer ones are cut (a hostile data_len cannot make us read GBs).
MAX_XML = 16 << 20


def sniff_compression(head: bytes) -> str | None:
    for magic, name in COMPRESSION_MAGICS:
        if head.startswith(magic):
            return name
    if len(head) >= 4 and 0x50 <= head[0] <= 0x5F and head[1:4] == b"\x2a\x4d\x18":
        return "zstd"  # a zstd skippable frame first (pzstd writes one before each frame)
    return None


@dataclass
class LibvirtHeader:
    magic: str
    complete: bool  # False for the LibvirtQemudPart magic: libvirt never finished the save
    version: int
    data_len: int
    was_running: bool
    format: int
    format_name: str
    cookie_offset: int
    byte_order: str
    payload_offset: int  # file offset of the QEMU data (92 + data_len)
    xml: str
    cookie: str | None
    xml_length: int = 0  # bytes of XML before its NUL


@dataclass
class Container:
    """What wraps the QEMU stream: nothing, a compressor, a libvirt header."""

    kind: str = "none"  # "none" or "libvirt"
    compression: str | None = None  # compressor of the QEMU stream, if any
    libvirt: LibvirtHeader | None = None
    #: how the compressed data decompressed (None when nothing was compressed)
    inflation: Inflation | None = None


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

    def explain(self, err: MigError) -> MigError:
        """`err` (where a walk of this source stopped) with what the container adds:
        compressed data cut or damaged, an incomplete libvirt save. Offsets in a
        compressed file's own bytes are named as file offsets."""
        c = self.container
        inf = c.inflation
        part = c.libvirt is not None and not c.libvirt.complete
        if (inf is None or inf.complete) and not part:
            return err
        bits = []
        if part:
            bits.append("incomplete libvirt save image (LibvirtQemudPart: libvirt never "
                        "finished writing it)")
        if inf is not None and not inf.complete:
            bits.append(inf.describe())
        where = "decompressed offset" if self.decompressed else "offset"
        at = f" at {where} {err.offset}" if err.offset is not None else ""
        bits.append(f"the QEMU stream stops{at}: {err.message}")
        msg = "; ".join(bits)
        if inf is not None and not inf.complete:
            cls = TruncatedError if inf.truncated else FormatError
            return cls(msg, inf.error_offset, "container",
                       code="container-truncated" if inf.truncated else "container-damaged")
        return type(err)(msg, err.offset, err.where, code=err.code)

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


def _cstring(buf: Any, start: int, end: int) -> tuple[str, int]:
    """The NUL-terminated text in buf[start:end] (at most MAX_XML bytes) and its length."""
    stop = min(end, start + MAX_XML)
    nul = buf.find(b"\0", start, stop)
    n = (nul if nul >= 0 else stop) - start
    return bytes(buf[start : start + n]).decode("utf-8", "replace"), n


def _parse_libvirt(buf: Any) -> LibvirtHeader:
    """The libvirt header, domain XML and cookie at the start of `buf` (which must hold
    at least the 92-byte header and data_len bytes after it)."""
    magic = bytes(buf[:16])
    hdr, _ = parse_at(lv.virQEMUSaveHeader_le, buf, 0, "libvirt save header",
                      code="libvirt-header")
    order = "little"
    if hdr.version > lv.QEMU_SAVE_VERSION or hdr.version < 0:
        hdr, _ = parse_at(lv.virQEMUSaveHeader_be, buf, 0, "libvirt save header",
                          code="libvirt-header")
        order = "big"
    if hdr.version < 1 or hdr.version > lv.QEMU_SAVE_VERSION:
        raise BadMagicError(
            f"libvirt save image version {hdr.version} is not supported (1..2)", 16, "libvirt",
            code="libvirt-version")
    if hdr.data_len < 0 or lv.QEMU_SAVE_HEADER_SIZE + hdr.data_len > len(buf):
        raise TruncatedError(
            f"libvirt header says {hdr.data_len} bytes of XML follow, the file has "
            f"{max(0, len(buf) - lv.QEMU_SAVE_HEADER_SIZE)}",
            20,
            "libvirt",
            code="libvirt-data-len",
        )
    fmt = hdr.format if hdr.version == 2 else lv.QEMU_SAVE_FORMAT_RAW
    if fmt not in lv.QEMU_SAVE_FORMAT_NAMES:
        raise UnsupportedError(f"unknown libvirt save image format {fmt}", 28, "libvirt",
                               code="libvirt-format")
    start = lv.QEMU_SAVE_HEADER_SIZE
    end = start + hdr.data_len
    cookie = None
    if 0 < hdr.cookieOffset <= hdr.data_len:
        xml, xml_len = _cstring(buf, start, start + hdr.cookieOffset)
        cookie, _ = _cstring(buf, start + hdr.cookieOffset, end)
    else:
        xml, xml_len = _cstring(buf, start, end)
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
        payload_offset=end,
        xml=xml,
        cookie=cookie,
        xml_length=xml_len,
    )


def _is_libvirt(head: bytes) -> bool:
    return head[:16] in (lv.QEMU_SAVE_MAGIC, lv.QEMU_SAVE_PARTIAL)


def _inflate_into(src: Source, f: Any, kind: str, start: int, progress: Progress | None) -> None:
    """Decompress the input from `start` and make the result `src.buf` (base 0)."""
    tmp, size, st = inflate_to_tempfile(src.path, f.fileno(), kind, start, src.file_size,
                                        progress)
    src._closers.append(tmp)
    mm = _mmap_fd(tmp.fileno(), size)
    if size:
        src._closers.append(mm)
    src.buf, src.base, src.decompressed = mm, 0, True
    src.fd = tmp.fileno()
    src.container.inflation = st
    if size == 0 and st.error:
        cls = TruncatedError if st.truncated else FormatError
        raise cls(f"{kind} data at offset {start} {st.error}; nothing decompressed",
                  st.error_offset, "container",
                  code="container-truncated" if st.truncated else "container-damaged")


def open_source(path: str, progress: Progress | None = None) -> Source:
    """Open `path` read-only and find the QEMU stream in it."""
    # stdin (`-`), FIFOs and devices are spooled into a temporary file first
    f = open_stream_input(path, progress) if is_stream_input(path) else open(path, "rb")  # noqa: SIM115
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
        if _is_libvirt(head):
            hdr = _parse_libvirt(mm)
            src.container = Container("libvirt", None, hdr)
            src.base = hdr.payload_offset
            comp = hdr.format_name if hdr.format_name not in ("raw", "sparse") else None
            if comp:
                src.container.compression = comp
                if hdr.payload_offset >= size:
                    part = "" if hdr.complete else " (incomplete save: LibvirtQemudPart)"
                    raise TruncatedError(
                        f"the {comp} libvirt image ends after its XML: no QEMU data{part}",
                        hdr.payload_offset, "libvirt", code="container-truncated")
                _inflate_into(src, f, comp, hdr.payload_offset, progress)
            return src
        comp = sniff_compression(head)
        if comp:
            src.container = Container("none", comp, None)
            _inflate_into(src, f, comp, 0, progress)
            # a compressed libvirt image (e.g. `virsh save` output run through zstd)
            if _is_libvirt(bytes(src.buf[:16])):
                hdr = _parse_libvirt(src.buf)
                src.container.kind = "libvirt"
                src.container.libvirt = hdr
                src.base = hdr.payload_offset
                if hdr.format_name not in ("raw", "sparse"):
                    raise UnsupportedError(
                        f"a {hdr.format_name} libvirt image inside {comp} data: decompress "
                        f"the outer {comp} layer first", 0, "container", code="unsupported")
        return src
    except BaseException:
        f.close()
        raise


def read_container(path: str) -> Container:
    """The container of `path` (libvirt header, XML, cookie, compression) without
    decompressing the QEMU data: for a libvirt image only its header area is read;
    for a compressed file, only as much as its start takes."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(16)
        if _is_libvirt(head):
            mm = _mmap_fd(f.fileno(), size)
            try:
                hdr = _parse_libvirt(mm)
            finally:
                if isinstance(mm, mmap.mmap):
                    mm.close()
            comp = hdr.format_name if hdr.format_name not in ("raw", "sparse") else None
            return Container("libvirt", comp, hdr)
        comp = sniff_compression(head)
        if comp is None:
            return Container()
        inner = inflate_head(path, f.fileno(), comp, 0, size, lv.QEMU_SAVE_HEADER_SIZE)
        if not _is_libvirt(inner) or len(inner) < lv.QEMU_SAVE_HEADER_SIZE:
            return Container("none", comp, None)
        first, _ = parse_at(lv.virQEMUSaveHeader_le, inner, 0, "libvirt save header",
                            code="libvirt-header")
        data_len = first.data_len
        if not 0 <= data_len <= MAX_XML * 2 + (1 << 20):
            first, _ = parse_at(lv.virQEMUSaveHeader_be, inner, 0, "libvirt save header",
                                code="libvirt-header")
            data_len = first.data_len
        if not 0 <= data_len <= MAX_XML * 2 + (1 << 20):
            raise FormatError(f"libvirt header inside {comp} data: data_len {data_len} is "
                              "out of range", 20, "libvirt", code="libvirt-data-len")
        whole = inflate_head(path, f.fileno(), comp, 0, size,
                             lv.QEMU_SAVE_HEADER_SIZE + data_len)
        return Container("libvirt", comp, _parse_libvirt(whole))
