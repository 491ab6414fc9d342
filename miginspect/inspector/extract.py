"""`extract`: RAMBlocks (or guest-physical memory) written out as sparse raw files.

Rules, decided here and tested:

* Every output file is created inside the output folder the user named, under a
  name made safe from the RAMBlock idstr (which holds `/` and `:`), through
  `outfile.OutputDir`: relative to the folder's descriptor, symlinks never
  followed (an output folder that is a symlink is refused), only regular files
  created or replaced, an existing file only with `force`. Every target is
  checked before anything is written.
* Only data pages are written; zero and never-sent pages are skipped over, so
  they become holes (the file is truncated to its full length at the end).
  mapped-ram: the bitmap wins, stale bytes under a clear bit are not copied.
  Legacy: the last record wins, XBZRLE/COMPRESS_PAGE pages are replayed.
* Pages are copied by the shared engine (`copier.PageCopier`, also convert's):
  runs of consecutive pages, copy_file_range where the input holds them
  contiguously, preallocated destination runs.
* mapped-ram: the bitmaps are read with the layout the capture found
  (`Capture.bitmap_trust`); a bitmap that is not in the little-endian layout, or
  damaged, is named in the notes and in each file's `bitmap_*` fields.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import MigError, UsageError
from ..formats import elfcore as E
from ..jsondata import fields_json
from ..outfile import OutputDir
from .capture import Capture
from .copier import PageCopier, pwrite_all
from .corefile import FILE_NAMES, MACHINES, core_notes, image_layout
from .cpustate import CpuReport, cpu_states
from .integrity import sha256_file, stale_pages, with_stale
from .model import RamBlock
from .pagemap import PAGE_DATA, PAGE_NEVER_SENT, PAGE_ZERO, BlockMap
from .physical import PhysicalLayout, machine_family, physical_layout
from .report import (
    NOTE_BITMAP_UNTRUSTED,
    NOTE_NO_CPU_NOTES,
    NOTE_OTHER_BLOCKS,
    NOTE_PHYSICAL_LAYOUT,
    NOTE_SKIPPED_BLOCK,
    NOTE_STALE_PAGES,
    SEVERITY_WARNING,
    Note,
    Stop,
    note,
    stop_of,
)
from .salvage import MissingRange, Salvage, physical_missing, salvage, salvage_blocks

MANIFEST = "miginspect-extract.json"
PHYSICAL_MANIFEST = "miginspect-physical.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._@+-]")

Progress = Callable[[int, int], None]


def safe_name(idstr: str, taken: set[str] | None = None, suffix: str = ".raw") -> str:
    """A file name for a RAMBlock idstr: path separators, `:` and anything outside
    [A-Za-z0-9._@+-] become `_`, leading dots and underscores are dropped, the length is
    bounded, and a `~N` tag keeps it unique (case-insensitively) among `taken`."""
    base = _UNSAFE.sub("_", idstr).lstrip("._")[:200] or "block"
    out = base + suffix
    n = 2
    while taken is not None and out.lower() in taken:
        out = f"{base}~{n}{suffix}"
        n += 1
    if taken is not None:
        taken.add(out.lower())
    return out


@dataclass
class ExtractedFile:
    file: str  # name inside the output folder
    kind: str  # "block", "physical-raw", "physical-elf"
    size: int  # apparent size
    data_bytes: int  # bytes written (data pages)
    block: str | None = None
    used_length: int | None = None
    pages: int | None = None
    data_pages: int | None = None
    zero_pages: int | None = None
    never_sent_pages: int | None = None
    mr_addr: int | None = None
    bitmap_layout: str | None = None  # mapped-ram: the layout the bitmap was read with
    bitmap_verdict: str | None = None  # mapped-ram: mapped_ram.VERDICT_*
    bitmap_untrusted: str | None = None
    stale_pages: int | None = None  # mapped-ram: bytes under clear bitmap bits found
    stale_included: bool | None = None  # written as data (--include-stale)
    sha256: str | None = None  # of the file as written (holes read as zeros)
    # --partial: pages of the file the input gives (data or zero) / does not, and why
    held_pages: int | None = None
    missing_pages: int | None = None
    missing: list[MissingRange] | None = None


@dataclass
class ExtractReport:
    path: str  # the input
    format: str
    output_dir: str
    files: list[ExtractedFile] = field(default_factory=list)
    physical: PhysicalLayout | None = None
    notes: list[Note] = field(default_factory=list)
    cpu: CpuReport | None = None  # registers written into the ELF notes
    stopped: Stop | None = None  # the walk stopped early: pages after it are missing
    salvage: Salvage | None = None  # --partial: what the file holds and where it stops

    def to_json(self) -> dict[str, Any]:
        return fields_json(self)


# -- page copying ------------------------------------------------------------------
def write_pages(cap: Capture, bm: BlockMap, fd: int, dest: int, first: int, count: int,
                progress: Callable[[int], None] | None = None) -> int:
    """Write the data pages [first, first+count) of `bm` to `fd`, page i at
    dest + (i - first) * page_size, with the shared copier. Returns the bytes written."""
    return PageCopier(cap).copy_block(bm, fd, dest, first, count, progress)


# -- extract -------------------------------------------------------------------------
def _stopped_note(cap: Capture, rep: ExtractReport, sal: Salvage | None = None) -> None:
    rep.stopped = sal.stopped if sal is not None else stop_of(cap.walk.error)


def _chosen(cap: Capture, names: list[str] | None, sal: Salvage | None) -> list[RamBlock]:
    """The blocks to write: the named ones (all when None); with a salvage, also a
    mapped-ram block the data ends inside."""
    if sal is None:
        return [cap.block(n) for n in names] if names else list(cap.blocks)
    every = salvage_blocks(cap)
    if not names:
        return every
    by = {b.name: b for b in every}
    for n in names:
        if n not in by:
            cap.block(n)  # raises, naming the blocks
    return [by[n] for n in names]


def _maps(cap: Capture, sal: Salvage | None) -> dict[str, BlockMap]:
    if sal is None:
        return cap.maps
    return {b.name: b.block_map for b in sal.blocks if b.block_map is not None}


def _partial(f: ExtractedFile, sal: Salvage | None, name: str,
             missing: list[MissingRange] | None = None) -> None:
    ext = sal.extent(name) if sal is not None else None
    if ext is None:
        return
    f.held_pages, f.missing_pages = ext.held_pages, ext.missing_pages
    f.missing = ext.missing if missing is None else missing
    if missing is not None:
        f.missing_pages = sum(m.pages for m in missing)
        f.held_pages = (f.pages or 0) - f.missing_pages


def extract_blocks(cap: Capture, outdir: str | os.PathLike[str], force: bool = False,
                   blocks: list[str] | None = None, progress: Progress | None = None,
                   manifest: bool = True, include_stale: bool = False,
                   partial: bool = False) -> ExtractReport:
    """One sparse raw file per RAMBlock in `outdir` (plus a JSON manifest with each
    file's sha256 and page counts). `partial`: `cap` was opened with strict=False; write
    what it holds and list, per file, the pages it does not (`salvage`)."""
    sal = salvage(cap) if partial else None
    chosen = _chosen(cap, blocks, sal)
    taken: set[str] = {MANIFEST.lower()}
    names = [safe_name(b.name, taken) for b in chosen]
    with OutputDir(outdir, force, cap.path) as out:
        out.check(names + ([MANIFEST] if manifest else []))
        rep = ExtractReport(cap.path, cap.format, str(out.root))
        _stopped_note(cap, rep, sal)
        if sal is not None:
            rep.salvage = sal.only([b.name for b in chosen])
            rep.notes.extend(sal.notes)
        maps = _maps(cap, sal)
        total = sum(maps[b.name].count(PAGE_DATA) * b.page_size for b in chosen)
        done = [0]

        def tick(n: int) -> None:
            done[0] += n
            if progress:
                progress(done[0], total)

        copier = PageCopier(cap)
        for b, fname in zip(chosen, names, strict=True):
            bm, stale = _physical_map(cap, b.name, include_stale, rep, maps[b.name])
            fd = out.open(fname)
            try:
                nbytes = copier.copy_block(bm, fd, 0, 0, bm.pages, tick)
                os.ftruncate(fd, b.used_length)
            finally:
                os.close(fd)
            f = _block_file(cap, maps[b.name], fname, nbytes)
            f.stale_pages, f.stale_included = stale, include_stale
            f.sha256 = sha256_file(out.target(fname), dir_fd=out.fd)
            _partial(f, sal, b.name)
            rep.files.append(f)
            _block_notes(cap, maps[b.name], rep)
        if manifest:
            _write_manifest(out, rep)
    return rep


def _block_file(cap: Capture, bm: BlockMap, fname: str, nbytes: int) -> ExtractedFile:
    b = bm.block
    chk = cap.bitmap_trust.check(b.name)
    return ExtractedFile(
        file=fname, kind="block", size=b.used_length, data_bytes=nbytes, block=b.name,
        used_length=b.used_length, pages=bm.pages, data_pages=bm.count(PAGE_DATA),
        zero_pages=bm.count(PAGE_ZERO), never_sent_pages=bm.count(PAGE_NEVER_SENT),
        mr_addr=b.mr_addr, bitmap_layout=chk.layout if chk else None,
        bitmap_verdict=chk.verdict if chk else None,
        bitmap_untrusted=chk.untrusted if chk else None)


def _block_notes(cap: Capture, bm: BlockMap, rep: ExtractReport) -> None:
    b = bm.block
    if b.mapped_ram is not None and b.mapped_ram.skipped:
        rep.notes.append(note(NOTE_SKIPPED_BLOCK, "skipped by x-ignore-shared (its memory is "
                              "shared with the destination, not in the file): written as "
                              "zeros", b.name))
    why = cap.bitmap_trust.untrusted(b.name)
    if why:
        rep.notes.append(note(NOTE_BITMAP_UNTRUSTED, f"bitmap untrusted ({why}); pages were "
                              f"taken from the {cap.bitmap_layout} reading", b.name,
                              severity=SEVERITY_WARNING))


def extract_physical(cap: Capture, outdir: str | os.PathLike[str], force: bool = False,
                     formats: tuple[str, ...] = ("elf",), ram_block: str | None = None,
                     max_ram_below_4g: int | None = None, progress: Progress | None = None,
                     manifest: bool = True, base: int | None = None,
                     include_stale: bool = False, partial: bool = False) -> ExtractReport:
    """Guest-physical memory (inspector/physical.py decides the layout or refuses) as
    `physical.elf` (ELF64 core with QEMU's per-vCPU notes, inspector/corefile.py),
    `physical.lime` and/or `physical.raw` (byte at address A at offset A); all sparse.
    `partial`: as in `extract_blocks`; missing ranges carry their guest-physical
    addresses."""
    sal = salvage(cap) if partial else None
    every = _chosen(cap, None, sal)
    lay = physical_layout(cap.walk.machine_type, {b.name: b.used_length for b in every},
                          ram_block, base, max_ram_below_4g)
    name = lay.ram_block
    blk = _chosen(cap, [name], sal)[0]
    unknown = [f for f in formats if f not in FILE_NAMES]
    if unknown or not formats:
        raise UsageError(f"unknown image format {unknown}: choose from {', '.join(FILE_NAMES)}",
                         code="usage")
    names = [FILE_NAMES[f] for f in formats]
    with OutputDir(outdir, force, cap.path) as out:
        out.check(names + ([PHYSICAL_MANIFEST] if manifest else []))
        return _physical(cap, out, lay, blk, formats, names, progress, manifest,
                         include_stale, sal)


def _physical(cap: Capture, out: OutputDir, lay: PhysicalLayout, blk: Any,
              formats: tuple[str, ...], names: list[str], progress: Progress | None,
              manifest: bool, include_stale: bool, sal: Salvage | None) -> ExtractReport:
    name = blk.name
    rep = ExtractReport(cap.path, cap.format, str(out.root), physical=lay)
    _stopped_note(cap, rep, sal)
    cpus = _core_cpus(cap, rep) if "elf" in formats else None
    ext = sal.extent(name) if sal is not None else None
    if sal is not None:
        rep.salvage = sal.only([name])
        rep.notes.extend(sal.notes)
    bm, stale = _physical_map(cap, name, include_stale, rep, _maps(cap, sal)[name])
    lost = physical_missing(ext, [(r.gpa, r.block_offset, r.length) for r in lay.ranges],
                            blk.page_size) if ext is not None else None
    ps = blk.page_size
    total = bm.count(PAGE_DATA) * ps * len(formats)
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        if progress:
            progress(done[0], total)

    others = [b.name for b in cap.blocks if b.name != name]
    rep.notes.append(note(NOTE_PHYSICAL_LAYOUT, f"guest-physical layout: {lay.rule}", name))
    if others:
        rep.notes.append(note(NOTE_OTHER_BLOCKS, "only the main RAM block is mapped; ROMs, "
                              f"option ROMs and device memory ({len(others)} other blocks) "
                              "are not part of the image"))
    machine = MACHINES[cpus.arch] if cpus else _elf_machine(cap.walk.machine_type, lay.family)
    counts = _range_counts(bm, lay, ps)
    for f, fname in zip(formats, names, strict=True):
        il = image_layout(f, lay.ranges, machine, core_notes(cpus), ps)
        fd = out.open(fname)
        try:
            for off, data in il.headers:
                pwrite_all(fd, data, off)
            nbytes = 0
            for r, at in zip(lay.ranges, il.data_offsets, strict=True):
                nbytes += write_pages(cap, bm, fd, at, r.block_offset // ps, r.length // ps,
                                      tick)
            os.ftruncate(fd, il.size)
        finally:
            os.close(fd)
        rep.files.append(ExtractedFile(
            file=fname, kind=f"physical-{f}", size=il.size, data_bytes=nbytes, block=name,
            used_length=blk.used_length, **counts, stale_pages=stale,
            stale_included=include_stale, sha256=sha256_file(out.target(fname), dir_fd=out.fd)))
        _partial(rep.files[-1], sal, name, lost)
    if manifest:
        _write_manifest(out, rep, PHYSICAL_MANIFEST)
    return rep


_FAMILY_MACHINE = {"pc": E.EM_X86_64, "q35": E.EM_X86_64, "virt": E.EM_AARCH64}


def _elf_machine(machine_type: str | None, family: str) -> int:
    """e_machine without CPU state: by the machine family (x86_64 when unknown)."""
    if family not in _FAMILY_MACHINE:
        try:
            family = machine_family(machine_type)[0]
        except MigError:
            return E.EM_X86_64
    return _FAMILY_MACHINE[family]


def _core_cpus(cap: Capture, rep: ExtractReport) -> CpuReport | None:
    """The vCPU registers for the ELF notes, or None (said in the notes) when the file
    cannot give them."""
    try:
        cpus = cpu_states(cap)
    except MigError as e:
        rep.notes.append(note(NOTE_NO_CPU_NOTES, f"the ELF core has no CPU notes: {e.message}",
                              "cpu"))
        return None
    rep.cpu = cpus
    rep.notes.extend(cpus.notes)
    return cpus


def _physical_map(cap: Capture, name: str, include_stale: bool, rep: ExtractReport,
                  bm: BlockMap | None = None) -> tuple[BlockMap, int | None]:
    """A block's page map (`bm`, else the capture's; with stale pages as data if asked)
    and its stale count (None for legacy streams, which have none, and for a mapped-ram
    block the data ends inside, whose region is not all there to look at)."""
    bm = cap.maps[name] if bm is None else bm
    if cap.format != "mapped-ram" or bm.block is cap.walk.cut_block:
        return bm, None
    n = len(stale_pages(cap, name))
    if n and include_stale:
        rep.notes.append(note(NOTE_STALE_PAGES, f"{n} stale pages (bytes under clear bitmap "
                              "bits, zero to QEMU) written as data (--include-stale)", name))
        return with_stale(cap, bm), n
    if n:
        rep.notes.append(note(NOTE_STALE_PAGES, f"{n} stale pages (bytes under clear bitmap "
                              "bits) left out as QEMU would; --include-stale writes them",
                              name))
    return bm, n


def _range_counts(bm: BlockMap, lay: PhysicalLayout, ps: int) -> dict[str, int]:
    sel = np.zeros(bm.pages, bool)
    for r in lay.ranges:
        sel[r.block_offset // ps : (r.block_offset + r.length) // ps] = True
    st = bm.state[sel]
    return dict(pages=int(sel.sum()), data_pages=int(np.count_nonzero(st == PAGE_DATA)),
                zero_pages=int(np.count_nonzero(st == PAGE_ZERO)),
                never_sent_pages=int(np.count_nonzero(st == PAGE_NEVER_SENT)))


def _write_manifest(out: OutputDir, rep: ExtractReport, fname: str = MANIFEST) -> None:
    import json

    fd = out.open(fname)
    with os.fdopen(fd, "w") as f:
        json.dump(rep.to_json(), f, indent=1)
        f.write("\n")
