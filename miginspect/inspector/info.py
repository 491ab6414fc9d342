"""`info`: what a migration file holds, as plain data."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..formats import ram as R
from ..formats.stream import MIG_CMD_NAMES
from .capture import Capture
from .containers.base import ContainerInfo, StreamExtent
from .pagemap import PAGE_DATA, PAGE_NEVER_SENT, PAGE_ZERO
from .report import Note, Stop, stop_of


@dataclass
class MappedRamBlock:
    """A mapped-ram block's header fields, region span and the capture's bitmap verdict."""

    header_offset: int
    version: int
    page_size: int
    bitmap_offset: int
    bitmap_bytes: int
    pages_offset: int
    pages_end: int  # pages_offset + used_length (0 for a skipped block)
    skipped: bool  # x-ignore-shared: the block is not in the file
    bitmap_untrusted: str | None
    bitmap_layout: str | None
    bitmap_verdict: str | None
    stale_pages: int
    hole_pages: int
    set_bits_over_holes: int


@dataclass
class BlockInfo:
    name: str
    used_length: int
    pages: int
    data_pages: int
    zero_pages: int
    never_sent_pages: int
    page_records: int
    zero_records: int
    xbzrle_records: int
    compress_records: int = 0
    resent_pages: int = 0  # pages sent more than once (legacy)
    mr_addr: int | None = None
    mapped_ram: MappedRamBlock | None = None


@dataclass
class SectionInfo:
    type: str
    idstr: str | None
    instance_id: int | None
    version_id: int | None
    offset: int
    length: int
    section_id: int | None = None
    command: str | None = None
    sized_by: str | None = None


@dataclass
class VmdescInfo:
    """The vmdescription trailer: where it is, how many devices it lists, what broke."""

    offset: int
    length: int
    devices: int | None  # None when the JSON did not parse
    error: str | None


@dataclass
class InfoReport:
    path: str
    format: str
    file_size: int
    allocated_size: int
    stream_offset: int
    decompressed_size: int | None
    machine_type: str | None
    page_size: int
    page_size_source: str
    stream_version: int | None
    capabilities: list[str]
    ram_total: int | None
    ramblocks: list[BlockInfo]
    sections: list[SectionInfo]
    vmdescription: VmdescInfo | None
    notices: list[Note] = field(default_factory=list)
    stopped: Stop | None = None  # why the walk stopped early, if it did
    container: ContainerInfo | None = None  # what wraps the stream (its kind's own type)


def block_infos(cap: Capture) -> list[BlockInfo]:
    out = []
    rt = cap.walk.records
    for b in cap.blocks:
        bm = cap.maps[b.name]
        if cap.format == "legacy" and rt is not None:
            counts = rt.kind_counts(rt.block == b.index)
        else:
            counts = dict.fromkeys(R.PAGE_RECORD_FLAGS, 0)
        data = bm.count(PAGE_DATA)
        mr = None
        if b.mapped_ram is not None:
            m = b.mapped_ram
            chk = cap.bitmap_trust.blocks[b.name]
            counts[R.RAM_SAVE_FLAG_PAGE] = data
            mr = MappedRamBlock(
                m.header_offset, m.version, m.page_size, m.bitmap_offset, m.bitmap_bytes,
                m.pages_offset, m.pages_offset + b.used_length if not m.skipped else 0,
                m.skipped, chk.untrusted, chk.layout, chk.verdict, chk.stale_pages,
                chk.hole_pages, chk.set_bits_over_holes)
        out.append(
            BlockInfo(
                name=b.name,
                used_length=b.used_length,
                pages=bm.pages,
                data_pages=data,
                zero_pages=bm.count(PAGE_ZERO),
                never_sent_pages=bm.count(PAGE_NEVER_SENT),
                page_records=counts[R.RAM_SAVE_FLAG_PAGE],
                zero_records=counts[R.RAM_SAVE_FLAG_ZERO],
                xbzrle_records=counts[R.RAM_SAVE_FLAG_XBZRLE],
                compress_records=counts[R.RAM_SAVE_FLAG_COMPRESS_PAGE],
                resent_pages=int(np.count_nonzero(bm.sends > 1)),
                mr_addr=b.mr_addr,
                mapped_ram=mr,
            )
        )
    return out


def section_infos(cap: Capture) -> list[SectionInfo]:
    out = []
    for s in cap.walk.sections:
        out.append(
            SectionInfo(
                type=s.kind,
                idstr=s.idstr,
                instance_id=s.instance_id,
                version_id=s.version_id,
                offset=s.offset,
                length=s.length,
                section_id=s.section_id,
                command=MIG_CMD_NAMES.get(s.cmd) if s.cmd is not None else None,
                sized_by=s.sized_by,
            )
        )
    return out


def info(cap: Capture) -> InfoReport:
    w = cap.walk
    src = cap.source
    t = w.trailer
    vd = None
    if t is not None:
        devs = t.data.get("devices") if t.data else None
        vd = VmdescInfo(t.offset, t.length, len(devs) if isinstance(devs, list) else
                        (0 if t.data else None), t.error)
    stopped = Stop.of(src.explain(w.error)) if w.error is not None else None
    return InfoReport(
        path=cap.path,
        format=cap.format,
        file_size=src.file_size,
        allocated_size=src.allocated_size,
        stream_offset=src.base,
        decompressed_size=len(src.buf) if src.decompressed else None,
        machine_type=w.machine_type,
        page_size=w.page_size,
        page_size_source=w.page_size_source,
        stream_version=w.version,
        capabilities=list(w.capabilities),
        ram_total=w.ram_total,
        ramblocks=block_infos(cap),
        sections=section_infos(cap),
        vmdescription=vd,
        notices=list(w.notices),
        stopped=stopped,
        container=container_info(cap),
    )


def stream_extent(cap: Capture) -> StreamExtent:
    """How much of the QEMU stream the input holds, and whether it is whole."""
    w = cap.walk
    src = cap.source
    err = w.error
    pages = absent = 0
    for bm in cap.maps.values():
        pages += bm.pages
        absent += bm.count(PAGE_NEVER_SENT)
    return StreamExtent(
        complete=err is None and w.eof_offset is not None,
        bytes=len(src.buf) - src.base,
        stopped_at=err.offset if err is not None else None,
        stopped=stop_of(src.explain(err)) if err is not None else None,
        ram_pages=pages,
        ram_pages_sent=pages - absent,
        decompressed=src.container.inflation,
    )


def container_info(cap: Capture) -> ContainerInfo:
    """What wraps the QEMU stream, as its container kind describes it, and how much of
    the stream is there."""
    src = cap.source
    return src.container.describe(src, stream_extent(cap))
