"""Will the file load on *that* target? QEMU's loader, replayed against a target model.

A `TargetModel` is what is known of the destination: from the target QEMU itself
(`target_qemu.probe_qemu`: it was started paused and asked), from its `-dump-vmstate`
JSON or a libvirt domain XML (`target_formats`), or from the older `--target` kinds (a
snapshot taken there, `info ramblock` text, a JSON description). `predict` goes through the
file in the order QEMU's loader does (migration/savevm.c `qemu_loadvm_state`): the
configuration record (machine type, target page bits), then every section in file order --
`find_se` ("Unknown savevm section or instance"), the section version, the RAMBlock list in
the ram START section (migration/ram.c `parse_ramblock`: "Unknown ramblock", the resize
check "Size mismatch" / "Size too large"), and each device section read with the target's
own field layout (`layout_compare`) up to its footer. The first failure is what QEMU prints
and where it stops (`first_error`, with the file offset); everything else found is grouped
under its root cause (a device missing or moved, another -m, another CPU count, another
machine family or architecture, an older QEMU) so that one cause is one entry, not one per
section. A file that loads but whose guest uses CPU features the target model lacks (CR4,
XCR0, EFER bits in its `cpu` sections) "loads but the guest may not run".
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

from .layout_compare import SectionLayout, SubsectionInfo, compare_section
from .problems import Problem
from .report import Note, note
from .source import Source
from .stream import StreamWalk
from .target import TargetBlock, TargetSection
from .target_cpu import GuestCpu, guest_cpu_use, missing_features
from .vmdesc import device_index

LOADS = "loads"
FAILS_TO_START = "fails to start"
FAILS_TO_LOAD = "fails to load"
GUEST_MAY_NOT_RUN = "loads but the guest may not run"
OUTCOMES = (LOADS, FAILS_TO_START, FAILS_TO_LOAD, GUEST_MAY_NOT_RUN)

#: note code: what the probe changed in the target's command line, what could not be
#: compared, what a partial description leaves out
NOTE_TARGET = "target-note"

UNKNOWN_SECTION = ("Unknown savevm section or instance '{}' {}. Make sure that your current VM "
                   "setup matches your saved VM setup, including any hotplugged devices")


@dataclass
class TargetLayout:
    """The target's own state of one device: its vmdescription entry and its bytes."""

    desc: dict[str, Any]
    payload: bytes | None = None


@dataclass
class TargetCpu:
    model: str | None = None  # QOM type of vCPU 0, e.g. "qemu64-x86_64-cpu"
    count: int | None = None  # vCPUs present
    possible: int | None = None  # vCPUs possible (-smp maxcpus)
    features: dict[str, bool] | None = None  # feature property -> offered


@dataclass
class TargetModel:
    """What is known of the destination. `None` means "not known", not "empty"."""

    kind: str  # "qemu", "dump-vmstate", "domain-xml", "snapshot", "info ramblock", "json"
    source: str  # the command line or the path
    qemu_version: str | None = None
    arch: str | None = None
    machine_type: str | None = None  # resolved: "pc" -> "pc-i440fx-10.0"
    machines: dict[str, str | None] | None = None  # machine types the binary has -> alias
    start_error: str | None = None  # the target QEMU exited at start: its first error line
    stderr: list[str] = field(default_factory=list)
    page_size: int | None = None
    blocks: list[TargetBlock] | None = None
    blocks_complete: bool = True
    sections: list[TargetSection] | None = None
    sections_complete: bool = True
    layouts: dict[tuple[str, int], TargetLayout] | None = None
    vmsds: dict[str, dict[str, SubsectionInfo]] | None = None  # vmsd -> subsections known
    vmsd_versions: dict[str, tuple[int, int]] | None = None  # vmsd -> (version, minimum)
    pci_devices: dict[str, str | None] | None = None  # PCI path -> device (domain XML)
    pci_kinds: set[str] | None = None  # devices the partial model lists wherever they are
    cpu: TargetCpu | None = None
    compared: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self, prediction: Prediction | None = None) -> TargetReport:
        """What the report keeps of it (no layouts or payloads)."""
        cpu = None
        if self.cpu is not None:
            cpu = TargetCpuInfo(self.cpu.model, self.cpu.count, self.cpu.possible)
        return TargetReport(
            kind=self.kind, path=self.source, qemu_version=self.qemu_version, arch=self.arch,
            machine_type=self.machine_type, page_size=self.page_size,
            start_error=self.start_error, ramblocks=self.blocks,
            sections=len(self.sections) if self.sections is not None else None, cpu=cpu,
            compared=list(self.compared),
            notes=[note(NOTE_TARGET, n, "target") for n in self.notes],
            prediction=prediction)


@dataclass
class Cause:
    """One root cause and the problems that follow from it."""

    code: str  # machine-family, architecture, machine-version, device-missing, ...
    summary: str
    fix: str
    offset: int | None  # first file offset concerned
    stops_load: bool  # holds the error QEMU stops at
    problems: list[Problem] = field(default_factory=list)


@dataclass
class Prediction:
    outcome: str  # one of OUTCOMES
    first_error: str | None  # the line QEMU prints first (without "qemu-system-x86_64: ")
    offset: int | None  # file offset where QEMU stops
    where: str | None  # section idstr or RAMBlock there
    certain: bool  # False: part of the target was not known (partial description)
    causes: list[Cause]


@dataclass
class TargetCpuInfo:
    model: str | None  # QOM type of vCPU 0
    count: int | None  # vCPUs present
    possible: int | None  # vCPUs possible (-smp maxcpus)


@dataclass
class TargetReport:
    """What `check` reports of the target it compared with (`--target`, `--target-qemu`)
    and the predicted outcome of loading the file there."""

    kind: str  # "qemu", "dump-vmstate", "domain-xml", "snapshot", "info ramblock", "json"
    path: str  # the command line or the path
    qemu_version: str | None = None
    arch: str | None = None
    machine_type: str | None = None
    page_size: int | None = None
    start_error: str | None = None  # the target QEMU did not start: its first error line
    ramblocks: list[TargetBlock] | None = None
    sections: int | None = None  # device sections known of the target
    cpu: TargetCpuInfo | None = None
    compared: list[str] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)  # what the probe changed, and limits
    prediction: Prediction | None = None


@dataclass
class TargetPrediction:
    """What `check` attaches: the target, the prediction, one problem per cause."""

    target: TargetModel
    prediction: Prediction
    problems: list[Problem]

    def report(self) -> TargetReport:
        return self.target.summary(self.prediction)


@dataclass
class _F:
    """A finding: a problem, the cause it belongs to, whether QEMU's loader stops at it."""

    problem: Problem
    key: str
    stops: bool
    detail: Any = None


def _err(off: int | None, where: str, line: str, fix: str, code: str, key: str,
         detail: Any = None) -> _F:
    return _F(Problem("error", off, where, line, fix, code, [line]), key, True, detail)


_PCI = re.compile(r"^([0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-9a-f](?::[0-9a-f]{2}\.[0-9a-f])*)"
                  r"/(.+)$")


def device_path(name: str) -> tuple[str | None, str]:
    """("0000:00:03.0", "e1000") from "0000:00:03.0/e1000" (or ".../e1000.rom")."""
    m = _PCI.match(name)
    if m is None:
        return None, name
    dev = re.sub(r"\.(rom|vram|bar\d*|ram)$", "", m[2])
    if m[2].endswith(".rom"):  # virtio ROM blocks are named after the proxy: virtio-net-pci
        dev = re.sub(r"-pci$", "", dev)
    return m[1], dev


# ---------------------------------------------------------------------------
def _machine(walk: StreamWalk, t: TargetModel) -> list[_F]:
    f, local = walk.machine_type, t.machine_type
    if f is None or local is None or walk.configuration is None:
        return []
    t.compared.append("machine type")
    if local[:len(f)] == f:  # configuration_post_load: strncmp over the received length
        return []
    line = f"Machine type received is '{f}' and local is '{local}'"
    return [_err(walk.configuration.offset, "configuration", line,
                 f"start the target with `-machine {f}`", "target-machine", "machine")]


#: Migration capabilities a file may carry, and the first QEMU that knows each.
CAPABILITY_SINCE = {"mapped-ram": (9, 0), "x-ignore-shared": (4, 0)}


def _version(t: TargetModel) -> tuple[int, int] | None:
    m = re.match(r"(\d+)\.(\d+)", t.qemu_version or "")
    return (int(m[1]), int(m[2])) if m else None


def _capabilities(walk: StreamWalk, t: TargetModel) -> list[_F]:
    """The configuration's capabilities subsection is loaded before the machine type is
    compared (its post_load runs first): a QEMU that does not know a capability says so
    first. A target that knows it is assumed to have it set (check's `incoming` says how)."""
    c, v = walk.configuration, _version(t)
    if c is None or v is None:
        return []
    off = next((o for n, _, o in c.subsections if n.endswith("capabilities")), c.offset)
    out = []
    for cap in walk.capabilities:
        since = CAPABILITY_SINCE.get(cap)
        if since is not None and v < since:
            line = f"Received unknown capability {cap}"
            out.append(_err(off, "configuration", line, f"needs QEMU >= {since[0]}.{since[1]}",
                            "target-capability", "capability", (cap, since)))
    return out


def _page_bits(walk: StreamWalk, t: TargetModel) -> list[_F]:
    c = walk.configuration
    if t.page_size is None or c is None:
        return []
    t.compared.append("target page size")
    fbits = c.target_page_bits if c.target_page_bits is not None else 12
    tbits = t.page_size.bit_length() - 1
    if fbits == tbits:
        return []
    line = f"Received TARGET_PAGE_BITS is {fbits} but local is {tbits}"
    return [_err(c.offset, "configuration", line, "load it on a target of the same page size",
                 "target-page-size", "page-size")]


def _blocks(walk: StreamWalk, t: TargetModel) -> list[_F]:
    """parse_ramblock() for every entry of the RAMBlock list, in list order."""
    if t.blocks is None:
        return []
    t.compared.append("RAMBlocks")
    tb = {b.name: b for b in t.blocks}
    out: list[_F] = []
    for b in walk.blocks:
        if b.mapped_ram is not None and b.mapped_ram.skipped:
            continue
        path, dev = device_path(b.name)
        key = f"device:{path}" if path else ("ram-size" if b.name.endswith("ram")
                                            else f"block:{b.name}")
        x = tb.get(b.name)
        if x is None:
            if not t.blocks_complete and not _pci_absent(t, path, dev):
                continue
            out.append(_err(b.entry_offset, b.name,
                            f'Unknown ramblock "{b.name}", cannot accept migration',
                            "give the target the same devices at the same PCI addresses",
                            "target-unknown-block", key))
            continue
        if b.used_length == x.used_length or (x.used_length == 0 and not t.blocks_complete):
            continue  # (a partial description names a block without its size: 0)
        mx = x.max_length if x.max_length is not None else x.used_length
        if mx > x.used_length and b.used_length <= mx:
            continue  # resizeable: qemu_ram_resize grows it
        line = (f"Size too large: {b.name}: 0x{b.used_length:x} > 0x{mx:x}: Invalid argument"
                if mx > x.used_length else
                f"Size mismatch: {b.name}: 0x{b.used_length:x} != 0x{x.used_length:x}: "
                "Invalid argument")
        out.append(_err(b.entry_offset, b.name, line, "make the target's size of this block "
                        f"match the file ({b.used_length} bytes)", "target-size", key,
                        (b.used_length, x.used_length)))
    return out


def _pci_absent(t: TargetModel, path: str | None, dev: str) -> bool:
    """With a partial description: is the device at `path` known to be absent or other?"""
    if path is None or t.pci_devices is None:
        return False
    if path not in t.pci_devices:
        return dev in (t.pci_kinds or ())
    name = t.pci_devices[path]
    return name is not None and name != dev


def _section_known(t: TargetModel, idstr: str, inst: int) -> bool | None:
    if t.sections is not None and t.sections_complete:
        return any(s.idstr == idstr and s.instance_id == inst for s in t.sections)
    path, dev = device_path(idstr)
    if t.pci_devices is not None and path is not None:
        return not _pci_absent(t, path, dev)
    return None


def _section_version(s: Any, vmsd: str | None, t: TargetModel) -> _F | None:
    tv = next((x.version_id for x in t.sections or [] if x.idstr == s.idstr
               and x.instance_id == s.instance_id and x.version_id is not None), None)
    tmin = None
    if t.vmsd_versions is not None and vmsd in t.vmsd_versions:
        v, tmin = t.vmsd_versions[vmsd]
        tv = v if tv is None else tv
    if s.version_id is None:
        return None
    if tv is not None and s.version_id > tv:
        line = f"savevm: unsupported version {s.version_id} for '{s.idstr}' v{tv}"
    elif tmin is not None and s.version_id < tmin:
        line = (f"{vmsd}: incoming version_id {s.version_id} is too old for local minimum "
                f"version_id  {tmin}")
    else:
        return None
    return _err(s.offset, s.idstr or "", line, "load it with a QEMU at least as new as the "
                "one that saved it", "target-section-version", "qemu-older",
                (s.version_id, tv))


def _sections(src: Source, walk: StreamWalk, t: TargetModel) -> list[_F]:
    """Every section in file order, as qemu_loadvm_section_start_full reads it."""
    out: list[_F] = []
    descs = device_index(walk.trailer.data if walk.trailer is not None else None)
    seen: dict[tuple[str, int], int] = {}
    layouts = 0
    for s in walk.sections:
        if s.kind not in ("START", "FULL"):
            continue
        key = (s.idstr or "", s.instance_id or 0)
        k = seen.get(key, 0)
        seen[key] = k + 1
        lst = descs.get(key, [])
        fdesc = lst[k] if k < len(lst) else None
        vmsd = str(fdesc.get("vmsd_name")) if fdesc else None
        path, _ = device_path(key[0])
        dkey = f"device:{path}" if path else f"device:{key[0]}#{key[1]}"
        if _section_known(t, *key) is False:
            out.append(_err(s.offset, key[0], UNKNOWN_SECTION.format(*key),
                            "give the target the same devices (same -device list, same PCI "
                            "addresses) as the source", "target-unknown-section", dkey))
            continue
        v = _section_version(s, vmsd, t)
        if v is not None:
            out.append(v)
            continue
        if s.kind == "START" and key[0] == "ram":
            out += _blocks(walk, t)
        elif s.kind == "FULL" and fdesc is not None and s.payload_offset is not None:
            lay = _layout(src, walk, s, fdesc, t)
            if lay is not None:
                layouts += 1
                if lay.stop is not None:
                    out.append(_layout_finding(lay, walk, t))
    if t.sections is not None or t.pci_devices is not None:
        t.compared.append("device sections")
    if layouts:
        t.compared.append("field layouts")
    return out


def _layout(src: Source, walk: StreamWalk, s: Any, fdesc: dict[str, Any],
            t: TargetModel) -> SectionLayout | None:
    tl = (t.layouts or {}).get((s.idstr or "", s.instance_id or 0))
    try:
        if tl is None and t.layouts is None and t.cpu is not None and t.cpu.possible:
            synth = cpuhp_layout(fdesc, t.cpu.possible)
            tl = TargetLayout(synth) if synth is not None else None
        if tl is None and t.vmsds is None:
            return None
        return compare_section(src.buf, s, fdesc, tl.desc if tl else None,
                               tl.payload if tl else None, t.vmsds, walk.footers is not False)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, RecursionError):
        t.notes.append(f"the description of {s.idstr!r} could not be compared (malformed)")
        return None


def find_cpuhp(desc: Any, depth: int = 0) -> list[dict[str, Any]]:
    """Every `*/cpuhp` subsection in a device description, at any depth (piix4_pm has it
    at the top, ich9_pm inside its `pm` struct field)."""
    out: list[dict[str, Any]] = []
    if not isinstance(desc, dict) or depth > 32:
        return out
    for sub in desc.get("subsections") or []:
        if isinstance(sub, dict):
            if str(sub.get("vmsd_name", "")).endswith("/cpuhp"):
                out.append(sub)
            out += find_cpuhp(sub, depth + 1)
    for f in desc.get("fields") or []:
        if isinstance(f, dict):
            out += find_cpuhp(f.get("struct") if "struct" in f else f if "fields" in f else None,
                              depth + 1)
    return out


def cpuhp_layout(fdesc: dict[str, Any], cpus: int) -> dict[str, Any] | None:
    """The file's description of an ACPI device with its CPU hotplug array sized for `cpus`
    possible vCPUs: the layout a target with that many reads it with (hw/acpi/cpu.c sizes
    `devs` by the machine's possible CPUs; the count is not in the stream)."""
    out = copy.deepcopy(fdesc)
    subs = find_cpuhp(out)
    for sub in subs:
        for f in sub.get("fields") or []:
            st = f.get("struct") if isinstance(f, dict) else None
            if not isinstance(st, dict) or not isinstance(st.get("fields"), list):
                continue
            devs = [x for x in st["fields"] if isinstance(x, dict) and x.get("name") == "devs"]
            if not devs:
                continue
            one = {k: v for k, v in devs[0].items() if k not in ("index", "array_len")}
            if cpus > 1:
                one["array_len"] = cpus
            i = st["fields"].index(devs[0])
            st["fields"] = [x for x in st["fields"] if x not in devs]
            st["fields"].insert(i, one)
    return out if subs else None


def _layout_finding(lay: SectionLayout, walk: StreamWalk, t: TargetModel) -> _F:
    stop = lay.stop
    assert stop is not None
    d = stop.diverges
    fcpus = sum(1 for s in walk.sections if s.kind == "FULL" and s.idstr == "cpu")
    tcpus = {t.cpu.count, t.cpu.possible} if t.cpu is not None else set()
    vcpus = d is not None and d.kind == "array-length" and (
        "cpuhp" in d.path or (d.file_value == fcpus and d.target_value in tcpus))
    why = ""
    if d is not None:
        why = (f"; the layouts part at {d.path} (0x{d.offset:x}): {d.file_value} in the file, "
               f"{d.target_value} on the target")
    p = Problem("error", stop.offset, lay.idstr, stop.line + why,
                "make the target's configuration match the source's", stop.code, [stop.line])
    return _F(p, "vcpus" if vcpus else f"layout:{lay.idstr}", True, lay)


def _cpu(src: Source, walk: StreamWalk, t: TargetModel) -> tuple[GuestCpu, list[_F]]:
    from .capture import Capture
    from .devices import decode_devices

    if t.cpu is None or not t.cpu.features or walk.trailer is None or walk.trailer.data is None:
        return GuestCpu(), []
    try:
        use = guest_cpu_use(decode_devices(Capture(src, walk), "cpu").devices)
    except Exception:  # noqa: BLE001 - any decoding trouble: nothing known of CPU use
        return GuestCpu(), []
    t.compared.append("CPU features")
    out = []
    for u in missing_features(use, t.cpu.features):
        msg = (f"the guest uses {u.feature} ({u.register}.{u.bit_name}, bit {u.bit}) and the "
               f"target CPU model {t.cpu.model or ''} does not offer it")
        out.append(_F(Problem("warning", u.offset, "cpu", msg,
                              f"start the target with a -cpu model that has {u.feature} (the "
                              "source's model)", "target-cpu-features", []),
                      "cpu-features", False, u))
    return use, out


# ---------------------------------------------------------------------------
def predict(src: Source, walk: StreamWalk, t: TargetModel) -> TargetPrediction:
    """The outcome of loading the walked file into target `t`."""
    from .prediction_causes import group_causes, summary_problems

    if t.start_error is not None:
        c = Cause("start", f"the target QEMU does not start: {t.start_error}",
                  "fix the target's command line (or use a QEMU that has what it asks for)",
                  None, True, [Problem("error", None, "target", t.start_error,
                                       "fix the target's command line", "target-start",
                                       [t.start_error])])
        pred = Prediction(FAILS_TO_START, t.start_error, None, None, True, [c])
        return TargetPrediction(t, pred, summary_problems([c]))
    fs = _capabilities(walk, t) + _machine(walk, t) + _page_bits(walk, t)
    fs += _sections(src, walk, t)
    use, cpu = _cpu(src, walk, t)
    fs += cpu
    first = next((f for f in fs if f.stops), None)
    if first is not None:
        outcome = FAILS_TO_LOAD
    else:
        outcome = GUEST_MAY_NOT_RUN if cpu else LOADS
    causes = group_causes(fs, walk, t, use, first)
    pred = Prediction(outcome, first.problem.qemu[0] if first else None,
                      first.problem.offset if first else None,
                      first.problem.where if first else None,
                      certain=t.blocks is not None and t.blocks_complete
                      and t.sections is not None and t.sections_complete, causes=causes)
    return TargetPrediction(t, pred, summary_problems(causes))


def target_problems(src: Source, walk: StreamWalk, target: Any = None,
                    target_qemu: str | None = None) -> tuple[list[Problem],
                                                         TargetReport | None]:
    """What `check_file` adds for `--target` / `--target-qemu`: the problems for its
    problems[] and the report's `target` (with its `prediction`)."""
    from .target import compare
    from .target_formats import from_description
    from .target_qemu import predict_on_qemu

    if target_qemu is not None:
        tp = predict_on_qemu(src, walk, target_qemu)
        return tp.problems, tp.report()
    if isinstance(target, TargetModel):
        tp = predict(src, walk, target)
        return tp.problems, tp.report()
    if target is None:
        return [], None
    extra = compare(walk, target)  # the older kinds keep their problems; add the prediction
    model = from_description(target)
    pred = predict(src, walk, model).prediction
    rep = model.summary(pred)
    rep.compared = list(target.compared)  # what compare() looked at
    return extra, rep


__all__ = ["predict", "target_problems", "TargetModel", "TargetLayout", "TargetCpu",
           "Prediction", "Cause", "TargetPrediction", "TargetReport", "TargetCpuInfo",
           "device_path", "cpuhp_layout",
           "find_cpuhp", "OUTCOMES", "LOADS", "FAILS_TO_START", "FAILS_TO_LOAD",
           "GUEST_MAY_NOT_RUN"]
