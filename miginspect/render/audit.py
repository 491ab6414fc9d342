"""Rendering of `AuditReport`: the verdict line first, what was looked at, one table row
per saved state (most reclaimable first) with the totals, then the first problem of
every state that will not load or could not be judged, in full. Also the JSON Lines
objects and the CSV.

Paths, domain names and causes come from files: they reach rich only through
`render.text`. The table re-flows (`render.layout.Grid`): in a pipe every row is one
line; at 80 columns a row becomes its path (broken at / : . - _ where it does not fit)
and `header: value` pairs; nothing is cut. The rows are read from the report's spool
in blocks of `BLOCK`, one table each, so a long audit is never held in memory here.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from itertools import islice
from typing import IO, Any

from rich.console import Console
from rich.text import Text

from ..inspector.audit import StateRow
from ..inspector.audit_report import AuditReport, AuditSummary
from ..inspector.problems import VERDICT_LOADABLE, VERDICT_REFUSED
from . import vocab as V
from .fmt import hexoff, size
from .layout import Col, Grid, natural, say
from .text import line, wrap_text

#: table rows per block
BLOCK = 1000

#: CSV columns: the row's JSON keys, its first problem flattened
CSV_COLUMNS = ["path", "snapshot", "host", "kind", "compression", "format", "domain_name",
               "domain_uuid", "machine_type", "file_size", "allocated_size", "ram_total",
               "data_bytes", "amplification", "resend_amplification", "mapped_ram_bound",
               "mapped_ram_allocated_bound", "reclaimable", "verdict", "problem_code",
               "problem_offset", "problem_where", "problem_cause"]

_VERDICT_STYLE = {VERDICT_LOADABLE: V.GOOD, VERDICT_REFUSED: V.BAD}


def _s(n: int, word: str = "") -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}" if word else ("" if n == 1 else "s")


def headline(s: AuditSummary) -> str:
    """'14 saved states, 9 will not load, 1 could not tell, 1.20 GiB reclaimable'."""
    if not s.states:
        return f"no saved states in {_s(s.files, 'file')}"
    v = s.verdicts
    parts = [_s(s.states - s.unread, "saved state")]
    if s.unread:
        parts.append(f"{_s(s.unread, 'path')} not read")
    if v.loadable == s.states:
        parts.append("all loadable")
    if v.will_not_load:
        parts.append(f"{v.will_not_load:,} will not load")
    if v.could_not_tell:
        parts.append(f"{v.could_not_tell:,} could not tell")
    parts.append(f"{size(s.totals.reclaimable)} reclaimable")
    return ", ".join(parts)


def scope(s: AuditSummary) -> str:
    """What was looked at: files, what they held, what was left alone, where."""
    text = f"{_s(s.files, 'file')} ({size(s.bytes)})"
    bits = [f"{_s(s.state_files, 'file')} with saved states"]
    if s.not_a_state:
        bits.append(f"{s.not_a_state:,} not saved states (not listed)")
    if s.symlinks:
        bits.append(f"{_s(s.symlinks, 'symlink')} not followed")
    if s.special_files:
        bits.append(f"{s.special_files:,} FIFOs, sockets or devices not opened")
    text += ": " + "; ".join(bits)
    if s.hosts:
        text += f"; read on {', '.join(sorted(s.hosts))}"
    if s.scheduler:
        text += f" (Dask scheduler {s.scheduler})"
    return text


def kind_text(r: StateRow) -> str:
    """'stream', 'stream zstd', 'libvirt gzip', 'qcow2 zstd', '-'."""
    if r.kind is None:
        return "-"
    k = "stream" if r.kind == "none" else r.kind
    return f"{k} {r.compression}" if r.compression else k


def where_text(r: StateRow) -> str:
    """'host:path [snapshot 1 s1]'."""
    t = f"{r.host}:{r.path}" if r.host else r.path
    return f"{t} [snapshot {r.snapshot}]" if r.snapshot else t


def verdict_text(r: StateRow) -> Text:
    t = line((r.verdict, _VERDICT_STYLE.get(r.verdict, V.UNSURE)))
    if r.problem is not None:
        t.append_text(line(": ", r.problem.code))
    return t


def _ampl(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


COLUMNS = [Col("path", "left", flex="name"), Col("kind", "left"), Col("machine", "left"),
           Col("VM", "left"), Col("stored"), Col("on disk"), Col("RAM"), Col("data"),
           Col("ampl."), Col("bound"), Col("reclaim"), Col("verdict", "left")]


def _cells(r: StateRow) -> list[Any]:
    return [line(where_text(r)), kind_text(r), line(r.machine_type or "-"),
            line(r.domain_name or "-"), size(r.file_size), size(r.allocated_size),
            size(r.ram_total), size(r.data_bytes), _ampl(r.amplification),
            size(r.mapped_ram_bound), size(r.reclaimable), verdict_text(r)]


def totals_line(s: AuditSummary) -> str:
    t = s.totals
    return (f"total of {_s(s.states, 'row')}: stored {size(t.file_size)} ({size(t.allocated_size)} "
            f"on disk), RAM {size(t.ram_total)}, data {size(t.data_bytes)}, mapped-ram bound "
            f"{size(t.mapped_ram_bound)} ({size(t.mapped_ram_allocated_bound)} on disk), "
            f"reclaimable {size(t.reclaimable)}")


def _tables(report: AuditReport, console: Console) -> None:
    rows = report.rows()
    while block := list(islice(rows, BLOCK)):
        g = Grid(COLUMNS)
        for r in block:
            g.add_row(*_cells(r))
        console.print(g)


def _print_wrapped(console: Console, t: Text, names: bool) -> None:
    lines = [t] if natural(console) else wrap_text(t, console.width, names=names)
    for ln in lines:
        console.print(ln, soft_wrap=True)


def _causes(report: AuditReport, console: Console) -> None:
    """The first problem of each state that is not loadable, in full."""
    shown = False
    for r in report.rows():
        p = r.problem
        if p is None or r.verdict == VERDICT_LOADABLE:
            continue
        if not shown:
            console.print()
            say(console, ("why (the first error of each state that will not load or could "
                          "not be judged):", "bold"))
            shown = True
        _print_wrapped(console, line((where_text(r), "bold")), names=True)
        at = f" at {hexoff(p.offset)}" if p.offset is not None else ""
        where = f" in {p.where}" if p.where else ""
        say(console, "  ", (p.code, _VERDICT_STYLE.get(r.verdict, V.UNSURE)), at, where, ": ",
            p.cause)
        if p.fix:
            say(console, "  fix: ", p.fix)


def render_audit(report: AuditReport, console: Console) -> None:
    s = report.summary
    say(console, ("audit: ", "bold"), headline(s))
    say(console, scope(s))
    if not s.states:
        return
    console.print()
    _tables(report, console)
    say(console, totals_line(s))
    c = s.causes
    if c:
        say(console, "first errors by code: ", ", ".join(
            f"{k} {n:,}" for k, n in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))))
    _causes(report, console)


# -- JSON Lines and CSV --------------------------------------------------------------------
def json_objects(report: AuditReport) -> Iterator[object]:
    """One object per state (the row), then `{"summary": ...}`."""
    yield from report.rows()
    yield {"summary": report.summary}


def csv_record(r: StateRow) -> list[object]:
    p = r.problem
    vals: list[object] = [getattr(r, k) for k in CSV_COLUMNS[:-4]]
    vals += [p.code, p.offset, p.where, p.cause] if p is not None else ["", "", "", ""]
    return ["" if v is None else v for v in vals]


def write_csv(report: AuditReport, out: IO[str]) -> None:
    """The rows as CSV (a header line, then one line per state, in the table's order)."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for r in report.rows():
        w.writerow(csv_record(r))


__all__ = ["render_audit", "json_objects", "write_csv", "headline", "CSV_COLUMNS"]
