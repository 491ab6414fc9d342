"""What a walk of a QEMU stream finds, as plain data (filled by `stream.StreamWalker`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import MigError
from .ramscan import RecordTable
from .report import Note
from .vmdesc import Trailer

DEFAULT_PAGE_SIZE = 4096


#: Something a reader should know that did not stop the walk; `code` names it
#: (inspector.problems maps it). The one note type of every report.
Notice = Note


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

    kind: str  # formats.stream.KIND_*: START PART END FULL COMMAND EOF VMDESCRIPTION
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

    @property
    def key(self) -> tuple[str, int]:
        """(idstr, instance_id): what QEMU's loader looks the section's handler up by."""
        return (self.idstr or "", self.instance_id or 0)


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
class OtherRamRecords:
    """RAM records that are neither pages nor MEM_SIZE: RAM_SAVE_FLAG_EOS and
    RAM_SAVE_FLAG_MULTIFD_FLUSH."""

    eos: int = 0
    multifd_flush: int = 0


@dataclass
class CutRecord:
    """The RAM page record the data ends inside (a cut file): where it starts and, when
    enough of its header is there, the block and page it carries (None where cut off)."""

    offset: int  # the record's be64 word
    block: int | None  # index into the block list
    page: int | None  # page index inside the block
    kind: int | None  # RAM_SAVE_FLAG_PAGE / ZERO / XBZRLE / COMPRESS_PAGE


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
    other_ram_records: OtherRamRecords = field(default_factory=lambda: OtherRamRecords())
    #: a cut file: the page record the data ends inside (legacy), if any
    cut_record: CutRecord | None = None
    #: a cut mapped-ram file: the block whose pages region runs past the end of the data
    #: (its header and bitmap are whole; it is not in `blocks`, which hold whole blocks)
    cut_block: RamBlock | None = None

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

    @property
    def trailer_offset(self) -> int:
        """Where the vmdescription trailer is, or where it would start: right after the
        EOF record, else where reading stopped."""
        if self.trailer is not None:
            return self.trailer.offset
        return self.eof_offset + 1 if self.eof_offset is not None else self.walked_to

    def note(self, severity: str, offset: int | None, where: str, message: str, *,
             code: str) -> None:
        self.notices.append(Notice(severity, offset, where, message, code))

    def kinds(self, *kinds: str) -> list[Section]:
        """The sections of the given kinds (formats.stream.KIND_*), in file order."""
        return [s for s in self.sections if s.kind in kinds]

