"""`info`: what a migration file holds, as plain data."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..formats import ram as R
from ..formats.stream import MIG_CMD_NAMES
from .capture import Capture
from .containers.base import ContainerInfo, StreamExtent
from .pagemap import PAGE_DATA, PAGE_NEVER_SENT, PAGE_ZERO


@dataclass
class BlockInfo:
    name: str
    used_length: int
    pages: int
    data_pages: int
    zero_pages: int
    absent_pages: int
    page_records: int
    zero_records: int
    xbzrle_records: int
    compress_records: int = 0
    resent_pages: int = 0  # pages sent more than once (legacy)
    mr_addr: int | None = None
    mapped_ram: dict[str, Any] | None = None  # header fields and region spans


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
    vmdescription: dict[str, Any] | None
    notices: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None  # why the walk stopped early, if it did
    container: ContainerInfo | None = None  # what wraps the stream (its kind's own type)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["container"] = self.container  # in its own key order (ContainerInfo.to_json)
        return d


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
            mr = {
                "header_offset": m.header_offset,
                "version": m.version,
                "page_size": m.page_size,
                "bitmap_offset": m.bitmap_offset,
                "bitmap_bytes": m.bitmap_bytes,
                "pages_offset": m.pages_offset,
                "pages_end": m.pages_offset + b.used_length if not m.skipped else 0,
                "skipped": m.skipped,
                "bitmap_untrusted": chk.untrusted,
                "bitmap_layout": chk.layout,
                "bitmap_verdict": chk.verdict,
                "stale_pages": chk.stale_pages,
                "hole_pages": chk.hole_pages,
                "set_bits_over_holes": chk.set_bits_over_holes,
            }
        out.append(
            BlockInfo(
                name=b.name,
                used_length=b.used_length,
                pages=bm.pages,
                data_pages=data,
                zero_pages=bm.count(PAGE_ZERO),
                absent_pages=bm.count(PAGE_NEVER_SENT),
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
        vd = {"offset": t.offset, "length": t.length,
              "devices": len(t.data.get("devices", [])) if t.data else None,
              "error": t.error}
    notices = [asdict(n) for n in w.notices]
    stopped = src.explain(w.error).oneline() if w.error is not None else None
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
        notices=notices,
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
        stopped=src.explain(err).oneline() if err is not None else None,
        ram_pages=pages,
        ram_pages_sent=pages - absent,
        decompressed=src.container.inflation,
    )


def container_info(cap: Capture) -> ContainerInfo:
    """What wraps the QEMU stream, as its container kind describes it, and how much of
    the stream is there."""
    src = cap.source
    return src.container.describe(src, stream_extent(cap))
