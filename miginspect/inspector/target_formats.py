"""`--target` files as a `TargetModel`: QEMU's -dump-vmstate JSON, a libvirt domain XML,
and a state saved on the target (a snapshot, or the probe's own save) read with our readers.

* `-dump-vmstate FILE` (QEMU writes it and exits) lists every device type's VMState: its
  vmsd name, version and minimum version, fields, and subsections, nested. It has no
  instances, no PCI addresses and no RAMBlocks, and its field sizes are C struct sizes,
  not stream sizes: it answers "does this QEMU know this section's vmsd, in a version at
  least as new, and every subsection the file carries?" -- for a target host whose binary
  is not at hand. Its `vmschkmachine` is the machine type it was run with.
* A libvirt domain XML gives the machine type, memory (pc.ram), vCPUs (current and
  maximum), and the PCI address of NICs, the balloon and the video card: RAMBlock names of
  NIC ROMs and VGA memory, and the section names of those devices. Everything else it
  leaves unknown (a partial model: only what it describes is compared).
* A saved state: its configuration, RAMBlock list, sections with versions, and each
  device's vmdescription entry and bytes (for the field-level comparison).
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from typing import Any

from ..errors import MigError, UsageError
from .layout_compare import SubsectionInfo
from .prediction import TargetCpu, TargetLayout, TargetModel
from .stream import StreamWalk
from .target import TargetBlock, TargetDescription, TargetSection, load_target
from .vmdesc import device_index

#: Descriptions are small; refuse to read more than this as text.
MAX_TEXT = 64 << 20
MAX_DEPTH = 64


def sniff_target(head: bytes) -> str | None:
    """"domain-xml", "dump-vmstate" or None (another kind) from a file's first bytes."""
    s = head.lstrip()
    if s.startswith(b"<") and re.search(rb"<domain[\s>]", head):
        return "domain-xml"
    if s.startswith(b"{") and b'"vmschkmachine"' in head:
        return "dump-vmstate"
    return None


def load_any_target(path: str) -> TargetDescription | TargetModel:
    """`--target T`: a -dump-vmstate JSON or domain XML as a model, the older kinds (JSON
    description, `info ramblock`, snapshot) as the `target.TargetDescription` they were."""
    with open(path, "rb") as f:
        head = f.read(4096)
    kind = sniff_target(head)
    if kind == "domain-xml":
        return from_domain_xml(path)
    if kind == "dump-vmstate":
        return from_dump_vmstate(path)
    return load_target(path)


def _text(path: str) -> str:
    with open(path, "rb") as f:
        data = f.read(MAX_TEXT + 1)
    if len(data) > MAX_TEXT:
        raise UsageError(f"--target {path}: larger than {MAX_TEXT} bytes for a description",
                         None, "target", code="usage")
    return data.decode("utf-8", "replace")


def from_description(t: TargetDescription) -> TargetModel:
    """The older kinds as a model (a snapshot read again, with its field layouts)."""
    if t.kind == "snapshot":
        return from_saved_state(t.path, "snapshot", t.path)
    return TargetModel(t.kind, t.path, machine_type=t.machine_type,
                       page_size=t.target_page_size, blocks=t.blocks, sections=t.sections)


# ---------------------------------------------------------------------------
def from_saved_state(path: str, kind: str, source: str) -> TargetModel:
    """A state saved by the target, read with our own readers."""
    from .capture import open_capture

    try:
        cap = open_capture(path, strict=False)
    except MigError as e:
        raise UsageError(f"--target {source}: not a readable saved state: {e.oneline()}",
                         None, "target", code="usage") from e
    with cap:
        return model_from_walk(cap.source.buf, cap.walk, kind, source)


def model_from_walk(buf: Any, w: StreamWalk, kind: str, source: str) -> TargetModel:
    t = TargetModel(kind, source, machine_type=w.machine_type,
                    page_size=w.page_size if w.page_size_source != "default" else None)
    t.blocks = [TargetBlock(b.name, b.used_length, None, None) for b in w.blocks]
    t.sections = [TargetSection(s.idstr or "", s.instance_id or 0, s.version_id)
                  for s in w.sections if s.kind in ("START", "FULL")]
    descs = device_index(w.trailer.data if w.trailer is not None else None)
    t.layouts = {}
    seen: set[tuple[str, int]] = set()
    for s in w.sections:
        key = (s.idstr or "", s.instance_id or 0)
        if s.kind != "FULL" or key in seen or s.payload_offset is None or not descs.get(key):
            continue
        seen.add(key)
        end = s.payload_end if s.payload_end is not None else s.payload_offset
        t.layouts[key] = TargetLayout(descs[key][0], bytes(buf[s.payload_offset:end]))
    if w.error is not None:
        t.notes.append(f"the target's saved state could not be read to the end: "
                       f"{w.error.oneline()}")
    if kind == "snapshot":
        t.notes.append("a snapshot omits sections that were not needed when it was taken")
    return t


# ---------------------------------------------------------------------------
def from_dump_vmstate(path: str) -> TargetModel:
    try:
        data = json.loads(_text(path))
    except (json.JSONDecodeError, RecursionError) as e:
        raise UsageError(f"--target {path}: not valid -dump-vmstate JSON ({e})", None,
                         "target", code="usage") from e
    if not isinstance(data, dict):
        raise UsageError(f"--target {path}: -dump-vmstate JSON must be an object", None,
                         "target", code="usage")
    t = TargetModel("dump-vmstate", path)
    m = data.get("vmschkmachine")
    if isinstance(m, dict) and isinstance(m.get("Name"), str):
        t.machine_type = m["Name"]
    t.vmsds, t.vmsd_versions = vmsd_index(data)
    t.notes.append("-dump-vmstate has no RAMBlocks, instances or PCI addresses: only machine "
                   "type, section versions and subsections are compared")
    return t


def vmsd_index(data: dict[str, Any]) -> tuple[dict[str, dict[str, SubsectionInfo]],
                                              dict[str, tuple[int, int]]]:
    """vmsd name -> its subsections, and vmsd name -> (version, minimum version), from every
    Description in a -dump-vmstate JSON (devices, their struct fields, subsections)."""
    subs: dict[str, dict[str, SubsectionInfo]] = {}
    vers: dict[str, tuple[int, int]] = {}
    stack: list[tuple[Any, int]] = [(v.get("Description"), 0) for v in data.values()
                                    if isinstance(v, dict)]
    while stack:
        d, depth = stack.pop()
        if not isinstance(d, dict) or depth > MAX_DEPTH or not isinstance(d.get("name"), str):
            continue
        name = d["name"]
        vers[name] = (_int(d.get("version_id")), _int(d.get("minimum_version_id")))
        known = subs.setdefault(name, {})
        for s in d.get("Subsections") or []:
            if isinstance(s, dict) and isinstance(s.get("name"), str):
                known[s["name"]] = SubsectionInfo(_int(s.get("version_id")),
                                                  _int(s.get("minimum_version_id")))
                stack.append((s, depth + 1))
        for f in d.get("Fields") or []:
            if isinstance(f, dict):
                stack.append((f.get("Description"), depth + 1))
    return subs, vers


def _int(v: Any) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


# ---------------------------------------------------------------------------
_UNITS = {"b": 1, "bytes": 1, "kb": 1000, "k": 1024, "kib": 1024, "mb": 1000 ** 2,
          "m": 1 << 20, "mib": 1 << 20, "gb": 1000 ** 3, "g": 1 << 30, "gib": 1 << 30,
          "tb": 1000 ** 4, "t": 1 << 40, "tib": 1 << 40}
#: libvirt <interface><model type=...> -> (QEMU section vmsd name, ROM RAMBlock device name)
_NICS = {"e1000": ("e1000", "e1000"), "e1000e": ("e1000e", "e1000e"),
         "rtl8139": ("rtl8139", "rtl8139"), "virtio": ("virtio-net", "virtio-net"),
         "ne2k_pci": ("ne2000", None), "vmxnet3": ("vmxnet3", None)}
#: Device names the XML lists completely (a file device of these kinds absent from the XML
#: is absent from the target).
XML_KINDS = {v[0] for v in _NICS.values()} | {"virtio-balloon", "vga"}


def _bytes(el: ET.Element | None, default_unit: str = "KiB") -> int | None:
    if el is None or el.text is None:
        return None
    try:
        n = int(el.text.strip())
    except ValueError:
        return None
    return n * _UNITS.get((el.get("unit") or default_unit).lower(), 1024)


def _pci_path(addr: ET.Element | None, parents: dict[int, str]) -> str | None:
    if addr is None or addr.get("type") != "pci":
        return None
    try:
        dom, bus, slot, fn = (int(addr.get(k, "0"), 0) for k in
                              ("domain", "bus", "slot", "function"))
    except ValueError:
        return None
    if bus == 0:
        return f"{dom:04x}:00:{slot:02x}.{fn:x}"
    parent = parents.get(bus)
    return f"{parent}:{slot:02x}.{fn:x}" if parent is not None else None


def from_domain_xml(path: str) -> TargetModel:
    try:
        root = ET.fromstring(_text(path))
    except ET.ParseError as e:
        raise UsageError(f"--target {path}: not a well-formed domain XML ({e})", None,
                         "target", code="usage") from e
    if root.tag != "domain":
        raise UsageError(f"--target {path}: the XML root is <{root.tag}>, not <domain>", None,
                         "target", code="usage")
    t = TargetModel("domain-xml", path, blocks=[], blocks_complete=False, sections=[],
                    sections_complete=False, pci_devices={}, pci_kinds=set(XML_KINDS))
    typ = root.find("os/type")
    if typ is not None:
        t.machine_type = typ.get("machine")
        t.arch = typ.get("arch")
    _xml_memory(root, t)
    _xml_vcpus(root, t)
    _xml_devices(root, t)
    t.notes.append("a domain XML describes memory, vCPUs, machine type and the PCI addresses "
                   "of NICs, balloon and video; other devices are not compared")
    return t


def _xml_memory(root: ET.Element, t: TargetModel) -> None:
    mem = _bytes(root.find("memory"))
    numa = root.find("cpu/numa") is not None or root.find("maxMemory") is not None
    if mem is not None and not numa and t.blocks is not None:
        t.blocks.append(TargetBlock("pc.ram", mem, mem, None))
    elif numa:
        t.notes.append("NUMA cells or memory hotplug: guest RAM is split into backends; "
                       "RAM sizes are not compared")


def _xml_vcpus(root: ET.Element, t: TargetModel) -> None:
    v = root.find("vcpu")
    if v is None or v.text is None:
        return
    try:
        possible = int(v.text.strip())
        current = int(v.get("current", possible))
    except ValueError:
        return
    model = root.find("cpu/model")
    t.cpu = TargetCpu(model.text.strip() if model is not None and model.text else
                      (root.find("cpu").get("mode") if root.find("cpu") is not None else None),
                      current, possible, None)


def _xml_devices(root: ET.Element, t: TargetModel) -> None:
    assert t.pci_devices is not None and t.blocks is not None
    parents: dict[int, str] = {}
    for c in root.findall("devices/controller[@type='pci']"):
        p = _pci_path(c.find("address"), parents)
        try:
            idx = int(c.get("index", "-1"))
        except ValueError:
            continue
        if p is not None and idx > 0:
            parents[idx] = p
    for el in root.find("devices") if root.find("devices") is not None else []:
        p = _pci_path(el.find("address"), parents)
        if p is None:
            continue
        name, rom = _xml_device(el)
        t.pci_devices[p] = name
        if rom is not None:
            t.blocks.append(TargetBlock(f"{p}/{rom}.rom", 0, None, None))
        if name == "vga":
            vram = el.find("model")
            size = int(vram.get("vram", "16384")) * 1024 if vram is not None and (
                vram.get("vram", "16384").isdigit()) else None
            if size:
                t.blocks.append(TargetBlock(f"{p}/vga.vram", size, size, None))


def _xml_device(el: ET.Element) -> tuple[str | None, str | None]:
    """(QEMU section name, ROM device name) of a <devices> child, None where unknown."""
    model = el.find("model")
    mtype = model.get("type") if model is not None else None
    if el.tag == "interface":
        sec, rom = _NICS.get(mtype or "", (None, None))
        r = el.find("rom")
        if r is not None and (r.get("enabled") == "no" or r.get("bar") == "off"):
            rom = None
        return sec, (f"{rom}-pci" if rom == "virtio-net" else rom)
    if el.tag == "memballoon" and el.get("model") == "virtio":
        return "virtio-balloon", None
    if el.tag == "video" and mtype == "vga":
        return "vga", None
    return None, None


__all__ = ["sniff_target", "load_any_target", "from_dump_vmstate", "from_domain_xml",
           "from_saved_state", "model_from_walk", "from_description", "vmsd_index", "XML_KINDS"]
