"""Terminal rendering of `DevicesReport`: one rich tree per device."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.tree import Tree

from ..inspector.devices import DevicesReport, DeviceState, StateNode
from .fmt import hexoff, name

#: Opaque values and long arrays are cut to this many characters on screen.
MAX_VALUE_CHARS = 96


def value_text(v: Any, typ: str | None = None) -> str:
    """A field value for the terminal (numbers in decimal and hex, hex strings cut)."""
    if v is None:
        return "[dim]NULL[/]"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        if typ and typ.startswith("timer") and v == -1:
            return "-1 (not armed)"
        return f"{v} (0x{v & ((1 << 64) - 1):x})" if abs(v) >= 10 else str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, list):
        s = "[" + ", ".join(str(x) for x in v) + "]"
    else:
        s = str(v)
    if len(s) > MAX_VALUE_CHARS:
        s = s[:MAX_VALUE_CHARS] + f"… ({len(s)} chars)"
    return name(s)


def _add(tree: Tree, node: StateNode) -> None:
    if node.children:
        label = f"[bold]{name(node.name)}[/] [dim]{name(node.type)}"
        if node.version is not None:
            label += f" v{node.version}"
        label += f" @{hexoff(node.offset)} {node.size} B[/]"
        sub = tree.add(label)
        for c in node.children:
            _add(sub, c)
    else:
        tree.add(f"{name(node.name)} [dim]{name(node.type)}[/] = "
                 f"{value_text(node.value, node.type)}")


def device_tree(d: DeviceState) -> Tree:
    label = (f"[bold cyan]{name(d.key)}[/] [dim]vmsd {name(d.vmsd_name)} v{d.version_id}, "
             f"payload {hexoff(d.payload_offset)}-{hexoff(d.payload_end)} "
             f"({d.payload_end - d.payload_offset} B)[/]")
    t = Tree(label)
    for f in d.fields:
        _add(t, f)
    if d.error:
        t.add(f"[red]decoding stopped: {name(d.error)}[/]")
    return t


def render_devices(r: DevicesReport, console: Console) -> None:
    for d in r.devices:
        console.print(device_tree(d))
    if not r.devices:
        console.print("[yellow]no matching device sections[/]")
    for n in r.notices:
        console.print(f"[yellow]{name(n)}[/]")
