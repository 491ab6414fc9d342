"""Terminal rendering of `CheckReport`: the verdict (with the QEMU version and the
capabilities the file needs, or the predicted outcome on the target), then QEMU's first
error and where, the root causes (one each, with the problems they group), every other
problem as a record whose cause, QEMU message and fix are never cut, then how to load
the file."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from ..inspector.check import (
    TRANSPORT_DECOMPRESSED_FILE,
    TRANSPORT_EXEC,
    TRANSPORT_LOADVM,
    VERDICT_GUEST_MAY_NOT_RUN,
    VERDICT_LOADABLE,
    VERDICT_REFUSED,
    CheckReport,
    Problem,
)
from ..inspector.prediction import (
    FAILS_TO_LOAD,
    FAILS_TO_START,
    GUEST_MAY_NOT_RUN,
    LOADS,
    Cause,
    Prediction,
    TargetReport,
)
from . import vocab as V
from .fmt import hexoff, num
from .layout import KV, say
from .text import line, note_text

#: the outcome that goes with each verdict (a prediction that disagrees is not the verdict)
_OUTCOME_OF = {VERDICT_LOADABLE: (LOADS,), VERDICT_REFUSED: (FAILS_TO_LOAD, FAILS_TO_START),
               VERDICT_GUEST_MAY_NOT_RUN: (GUEST_MAY_NOT_RUN,)}
_OUTCOME_STYLE = {LOADS: V.GOOD, FAILS_TO_START: V.BAD, FAILS_TO_LOAD: V.BAD,
                  GUEST_MAY_NOT_RUN: V.ORANGE}
_TARGET_KIND = {"qemu": "the target QEMU", "dump-vmstate": "the target's -dump-vmstate JSON",
                "domain-xml": "the target's domain XML", "snapshot": "a snapshot of the target",
                "info ramblock": "the target's info ramblock", "json": "the target description"}


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def requirements(r: CheckReport) -> list[str]:
    """What the destination needs: 'QEMU >= 10.0', 'the mapped-ram capability set before
    migrate-incoming', 'its stream fed through a pipe (exec:zstd -dc)'."""
    q = r.requirements
    if q is None:
        return []
    out: list[str] = []
    if q.min_qemu:
        out.append(f"QEMU >= {q.min_qemu}")
    if q.max_qemu:
        out.append(f"QEMU <= {q.max_qemu}")
    if q.capabilities:
        out.append(f"the {', '.join(q.capabilities)} capabilit"
                   f"{'ies' if len(q.capabilities) > 1 else 'y'} set before migrate-incoming")
    if q.transport == TRANSPORT_EXEC:
        out.append(f"its stream fed through a pipe (exec:{q.decompressor or 'cat'})")
    elif q.transport == TRANSPORT_DECOMPRESSED_FILE:
        out.append("decompressing into a seekable file first")
    elif q.transport == TRANSPORT_LOADVM and r.incoming is not None:
        out += r.incoming.needs  # loadvm with the VM's disks (the container's words)
    return out


def _warnings(r: CheckReport) -> str:
    n = r.count("warning")
    return f"; {n} warning{_s(n)}" if n else ""


def prediction_shown(r: CheckReport) -> Prediction | None:
    """The prediction, when it is what the verdict says (the file's own damage, or a
    comparison that disagrees, keeps the file's verdict)."""
    pred = r.target.prediction if r.target is not None else None
    if pred is None or pred.outcome not in _OUTCOME_OF.get(r.verdict, ()):
        return None
    own = [p for p in r.problems if p.severity == "error" and not p.code.startswith("target-")]
    return None if own else pred


def _prediction_verdict(r: CheckReport, pred: Prediction) -> Text:
    t = line(("check: ", "bold"), (pred.outcome, _OUTCOME_STYLE[pred.outcome]))
    if pred.outcome == FAILS_TO_START:
        t += line(": the target QEMU exits before it can load anything")
    else:
        t += line(" on the target")
    if pred.outcome == FAILS_TO_LOAD:
        where = f" in {pred.where}" if pred.where else ""
        t += line(f": QEMU stops at {hexoff(pred.offset)}", where)
    elif pred.outcome == GUEST_MAY_NOT_RUN:
        t += line(": it uses CPU features the target's CPU model lacks")
    elif pred.outcome == LOADS:
        needs = requirements(r)
        if needs:
            t += line("; needs ", "; ".join(needs))
    if not pred.certain:
        assert r.target is not None
        t += line(f" (as far as {_TARGET_KIND.get(r.target.kind, 'the target')} tells)")
    return t + line(_warnings(r))


def verdict(r: CheckReport) -> Text:
    pred = prediction_shown(r)
    if pred is not None:
        return _prediction_verdict(r, pred)
    head = line(("check: ", "bold"))
    n_err = r.count("error")
    if r.verdict == VERDICT_LOADABLE:
        t = head + line(("loadable", V.GOOD), " as far as the file can tell")
        needs = requirements(r)
        if needs:
            t += line("; needs ", "; ".join(needs))
        return t + line(_warnings(r))
    if r.verdict == VERDICT_REFUSED:
        p = r.primary
        t = head + line(("will not load", V.BAD))
        if p is not None:
            at = f" at {hexoff(p.offset)}" if p.offset is not None else ""
            where = f" in {p.where}" if p.where else ""
            t += line(f"{at}{where}: {p.cause}")
        if n_err > 1:
            t += line(f" ({n_err} errors)")
        return t + line(_warnings(r))
    if r.verdict == VERDICT_GUEST_MAY_NOT_RUN:
        return head + line(("loads, guest may not run", V.ORANGE),
                           ": the guest uses CPU features the target's CPU model lacks") + \
            line(_warnings(r))
    p = next((x for x in r.problems if x.severity == "error"), None) or (
        r.problems[0] if r.problems else None)
    t = head + line(("could not tell", V.UNSURE), ": the file uses something this tool cannot "
                    "judge")
    if p is not None:
        t += line(f" ({p.cause})")
    return t + line(_warnings(r))


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


# -- the target -----------------------------------------------------------------------

def _first_error(console: Console, pred: Prediction) -> None:
    """QEMU's first error line, whole (copied into searches: never wrapped in a pipe),
    then where in the file QEMU stops."""
    if pred.first_error is None:
        return
    say(console, ("QEMU says: ", "bold"), pred.first_error)
    if pred.offset is not None:
        where = f", in {pred.where}" if pred.where else ""
        say(console, f"  at offset {hexoff(pred.offset)} ({num(pred.offset)}) of the file",
            where)


def _target_rows(t: TargetReport) -> list[tuple[str, Text | str]]:
    if t.kind != "qemu":
        what = [t.kind]
    else:
        what = ["QEMU " + t.qemu_version if t.qemu_version else
                "QEMU (did not start)" if t.start_error else "QEMU"]
    if t.arch:
        what.append(t.arch)
    if t.machine_type:
        what.append(t.machine_type)
    if t.cpu is not None and t.cpu.count is not None:
        what.append(f"{t.cpu.count} vCPU{_s(t.cpu.count)}")
    rows: list[tuple[str, Text | str]] = [("target", line(", ".join(what)))]
    rows.append(("command line" if t.kind == "qemu" else "path", line(t.path)))
    rows.append(("compared", line(", ".join(t.compared) or "nothing comparable")))
    return rows


def _cause(console: Console, i: int, c: Cause) -> None:
    """One root cause: what, its fix, and every problem it groups."""
    at = f" at {hexoff(c.offset)}" if c.offset is not None else ""
    stops = ("  QEMU stops here", "bold") if c.stops_load else None
    say(console, (f"{i}. {c.code}", "bold"), at, stops, (f"  [target-{c.code}]", "dim"))
    rows: list[tuple[str, Text | str]] = [("  cause", line(c.summary)), ("  fix", line(c.fix))]
    console.print(KV(rows, label_style=""))
    say(console, f"  {len(c.problems)} problem{_s(len(c.problems))} from it:")
    for p in c.problems:
        at = f" at {hexoff(p.offset)}" if p.offset is not None else ""
        say(console, "  - ", (p.severity, V.SEVERITY_STYLE.get(p.severity, "")), at,
            f" in {p.where}" if p.where else "", (f"  [{p.code}]", "dim"))
        console.print(KV([("  ", line(p.cause))], label_style=""))


def render_target(r: CheckReport, console: Console, verbose: bool = False) -> None:
    """The target compared with, QEMU's first error and the root causes."""
    t = r.target
    assert t is not None
    pred = t.prediction
    if pred is not None and prediction_shown(r) is None:
        say(console, ("on the target: ", "bold"), (pred.outcome, _OUTCOME_STYLE[pred.outcome]),
            " (the file's own problems below come first)")
    console.print(KV(_target_rows(t)))
    for n in t.notes if verbose else []:
        say(console, "  ", note_text(n))
    if t.notes and not verbose:
        say(console, (f"  {len(t.notes)} note{_s(len(t.notes))} on the target not shown; "
                      "--verbose shows them", "dim"))
    if pred is None or not pred.causes:
        return
    console.print()
    console.print(Text(f"Root causes ({len(pred.causes)})", style="bold"))
    for i, c in enumerate(pred.causes, 1):
        _cause(console, i, c)


# -- the report -----------------------------------------------------------------------

def _problems(r: CheckReport, console: Console, show_info: bool) -> None:
    """Every problem not already shown as a root cause, in file order."""
    causes = r.target.prediction.causes if r.target and r.target.prediction else []
    summaries = {f"target-{c.code}" for c in causes}  # one problem per cause
    members = {(p.code, p.offset) for c in causes for p in c.problems}
    rest = [p for p in r.problems
            if p.code not in summaries and (p.code, p.offset) not in members]
    shown = [p for p in rest if show_info or p.severity != "info"]
    hidden = [p for p in rest if p not in shown]
    if shown:
        console.print()
        console.print(Text("Problems", style="bold"))
    for p in shown:
        head, body = problem_lines(p)
        say(console, head)
        console.print(body)
    if hidden:
        codes = ", ".join(p.code or p.cause for p in hidden)
        say(console, (f"{len(hidden)} info note{_s(len(hidden))} not shown "
                      f"({codes}); --verbose shows them", "dim"))


def render_check(r: CheckReport, console: Console, show_info: bool = False) -> None:
    say(console, verdict(r))
    pred = prediction_shown(r)
    if pred is not None:
        _first_error(console, pred)
    about = [r.format or "not a QEMU stream this tool reads"]
    if r.machine_type:
        about.append(r.machine_type)
    if r.capabilities:
        about.append("capabilities: " + ", ".join(r.capabilities))
    say(console, "file: ", r.path, f" ({', '.join(about)})")
    if r.offsets_in != "file":
        say(console, (f"offsets are in the {r.offsets_in}", "dim"))
    if r.target is not None:
        render_target(r, console, show_info)
    _problems(r, console, show_info)
    if r.incoming is not None and r.verdict != VERDICT_REFUSED:
        console.print()
        console.print(Text("To load it", style="bold"))
        for c in r.incoming.commands:
            # commands are copied and pasted: never wrapped
            console.print(line("  ", c), soft_wrap=True)
