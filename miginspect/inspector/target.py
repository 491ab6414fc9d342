"""`check --target T`: will the file load on *that* destination?

T is one of:

* another snapshot taken on the target host (any file `open_capture` reads);
* the saved output of HMP `info ramblock` on the target QEMU (a text file whose
  header line contains "Block Name");
* a JSON description, all keys optional::

    {
      "machine_type": "pc-q35-10.0",
      "target_page_size": 4096,
      "ramblocks": [
        {"name": "pc.ram", "used_length": 134217728, "max_length": 134217728,
         "page_size": 4096}
      ],
      "sections": [{"idstr": "serial", "instance_id": 0, "version_id": 3}]
    }

  Lengths may be integers or "0x..." strings; `max_length` (the `Total` column
  of `info ramblock`) is only larger than `used_length` for resizeable blocks;
  `page_size` of a block is its host page size (hugepages).

The comparison mirrors QEMU's loader: a RAMBlock in the file but not on the
target ("Unknown ramblock"), a length QEMU cannot resize to ("Size mismatch";
"Length mismatch" in older QEMU), a page-size difference, another machine
type ("Machine type received is ... and local is ..."), and device sections the
target does not have ("Unknown savevm section or instance") or only in an
older version ("unsupported version").
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import MigError, UsageError
from ..formats import stream as S
from .model import RamBlock, StreamWalk
from .problems import Problem, problem

#: A target description is a small file; refuse to slurp anything larger as text.
MAX_TEXT_TARGET = 16 << 20


@dataclass
class TargetBlock:
    name: str
    used_length: int
    max_length: int | None = None
    page_size: int | None = None


@dataclass
class TargetSection:
    idstr: str
    instance_id: int
    version_id: int | None = None


@dataclass
class TargetDescription:
    kind: str  # "snapshot", "info ramblock", "json"
    path: str
    machine_type: str | None = None
    target_page_size: int | None = None
    blocks: list[TargetBlock] | None = None
    sections: list[TargetSection] | None = None
    compared: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------
def load_target(path: str) -> TargetDescription:
    """Read T: JSON description, `info ramblock` text, or a snapshot."""
    with open(path, "rb") as f:
        head = f.read(4096)
    text_head = head.lstrip()
    if text_head.startswith(b"{"):
        return _from_json(path)
    if b"Block Name" in head:
        return _from_info_ramblock(path)
    return _from_snapshot(path)


def _usage(message: str) -> UsageError:
    """A --target that cannot be used (exit 2)."""
    return UsageError(message, None, "target", code="usage")


def _read_text(path: str) -> str:
    with open(path, "rb") as f:
        data = f.read(MAX_TEXT_TARGET + 1)
    if len(data) > MAX_TEXT_TARGET:
        raise _usage(f"--target {path}: larger than {MAX_TEXT_TARGET} bytes for a "
                         "description")
    return data.decode("utf-8", "replace")


def _num(v: Any, what: str) -> int:
    if isinstance(v, bool):
        raise _usage(f"--target: {what} must be a number, got {v!r}")
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        try:
            return int(v, 0)
        except ValueError:
            pass
    raise _usage(f"--target: {what} must be a number, got {v!r}")


def _from_json(path: str) -> TargetDescription:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise _usage(f"--target {path}: not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise _usage(f"--target {path}: the JSON must be an object")
    t = TargetDescription("json", path)
    if data.get("machine_type") is not None:
        t.machine_type = str(data["machine_type"])
    if data.get("target_page_size") is not None:
        t.target_page_size = _num(data["target_page_size"], "target_page_size")
    if data.get("ramblocks") is not None:
        if not isinstance(data["ramblocks"], list):
            raise _usage("--target: ramblocks must be a list")
        t.blocks = []
        for i, b in enumerate(data["ramblocks"]):
            if not isinstance(b, dict) or "name" not in b or "used_length" not in b:
                raise _usage(f"--target: ramblocks[{i}] needs name and used_length")
            t.blocks.append(TargetBlock(
                str(b["name"]), _num(b["used_length"], f"ramblocks[{i}].used_length"),
                _num(b["max_length"], f"ramblocks[{i}].max_length")
                if b.get("max_length") is not None else None,
                _num(b["page_size"], f"ramblocks[{i}].page_size")
                if b.get("page_size") is not None else None))
    if data.get("sections") is not None:
        if not isinstance(data["sections"], list):
            raise _usage("--target: sections must be a list")
        t.sections = []
        for i, s in enumerate(data["sections"]):
            if not isinstance(s, dict) or "idstr" not in s:
                raise _usage(f"--target: sections[{i}] needs idstr")
            t.sections.append(TargetSection(
                str(s["idstr"]), _num(s.get("instance_id", 0), f"sections[{i}].instance_id"),
                _num(s["version_id"], f"sections[{i}].version_id")
                if s.get("version_id") is not None else None))
    return t


_SIZE_UNITS = {"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "K": 1 << 10,
               "M": 1 << 20, "G": 1 << 30, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}
_RAMBLOCK_LINE = re.compile(
    r"^\s*(?P<name>\S+)\s+(?P<ps>\d+(?:\.\d+)?)\s*(?P<unit>[KMG]i?B?|B)?\s+"
    r"0x(?P<off>[0-9a-fA-F]+)\s+0x(?P<used>[0-9a-fA-F]+)\s+0x(?P<total>[0-9a-fA-F]+)")


def parse_info_ramblock(text: str) -> list[TargetBlock]:
    """Blocks from HMP `info ramblock` output (name, PSize, Offset, Used, Total, ...)."""
    out = []
    for line in text.splitlines():
        m = _RAMBLOCK_LINE.match(line)
        if not m:
            continue
        ps = int(float(m["ps"]) * _SIZE_UNITS.get(m["unit"] or "", 1))
        out.append(TargetBlock(m["name"], int(m["used"], 16), int(m["total"], 16), ps))
    return out


def _from_info_ramblock(path: str) -> TargetDescription:
    blocks = parse_info_ramblock(_read_text(path))
    if not blocks:
        raise _usage(f"--target {path}: no RAMBlock lines found in the `info ramblock` "
                         "text")
    return TargetDescription("info ramblock", path, blocks=blocks)


def _from_snapshot(path: str) -> TargetDescription:
    from .capture import open_capture  # local: capture imports the heavy readers

    try:
        cap = open_capture(path, strict=False)
    except MigError as e:
        raise _usage(f"--target {path} is not a description, `info ramblock` text or a "
                         f"readable snapshot: {e.oneline()}") from e
    with cap:
        w = cap.walk
        t = TargetDescription("snapshot", path, machine_type=w.machine_type,
                              target_page_size=w.page_size if w.page_size_source != "default"
                              else None)
        t.blocks = [TargetBlock(b.name, b.used_length, None, None) for b in w.blocks]
        t.sections = [TargetSection(s.idstr or "", s.instance_id or 0, s.version_id)
                      for s in w.kinds(S.KIND_START, S.KIND_FULL)]
        if w.error is not None and not w.blocks:
            raise _usage(f"--target {path}: the snapshot stops before its RAMBlock list "
                             f"({w.error.oneline()})")
    return t


# ---------------------------------------------------------------------------
def compare(walk: StreamWalk, t: TargetDescription) -> list[Problem]:
    """Problems loading the walked file on target `t`."""
    out: list[Problem] = []
    out += _compare_machine(walk, t)
    out += _compare_page_size(walk, t)
    out += _compare_blocks(walk, t)
    out += _compare_sections(walk, t)
    return out


def _compare_machine(walk: StreamWalk, t: TargetDescription) -> list[Problem]:
    if t.machine_type is None or walk.machine_type is None:
        return []
    t.compared.append("machine type")
    if t.machine_type == walk.machine_type:
        return []
    off = walk.configuration.offset if walk.configuration else None
    return [problem("target-machine", off, "configuration",
                    f"Machine type received is '{walk.machine_type}' and local is "
                    f"'{t.machine_type}'", machine=walk.machine_type)]


def _compare_page_size(walk: StreamWalk, t: TargetDescription) -> list[Problem]:
    if t.target_page_size is None or walk.page_size_source == "default":
        return []
    t.compared.append("target page size")
    if t.target_page_size == walk.page_size:
        return []
    fb, tb = walk.page_size.bit_length() - 1, t.target_page_size.bit_length() - 1
    return [problem("target-page-size",
                    walk.configuration.offset if walk.configuration else None, "configuration",
                    f"Received TARGET_PAGE_BITS is {fb} but local is {tb} (file pages are "
                    f"{walk.page_size} bytes, the target's {t.target_page_size})")]


def _compare_blocks(walk: StreamWalk, t: TargetDescription) -> list[Problem]:
    if t.blocks is None or not walk.blocks:
        return []
    t.compared.append("RAMBlocks")
    out: list[Problem] = []
    tb = {b.name: b for b in t.blocks}
    for b in walk.blocks:
        if b.mapped_ram is not None and b.mapped_ram.skipped:
            continue
        x = tb.get(b.name)
        if x is None:
            out.append(problem("target-unknown-block", b.entry_offset, b.name,
                               f"Unknown ramblock \"{b.name}\", cannot accept migration: the "
                               "target has no such RAMBlock"))
            continue
        if b.used_length != x.used_length:
            out.append(_size_problem(b, x))
        out += _page_size_problems(walk, b, x)
    names = {b.name for b in walk.blocks}
    extra = [x.name for x in t.blocks if x.name not in names]
    if extra:
        out.append(problem("target-extra-block", None, "target",
                           f"{len(extra)} target RAMBlock(s) not in the file (they stay zero): "
                           + ", ".join(extra[:5])))
    return out


def _size_problem(b: RamBlock, x: TargetBlock) -> Problem:
    """A block whose used length differs on the target: QEMU resizes a resizeable block up
    to its maximum and refuses anything else."""
    resizable = x.max_length is not None and x.max_length > x.used_length
    if resizable and b.used_length <= (x.max_length or 0):
        return problem("target-resize", b.entry_offset, b.name,
                       f"{b.name}: 0x{b.used_length:x} in the file, 0x{x.used_length:x} on the "
                       f"target; resizeable up to 0x{x.max_length:x}, QEMU resizes it")
    if resizable:
        return problem("target-size-too-large", b.entry_offset, b.name,
                       f"Size too large: {b.name}: 0x{b.used_length:x} > 0x{x.max_length:x} "
                       "(the target block's maximum)")
    what = "-m" if b.name.endswith("ram") else "ROM file / device"
    return problem("target-size", b.entry_offset, b.name,
                   f"Size mismatch: {b.name}: 0x{b.used_length:x} != 0x{x.used_length:x} "
                   f"(older QEMU: Length mismatch: {b.name}: 0x{b.used_length:x} in != "
                   f"0x{x.used_length:x})", what=what, length=b.used_length)


def _page_size_problems(walk: StreamWalk, b: RamBlock, x: TargetBlock) -> list[Problem]:
    if b.host_page_size is not None and x.page_size is not None \
            and b.host_page_size != x.page_size:
        return [problem("target-block-page-size", b.entry_offset, b.name,
                        f"Mismatched RAM page size {b.name} (local) {x.page_size} != "
                        f"{b.host_page_size}")]
    if x.page_size is not None and x.page_size != walk.page_size:
        return [problem("target-host-page-size", b.entry_offset, b.name,
                        f"{b.name} uses {x.page_size}-byte host pages on the target "
                        f"({walk.page_size} in the file); fine without postcopy")]
    return []


def _compare_sections(walk: StreamWalk, t: TargetDescription) -> list[Problem]:
    if t.sections is None:
        return []
    t.compared.append("device sections")
    out: list[Problem] = []
    have: dict[tuple[str, int], int | None] = {}
    for s in t.sections:
        key = (s.idstr, s.instance_id)
        v = s.version_id
        old = have.get(key)
        have[key] = v if old is None or (v is not None and v > old) else old
    seen: set[tuple[str, int]] = set()
    hedge = (" (a snapshot omits sections whose state is not needed: check the target really "
             "lacks this device)") if t.kind == "snapshot" else ""
    for s in walk.kinds(S.KIND_START, S.KIND_FULL):
        key = s.key
        if key in seen:
            continue
        seen.add(key)
        if key not in have:
            out.append(problem("target-unknown-section", s.offset, s.idstr or "",
                               f"Unknown savevm section or instance '{key[0]}' {key[1]}: the "
                               f"target has no such device{hedge}"))
            continue
        tv = have[key]
        if tv is not None and s.version_id is not None and s.version_id > tv:
            out.append(problem("target-section-version", s.offset, s.idstr or "",
                               f"savevm: unsupported version {s.version_id} for '{key[0]}' "
                               f"v{tv}"))
    return out


__all__ = ["load_target", "compare", "parse_info_ramblock", "TargetDescription", "TargetBlock",
           "TargetSection"]
