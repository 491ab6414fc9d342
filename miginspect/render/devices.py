"""Terminal rendering of `DevicesReport`: one tree per device, or `path = value` lines
(`--flat`). Every value is shown in full:

* integers in decimal, and in hex as well when they are 10 or more (registers,
  addresses);
* a byte buffer that holds NUL-padded text (QEMU's `strpadcpy` fields such as
  globalstate's `runstate`) as that text, quoted, with its length;
* other byte buffers, and arrays of uint8, as hex + ASCII dump lines;
* arrays of numbers element by element, `[i] value`.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.text import Text
from rich.tree import Tree

from ..inspector.devices import DevicesReport, DeviceState, Opaque, StateNode
from ..inspector.salvage import (
    DESCRIPTION_CUT,
    DESCRIPTION_MISSING,
    DESCRIPTION_WHOLE,
    DeviceSalvage,
)
from . import vocab as V
from .fmt import hexoff, num
from .layout import layout_width, say
from .salvage import stop_line
from .text import line, note_text, printable

#: tree indentation per level (rich's guides)
INDENT = 4


def scalar_text(v: Any, typ: str | None = None) -> str:
    """One number (or NULL / bool / float) as text."""
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        if typ and typ.startswith("timer") and v == -1:
            return "-1 (not armed)"
        return f"{v} (0x{v & ((1 << 64) - 1):x})" if abs(v) >= 10 else str(v)
    if isinstance(v, float):
        return repr(v)
    return printable(v)


def as_bytes(v: Any, typ: str | None = None) -> bytes | None:
    """The bytes of an opaque value (hex string) or of a uint8 array; else None."""
    if isinstance(v, str):
        try:
            return bytes.fromhex(v)
        except ValueError:
            return None
    if isinstance(v, Opaque):
        return bytes.fromhex(v.head)
    if isinstance(v, list) and typ and typ.split("[")[0] == "uint8" and \
            all(isinstance(x, int) and 0 <= x < 256 for x in v):
        return bytes(v)
    return None


def padded_text(b: bytes) -> str | None:
    """The text of a NUL-padded C string buffer ('paused\\0\\0...'), else None."""
    text, nul, rest = b.partition(b"\0")
    # at least two characters (one printable byte before zeros is more likely a number);
    # the rest all NUL, so the text says every byte
    if len(text) < 2 or not nul or rest.strip(b"\0"):
        return None
    try:
        s = text.decode("ascii")
    except UnicodeDecodeError:
        return None
    return s if s.isprintable() else None


def hexdump(b: bytes, per_line: int = 16) -> list[str]:
    """'0000  70 61 75 73 65 64 00 00  |paused..|' lines, every byte shown."""
    out = []
    w = len(f"{max(0, len(b) - 1):x}")
    w = max(4, w)
    for i in range(0, len(b), per_line):
        chunk = b[i : i + per_line]
        hx = " ".join(f"{x:02x}" for x in chunk).ljust(per_line * 3 - 1)
        asc = "".join(chr(x) if 32 <= x < 127 else "." for x in chunk)
        out.append(f"{i:0{w}x}  {hx}  |{asc}|")
    return out or ["(empty)"]


def _per_line(room: int) -> int:
    """Bytes per dump line that fit `room` cells ('0000  ' + 3n-1 + '  |' + n + '|')."""
    for n in (16, 8, 4):
        if 4 * n + 9 <= room:
            return n
    return 2


def value_lines(node: StateNode, room: int | None) -> tuple[str, list[str]]:
    """(text after '=', extra lines below) for a leaf; `room` = cells available."""
    v, typ = node.value, node.type
    b = as_bytes(v, typ)
    if b is not None:
        s = padded_text(b)
        if s is not None:
            return f"\"{s}\" (NUL-padded text, {len(b)} B)", []
        extra = []
        if isinstance(v, Opaque):
            extra = [f"(first {num(len(b))} of {num(v.size)} B shown; xxh3 {v.xxh3})"]
        if all(x == 0 for x in b) and not isinstance(v, Opaque):
            return f"{len(b)} zero byte{'s' if len(b) != 1 else ''}", []
        return f"{num(len(b))} B", hexdump(b, _per_line(room) if room else 16) + extra
    if isinstance(v, list):
        base = typ.split("[")[0]
        items = [f"[{i}] {scalar_text(x, base)}" for i, x in enumerate(v)]
        if room is None:
            return f"{len(v)} items", ["   ".join(items)] if items else []
        lines, cur = [], ""
        for it in items:
            if cur and len(cur) + 3 + len(it) > room:
                lines.append(cur)
                cur = ""
            cur = f"{cur}   {it}" if cur else it
        if cur:
            lines.append(cur)
        return f"{len(v)} items", lines
    return scalar_text(v, typ), []


def _label(node: StateNode) -> Text:
    t = line((node.name, "bold"), " ", (node.type, "dim"))
    if node.version is not None:
        t += line((f" v{node.version}", "dim"))
    return t + line((f" @{hexoff(node.offset)}, {num(node.size)} B", "dim"))


def _add(tree: Tree, node: StateNode, depth: int, width: int | None) -> None:
    if node.children:
        sub = tree.add(_label(node))
        for c in node.children:
            _add(sub, c, depth + 1, width)
        return
    room = None if width is None else max(24, width - INDENT * depth)
    head, extra = value_lines(node, room)
    label = line(node.name, " ", (node.type, "dim"), " = ", head)
    for ln in extra:
        label.append("\n")
        label.append(printable(ln))
    tree.add(label)


def device_tree(d: DeviceState, width: int | None = None) -> Tree:
    label = line((d.key, f"bold {V.BLUE}"), (f"  vmsd {d.vmsd_name} v{d.version_id}, payload "
                                             f"{hexoff(d.payload_offset)}-"
                                             f"{hexoff(d.payload_end)} "
                                             f"({num(d.payload_end - d.payload_offset)} B)",
                                             "dim"))
    t = Tree(label, guide_style="dim")
    for f in d.fields:
        _add(t, f, 1, width)
    if d.error:
        at = f" at {hexoff(d.error_offset)}" if d.error_offset is not None else ""
        t.add(line(("decoding stopped", V.BAD), f"{at}: {d.error}"))
    return t


def verdict(r: DevicesReport) -> Text:
    fields = sum(1 for d in r.devices for _ in d.leaves())
    bad = [d.key for d in r.devices if d.error]
    t = line(("devices: ", "bold"), f"{len(r.devices)} device section"
             f"{'s' if len(r.devices) != 1 else ''} decoded, {num(fields)} values")
    if bad:
        t += line("; ", (f"{len(bad)} could not be decoded to the end", V.BAD),
                  f" ({', '.join(bad)})")
    if r.notices:
        t += line(f"; {len(r.notices)} note{'s' if len(r.notices) != 1 else ''} below")
    s = r.salvage
    if s is not None and s.complete:
        t += line("; ", ("read to the end, nothing is missing", V.GOOD))
    elif s is not None:
        t += line("; ", ("PARTIAL: the file stops early", V.BAD) if s.stopped else
                  ("PARTIAL: the vmdescription is not whole", V.BAD))
    return t


_DESCRIPTION = {
    DESCRIPTION_WHOLE: "whole",
    DESCRIPTION_CUT: "cut short: decoded with the device entries it still holds whole",
    DESCRIPTION_MISSING: "not in the file (past the stop, or suppressed): nothing can be "
                         "decoded",
}


def salvage_lines(s: DeviceSalvage) -> list[Text]:
    """--partial: the stop, the vmdescription, the section cut, those not decoded and
    those not reached."""
    out = [stop_line(s.stopped, s.read_to)]
    d = _DESCRIPTION.get(s.description, s.description)
    if s.description == DESCRIPTION_CUT:
        d += f" ({num(s.described_devices)})"
    out.append(line("vmdescription: ", (d, V.GOOD if s.description == DESCRIPTION_WHOLE
                                          else V.BAD)))
    out.append(line(f"device sections read whole: {num(s.sections_read)}"))
    if s.cut_section is not None:
        c = s.cut_section
        out.append(line(("the data ends inside ", V.BAD), (c.key, "bold"),
                        f" (section at {hexoff(c.offset)})"))
    if s.undescribed:
        out.append(line((f"{len(s.undescribed)} read whole but not decoded", V.ORANGE),
                        " (no vmdescription entry for them): ",
                        ", ".join(x.key for x in s.undescribed)))
    if s.not_reached is None:
        out.append(line(("device sections after the stop: not known", V.BAD),
                        " (the vmdescription that lists them lies past the stop)"))
    elif s.not_reached:
        out.append(line((f"{len(s.not_reached)} not reached", V.BAD),
                        " (listed by the vmdescription, after the stop): ",
                        ", ".join(x.key for x in s.not_reached)))
    for n in s.notes:
        out.append(note_text(n))
    return out


def flat_lines(r: DevicesReport) -> list[str]:
    """'device.path = value' for every value, one line each (grep, diff)."""
    out = []
    for d in r.devices:
        for path, node in d.leaves():
            key = f"{d.key}.{path}"
            v = node.value
            b = as_bytes(v, node.type)
            if b is not None:
                s = padded_text(b)
                shown = v.head if isinstance(v, Opaque) else b.hex()
                text = f"\"{s}\" (hex {shown})" if s is not None else (shown or "(empty)")
                if isinstance(v, Opaque):
                    text += f" (first {len(b)} of {v.size} B; xxh3 {v.xxh3})"
                out.append(f"{key} = {text}")
            elif isinstance(v, list):
                base = node.type.split("[")[0]
                out += [f"{key}[{i}] = {scalar_text(x, base)}" for i, x in enumerate(v)]
            else:
                out.append(f"{key} = {scalar_text(v, node.type)}")
        if d.error:
            out.append(f"{d.key} ! decoding stopped at {hexoff(d.error_offset)}: {d.error}")
    return out


def render_devices(r: DevicesReport, console: Console, flat: bool = False) -> None:
    if flat:
        for ln in flat_lines(r):
            console.print(line(ln), soft_wrap=True)
        if r.salvage is not None and not r.salvage.complete:
            console.print(line("! ", stop_line(r.salvage.stopped, r.salvage.read_to)),
                          soft_wrap=True)
        return
    say(console, verdict(r))
    say(console, "file: ", r.path)
    if r.salvage is not None:
        for t in salvage_lines(r.salvage):
            say(console, t)
    width = None if getattr(console, "natural", False) else layout_width(console)
    for d in r.devices:
        console.print(device_tree(d, width))
    if not r.devices:
        say(console, ("no matching device sections" if r.salvage is None else
                      "no device section could be decoded", V.ORANGE))
    for n in r.notices:
        at = f" at {hexoff(n.offset)}" if n.offset is not None else ""
        where = f" ({n.where})" if n.where else ""
        say(console, ("note", V.ORANGE), f"{at}{where}: ", n.message)
