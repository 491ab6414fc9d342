"""`extract`: RAMBlocks (or guest-physical memory) written out as sparse raw files.

Rules, decided here and tested:

* Every output file is created inside the output folder the user named, under a
  name made safe from the RAMBlock idstr (which holds `/` and `:`); the path is
  resolved and checked to lie in that folder, symlinks are never followed, and
  an existing file is replaced only with `force`. Every target is checked
  before anything is written.
* Only data pages are written; zero and never-sent pages are skipped over, so
  they become holes (the file is truncated to its full length at the end).
  mapped-ram: the bitmap wins, stale bytes under a clear bit are not copied.
  Legacy: the last record wins, XBZRLE/COMPRESS_PAGE pages are replayed.
* Pages are copied in runs: consecutive pages whose copies lie at a constant
  stride in the input (one run per pages region in mapped-ram, one per batch
  of CONTINUE records in a legacy stream) go out in one write.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MigError, UsageError
from ..formats import elfcore as E
from .capture import Capture
from .corefile import FILE_NAMES, MACHINES, core_notes, image_layout
from .cpustate import CpuReport, cpu_states
from .integrity import sha256_file, stale_pages, with_stale
from .pagemap import PAGE_ABSENT, PAGE_DATA, PAGE_ZERO, BlockMap
from .physical import PhysicalLayout, machine_family, physical_layout

MANIFEST = "miginspect-extract.json"
PHYSICAL_MANIFEST = "miginspect-physical.json"
_MAX_WRITE = 16 << 20
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
    stale_pages: int | None = None  # mapped-ram: bytes under clear bitmap bits found
    stale_included: bool | None = None  # written as data (--include-stale)
    sha256: str | None = None  # of the file as written (holes read as zeros)


@dataclass
class ExtractReport:
    input: str
    format: str
    output_dir: str
    files: list[ExtractedFile] = field(default_factory=list)
    physical: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    cpu: dict[str, Any] | None = None  # registers written into the ELF notes

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# -- output folder ---------------------------------------------------------------
class OutputDir:
    """The one folder extract writes into; every path is checked against it."""

    def __init__(self, path: str | os.PathLike[str], force: bool,
                 protect: str | os.PathLike[str] | None = None) -> None:
        p = Path(path)
        try:
            p.mkdir(exist_ok=True)
        except FileNotFoundError as e:
            raise UsageError(f"cannot create output folder {str(p)!r}: its parent does not "
                             "exist") from e
        except FileExistsError as e:
            raise UsageError(f"{str(p)!r} exists and is not a folder") from e
        if not p.is_dir():
            raise UsageError(f"{str(p)!r} is not a folder")
        self.root = p.resolve()
        self.force = force
        self.protect = Path(protect) if protect is not None else None  # the input file

    def target(self, name: str) -> Path:
        """`name` inside the folder; a bare file name only, never a path."""
        t = self.root / name
        if name in ("", ".", "..") or os.sep in name or "/" in name or t.parent != self.root:
            raise UsageError(f"refusing to write {name!r}: it would land outside "
                             f"{str(self.root)!r}")
        return t

    def check(self, names: list[str]) -> None:
        """Refuse (before anything is written) what would overwrite without force."""
        for n in names:
            t = self.root / n
            if t.is_symlink():
                raise UsageError(f"refusing to write through the symlink {str(t)!r}")
            if t.exists():
                if not self.force:
                    raise UsageError(f"{str(t)!r} exists; use --force to overwrite")
                if not t.is_file():
                    raise UsageError(f"{str(t)!r} exists and is not a regular file")
                if self.protect is not None and self.protect.exists() and \
                        os.path.samefile(t, self.protect):
                    raise UsageError(f"refusing to overwrite the input file {str(t)!r}")
            self.target(n)

    def open(self, name: str) -> int:
        """Create `name` afresh. With force an existing file is unlinked first, never
        truncated in place: its other hard links and any reader's mapping stay intact."""
        t = self.target(name)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        if self.force and t.is_file() and not t.is_symlink():
            t.unlink()
        try:
            return os.open(t, flags, 0o644)
        except FileExistsError as e:
            raise UsageError(f"{str(t)!r} exists; use --force to overwrite") from e
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UsageError(f"refusing to write through the symlink {str(t)!r}") from e
            raise


# -- page copying ------------------------------------------------------------------
def _pwrite_all(fd: int, data: Any, off: int) -> None:
    mv = memoryview(data).cast("B")
    while len(mv):
        n = os.pwrite(fd, mv, off)
        mv = mv[n:]
        off += n


_COPY_RANGE = [hasattr(os, "copy_file_range")]


def _copy_range(src_fd: int, dst_fd: int, src: int, dst: int, n: int) -> bool:
    """Copy file bytes in the kernel (no pass through this process); False when the
    kernel or file system cannot, so the caller falls back to a plain write."""
    try:
        while n:
            k = os.copy_file_range(src_fd, dst_fd, n, src, dst)
            if k <= 0:
                return False
            src, dst, n = src + k, dst + k, n - k
    except OSError:
        _COPY_RANGE[0] = False
        return False
    return True


def _const_stride_runs(idx: np.ndarray, offs: np.ndarray) -> list[tuple[int, int]]:
    """[(i, j)] slices of (idx, offs) where pages are consecutive and the source offsets
    advance by one constant stride."""
    n = len(idx)
    if n == 0:
        return []
    dp = np.diff(idx)
    do = np.diff(offs)
    # a pair (k, k+1) may join a run if the pages are consecutive
    ok = dp == 1
    out = []
    brk = np.flatnonzero(~ok)  # pair indices that must split
    # walk the stretches between forced splits; inside a stretch, split where stride changes
    starts = np.concatenate(([0], brk + 1))
    ends = np.concatenate((brk + 1, [n]))
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        if e - s <= 1:
            out.append((s, e))
            continue
        seg = do[s : e - 1]
        cut = np.flatnonzero(seg[1:] != seg[:-1]) + 1  # stride changes between pairs
        i = s
        for c in (cut + s).tolist():
            out.append((i, c + 1))  # pair c-1 ended at element c
            i = c + 1
        if i < e:
            out.append((i, e))
    return out


def write_pages(cap: Capture, bm: BlockMap, fd: int, dest: int, first: int, count: int,
                progress: Callable[[int], None] | None = None) -> int:
    """Write the data pages [first, first+count) of `bm` to `fd`, page i at
    dest + (i - first) * page_size. Returns the bytes written."""
    ps = bm.block.page_size
    buf = cap.source.buf
    arr = np.frombuffer(buf, np.uint8) if len(buf) else np.zeros(0, np.uint8)
    sel = np.flatnonzero(bm.state[first : first + count] == PAGE_DATA) + first
    replayed: dict[int, bytes] = {}
    if bm.replay_pages is not None and len(bm.replay_pages):
        want = np.intersect1d(bm.replay_pages, sel)
        if len(want):
            replayed = cap.reader.replay_all(bm)
            sel = np.setdiff1d(sel, want, assume_unique=True)
            for p in want.tolist():
                _pwrite_all(fd, replayed[p], dest + (p - first) * ps)
    offs = bm.offset[sel]
    written = len(replayed) * ps
    release = cap.source.release
    copy_fd = cap.source.fd if _COPY_RANGE[0] else None  # the file behind buf
    for i, j in _const_stride_runs(sel, offs):
        k = j - i
        o0 = int(offs[i])
        stride = int(offs[i + 1] - offs[i]) if k > 1 else ps
        p0 = int(sel[i])
        step = max(1, _MAX_WRITE // max(ps, stride))
        for a in range(0, k, step):
            m = min(step, k - a)
            src = o0 + a * stride
            to = dest + (p0 + a - first) * ps
            if stride == ps:
                if not (copy_fd is not None and _copy_range(copy_fd, fd, src, to, m * ps)):
                    _pwrite_all(fd, arr[src : src + m * ps], to)
            else:
                data = np.lib.stride_tricks.as_strided(
                    arr[src:], shape=(m, ps), strides=(stride, 1), writeable=False)
                _pwrite_all(fd, np.ascontiguousarray(data), to)
            release(min(src, src + (m - 1) * stride), max(src, src + (m - 1) * stride) + ps)
            written += m * ps
            if progress:
                progress(m * ps)
    return written


# -- extract -------------------------------------------------------------------------
def _stopped_note(cap: Capture, rep: ExtractReport) -> None:
    err = cap.walk.error
    if err is not None:
        rep.notes.append(f"the walk stopped early, pages after it are missing: {err.oneline()}")


def extract_blocks(cap: Capture, outdir: str | os.PathLike[str], force: bool = False,
                   blocks: list[str] | None = None, progress: Progress | None = None,
                   manifest: bool = True, include_stale: bool = False) -> ExtractReport:
    """One sparse raw file per RAMBlock in `outdir` (plus a JSON manifest with each
    file's sha256 and page counts)."""
    out = OutputDir(outdir, force, cap.path)
    chosen = [cap.block(n) for n in blocks] if blocks else list(cap.blocks)
    taken: set[str] = {MANIFEST.lower()}
    names = [safe_name(b.name, taken) for b in chosen]
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

    for b, fname in zip(chosen, names, strict=True):
        bm, stale = _physical_map(cap, b.name, include_stale, rep)
        fd = out.open(fname)
        try:
            nbytes = write_pages(cap, bm, fd, 0, 0, bm.pages, tick)
            os.ftruncate(fd, b.used_length)
        finally:
            os.close(fd)
        rep.files.append(ExtractedFile(
            file=fname, kind="block", size=b.used_length, data_bytes=nbytes, block=b.name,
            used_length=b.used_length, pages=bm.pages, data_pages=bm.count(PAGE_DATA),
            zero_pages=bm.count(PAGE_ZERO), absent_pages=bm.count(PAGE_ABSENT),
            mr_addr=b.mr_addr, stale_pages=stale, stale_included=include_stale,
            sha256=sha256_file(out.target(fname))))
        if b.mapped_ram is not None and b.mapped_ram.skipped:
            rep.notes.append(f"{b.name}: skipped by x-ignore-shared (its memory is shared with "
                             "the destination, not in the file): written as zeros")
        if bm.bitmap_untrusted:
            rep.notes.append(f"{b.name}: bitmap untrusted ({bm.bitmap_untrusted}); pages were "
                             f"taken from the {cap.bitmap_layout} reading")
    if manifest:
        _write_manifest(out, rep)
    return rep


def extract_physical(cap: Capture, outdir: str | os.PathLike[str], force: bool = False,
                     formats: tuple[str, ...] = ("elf",), ram_block: str | None = None,
                     max_ram_below_4g: int | None = None, progress: Progress | None = None,
                     manifest: bool = True, base: int | None = None,
                     include_stale: bool = False) -> ExtractReport:
    """Guest-physical memory (inspector/physical.py decides the layout or refuses) as
    `physical.elf` (ELF64 core with QEMU's per-vCPU notes, inspector/corefile.py),
    `physical.lime` and/or `physical.raw` (byte at address A at offset A); all sparse."""
    lay = physical_layout(cap.walk.machine_type, {b.name: b.used_length for b in cap.blocks},
                          ram_block, base, max_ram_below_4g)
    name = lay.ram_block
    blk = cap.block(name)
    unknown = [f for f in formats if f not in FILE_NAMES]
    if unknown or not formats:
        raise UsageError(f"unknown image format {unknown}: choose from {', '.join(FILE_NAMES)}")
    out = OutputDir(outdir, force, cap.path)
    names = [FILE_NAMES[f] for f in formats]
    out.check(names + ([PHYSICAL_MANIFEST] if manifest else []))
    rep = ExtractReport(cap.path, cap.format, str(out.root), physical=lay.to_json())
    _stopped_note(cap, rep)
    cpus = _core_cpus(cap, rep) if "elf" in formats else None
    bm, stale = _physical_map(cap, name, include_stale, rep)
    ps = blk.page_size
    total = bm.count(PAGE_DATA) * ps * len(formats)
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
    machine = MACHINES[cpus.arch] if cpus else _elf_machine(cap.walk.machine_type, lay.family)
    counts = _range_counts(bm, lay, ps)
    for f, fname in zip(formats, names, strict=True):
        il = image_layout(f, lay.ranges, machine, core_notes(cpus), ps)
        fd = out.open(fname)
        try:
            for off, data in il.headers:
                _pwrite_all(fd, data, off)
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
            stale_included=include_stale, sha256=sha256_file(out.target(fname))))
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
        rep.notes.append(f"the ELF core has no CPU notes: {e.message}")
        return None
    rep.cpu = cpus.to_json()
    rep.notes.extend(cpus.notes)
    return cpus


def _physical_map(cap: Capture, name: str, include_stale: bool,
                  rep: ExtractReport) -> tuple[BlockMap, int | None]:
    """A block's page map (with stale pages as data if asked) and its stale count
    (None for legacy streams, which have none)."""
    bm = cap.maps[name]
    if cap.format != "mapped-ram":
        return bm, None
    n = len(stale_pages(cap, name))
    if n and include_stale:
        rep.notes.append(f"{name}: {n} stale pages (bytes under clear bitmap bits, zero to "
                         "QEMU) written as data (--include-stale)")
        return with_stale(cap, bm), n
    if n:
        rep.notes.append(f"{name}: {n} stale pages (bytes under clear bitmap bits) left out "
                         "as QEMU would; --include-stale writes them")
    return bm, n


def _range_counts(bm: BlockMap, lay: PhysicalLayout, ps: int) -> dict[str, int]:
    sel = np.zeros(bm.pages, bool)
    for r in lay.ranges:
        sel[r.block_offset // ps : (r.block_offset + r.length) // ps] = True
    st = bm.state[sel]
    return dict(pages=int(sel.sum()), data_pages=int(np.count_nonzero(st == PAGE_DATA)),
                zero_pages=int(np.count_nonzero(st == PAGE_ZERO)),
                absent_pages=int(np.count_nonzero(st == PAGE_ABSENT)))


def _write_manifest(out: OutputDir, rep: ExtractReport, fname: str = MANIFEST) -> None:
    import json

    fd = out.open(fname)
    with os.fdopen(fd, "w") as f:
        json.dump(rep.to_json(), f, indent=1)
        f.write("\n")
