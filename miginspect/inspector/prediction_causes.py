"""Root causes: the problems a target comparison finds, grouped by what causes them.

One difference between source and target usually shows up many times (another machine
family changes every device; a moved NIC loses its ROM block and its section). QEMU reports
only the first; this module names the cause once and files every finding under it:
architecture or machine family (everything follows from it), machine type version, a
device missing / replaced / in another PCI order (RAMBlock and section names carry the PCI
address), RAM size (-m), vCPU count (-smp: the ACPI CPU hotplug state is sized by it, so
QEMU names the ACPI device), an older QEMU (section versions), another field layout, CPU
features the target model lacks.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .prediction import Cause, TargetModel, device_path
from .problems import Problem

if TYPE_CHECKING:
    from .prediction import _F
    from .stream import StreamWalk
    from .target_cpu import GuestCpu

_ARCH_OF_MACHINE = [
    (re.compile(r"^(pc|q35|isapc|microvm|xenfv|xenpv|x-remote)(-|$)"), "x86"),
    (re.compile(r"^(pseries|powernv|ppce500|mac99|g3beige)"), "ppc"),
    (re.compile(r"^s390-ccw-virtio"), "s390x"),
]
_ARCH_FAMILY = {"x86_64": "x86", "i386": "x86", "ppc64": "ppc", "ppc": "ppc",
                "s390x": "s390x", "aarch64": "arm", "arm": "arm", "riscv64": "riscv",
                "riscv32": "riscv", "loongarch64": "loongarch", "mips64el": "mips"}
_ALIASES = {"pc": "pc-i440fx", "q35": "pc-q35"}
MIB = 1 << 20


def machine_family(name: str) -> str:
    base = re.sub(r"-\d+\.\d+(\.\d+)?$", "", name)
    return _ALIASES.get(base, base)


def _arch_of(machine: str | None) -> str | None:
    if machine is None:
        return None
    return next((a for r, a in _ARCH_OF_MACHINE if r.match(machine)), None)


def _span(fs: list[_F]) -> int | None:
    offs = [f.problem.offset for f in fs if f.problem.offset is not None]
    return min(offs) if offs else None


def _cause(code: str, summary: str, fix: str, fs: list[_F], first: _F | None) -> Cause:
    return Cause(code, summary, fix, _span(fs), first is not None and first in fs,
                 [f.problem for f in fs])


def _whole_machine(fs: list[_F], walk: StreamWalk, t: TargetModel,
                   first: _F | None) -> Cause | None:
    f, local = walk.machine_type, t.machine_type
    fa, ta = _arch_of(f), _ARCH_FAMILY.get(t.arch or "")
    n = len(fs) - 1
    more = f"; {n} more difference(s) follow from it" if n > 0 else ""
    if fa is not None and ta is not None and fa != ta:
        return _cause("architecture", f"architecture differs: the file is a {fa} guest "
                      f"({f}), the target QEMU emulates {t.arch}{more}",
                      f"load it with qemu-system-{'x86_64' if fa == 'x86' else fa}", fs, first)
    if f is None or local is None or machine_family(f) == machine_family(local):
        return None
    return _cause("machine-family", f"machine family differs: the file was saved on {f}, "
                  f"the target runs {local}{more}", f"start the target with `-machine {f}`",
                  fs, first)


def _newest(t: TargetModel, family: str) -> str | None:
    def ver(n: str) -> tuple[int, ...]:
        m = re.search(r"-(\d+)\.(\d+)$", n)
        return (int(m[1]), int(m[2])) if m else (-1,)

    names = [n for n in t.machines or {} if machine_family(n) == family and ver(n) != (-1,)]
    return max(names, key=ver) if names else None


def _machine_version(fs: list[_F], walk: StreamWalk, t: TargetModel,
                     first: _F | None) -> Cause:
    f, local = walk.machine_type or "", t.machine_type or ""
    alias = (t.machines or {}).get(local)
    qv = f"QEMU {t.qemu_version}" if t.qemu_version else "the target QEMU"
    summary = f"machine type differs: the file was saved on {f}, the target runs {local}"
    if alias:
        summary += f" (`{alias}` is {local} on {qv})"
    if t.machines is None:
        fix = f"start the target with `-machine {f}` (if its QEMU has that type)"
    elif f in t.machines:
        fix = f"start the target with `-machine {f}` ({qv} has it)"
    else:
        newest = _newest(t, machine_family(f))
        fix = (f"{qv} does not have {f}: an older QEMU cannot load a newer machine type; "
               "load it with a QEMU at least as new as the source's"
               + (f", or save it again on a source started with `-machine {newest}`"
                  if newest else ""))
    return _cause("machine-version", summary, fix, fs, first)


def _devices_at(names: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for n in names:
        path, dev = device_path(n)
        if path is not None and (path not in out or not n.endswith((".rom", ".vram"))):
            out[path] = dev
    return out


def _slot(path: str) -> str:
    m = re.fullmatch(r"[0-9a-f]{4}:00:([0-9a-f]{2})\.([0-9a-f])", path)
    return f",addr={m[1]}.{m[2]}" if m else f" (at PCI address {path})"


def _device_causes(buckets: dict[str, list[_F]], walk: StreamWalk, t: TargetModel,
                   first: _F | None) -> list[Cause]:
    paths = [k[len("device:"):] for k in buckets if k.startswith("device:")]
    if not paths:
        return []
    fat = _devices_at([s.idstr or "" for s in walk.sections if s.kind in ("START", "FULL")]
                      + [b.name for b in walk.blocks])
    if t.pci_devices is not None:
        tat = dict(t.pci_devices)
    else:
        tat = _devices_at([s.idstr for s in t.sections or []] + [b.name for b in t.blocks or []])
    moved, out = [], []
    for p in paths:
        dev = fat.get(p)
        to = next((q for q, d in tat.items() if q != p and d == dev and fat.get(q) != dev), None)
        if dev is not None and to is not None:
            moved.append((p, dev, to))
    for p in paths:
        fs = buckets[f"device:{p}"]
        if any(m[0] == p for m in moved):
            continue
        dev = fat.get(p) or p
        if tat.get(p) is not None:
            out.append(_cause("device-replaced", f"the target has {tat[p]} at {p} where the "
                              f"file has {dev}", f"use `-device {dev}{_slot(p)}` on the target "
                              f"instead of {tat[p]}", fs, first))
        else:
            what = f"{dev} at {p}" if fat.get(p) else p
            out.append(_cause("device-missing", f"the target has no {what}",
                              f"add `-device {dev}{_slot(p)}` to the target" if fat.get(p)
                              else "give the target the same devices as the source", fs, first))
    if moved:
        fs = [f for p, _, _ in moved for f in buckets[f"device:{p}"]]
        where = "; ".join(f"{d} is at {to} on the target, {p} in the file" for p, d, to in moved)
        out.append(_cause("device-order", f"the same devices in another PCI order ({where}); "
                          "RAMBlock and section names carry the PCI address",
                          "give each device the source's PCI address (`addr=`) or the same "
                          "-device order", fs, first))
    return out


def _ram_size(fs: list[_F], first: _F | None) -> Cause:
    p = fs[0].problem
    fl, tl = fs[0].detail if isinstance(fs[0].detail, tuple) else (None, None)
    if fl is None:
        return _cause("ram-size", f"guest RAM differs ({p.where})", "start the target with the "
                      "source's -m", fs, first)
    return _cause("ram-size", f"guest RAM size differs: {p.where} is {fl // MIB} MiB in the "
                  f"file, {tl // MIB} MiB on the target (-m)",
                  f"start the target with -m {fl // MIB}" if p.where.endswith("ram")
                  else f"give {p.where} the file's size ({fl} bytes)", fs, first)


def _vcpus(fs: list[_F], walk: StreamWalk, t: TargetModel, first: _F | None) -> Cause:
    fc = sum(1 for s in walk.sections if s.kind == "FULL" and s.idstr == "cpu")
    tc = t.cpu.count if t.cpu is not None else None
    tp = t.cpu.possible if t.cpu is not None else None
    lay = fs[0].detail
    dev = getattr(lay, "idstr", "?")
    d = lay.stop.diverges if lay is not None and lay.stop is not None else None
    sized = (f"{d.file_value} entr{'y' if d.file_value == 1 else 'ies'} in the file, "
             f"{d.target_value} on the target") if d else ""
    tgt = f"{tc} vCPU(s)" + (f" ({tp} possible)" if tp and tp != tc else "")
    return _cause("vcpu-count", f"vCPU count differs: the file has {fc} vCPU(s), the target "
                  f"{tgt}; the ACPI CPU hotplug state in {dev} is sized by the CPU count "
                  f"({sized}), so QEMU stops in {dev} although that device is the same",
                  f"start the target with the source's -smp ({fc} vCPU(s), same maxcpus)", fs,
                  first)


def _qemu_older(fs: list[_F], t: TargetModel, first: _F | None) -> Cause:
    p = fs[0].problem
    v = f"QEMU {t.qemu_version}" if t.qemu_version else "the target QEMU"
    return _cause("qemu-older", f"{v} is older than the QEMU that saved the file: "
                  f"{len(fs)} section(s) have newer versions (first: {p.where})",
                  "load it with a QEMU at least as new as the source's", fs, first)


def _cpu_features(fs: list[_F], t: TargetModel, use: GuestCpu, first: _F | None) -> Cause:
    feats = ", ".join(f"{f.detail.feature} ({f.detail.register}.{f.detail.bit_name})"
                      for f in fs)
    model = t.cpu.model if t.cpu is not None and t.cpu.model else "the target's"
    return _cause("cpu-features", f"the saved guest uses CPU features the target CPU model "
                  f"{model} lacks: {feats}; QEMU loads it and reports running, but the guest "
                  "faults or hangs on their first use",
                  "start the target with the source's -cpu model, or one that offers "
                  + ", ".join(sorted({f.detail.feature for f in fs})), fs, first)


def group_causes(fs: list[_F], walk: StreamWalk, t: TargetModel, use: GuestCpu,
                 first: _F | None) -> list[Cause]:
    if not fs:
        return []
    whole = _whole_machine(fs, walk, t, first)
    if whole is not None:
        return [whole]
    buckets: dict[str, list[_F]] = {}
    for f in fs:
        buckets.setdefault(f.key, []).append(f)
    out = _device_causes(buckets, walk, t, first)
    for key, group in buckets.items():
        if key.startswith("device:"):
            continue
        out.append(_other_cause(key, group, walk, t, use, first))
    out.sort(key=lambda c: (not c.stops_load, c.offset is None, c.offset or 0))
    return out


def _other_cause(key: str, fs: list[_F], walk: StreamWalk, t: TargetModel, use: GuestCpu,
                 first: _F | None) -> Cause:
    p = fs[0].problem
    if key == "machine":
        return _machine_version(fs, walk, t, first)
    if key == "ram-size":
        return _ram_size(fs, first)
    if key == "vcpus":
        return _vcpus(fs, walk, t, first)
    if key == "qemu-older":
        return _qemu_older(fs, t, first)
    if key == "cpu-features":
        return _cpu_features(fs, t, use, first)
    if key == "capability":
        cap, since = fs[0].detail
        v = f"QEMU {t.qemu_version}" if t.qemu_version else "the target QEMU"
        fix = ("convert the file for this QEMU: `miginspect convert FILE OUT --to legacy`, "
               "then load OUT" if cap == "mapped-ram"
               else f"load it with QEMU >= {since[0]}.{since[1]}")
        return _cause("capability", f"the file was saved with the {cap} capability, which "
                      f"QEMU >= {since[0]}.{since[1]} knows; {v} does not", fix, fs, first)
    if key == "page-size":
        return _cause("page-size", p.cause, p.fix, fs, first)
    if key.startswith("layout:"):
        lay = fs[0].detail
        d = lay.stop.diverges if lay is not None and lay.stop is not None else None
        diff = f": {d.describe()}" if d is not None else ""
        return _cause("device-layout", f"the state of {p.where} has another layout on the "
                      f"target{diff}", "give the target the source's configuration of this "
                      "device (properties, machine type, QEMU version)", fs, first)
    return _cause("firmware", f"{p.where} differs on the target (a block the machine builds: "
                  "firmware, ACPI tables)", "use the source's machine type, firmware and "
                  "devices", fs, first)


def summary_problems(causes: list[Cause]) -> list[Problem]:
    """One problem per cause for `check`'s problems[]; the cause lists the rest."""
    out = []
    for c in causes:
        errs = [p for p in c.problems if p.severity == "error"]
        lead = (errs or c.problems or [None])[0]
        more = len(c.problems) - 1
        text = c.summary + (f" ({more} more problem(s) from the same cause)" if more > 0 else "")
        out.append(Problem("error" if errs else "warning",
                           lead.offset if lead is not None else c.offset,
                           lead.where if lead is not None else "target", text, c.fix,
                           f"target-{c.code}", list(lead.qemu) if lead is not None else []))
    return out


__all__ = ["group_causes", "summary_problems", "machine_family"]
