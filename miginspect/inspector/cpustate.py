"""vCPU registers from the `cpu` device sections, decoded by name through the file's
vmdescription (inspector/devices.py), in the shape QEMU's `dump-guest-memory` puts them in
its ELF notes.

Field names are those of `vmstate_x86_cpu` (target/i386/machine.c) and `vmstate_arm_cpu`
(target/arm/machine.c); what each note holds follows target/i386/arch_dump.c and
target/arm/arch_dump.c:

x86 (`env.regs`, `env.eip`, `env.eflags`, `env.segs`, `env.ldt`, `env.tr`, `env.gdt`,
    `env.idt`, `env.cr[N]`, `env.kernelgsbase`, `env.hflags`)
    `env.regs` is indexed R_EAX, R_ECX, R_EDX, R_EBX, R_ESP, R_EBP, R_ESI, R_EDI, r8..r15;
    `env.segs` ES, CS, SS, DS, FS, GS. QEMU saves cr0, cr2, cr3 and cr4 only (cr1 is
    reserved and always 0 in QEMU). Long mode is `env.hflags` & HF_LMA_MASK (1 << 14); QEMU
    picks the x86_64 or i386 NT_PRSTATUS layout by the first vCPU's.

aarch64 (`env.xregs`, `env.pc`, `cpsr`, `env.vfp.zregs`, `fpscr`, `env.sp_el`, `env.elr_el`,
    `cpreg_vmstate_indexes` / `cpreg_vmstate_values`)
    `cpsr` holds pstate_read() for a vCPU in AArch64 state (PSTATE.nRW clear), cpsr_read()
    otherwise; sp is `env.xregs[31]`. fpsr and fpcr are the two halves of `fpscr` (QEMU 10
    writes a `cpu/vfp/fpcr_fpsr` subsection for FPCR bits FPSCR cannot hold). System
    registers (TTBR0/1_EL1, TCR_EL1, SCTLR_EL1, ...) come from the cpreg list, whose
    indexes are KVM register ids: 0x6030000000130000 | op0<<14 | op1<<11 | CRn<<7 | CRm<<3
    | op2.

A file without a vmdescription (`suppress-vmdesc`) cannot be decoded: `cpu_states` refuses
rather than guess the layout of the bytes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import FormatError, UnsupportedError
from .capture import Capture
from .devices import DeviceState, StateNode, decode_devices
from .report import NOTE_CPU_STATE, Note, note

HF_LMA_MASK = 1 << 14
PSTATE_nRW = 1 << 4
# env.regs indexes (target/i386/cpu.h)
R_EAX, R_ECX, R_EDX, R_EBX, R_ESP, R_EBP, R_ESI, R_EDI = range(8)
X86_GPRS = {"rax": R_EAX, "rbx": R_EBX, "rcx": R_ECX, "rdx": R_EDX, "rsi": R_ESI,
            "rdi": R_EDI, "rsp": R_ESP, "rbp": R_EBP,
            **{f"r{i}": i for i in range(8, 16)}}
# env.segs indexes
R_ES, R_CS, R_SS, R_DS, R_FS, R_GS = range(6)
X86_SEGS = {"cs": R_CS, "ds": R_DS, "es": R_ES, "fs": R_FS, "gs": R_GS, "ss": R_SS}
FPSR_MASK = 0xF800009F  # FPSCR bits that are FPSR in AArch64
FPCR_MASK = 0x07FF9F00  # FPSCR bits that are FPCR
KVM_ARM64_SYSREG = 0x6030000000130000
#: AArch64 system registers by (op0, op1, CRn, CRm, op2)
ARM_SYSREGS = {
    (3, 0, 0, 0, 0): "MIDR_EL1",
    (3, 0, 0, 0, 5): "MPIDR_EL1",
    (3, 0, 1, 0, 0): "SCTLR_EL1",
    (3, 0, 2, 0, 0): "TTBR0_EL1",
    (3, 0, 2, 0, 1): "TTBR1_EL1",
    (3, 0, 2, 0, 2): "TCR_EL1",
    (3, 0, 4, 0, 0): "SPSR_EL1",
    (3, 0, 4, 0, 1): "ELR_EL1",
    (3, 0, 4, 1, 0): "SP_EL0",
    (3, 0, 5, 2, 0): "ESR_EL1",
    (3, 0, 6, 0, 0): "FAR_EL1",
    (3, 0, 7, 4, 0): "PAR_EL1",
    (3, 0, 10, 2, 0): "MAIR_EL1",
    (3, 0, 12, 0, 0): "VBAR_EL1",
    (3, 0, 13, 0, 1): "CONTEXTIDR_EL1",
    (3, 0, 13, 0, 4): "TPIDR_EL1",
    (3, 3, 13, 0, 2): "TPIDR_EL0",
    (3, 3, 13, 0, 3): "TPIDRRO_EL0",
    (3, 4, 4, 1, 0): "SP_EL1",
}


@dataclass
class Segment:
    selector: int
    limit: int
    flags: int
    base: int


@dataclass
class X86Cpu:
    index: int  # cpu_index (the section's instance id); notes carry index + 1
    long_mode: bool
    regs: dict[str, int]  # rax.. r15 as QEMUCPUState names them
    rip: int
    rflags: int
    segments: dict[str, Segment]  # cs ds es fs gs ss ldt tr gdt idt
    cr: list[int]  # cr0..cr4
    kernel_gs_base: int
    efer: int | None = None
    offset: int = 0  # file offset of the cpu section


@dataclass
class Aarch64Cpu:
    index: int
    aarch64: bool  # in AArch64 state (PSTATE.nRW clear)
    x: list[int]  # x0..x30
    sp: int
    pc: int
    pstate: int
    vregs: list[int]  # v0..v31 as (low, high) 64-bit halves, 64 values
    fpsr: int
    fpcr: int
    sysregs: dict[str, int] = field(default_factory=dict)
    offset: int = 0


@dataclass
class CpuReport:
    path: str
    arch: str  # "x86_64", "i386" or "aarch64"
    cpus: list[X86Cpu | Aarch64Cpu]
    notes: list[Note] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "arch": self.arch, "source": "vmdescription",
                "cpus": [asdict(c) for c in self.cpus], "notes": [asdict(n) for n in self.notes]}


class _Fields:
    """Leaf values of one decoded cpu section by path; numbers read from the bytes."""

    def __init__(self, dev: DeviceState, buf: Any) -> None:
        self.dev = dev
        self.buf = buf
        self.leaves: dict[str, StateNode] = dict(dev.leaves())

    def has(self, path: str) -> bool:
        return path in self.leaves

    def node(self, path: str) -> StateNode:
        n = self.leaves.get(path)
        if n is None:
            raise FormatError(f"the cpu section has no field {path!r} in its vmdescription",
                              self.dev.section_offset, self.dev.key, code="cpu-state")
        return n

    def ints(self, path: str, width: int = 8) -> list[int]:
        """An unsigned big-endian integer array (or scalar) field, `width` bytes each."""
        n = self.node(path)
        if n.size % width:
            raise FormatError(f"field {path!r} is {n.size} bytes, not a multiple of {width}",
                              n.offset, self.dev.key, code="cpu-state")
        return np.frombuffer(self.buf, f">u{width}", count=n.size // width,
                             offset=n.offset).tolist()

    def int(self, path: str, default: int | None = None) -> int:
        if default is not None and not self.has(path):
            return default
        n = self.node(path)
        return int.from_bytes(bytes(self.buf[n.offset : n.offset + n.size]), "big")

    def first(self, *paths: str) -> str | None:
        return next((p for p in paths if self.has(p)), None)


def cpu_states(cap: Capture) -> CpuReport:
    """Registers of every vCPU (`cpu` sections in instance order). Raises UnsupportedError
    when the file has no vmdescription or no cpu section, FormatError when a cpu
    section's description lacks a register field."""
    devs = [d for d in decode_devices(cap, "cpu").devices if d.idstr == "cpu"]
    if not devs:
        raise UnsupportedError("the file has no 'cpu' device section to take registers from",
                               None, "cpu", code="cpu-state-unavailable")
    devs.sort(key=lambda d: d.instance_id)
    buf = cap.source.buf
    out: list[X86Cpu | Aarch64Cpu] = []
    notes: list[Note] = []
    for d in devs:
        if d.error:
            raise FormatError(f"cpu {d.instance_id} does not decode: {d.error}",
                              d.section_offset, d.key, code="cpu-state")
        f = _Fields(d, buf)
        if f.has("env.eip"):
            out.append(_x86(f))
        elif f.has("env.xregs"):
            out.append(_aarch64(f, notes))
        else:
            raise UnsupportedError("the cpu section is neither x86 (env.eip) nor aarch64 "
                                   "(env.xregs): registers of this target are not decoded",
                                   d.section_offset, d.key, code="cpu-state-unavailable")
    kinds = {type(c) for c in out}
    if len(kinds) > 1:
        raise FormatError("cpu sections of different architectures", devs[0].section_offset,
                          "cpu", code="cpu-state")
    first = out[0]
    arch = "aarch64" if isinstance(first, Aarch64Cpu) else (
        "x86_64" if first.long_mode else "i386")
    return CpuReport(cap.path, arch, out, notes)


def _x86(f: _Fields) -> X86Cpu:
    regs = f.ints("env.regs")
    if len(regs) < 8:
        raise FormatError(f"env.regs holds {len(regs)} registers", f.node("env.regs").offset,
                          f.dev.key, code="cpu-state")
    regs += [0] * (16 - len(regs))  # a 32-bit target saves 8

    def seg(prefix: str) -> Segment:
        return Segment(f.int(f"{prefix}.selector"), f.int(f"{prefix}.limit"),
                       f.int(f"{prefix}.flags"), f.int(f"{prefix}.base"))

    segments = {name: seg(f"env.segs[{i}]") for name, i in X86_SEGS.items()}
    for name in ("ldt", "tr", "gdt", "idt"):
        segments[name] = seg(f"env.{name}")
    cr = [f.int(f"env.cr[{i}]", 0) for i in range(5)]
    return X86Cpu(
        index=f.dev.instance_id,
        long_mode=bool(f.int("env.hflags") & HF_LMA_MASK),
        regs={name: regs[i] for name, i in X86_GPRS.items()},
        rip=f.int("env.eip"), rflags=f.int("env.eflags"), segments=segments, cr=cr,
        kernel_gs_base=f.int("env.kernelgsbase", 0),
        efer=f.int("env.efer") if f.has("env.efer") else None,
        offset=f.dev.section_offset)


def _aarch64(f: _Fields, notes: list[Note]) -> Aarch64Cpu:
    xregs = f.ints("env.xregs")
    if len(xregs) != 32:
        raise FormatError(f"env.xregs holds {len(xregs)} registers, not 32",
                          f.node("env.xregs").offset, f.dev.key, code="cpu-state")
    pstate = f.int("cpsr")
    a64 = not pstate & PSTATE_nRW
    vregs: list[int] = []
    for i in range(32):
        p = f.first(f"{{cpu/vfp}}.env.vfp.zregs[{i}].d", f"env.vfp.zregs[{i}].d")
        vregs += f.ints(p)[:2] if p else [0, 0]
    fpscr_path = f.first("{cpu/vfp}.fpscr", "fpscr")
    fpscr = f.int(fpscr_path) if fpscr_path else 0
    fpsr, fpcr = fpscr & FPSR_MASK, fpscr & FPCR_MASK
    fpsr_path = f.first("{cpu/vfp}.{cpu/vfp/fpcr_fpsr}.env.vfp.fpsr")
    if fpsr_path:
        fpsr = f.int(fpsr_path)
        fpcr = f.int("{cpu/vfp}.{cpu/vfp/fpcr_fpsr}.env.vfp.fpcr", fpcr)
    sp = xregs[31]
    if not a64:
        sp = 0
        notes.append(note(NOTE_CPU_STATE, f"cpu {f.dev.instance_id} was in AArch32 state: "
                          "x0-x14 hold its current-mode r0-r14 (QEMU's own dump maps banked "
                          "registers too)", f.dev.key, f.dev.section_offset))
        r = f.ints("env.regs", 4)
        xregs[:15] = r[:15]
        pc = r[15]
    else:
        pc = f.int("env.pc")
    return Aarch64Cpu(
        index=f.dev.instance_id, aarch64=a64, x=xregs[:31], sp=sp, pc=pc, pstate=pstate,
        vregs=vregs, fpsr=fpsr, fpcr=fpcr, sysregs=_arm_sysregs(f),
        offset=f.dev.section_offset)


def _arm_sysregs(f: _Fields) -> dict[str, int]:
    out: dict[str, int] = {}
    if f.has("cpreg_vmstate_indexes") and f.has("cpreg_vmstate_values"):
        idx = f.ints("cpreg_vmstate_indexes")
        val = f.ints("cpreg_vmstate_values")
        for k, v in zip(idx, val, strict=False):
            if k & ~0xFFFF != KVM_ARM64_SYSREG:
                continue
            enc = ((k >> 14) & 3, (k >> 11) & 7, (k >> 7) & 15, (k >> 3) & 15, k & 7)
            name = ARM_SYSREGS.get(enc)
            if name:
                out[name] = v
    if f.has("env.sp_el"):
        # env.sp_el[N] is stale for the stack pointer in use, which is xregs[31]
        sp_el = f.ints("env.sp_el")
        pstate, sp = f.int("cpsr"), f.ints("env.xregs")[31]
        el, spsel = (pstate >> 2) & 3, pstate & 1
        a64 = not pstate & PSTATE_nRW
        out["SP_EL0"] = sp if a64 and (el == 0 or not spsel) else sp_el[0]
        out["SP_EL1"] = sp if a64 and el == 1 and spsel else sp_el[1]
    if f.has("env.elr_el"):
        out.setdefault("ELR_EL1", f.ints("env.elr_el")[1])
    return dict(sorted(out.items()))


__all__ = ["cpu_states", "CpuReport", "X86Cpu", "Aarch64Cpu", "Segment"]
