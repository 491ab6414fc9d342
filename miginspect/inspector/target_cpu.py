"""x86 CPU features a saved guest is using, and which of them a target CPU model lacks.

QEMU loads CPU state whatever the target's CPU model offers (target/i386/machine.c copies
CR4, EFER and XCR0 as saved), so a guest saved on `-cpu max` loads into the default model,
reports `running`, and then faults or hangs on the first use of a feature the target CPUID
does not offer. The control registers in the file's `cpu` sections say what the guest
kernel turned on. The CR4 bits follow QEMU's own `cr4_reserved_bits()` (target/i386/cpu.h):
each is reserved -- unusable -- when the named CPUID feature is absent. XCR0 bits are the
XSAVE state components the guest enabled, EFER bits the long-mode and NX switches.
Features are named by their QEMU `-cpu` property names (what `qom-get` on the vCPU object
and `query-cpu-model-expansion` report).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: CR4 bit -> (bit name, QEMU feature property that must be on)
CR4_BITS: dict[int, tuple[str, str]] = {
    11: ("UMIP", "umip"),
    12: ("LA57", "la57"),
    13: ("VMXE", "vmx"),
    16: ("FSGSBASE", "fsgsbase"),
    17: ("PCIDE", "pcid"),
    18: ("OSXSAVE", "xsave"),
    20: ("SMEP", "smep"),
    21: ("SMAP", "smap"),
    22: ("PKE", "pku"),
    24: ("PKS", "pks"),
    28: ("LAM_SUP", "lam"),
    32: ("FRED", "fred"),
}
#: XCR0 bit -> (state component, feature property)
XCR0_BITS: dict[int, tuple[str, str]] = {
    2: ("AVX", "avx"),
    3: ("BNDREGS", "mpx"),
    4: ("BNDCSR", "mpx"),
    5: ("OPMASK", "avx512f"),
    6: ("ZMM_Hi256", "avx512f"),
    7: ("Hi16_ZMM", "avx512f"),
    9: ("PKRU", "pku"),
    17: ("XTILECFG", "amx-tile"),
    18: ("XTILEDATA", "amx-tile"),
}
#: EFER bit -> (bit name, feature property)
EFER_BITS: dict[int, tuple[str, str]] = {
    0: ("SCE", "syscall"),
    8: ("LME", "lm"),
    11: ("NXE", "nx"),
}
#: Every feature property the check may ask the target about.
FEATURES = sorted({f for t in (CR4_BITS, XCR0_BITS, EFER_BITS) for _, f in t.values()})

_REGS = {"env.cr[4]": ("CR4", CR4_BITS), "env.xcr0": ("XCR0", XCR0_BITS),
         "env.efer": ("EFER", EFER_BITS)}


@dataclass
class FeatureUse:
    """One feature the saved guest has switched on."""

    feature: str  # QEMU property name
    register: str  # "CR4", "XCR0", "EFER"
    bit: int
    bit_name: str
    cpu: int  # vCPU (cpu section instance)
    offset: int  # file offset of the register's field


@dataclass
class GuestCpu:
    cpus: int = 0
    registers: dict[str, int] = field(default_factory=dict)  # of vCPU 0
    uses: list[FeatureUse] = field(default_factory=list)


def guest_cpu_use(devices: list[Any]) -> GuestCpu:
    """Features in use, from decoded `cpu` sections (inspector.devices.DeviceState)."""
    out = GuestCpu()
    for d in devices:
        if d.idstr != "cpu" or d.vmsd_name not in (None, "cpu"):
            continue
        out.cpus += 1
        for path, node in d.leaves():
            reg = _REGS.get(path)
            if reg is None or not isinstance(node.value, int):
                continue
            name, table = reg
            if d.instance_id == 0:
                out.registers[name] = node.value
            for bit, (bname, feat) in table.items():
                if node.value >> bit & 1:
                    out.uses.append(FeatureUse(feat, name, bit, bname, d.instance_id,
                                               node.offset))
    return out


def missing_features(use: GuestCpu, target: dict[str, bool]) -> list[FeatureUse]:
    """Uses whose feature the target CPU does not offer (one per feature, first vCPU).
    A feature the target was not asked about is not reported."""
    seen: set[str] = set()
    out = []
    for u in use.uses:
        if u.feature in seen or target.get(u.feature, True):
            continue
        seen.add(u.feature)
        out.append(u)
    return out


__all__ = ["guest_cpu_use", "missing_features", "GuestCpu", "FeatureUse", "FEATURES",
           "CR4_BITS", "XCR0_BITS", "EFER_BITS"]
