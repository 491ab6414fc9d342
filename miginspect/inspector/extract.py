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
from dataclasses import asdict, dataclass, field
from typing import Any

from ..formats import elfcore as E
from ..outfile import OutputDir
from .capture import Capture
from .copier import PageCopier, pwrite_all
from .pagemap import PAGE_DATA, PAGE_NEVER_SENT, PAGE_ZERO, BlockMap
from .physical import PhysicalLayout, x86_layout

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
    absent_pages: int | None = None
    mr_addr: int | None = None
    bitmap_layout: str | None = None  # mapped-ram: the layout the bitmap was read with
    bitmap_verdict: str | None = None  # mapped-ram: mapped_ram.VERDICT_*
    bitmap_untrusted: str | None = None


@dataclass
class ExtractReport:
    input: str
    format: str
    output_dir: str
    files: list[ExtractedFile] = field(default_factory=list)
    physical: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# -- page copying ------------------------------------------------------------------
def write_pages(cap: Capture, bm: BlockMap, fd: int, dest: int, first: int, count: int,
                progress: Callable[[int], None] | None = None) -> int:
    """Write the data pages [first, first+count) of `bm` to `fd`, page i at
    dest + (i - first) * page_size, with the shared copier. Returns the bytes written."""
    return PageCopier(cap).copy_block(bm, fd, dest, first, count, progress)


# -- extract -------------------------------------------------------------------------
def _stopped_note(cap: Capture, rep: ExtractReport) -> None:
    err = cap.walk.error
    if err is not None:
        rep.notes.append(f"the walk stopped early, pages after it are missing: {err.oneline()}")


def extract_blocks(cap: Capture, outdir: str | os.PathLike[str], force: bool = False,
                   blocks: list[str] | None = None, progress: Progress | None = None,
                   manifest: bool = True) -> ExtractReport:
    """One sparse raw file per RAMBlock in `outdir` (plus a JSON manifest)."""
    chosen = [cap.block(n) for n in blocks] if blocks else list(cap.blocks)
    taken: set[str] = {MANIFEST.lower()}
    names = [safe_name(b.name, taken) for b in chosen]
    with OutputDir(outdir, force, cap.path) as out:
        out.check(names + ([MANIFEST] if manifest else []))
        rep = ExtractReport(cap.path, cap.format, str(out.root))
        _stopped_note(cap, rep)
        maps = cap.maps
        total = sum(maps[b.name].count(PAGE_DATA) * b.page_size for b in chosen)
        done = [0]

        def tick(n: int) -> None:
            done[0] += n
            if progress:
                progress(done[0], total)

        copier = PageCopier(cap)
        for b, fname in zip(chosen, names, strict=True):
            bm = maps[b.name]
            fd = out.open(fname)
            try:
                nbytes = copier.copy_block(bm, fd, 0, 0, bm.pages, tick)
                os.ftruncate(fd, b.used_length)
            finally:
                os.close(fd)
            rep.files.append(_block_file(cap, bm, fname, nbytes))
            _block_notes(cap, bm, rep)
        if manifest:
            _write_manifest(out, rep)
    return rep


def _block_file(cap: Capture, bm: BlockMap, fname: str, nbytes: int) -> ExtractedFile:
    b = bm.block
    chk = cap.bitmap_trust.check(b.name)
    return ExtractedFile(
        file=fname, kind="block", size=b.used_length, data_bytes=nbytes, block=b.name,
        used_length=b.used_length, pages=bm.pages, data_pages=bm.count(PAGE_DATA),
        zero_pages=bm.count(PAGE_ZERO), absent_pages=bm.count(PAGE_NEVER_SENT),
        mr_addr=b.mr_addr, bitmap_layout=chk.layout if chk else None,
        bitmap_verdict=chk.verdict if chk else None,
        bitmap_untrusted=chk.untrusted if chk else None)


def _block_notes(cap: Capture, bm: BlockMap, rep: ExtractReport) -> None:
    b = bm.block
    if b.mapped_ram is not None and b.mapped_ram.skipped:
        rep.notes.append(f"{b.name}: skipped by x-ignore-shared (its memory is shared with "
                         "the destination, not in the file): written as zeros")
    why = cap.bitmap_trust.untrusted(b.name)
    if why:
        rep.notes.append(f"{b.name}: bitmap untrusted ({why}); pages were taken from the "
                         f"{cap.bitmap_layout} reading")


def extract_physical(cap: Capture, outdir: str | os.PathLike[str], force: bool = False,
                     formats: tuple[str, ...] = ("raw", "elf"), ram_block: str | None = None,
                     max_ram_below_4g: int | None = None, progress: Progress | None = None,
                     manifest: bool = True) -> ExtractReport:
    """Guest-physical memory of an x86 pc/q35 guest: `physical.raw` (sparse, byte at
    guest-physical address A at file offset A) and/or `physical.elf` (ELF64 core, one
    PT_LOAD per RAM range, sparse)."""
    name = ram_block or "pc.ram"
    blk = cap.block(name)
    lay = x86_layout(cap.walk.machine_type, blk.used_length, name, max_ram_below_4g)
    out = OutputDir(outdir, force, cap.path)
    files = {"raw": "physical.raw", "elf": "physical.elf"}
    names = [files[f] for f in formats]
    try:
        out.check(names + ([PHYSICAL_MANIFEST] if manifest else []))
        return _physical(cap, out, lay, blk, name, formats, files, progress, manifest)
    finally:
        out.close()


def _physical(cap: Capture, out: OutputDir, lay: PhysicalLayout, blk: Any, name: str,
              formats: tuple[str, ...], files: dict[str, str], progress: Progress | None,
              manifest: bool) -> ExtractReport:
    rep = ExtractReport(cap.path, cap.format, str(out.root), physical=lay.to_json())
    _stopped_note(cap, rep)
    bm = cap.maps[name]
    total = bm.count(PAGE_DATA) * blk.page_size * len(formats)
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        if progress:
            progress(done[0], total)

    others = [b.name for b in cap.blocks if b.name != name]
    rep.notes.append(f"guest-physical layout: {lay.rule}")
    if others:
        rep.notes.append("only the main RAM block is mapped; ROMs, option ROMs and device "
                         f"memory ({len(others)} other blocks) are not part of the image")
    for f in formats:
        fname = files[f]
        fd = out.open(fname)
        try:
            if f == "raw":
                nbytes = _write_ranges(cap, bm, lay, fd, lambda gpa: gpa, tick)
                size = lay.end
            else:
                offsets = elf_offsets(lay, blk.page_size)
                pwrite_all(fd, elf_header(lay, offsets), 0)
                nbytes = _write_ranges(cap, bm, lay, fd, offsets.__getitem__, tick)
                size = max((offsets[r.gpa] + r.length for r in lay.ranges),
                           default=E.EHDR_SIZE)
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        rep.files.append(ExtractedFile(file=fname, kind=f"physical-{f}", size=size,
                                       data_bytes=nbytes, block=name))
    if manifest:
        _write_manifest(out, rep, PHYSICAL_MANIFEST)
    return rep


def _write_ranges(cap: Capture, bm: BlockMap, lay: PhysicalLayout, fd: int,
                  where: Callable[[Any], int], tick: Callable[[int], None]) -> int:
    ps = bm.block.page_size
    n = 0
    for r in lay.ranges:
        n += write_pages(cap, bm, fd, where(r.gpa), r.block_offset // ps, r.length // ps, tick)
    return n


def elf_offsets(lay: PhysicalLayout, page_size: int) -> dict[int, int]:
    """File offset of each range's bytes (keyed by guest-physical start), page aligned
    after the headers."""
    head = E.EHDR_SIZE + E.PHDR_SIZE * len(lay.ranges)
    off = (head + page_size - 1) // page_size * page_size
    out = {}
    for r in lay.ranges:
        out[r.gpa] = off
        off += r.length
    return out


def elf_header(lay: PhysicalLayout, offsets: dict[int, int]) -> bytes:
    eh = E.Elf64_Ehdr.build(dict(
        e_ident_class=E.ELFCLASS64, e_ident_data=E.ELFDATA2LSB,
        e_ident_version=E.EV_CURRENT, e_ident_osabi=E.ELFOSABI_NONE, e_ident_pad=bytes(8),
        e_type=E.ET_CORE, e_machine=E.EM_X86_64, e_version=E.EV_CURRENT, e_entry=0,
        e_phoff=E.EHDR_SIZE, e_shoff=0, e_flags=0, e_ehsize=E.EHDR_SIZE,
        e_phentsize=E.PHDR_SIZE, e_phnum=len(lay.ranges), e_shentsize=0, e_shnum=0,
        e_shstrndx=0))
    ph = b"".join(E.Elf64_Phdr.build(dict(
        p_type=E.PT_LOAD, p_flags=E.PF_R | E.PF_W | E.PF_X, p_offset=offsets[r.gpa],
        p_vaddr=0, p_paddr=r.gpa, p_filesz=r.length, p_memsz=r.length, p_align=0))
        for r in lay.ranges)
    return eh + ph


def _write_manifest(out: OutputDir, rep: ExtractReport, fname: str = MANIFEST) -> None:
    import json

    fd = out.open(fname)
    with os.fdopen(fd, "w") as f:
        json.dump(rep.to_json(), f, indent=1)
        f.write("\n")
