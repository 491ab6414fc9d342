"""Terminal rendering of `CheckReport`."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ..inspector.check import VERDICT_LOADABLE, VERDICT_REFUSED, CheckReport
from .fmt import hexoff, name

_STYLE = {"error": "bold red", "warning": "yellow", "info": "dim"}


def _problems(r: CheckReport, show_info: bool) -> Table:
    t = Table(title="Problems", title_justify="left", title_style="bold", show_lines=True)
    t.add_column("severity")
    t.add_column("offset", justify="right")
    t.add_column("where")
    t.add_column("cause", ratio=3)
    t.add_column("fix", ratio=2)
    for p in r.problems:
        if p.severity == "info" and not show_info:
            continue
        cause = name(p.cause)
        if p.qemu:
            cause += "\n[dim]QEMU: " + name(" / ".join(p.qemu)) + "[/]"
        t.add_row(f"[{_STYLE.get(p.severity, '')}]{p.severity}[/]", hexoff(p.offset),
                  name(p.where), cause, name(p.fix))
    return t


def render_check(r: CheckReport, console: Console, show_info: bool = False) -> None:
    head = f"[bold]{name(r.path)}[/]"
    if r.format:
        head += f"  {r.format}"
    if r.machine_type:
        head += f", {name(r.machine_type)}"
    if r.capabilities:
        head += f", capabilities: {name(', '.join(r.capabilities))}"
    console.print(head)
    if r.offsets_in != "file":
        console.print(f"[dim]offsets are in the {r.offsets_in}[/]")
    shown = [p for p in r.problems if show_info or p.severity != "info"]
    if shown:
        console.print(_problems(r, show_info))
    hidden = len(r.problems) - len(shown)
    if hidden:
        console.print(f"[dim]{hidden} info note(s) hidden (--verbose shows them)[/]")
    if r.target:
        tg = r.target
        what = ", ".join(tg.get("compared") or []) or "nothing comparable"
        console.print(f"target: {name(tg.get('kind'))} {name(tg.get('path'))} (compared: "
                      f"{name(what)})")
    if r.verdict == VERDICT_LOADABLE:
        n = r.count("warning")
        extra = f" ({n} warning(s))" if n else ""
        console.print(f"[bold green]loadable[/] as far as the file can tell{extra}")
    elif r.verdict == VERDICT_REFUSED:
        console.print(f"[bold red]will not load[/]: {r.count('error')} error(s)")
    else:
        console.print("[bold yellow]could not tell[/]: the file uses something this tool "
                      "cannot judge")
    if r.incoming is not None and r.verdict != VERDICT_REFUSED:
        console.print("[bold]to load it:[/]")
        for c in r.incoming.commands:
            console.print("  " + name(c), soft_wrap=True)
