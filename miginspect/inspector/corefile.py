"""Guest-physical memory images: where each RAM range's bytes go in an ELF core, a LiME
image or a raw file, and the bytes around them (headers, notes).

* ELF (`ET_CORE`, ELF64 little-endian): the file header, a PT_NOTE program header, one
  PT_LOAD per range (p_paddr = guest-physical start, p_vaddr 0 as in QEMU's paging-off
  dump), the notes QEMU's `dump-guest-memory` writes for each vCPU (formats/elfcore.py,
  in QEMU's order: every vCPU's NT_PRSTATUS, then every vCPU's "QEMU" note on x86; per
  vCPU NT_PRSTATUS then NT_PRFPREG on aarch64), then the ranges, each starting on a page
  boundary so zero pages stay holes and runs can be copied file to file.
* LiME: per range a 32-byte header and its bytes, back to back.
* raw: the byte at guest-physical address A at file offset A.

Only the bytes between the ranges' data are built here; page data is written by the
page copier (extract.write_pages) at the offsets this module gives.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..formats import elfcore as E
from ..formats import lime as L
from .cpustate import Aarch64Cpu, CpuReport, X86Cpu
from .physical import PhysRange

FORMATS = ("elf", "lime", "raw")
FILE_NAMES = {"elf": "physical.elf", "lime": "physical.lime", "raw": "physical.raw"}
MACHINES = {"x86_64": E.EM_X86_64, "i386": E.EM_386, "aarch64": E.EM_AARCH64}


@dataclass
class ImageLayout:
    """One output image: bytes to write at offsets, and where each range's data goes."""

    format: str
    headers: list[tuple[int, bytes]] = field(default_factory=list)
    data_offsets: list[int] = field(default_factory=list)  # per range, in range order
    size: int = 0


def _note(name: bytes, ntype: int, desc: bytes) -> bytes:
    return E.Elf64_Note.build(dict(n_namesz=len(name) + 1, n_descsz=len(desc), n_type=ntype,
                                   name=name + b"\0", desc=desc))


def x86_notes(cpus: list[X86Cpu], long_mode: bool) -> bytes:
    """NT_PRSTATUS of every vCPU, then the "QEMU" CPU-state note of every vCPU."""
    out = []
    for c in cpus:
        s = c.segments
        if long_mode:
            regs = dict(c.regs, orig_rax=0, rip=c.rip, eflags=c.rflags,
                        cs=s["cs"].selector, ss=s["ss"].selector, ds=s["ds"].selector,
                        es=s["es"].selector, fs=s["fs"].selector, gs=s["gs"].selector,
                        fs_base=s["fs"].base, gs_base=s["gs"].base)
            desc = E.x86_64_elf_prstatus.build(dict(pid=c.index + 1, regs=regs))
        else:
            m = 0xFFFFFFFF
            regs = {f"e{k[1:]}": c.regs[k] & m for k in
                    ("rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rax", "rsp")}
            regs.update(orig_eax=0, eip=c.rip & m, eflags=c.rflags & m,
                        **{k: s[k].selector & 0xFFFF for k in ("cs", "ss", "ds", "es", "fs",
                                                                "gs")})
            desc = E.x86_elf_prstatus.build(dict(pid=c.index + 1, regs=regs))
        out.append(_note(b"CORE", E.NT_PRSTATUS, desc))
    for c in cpus:
        segs = {k: dict(selector=v.selector, limit=v.limit, flags=v.flags, pad=0, base=v.base)
                for k, v in c.segments.items()}
        state = dict(version=E.QEMUCPUSTATE_VERSION, size=E.QEMUCPUState.sizeof(), **c.regs,
                     rip=c.rip, rflags=c.rflags, **segs, cr=c.cr,
                     kernel_gs_base=c.kernel_gs_base)
        out.append(_note(b"QEMU", E.QEMU_NOTE_TYPE, E.QEMUCPUState.build(state)))
    return b"".join(out)


def aarch64_notes(cpus: list[Aarch64Cpu]) -> bytes:
    """Per vCPU: NT_PRSTATUS then NT_PRFPREG."""
    out = []
    for c in cpus:
        pr = dict(pr_pid=c.index + 1, pr_fpvalid=1,
                  pr_reg=dict(regs=c.x, sp=c.sp, pc=c.pc, pstate=c.pstate))
        out.append(_note(b"CORE", E.NT_PRSTATUS, E.aarch64_elf_prstatus.build(pr)))
        fp = dict(vregs=c.vregs, fpsr=c.fpsr, fpcr=c.fpcr)
        out.append(_note(b"CORE", E.NT_PRFPREG, E.aarch64_user_vfp_state.build(fp)))
    return b"".join(out)


def core_notes(rep: CpuReport | None) -> bytes:
    """The PT_NOTE payload for `rep` (empty without CPU state)."""
    if rep is None or not rep.cpus:
        return b""
    if rep.arch == "aarch64":
        return aarch64_notes([c for c in rep.cpus if isinstance(c, Aarch64Cpu)])
    return x86_notes([c for c in rep.cpus if isinstance(c, X86Cpu)], rep.arch == "x86_64")


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def elf_layout(ranges: list[PhysRange], machine: int, notes: bytes,
               page_size: int) -> ImageLayout:
    nph = len(ranges) + (1 if notes else 0)
    note_off = E.EHDR_SIZE + E.PHDR_SIZE * nph
    off = _align(note_off + len(notes), page_size)
    lay = ImageLayout("elf")
    for r in ranges:
        lay.data_offsets.append(off)
        off += r.length
    lay.size = max(off, note_off + len(notes))
    eh = E.Elf64_Ehdr.build(dict(
        e_ident_class=E.ELFCLASS64, e_ident_data=E.ELFDATA2LSB,
        e_ident_version=E.EV_CURRENT, e_ident_osabi=E.ELFOSABI_NONE, e_ident_pad=bytes(8),
        e_type=E.ET_CORE, e_machine=machine, e_version=E.EV_CURRENT, e_entry=0,
        e_phoff=E.EHDR_SIZE, e_shoff=0, e_flags=0, e_ehsize=E.EHDR_SIZE,
        e_phentsize=E.PHDR_SIZE, e_phnum=nph, e_shentsize=0, e_shnum=0, e_shstrndx=0))
    ph = []
    if notes:
        ph.append(E.Elf64_Phdr.build(dict(
            p_type=E.PT_NOTE, p_flags=0, p_offset=note_off, p_vaddr=0, p_paddr=0,
            p_filesz=len(notes), p_memsz=len(notes), p_align=0)))
    for r, o in zip(ranges, lay.data_offsets, strict=True):
        ph.append(E.Elf64_Phdr.build(dict(
            p_type=E.PT_LOAD, p_flags=E.PF_R | E.PF_W | E.PF_X, p_offset=o, p_vaddr=0,
            p_paddr=r.gpa, p_filesz=r.length, p_memsz=r.length, p_align=0)))
    lay.headers.append((0, eh + b"".join(ph) + notes))
    return lay


def lime_layout(ranges: list[PhysRange]) -> ImageLayout:
    lay = ImageLayout("lime")
    off = 0
    for r in ranges:
        hdr = L.lime_mem_range_header.build(dict(version=L.LIME_VERSION, s_addr=r.gpa,
                                                 e_addr=r.gpa + r.length - 1))
        lay.headers.append((off, hdr))
        lay.data_offsets.append(off + len(hdr))
        off += len(hdr) + r.length
    lay.size = off
    return lay


def raw_layout(ranges: list[PhysRange]) -> ImageLayout:
    return ImageLayout("raw", [], [r.gpa for r in ranges],
                       max((r.gpa + r.length for r in ranges), default=0))


def image_layout(fmt: str, ranges: list[PhysRange], machine: int, notes: bytes,
                 page_size: int) -> ImageLayout:
    if fmt == "elf":
        return elf_layout(ranges, machine, notes, page_size)
    if fmt == "lime":
        return lime_layout(ranges)
    return raw_layout(ranges)


__all__ = ["FORMATS", "FILE_NAMES", "MACHINES", "ImageLayout", "core_notes", "image_layout",
           "elf_layout", "lime_layout", "raw_layout", "x86_notes", "aarch64_notes"]
