"""Terminal rendering of `CheckReport`: the verdict (with the QEMU version and the
capabilities the file needs), then every problem as a record whose cause, QEMU message and
fix are never cut, then how to load the file."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from ..inspector.check import VERDICT_LOADABLE, VERDICT_REFUSED, CheckReport, Problem
from . import vocab as V
from .fmt import hexoff
from .layout import KV, say
from .text import line

#: problem code -> the oldest QEMU that loads a file with it (from the check table's codes)
MIN_QEMU = {"needs-qemu-10": "10.0", "needs-mapped-ram": "9.0"}
#: problem code -> the newest QEMU that loads a file with it
MAX_QEMU = {"compress-page": "9.0"}


def _version_key(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in v.split(".") if x.isdigit())


def requirements(r: CheckReport) -> list[str]:
    """What the destination needs, from the problem codes and the incoming setup:
    'QEMU >= 10.0', 'the mapped-ram capability', 'a decompressing pipe (exec:zstd -dc)'."""
    out: list[str] = []
    codes = {p.code for p in r.problems}
    mins = [MIN_QEMU[c] for c in codes if c in MIN_QEMU]
    maxs = [MAX_QEMU[c] for c in codes if c in MAX_QEMU]
    if mins:
        out.append(f"QEMU >= {max(mins, key=_version_key)}")
    if maxs:
        out.append(f"QEMU <= {min(maxs, key=_version_key)}")
    inc = r.incoming
    if inc is not None:
        caps = inc.capabilities
        if caps:
            out.append(f"the {', '.join(caps)} capabilit{'ies' if len(caps) > 1 else 'y'} set "
                       "before migrate-incoming")
        out += inc.needs  # the container's (a pipe, decompressing first, loadvm)
    return out


def verdict(r: CheckReport) -> Text:
    head = line(("check: ", "bold"))
    n_err, n_warn = r.count("error"), r.count("warning")
    warn = f"; {n_warn} warning{'s' if n_warn != 1 else ''}" if n_warn else ""
    if r.verdict == VERDICT_LOADABLE:
        t = head + line(("loadable", V.GOOD), " as far as the file can tell")
        needs = requirements(r)
        if needs:
            t += line("; needs ", "; ".join(needs))
        return t + line(warn)
    if r.verdict == VERDICT_REFUSED:
        p = r.primary
        t = head + line(("will not load", V.BAD))
        if p is not None:
            at = f" at {hexoff(p.offset)}" if p.offset is not None else ""
            where = f" in {p.where}" if p.where else ""
            t += line(f"{at}{where}: {p.cause}")
        if n_err > 1:
            t += line(f" ({n_err} errors)")
        return t + line(warn)
    p = next((x for x in r.problems if x.severity == "error"), None) or (
        r.problems[0] if r.problems else None)
    t = head + line(("could not tell", V.UNSURE), ": the file uses something this tool cannot "
                    "judge")
    if p is not None:
        t += line(f" ({p.cause})")
    return t + line(warn)


def problem_lines(p: Problem) -> tuple[Text, KV]:
    at = f" at {hexoff(p.offset)}" if p.offset is not None else ""
    head = line((p.severity, V.SEVERITY_STYLE.get(p.severity, "")), at,
                f" in {p.where}" if p.where else "", (f"  [{p.code}]", "dim") if p.code else None)
    rows: list[tuple[str, Text | str]] = [("  cause", line(p.cause))]
    if p.qemu:
        rows.append(("  QEMU says", line((" / ".join(p.qemu), "dim"))))
    if p.fix:
        rows.append(("  fix", line(p.fix)))
    return head, KV(rows, label_style="")


def render_check(r: CheckReport, console: Console, show_info: bool = False) -> None:
    say(console, verdict(r))
    about = [r.format or "not a QEMU stream this tool reads"]
    if r.machine_type:
        about.append(r.machine_type)
    if r.capabilities:
        about.append("capabilities: " + ", ".join(r.capabilities))
    say(console, "file: ", r.path, f" ({', '.join(about)})")
    if r.offsets_in != "file":
        say(console, (f"offsets are in the {r.offsets_in}", "dim"))
    shown = [p for p in r.problems if show_info or p.severity != "info"]
    hidden = [p for p in r.problems if p not in shown]
    if shown:
        console.print()
        console.print(Text("Problems", style="bold"))
    for p in shown:
        head, body = problem_lines(p)
        say(console, head)
        console.print(body)
    if hidden:
        codes = ", ".join(p.code or p.cause for p in hidden)
        say(console, (f"{len(hidden)} info note{'s' if len(hidden) != 1 else ''} not shown "
                      f"({codes}); --verbose shows them", "dim"))
    if r.target:
        tg = r.target
        what = ", ".join(tg.get("compared") or []) or "nothing comparable"
        say(console, f"target: {tg.get('kind')} ", str(tg.get("path")), f" (compared: {what})")
    if r.incoming is not None and r.verdict != VERDICT_REFUSED:
        console.print()
        console.print(Text("To load it", style="bold"))
        for c in r.incoming.commands:
            # commands are copied and pasted: never wrapped
            console.print(line("  ", c), soft_wrap=True)
