"""Terminal picture of `MapReport`: a verdict line, the legend, one grid of cells per
RAMBlock and a summary table.

Every cell is a glyph from `vocab` (the colour only repeats it), so the picture reads the
same in a pipe, under NO_COLOR and in a terminal:

* a digit 2-9 (or '+' for 10 and more): some page in the cell was re-sent that many times
  (the highest count in the cell);
* '█' every page in the cell holds data;
* '?' (--partial) some page of the cell is missing: the file stops before its last copy;
* '▒' some pages hold data;
* '-' every page was never sent; '·' otherwise (zero pages, maybe with never-sent ones).
"""

from __future__ import annotations

import math

import numpy as np
from rich.console import Console
from rich.text import Text

from ..inspector.mapview import (
    CLASS_DATA,
    CLASS_MISSING,
    CLASS_NEVER_SENT,
    CLASS_RESENT,
    BlockView,
    MapReport,
    cells,
)
from ..inspector.pagemap import PAGE_DATA, PAGE_NEVER_SENT, PAGE_ZERO
from . import vocab as V
from .fmt import num, short_size, size
from .layout import Col, Grid, layout_width, say
from .salvage import missing_text, stop_line
from .text import line, note_text, stop_text

#: cells per row when the output has no width (a pipe without COLUMNS)
NATURAL_CELLS = 64


def pages_per_cell(pages: int, width: int, rows: int) -> int:
    """Smallest power-of-two cell size that fits `pages` into `rows` lines of `width`
    cells (powers of two keep row offsets round)."""
    need = max(1, math.ceil(pages / max(1, width * rows)))
    return 1 << (need - 1).bit_length()


def cell_glyphs(v: BlockView, per_cell: int) -> list[V.Mark | tuple[str, str]]:
    """The glyph (and colour) of every cell, by the rules in the module doc."""
    c = cells(v, per_cell)
    counts, mx, sz = c.counts, c.max_sends, c.size
    out: list[V.Mark | tuple[str, str]] = []
    resent = counts[:, CLASS_RESENT] > 0
    data = counts[:, CLASS_DATA]
    absent = counts[:, CLASS_NEVER_SENT]
    lost = counts[:, CLASS_MISSING] > 0
    kind = np.where(resent, 0, np.where(data == sz, 1, np.where(lost, 5, np.where(
        data > 0, 2, np.where(absent == sz, 3, 4)))))
    marks = {1: V.DATA, 2: V.PART_DATA, 3: V.NEVER_SENT, 4: V.ZERO, 5: V.MISSING}
    for k, m in zip(kind.tolist(), mx.tolist(), strict=True):
        out.append((V.resent_glyph(m), V.RESENT.style) if k == 0 else marks[k])
    return out


def _grid(v: BlockView, width: int, rows: int, per_cell: int | None) -> tuple[list[Text], int]:
    label = max(10, len(f"{max(0, v.used_length - 1):#x}"))
    across = max(8, width - label - 2)
    n = per_cell or pages_per_cell(v.pages, across, rows)
    glyphs = cell_glyphs(v, n)
    out = []
    for row0 in range(0, len(glyphs), across):
        t = Text()
        t.append(f"{row0 * n * v.page_size:#0{label}x}  ", style="dim")
        for g in glyphs[row0 : row0 + across]:
            if isinstance(g, V.Mark):
                t.append(g.glyph, style=g.style)
            else:
                t.append(g[0], style=g[1])
        out.append(t)
    return out, n


def _pct(k: int, whole: int) -> str:
    return f" ({100 * k / whole:.1f}%)" if whole else ""


def block_summary(v: BlockView) -> Text:
    c = v.counts
    lost = int(np.count_nonzero(v.missing)) if v.missing is not None else 0
    held = v.missing is None or not lost
    data = c.data if held else int(np.count_nonzero((v.state == PAGE_DATA) & ~v.missing))
    zero = c.zero if held else int(np.count_nonzero((v.state == PAGE_ZERO) & ~v.missing))
    absent = c.never_sent if held else \
        int(np.count_nonzero((v.state == PAGE_NEVER_SENT) & ~v.missing))
    t = line((f"{V.DATA.word} {num(data)}{_pct(data, v.pages)}", V.DATA.style), ", ",
             (f"{V.ZERO.word} {num(zero)}{_pct(zero, v.pages)}", V.ZERO.style))
    if absent:
        t += line(", ", (f"{V.NEVER_SENT.word} {num(absent)}"
                         f"{_pct(absent, v.pages)}", V.NEVER_SENT.style))
    if lost:
        t += line(", ", (f"{V.MISSING.word} {num(lost)}{_pct(lost, v.pages)}",
                         V.MISSING.style))
    if c.resent:
        hist = ", ".join(f"x{b.times} {num(b.pages)}" for b in v.resent_histogram.buckets)
        t += line(", ", (f"{V.RESENT.word} {num(c.resent)}: {hist}", V.RESENT.style))
    return t


def verdict(r: MapReport) -> Text:
    pages = sum(v.pages for v in r.blocks)
    tot = {k: sum(getattr(v.counts, k) for v in r.blocks)
           for k in ("data", "zero", "never_sent", "resent")}
    s = r.salvage
    if s is not None:
        tot["data"] = sum(b.data_pages for b in s.blocks)
        tot["zero"] = sum(b.zero_pages for b in s.blocks)
        tot["never_sent"] = pages - tot["data"] - tot["zero"] - s.missing_pages
    t = line(("map: ", "bold"), f"{len(r.blocks)} RAMBlock{'s' if len(r.blocks) != 1 else ''}, "
             f"{num(pages)} pages of {short_size(r.page_size)}: ",
             (f"{num(tot['data'])} {V.DATA.word}", V.DATA.style), ", ",
             (f"{num(tot['zero'])} {V.ZERO.word}", V.ZERO.style))
    if s is not None and s.missing_pages:
        t += line(", ", (f"{num(s.missing_pages)} {V.MISSING.word}", V.MISSING.style))
    if r.format == "legacy":
        t += line(", ", (f"{num(tot['never_sent'])} {V.NEVER_SENT.word}", V.NEVER_SENT.style),
                  ", ", (f"{num(tot['resent'])} {V.RESENT.word}", V.RESENT.style))
        hot = [v.name for v in r.blocks if v.counts.resent]
        if hot:
            t += line(f" (in {', '.join(hot)})")
    else:
        t += line(" (mapped-ram: zero and never written look alike)")
    if s is not None and not s.complete:
        t += line("; ", ("PARTIAL: the file stops early", V.BAD),
                  ", missing pages are not in it" if s.missing_pages else "")
    elif s is not None:
        t += line("; ", ("read to the end, nothing is missing", V.GOOD))
    elif r.stopped:
        t += line("; ", ("the walk stopped early, later pages are missing", V.BAD))
    return t


def legend(fmt: str, missing: bool = False) -> list[Text]:
    legacy = fmt == "legacy"
    head = line(("legend: ", "bold"), V.page_legend(legacy, missing=missing))
    some = ", ? if some are missing, ▒ if some hold data" if missing else ", ▒ if some do"
    rule = ("a cell shows a digit (the highest send count) if a page in it was re-sent, "
            f"else █ if all its pages hold data{some}") if legacy else \
        f"a cell shows █ if all its pages hold data{some}, else ·"
    if legacy:
        rule += ", - if none was ever sent, else ·"
    out = [head, line((rule, "dim"))]
    if not legacy:
        out.append(line(("mapped-ram: data = bit set, zero = bit clear", "dim")))
    return out


def _totals(r: MapReport) -> Grid:
    s = r.salvage
    lost = s is not None and s.missing_pages > 0
    cols = [Col("block", "left", flex="name"), Col("pages"),
            Col(V.DATA.word, style=V.DATA.style), Col(V.ZERO.word, style=V.ZERO.style),
            Col(V.NEVER_SENT.word, style=V.NEVER_SENT.style),
            Col(V.RESENT.word, style=V.RESENT.style)]
    if lost:
        cols.insert(4, Col(V.MISSING.word, style=V.MISSING.style))
    g = Grid(cols, "Summary")
    for v in r.blocks:
        c = v.counts
        ext = s.extent(v.name) if s is not None else None
        if ext is not None and lost:
            absent = v.pages - ext.held_pages - ext.missing_pages
            g.add_row(line(v.name), num(v.pages), num(ext.data_pages), num(ext.zero_pages),
                      num(ext.missing_pages), num(absent), num(c.resent))
        else:
            g.add_row(line(v.name), num(v.pages), num(c.data), num(c.zero),
                      num(c.never_sent), num(c.resent))
    return g


def render_map(r: MapReport, console: Console, rows: int = 8,
               per_cell: int | None = None) -> None:
    width = layout_width(console, NATURAL_CELLS + 12)
    s = r.salvage
    say(console, verdict(r))
    say(console, "file: ", r.path, f" ({r.format})")
    if s is not None:
        say(console, stop_line(s.stopped, s.read_to))
        for n in s.notes:
            say(console, note_text(n))
    for t in legend(r.format, missing=s is not None and s.missing_pages > 0):
        say(console, t)
    for v in r.blocks:
        console.print()
        grid, n = _grid(v, width, rows, per_cell)
        say(console, (v.name, "bold"), f"  {size(v.used_length)}, {num(v.pages)} "
                     f"page{'s' if v.pages != 1 else ''} of {short_size(v.page_size)}, one "
                     f"cell = {num(n)} page{'s' if n != 1 else ''} ({short_size(n * v.page_size)})")
        for t in grid:
            console.print(t, soft_wrap=True)
        say(console, block_summary(v))
        ext = s.extent(v.name) if s is not None else None
        if ext is not None and ext.missing:
            say(console, missing_text(ext.missing, ext.missing_pages))
        if v.bitmap_untrusted:
            say(console, ("bitmap untrusted", V.BAD), ": ", v.bitmap_untrusted)
    if s is not None and s.unlisted_ram_bytes:
        console.print()
        say(console, (f"{num(s.unlisted_ram_bytes)} B of RAM in blocks listed after the stop",
                      V.MISSING.style), " (their names are not in the file)")
    if r.stopped and s is None:
        console.print()
        say(console, ("the walk stopped early, later pages are missing", V.BAD), ": ",
            stop_text(r.stopped))
    if len(r.blocks) > 1:
        console.print()
        console.print(_totals(r))
