"""Terminal picture of `MapReport`: one grid of cells per RAMBlock, legend, summary."""

from __future__ import annotations

import math

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..inspector.mapview import (
    CLASS_ABSENT,
    CLASS_DATA,
    CLASS_RESENT,
    CLASS_ZERO,
    BlockView,
    MapReport,
    cells,
)
from .fmt import name, num, size

STYLE = {CLASS_ABSENT: "grey42", CLASS_ZERO: "blue", CLASS_DATA: "green"}
#: re-sent cells by the highest send count in the cell
RESENT_STYLES = ((2, "yellow"), (3, "dark_orange"), (5, "red"), (10, "magenta"))
#: glyph by the share of the cell's pages in its shown class
GLYPHS = ((1.0, "█"), (0.75, "▓"), (0.5, "▒"), (0.0, "░"))
LABEL_WIDTH = 12


def resent_style(k: int) -> str:
    style = RESENT_STYLES[0][1]
    for lo, st in RESENT_STYLES:
        if k >= lo:
            style = st
    return style


def _glyph(purity: float) -> str:
    for lo, g in GLYPHS:
        if purity >= lo:
            return g
    return GLYPHS[-1][1]


def pages_per_cell(pages: int, width: int, rows: int) -> int:
    """Smallest power-of-two cell size that fits `pages` into `rows` lines of `width`
    cells (powers of two keep row offsets round)."""
    need = max(1, math.ceil(pages / max(1, width * rows)))
    return 1 << (need - 1).bit_length()


def _grid(v: BlockView, width: int, rows: int, per_cell: int | None) -> tuple[Text, int]:
    n = per_cell or pages_per_cell(v.pages, width, rows)
    c = cells(v, n)
    dom = c.dominant.tolist()
    pur = c.purity.tolist()
    mx = c.max_sends.tolist()
    out = Text()
    for row0 in range(0, len(dom), width):
        out.append(f"{row0 * n * v.page_size:#0{LABEL_WIDTH - 2}x}  ", style="dim")
        for i in range(row0, min(len(dom), row0 + width)):
            d = dom[i]
            style = resent_style(mx[i]) if d == CLASS_RESENT else STYLE[d]
            out.append(_glyph(pur[i]), style=style)
        out.append("\n")
    return out, n


def _summary(v: BlockView, per_cell: int) -> Text:
    c = v.counts
    t = Text()
    pct = (lambda k: f" ({100 * k / v.pages:.1f}%)") if v.pages else (lambda k: "")
    t.append(f"{num(v.pages)} page{'s' if v.pages != 1 else ''} of {size(v.page_size)}, "
             f"cell = {num(per_cell)} page{'s' if per_cell != 1 else ''} "
             f"({size(per_cell * v.page_size)}): ")
    t.append(f"data {num(c['data'])}{pct(c['data'])}", style=STYLE[CLASS_DATA])
    t.append(", ")
    t.append(f"zero {num(c['zero'])}{pct(c['zero'])}", style=STYLE[CLASS_ZERO])
    if c["never_sent"]:
        t.append(", ")
        t.append(f"never sent {num(c['never_sent'])}{pct(c['never_sent'])}",
                 style=STYLE[CLASS_ABSENT])
    if c["resent"]:
        t.append(", ")
        hist = ", ".join(f"×{k}: {num(n)}" for k, n in sorted(v.resent_histogram.items()))
        t.append(f"re-sent {num(c['resent'])} ({hist})", style=resent_style(v.max_sends))
    return t


def legend(fmt: str) -> Text:
    t = Text("legend: ")
    t.append("█ data", style=STYLE[CLASS_DATA])
    t.append("  ")
    t.append("█ zero", style=STYLE[CLASS_ZERO])
    if fmt == "legacy":
        t.append("  ")
        t.append("█ never sent", style=STYLE[CLASS_ABSENT])
        t.append("  re-sent: ")
        for i, (lo, st) in enumerate(RESENT_STYLES):
            hi = RESENT_STYLES[i + 1][0] - 1 if i + 1 < len(RESENT_STYLES) else None
            label = f"×{lo}" if hi == lo else (f"×{lo}-{hi}" if hi else f"×{lo}+")
            t.append(f"█ {label} ", style=st)
    t.append("\n  a cell shows its most common class (re-sent wins); share: "
             "█ all ▓ ≥75% ▒ ≥50% ░ less", style="dim")
    if fmt != "legacy":
        t.append("\n  mapped-ram: data = bit set, zero = bit clear (zero and never "
                 "written look alike)", style="dim")
    return t


def render_map(r: MapReport, console: Console, rows: int = 8,
               per_cell: int | None = None) -> None:
    width = max(8, console.width - LABEL_WIDTH)
    console.print(Text.assemble(("miginspect map", "bold"), f"  {r.path}  ({r.format})"))
    console.print(legend(r.format))
    total = Table(box=None, padding=(0, 2), header_style="bold")
    for col in ("block", "pages", "data", "zero", "never sent", "re-sent"):
        total.add_column(col, justify="left" if col == "block" else "right")
    for v in r.blocks:
        console.print()
        console.print(Text.assemble((v.name, "bold"), f"  {size(v.used_length)}"))
        grid, n = _grid(v, width, rows, per_cell)
        console.print(grid, end="", soft_wrap=True)
        console.print(_summary(v, n))
        if v.bitmap_untrusted:
            console.print(f"[red]bitmap untrusted: {name(v.bitmap_untrusted)}[/]")
        c = v.counts
        total.add_row(name(v.name), num(v.pages), num(c["data"]), num(c["zero"]),
                      num(c["never_sent"]), num(c["resent"]))
    if r.stopped:
        console.print(f"[red]the walk stopped early, later pages are missing: "
                      f"{name(r.stopped)}[/]")
    if len(r.blocks) > 1:
        console.print()
        console.print(Text("summary", style="bold"))
        console.print(total)
