"""libvirt save images (`virsh save`, `managedsave`): the 92-byte virQEMUSaveHeader, the
domain XML and cookie, then the QEMU stream (raw, sparse = mapped-ram at file offsets, or
compressed by gzip/bzip2/xz/lzop/zstd). A libvirt image inside a compressed file (a
`virsh save` output run through zstd) is adopted from the decompressed data.

The XML is parsed with xml.etree; documents that declare a DOCTYPE or entities are not
parsed at all (libvirt never writes them), so no entity is ever expanded or resolved.
A converted libvirt image stays one: `output` builds the new header (format sparse or
raw) and copies the XML area.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...errors import BadMagicError, FormatError, MigError, TruncatedError, UnsupportedError
from ...formats import libvirt as lv
from ...render.fmt import hexoff, size
from ..inflate import Progress, inflate_head
from ..parsing import parse_at
from ..problems import Problem, problem
from ..source import Source, mmap_fd, mmap_input
from .base import (
    BAD,
    GOOD,
    PLAIN,
    WARN,
    Container,
    ContainerBrief,
    ContainerInfo,
    Fact,
    Incoming,
    Input,
    OpenOptions,
    Part,
    StreamExtent,
    _extent_facts,
    decompress_command,
    migration_incoming,
    shell_word,
    stream_state,
)
from .compressed import inflate_into, inflation_explain
from .magic import is_libvirt

if TYPE_CHECKING:
    from ..model import StreamWalk

__all__ = ["LibvirtHeader", "LibvirtContainer", "LibvirtInfo", "LibvirtPrefix", "Domain",
           "MAX_XML", "is_libvirt", "parse_libvirt", "parse_domain", "memory_kib",
           "read_container"]

#: The domain XML and the cookie are each read up to this size; libvirt's own
#: are a few KiB. Longer ones are cut (a hostile data_len cannot make us read GBs).
MAX_XML = 16 << 20

MAPPED_RAM = "mapped-ram"


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


# -- the domain XML -------------------------------------------------------------------------
#: libvirt's memory units, in bytes (docs: formatdomain "Memory Allocation").
_UNITS = {
    "b": 1, "bytes": 1,
    "kb": 1000, "k": 1024, "kib": 1024,
    "mb": 1000**2, "m": 1024**2, "mib": 1024**2,
    "gb": 1000**3, "g": 1024**3, "gib": 1024**3,
    "tb": 1000**4, "t": 1024**4, "tib": 1024**4,
    "pb": 1000**5, "p": 1024**5, "pib": 1024**5,
    "eb": 1000**6, "e": 1024**6, "eib": 1024**6,
}


@dataclass
class Domain:
    """What the domain XML says about the saved guest."""

    name: str | None = None
    uuid: str | None = None
    memory_kib: int | None = None
    current_memory_kib: int | None = None
    vcpus: int | None = None
    machine: str | None = None
    arch: str | None = None
    error: str | None = None  # why the XML could not be read, if it could not


def memory_kib(value: str | None, unit: str | None) -> int | None:
    """A libvirt memory element's value in KiB (rounded up), None if unreadable."""
    if value is None:
        return None
    try:
        n = int(value.strip())
    except ValueError:
        return None
    factor = _UNITS.get((unit or "KiB").strip().lower())
    if factor is None or n < 0:
        return None
    return -(-n * factor // 1024)


def parse_domain(xml: str) -> Domain:
    """Name, UUID, memory and CPU facts from a domain XML; never raises."""
    if not xml.strip():
        return Domain(error="no domain XML")
    if "<!DOCTYPE" in xml or "<!ENTITY" in xml:
        return Domain(error="the XML declares a DOCTYPE or entities; not parsed")
    import xml.etree.ElementTree as ET  # only here: most inputs have no domain XML

    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        return Domain(error=f"the domain XML does not parse: {e}")
    if root.tag != "domain":
        return Domain(error=f"the XML's root element is <{root.tag}>, not <domain>")

    def text(path: str) -> str | None:
        el = root.find(path)
        return el.text.strip() if el is not None and el.text else None

    mem = root.find("memory")
    cur = root.find("currentMemory")
    os_type = root.find("os/type")
    vcpu = text("vcpu")
    return Domain(
        name=text("name"),
        uuid=text("uuid"),
        memory_kib=memory_kib(mem.text, mem.get("unit")) if mem is not None else None,
        current_memory_kib=(memory_kib(cur.text, cur.get("unit"))
                            if cur is not None else None),
        vcpus=int(vcpu) if vcpu and vcpu.isdigit() else None,
        machine=os_type.get("machine") if os_type is not None else None,
        arch=os_type.get("arch") if os_type is not None else None,
    )


# -- the header -----------------------------------------------------------------------------
def _cstring(buf: Any, start: int, end: int) -> tuple[str, int]:
    """The NUL-terminated text in buf[start:end] (at most MAX_XML bytes) and its length."""
    stop = min(end, start + MAX_XML)
    nul = buf.find(b"\0", start, stop)
    n = (nul if nul >= 0 else stop) - start
    return bytes(buf[start : start + n]).decode("utf-8", "replace"), n


def parse_libvirt(buf: Any) -> LibvirtHeader:
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


def _payload_compression(h: LibvirtHeader) -> str | None:
    return h.format_name if h.format_name not in ("raw", "sparse") else None


# -- the typed description ----------------------------------------------------------------
@dataclass
class LibvirtInfo(ContainerInfo):
    data_len: int | None = None
    cookie_offset: int | None = None
    byte_order: str | None = None
    xml_length: int | None = None

    def wraps(self, what: str) -> str:
        return f"{what} inside a libvirt save image ({self.format})"

    def facts(self) -> list[Fact]:
        state = "was running" if self.was_running else "was paused"
        whole: Part = ("complete", GOOD) if self.complete else (
            "INCOMPLETE (LibvirtQemudPart)", BAD)
        out = [Fact("libvirt header", [
            (f"{self.magic} version {self.version}, format {self.format}, {state}, "
             f"{self.byte_order}-endian, QEMU data at {hexoff(self.payload_offset)}, ", PLAIN),
            whole])]
        d = self.domain or Domain()
        if d.error:
            out.append(Fact("domain", [(d.error, WARN)]))
        else:
            mem = d.memory_kib
            out.append(Fact("domain", [(f"{d.name}, uuid {d.uuid}, memory "
                                        f"{size(mem * 1024) if mem is not None else '-'}",
                                        PLAIN)]))
        return out + _extent_facts(self, show_stream=True)

    def damage(self) -> list[Part] | None:
        if not self.complete:
            return [("INCOMPLETE libvirt save (LibvirtQemudPart)", BAD),
                    (f": the QEMU stream is {stream_state(self.stream)}", PLAIN)]
        return super().damage()


# -- the output of a conversion -----------------------------------------------------------
@dataclass
class LibvirtPrefix:
    """What goes before the QEMU stream in a libvirt output: a new virQEMUSaveHeader,
    then the input's XML + cookie + padding (`data_len` bytes, copied in chunks, never
    held whole: its size comes from the file)."""

    head: bytes
    path: str  # file holding the XML area, when `buf` does not
    body_offset: int
    body_len: int
    buf: Any = None  # the input's buffer, when it holds the XML area

    def __len__(self) -> int:
        return len(self.head) + self.body_len

    def write_to(self, out: Any) -> None:
        from ..copier import RUN_BYTES

        out.write(self.head)
        if self.buf is not None:
            end = self.body_offset + self.body_len
            for p in range(self.body_offset, end, RUN_BYTES):
                out.write(self.buf[p : min(end, p + RUN_BYTES)])
            return
        with open(self.path, "rb") as f:
            f.seek(self.body_offset)
            left = self.body_len
            while left:
                chunk = f.read(min(left, RUN_BYTES))
                if not chunk:
                    raise TruncatedError("the libvirt XML area is shorter than data_len",
                                         20, "libvirt", code="libvirt-data-len")
                out.write(chunk)
                left -= len(chunk)


# -- the container ----------------------------------------------------------------------------
@dataclass
class LibvirtContainer(Container):
    kind: str = "libvirt"

    @property
    def header(self) -> LibvirtHeader:
        assert self.libvirt is not None
        return self.libvirt

    @property
    def offsets_in(self) -> str:
        return "decompressed stream" if self.inflation is not None else "file"

    @property
    def incomplete(self) -> bool:
        return not self.header.complete

    def describe(self, src: Source, extent: StreamExtent | None) -> ContainerInfo:
        h = self.header
        return LibvirtInfo(
            kind="libvirt", magic=h.magic, complete=h.complete, version=h.version,
            format=h.format_name, was_running=h.was_running, payload_offset=h.payload_offset,
            domain=parse_domain(h.xml), compression=self.compression, stream=extent,
            data_len=h.data_len, cookie_offset=h.cookie_offset, byte_order=h.byte_order,
            xml_length=h.xml_length)

    def brief(self) -> ContainerBrief:
        h = self.header
        return ContainerBrief("libvirt", self.compression, h.format_name, h.data_len,
                              h.was_running, h.byte_order)

    def explain(self, src: Source, err: MigError) -> MigError:
        part = [] if self.header.complete else [
            "incomplete libvirt save image (LibvirtQemudPart: libvirt never finished "
            "writing it)"]
        return inflation_explain(src, err, part)

    def problems(self, src: Source, walk: StreamWalk) -> list[Problem]:
        h = self.header
        out = self.inflation_problems()
        if not h.complete:
            out.append(problem("libvirt-partial", 0, "libvirt",
                               "the libvirt header magic is LibvirtQemudPart: libvirt never "
                               "finished writing this image"))
        if not h.xml.strip():
            out.append(problem("libvirt-no-xml", 92, "libvirt",
                               "the libvirt header holds no domain XML"))
        if h.format_name == "sparse" and walk.version == 3 and walk.configuration is not None \
                and not walk.mapped_ram:
            out.append(problem("libvirt-format-mismatch", 28, "libvirt",
                               "libvirt format is 'sparse' but the QEMU stream is not "
                               "mapped-ram", qemu=["Capability mapped-ram is on, but received "
                                                   "capability is off"]))
        if h.format_name != "sparse" and walk.mapped_ram:
            out.append(problem("libvirt-format-mismatch", 28, "libvirt",
                               f"libvirt format is '{h.format_name}' but the QEMU stream is "
                               "mapped-ram", qemu=["Capability mapped-ram is off, but "
                                                   "received capability is on"]))
        return out

    def how_to_load(self, src: Source, walk: StreamWalk) -> Incoming:
        path = shell_word(src.path)
        comp = self.compression
        if comp and src.base == 0:  # the header in the file, its payload compressed
            pipe = (f"tail -c +{self.header.payload_offset + 1} {path} | "
                    f"{decompress_command(comp)}")
            inc = migration_incoming(src, walk, pipe=pipe, seek_off=0)
        elif comp:  # the whole file is compressed, the libvirt header inside
            inc = migration_incoming(src, walk, pipe=f"{decompress_command(comp)} {path}",
                                     seek_off=src.base)
        else:
            inc = migration_incoming(src, walk, seek_off=src.base)
        inc.commands.append(f"or let libvirt do all of it: virsh restore {path}")
        return inc

    # -- conversion output ------------------------------------------------------------------
    def output(self, src: Source, to: str) -> LibvirtPrefix:
        """The libvirt header and XML area of the output: data_len, was_running,
        cookieOffset and byte order unchanged, the format field set to sparse (mapped-ram)
        or raw (legacy)."""
        h = self.header
        # raw/sparse images: the header is at the start of `buf` (= the file, or the
        # inflated data of a compressed file that holds a whole image); compressed-format
        # images keep it in the file itself, in front of the compressed QEMU stream
        in_buf = src.base == h.payload_offset and is_libvirt(bytes(src.buf[:16]))
        grammar = lv.virQEMUSaveHeader_le if h.byte_order == "little" else \
            lv.virQEMUSaveHeader_be
        fmt = lv.QEMU_SAVE_FORMAT_SPARSE if to == MAPPED_RAM else lv.QEMU_SAVE_FORMAT_RAW
        head = grammar.build(dict(magic=lv.QEMU_SAVE_MAGIC, version=lv.QEMU_SAVE_VERSION,
                                  data_len=h.data_len, was_running=int(h.was_running),
                                  format=fmt, cookieOffset=h.cookie_offset))
        return LibvirtPrefix(head, src.path, lv.QEMU_SAVE_HEADER_SIZE, h.data_len,
                             src.buf if in_buf else None)

    def output_brief(self, to: str) -> ContainerBrief:
        return ContainerBrief("libvirt", None, "sparse" if to == MAPPED_RAM else "raw")

    def verify_output(self, other: Container, to: str) -> list[str]:
        lb = other.libvirt
        if lb is None:
            return ["libvirt header present in only one of the files"]
        la = self.header
        out = []
        want = "sparse" if to == MAPPED_RAM else "raw"
        if lb.format_name != want:
            out.append(f"libvirt format field is {lb.format_name}, expected {want}")
        if (la.xml, la.cookie, la.data_len) != (lb.xml, lb.cookie, lb.data_len):
            out.append("libvirt XML, cookie or data_len changed")
        return out


# -- the kind -----------------------------------------------------------------------------------
class LibvirtKind:
    name = "libvirt"

    def detect(self, head: bytes) -> bool:
        return is_libvirt(head)

    def open(self, inp: Input, options: OpenOptions, progress: Progress | None) -> Source:
        options.refuse_for("a libvirt save image", inp.path)
        src = mmap_input(inp)
        try:
            hdr = parse_libvirt(src.buf)
            comp = _payload_compression(hdr)
            src.container = LibvirtContainer(libvirt=hdr, compression=comp)
            src.base = hdr.payload_offset
            if comp:
                if hdr.payload_offset >= inp.size:
                    part = "" if hdr.complete else " (incomplete save: LibvirtQemudPart)"
                    raise TruncatedError(
                        f"the {comp} libvirt image ends after its XML: no QEMU data{part}",
                        hdr.payload_offset, "libvirt", code="container-truncated")
                inflate_into(src, inp.file, comp, hdr.payload_offset, progress)
            return src
        except BaseException:
            src.close()
            raise

    def adopt(self, src: Source, options: OpenOptions, progress: Progress | None) -> Source:
        """A libvirt image found inside compressed data (`src` is its inflated bytes)."""
        options.refuse_for("a libvirt save image", src.path)
        outer = src.container
        hdr = parse_libvirt(src.buf)
        src.container = LibvirtContainer(libvirt=hdr, compression=outer.compression,
                                         inflation=outer.inflation)
        src.base = hdr.payload_offset
        inner = _payload_compression(hdr)
        if inner:
            raise UnsupportedError(
                f"a {inner} libvirt image inside {outer.compression} data: decompress the "
                f"outer {outer.compression} layer first", 0, "container", code="unsupported")
        return src


KIND = LibvirtKind()


def read_container(path: str) -> Container:
    """The container of `path` (libvirt header, XML, cookie, compression) without
    decompressing the QEMU data: for a libvirt image only its header area is read;
    for a compressed file, only as much as its start takes (`xml` command)."""
    from .compressed import CompressedContainer, sniff_compression

    with open(path, "rb") as f:
        fsize = os.fstat(f.fileno()).st_size
        head = f.read(16)
        if is_libvirt(head):
            mm = mmap_fd(f.fileno(), fsize)
            try:
                hdr = parse_libvirt(mm)
            finally:
                if isinstance(mm, mmap.mmap):
                    mm.close()
            return LibvirtContainer(libvirt=hdr, compression=_payload_compression(hdr))
        comp = sniff_compression(head)
        if comp is None:
            return Container()
        inner = inflate_head(path, f.fileno(), comp, 0, fsize, lv.QEMU_SAVE_HEADER_SIZE)
        if not is_libvirt(inner) or len(inner) < lv.QEMU_SAVE_HEADER_SIZE:
            return CompressedContainer("none", comp)
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
        whole = inflate_head(path, f.fileno(), comp, 0, fsize,
                             lv.QEMU_SAVE_HEADER_SIZE + data_len)
        return LibvirtContainer(libvirt=parse_libvirt(whole), compression=comp)
