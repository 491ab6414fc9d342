"""Tables that re-flow instead of cropping.

`Grid` lays rows out in one of three ways, the first that fits the width:

1. one line per row (the flexible column, a name or prose, wrapped at / : . or spaces
   when it is what would not fit);
2. stacked: each row's name on its own line(s), its values on the next line;
3. records: the name, then `header: value` pairs packed into lines.

Numbers, offsets and sizes are never wrapped, cut or elided, and no cell ends in '…'.
With no width limit (a pipe without COLUMNS) every row is one line.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderResult
from rich.style import Style
from rich.text import Text

from .text import line, wrap_text

#: below this many cells for the flexible column, rows are stacked instead
MIN_FLEX = 16
#: bar columns narrower than this are left out
MIN_BAR = 8


def natural(console: Console) -> bool:
    """True when the console has no width limit (output to a pipe with no COLUMNS)."""
    return bool(getattr(console, "natural", False))


def layout_width(console: Console, wanted: int | None = None) -> int:
    """Width for decisions such as the map's cells per row: the console width, or
    `wanted` (default 100) when there is no limit."""
    if natural(console):
        return wanted or 100
    return console.width


def say(console: Console, *parts: object, style: str | None = None) -> None:
    """One message line. In a pipe it is never wrapped; on a terminal it is wrapped at
    spaces, never between a number and its unit. Parts as for `text.line`."""
    t = line(*parts)  # type: ignore[arg-type]
    if style:
        t.stylize(style)
    if not console.is_terminal or natural(console):
        console.print(t, soft_wrap=True)
        return
    for piece in wrap_text(t, console.width):
        console.print(piece, soft_wrap=True)


@dataclass
class Col:
    header: str
    justify: str = "right"  # "left" or "right"
    style: str | None = None
    #: None: never wrapped; "name": wrapped at / : . @ - _; "text": wrapped at spaces
    flex: str | None = None
    #: a bar chart that only repeats a number beside it: drawn in the room left (at most
    #: `bar` cells), dropped when fewer than MIN_BAR cells are left
    bar: int = 0


@dataclass
class Bar:
    """A bar-chart cell: `value` out of `maximum`, drawn at the width the layout leaves."""

    value: float
    maximum: float

    def text(self, width: int) -> str:
        if self.maximum <= 0 or self.value <= 0 or width <= 0:
            return ""
        eighths = max(1, round(self.value / self.maximum * width * 8))
        full, part = divmod(min(eighths, width * 8), 8)
        return "█" * full + (" ▏▎▍▌▋▊▉█"[part] if part else "")


Cell = "str | Text | int | Bar | None"


class Grid:
    """A table of rows that re-flows to the width it is given (see the module doc)."""

    def __init__(self, cols: Iterable[Col], title: str | None = None,
                 caption: str | None = None, gap: int = 2) -> None:
        self.cols = list(cols)
        self.title = title
        self.caption = caption
        self.gap = gap
        self.rows: list[list[Text]] = []
        self._bars: list[list[Bar | None]] = []

    def add_row(self, *cells: Cell) -> None:  # type: ignore[valid-type]
        row = []
        bars: list[Bar | None] = []
        for i, c in enumerate(cells):
            bars.append(c if isinstance(c, Bar) else None)
            if isinstance(c, Bar):
                c = ""
            t = c if isinstance(c, Text) else line("" if c is None else str(c))
            st = self.cols[i].style
            if st and not t.style:
                t = t.copy()
                t.style = st  # the base style: the cell's own spans win over it
            row.append(t)
        self.rows.append(row)
        self._bars.append(bars)

    # -- layout ----------------------------------------------------------------------

    def _widths(self) -> list[int]:
        return [max([cell_len(c.header)] + [r[i].cell_len for r in self.rows])
                for i, c in enumerate(self.cols)]

    def _flex(self) -> int | None:
        return next((i for i, c in enumerate(self.cols) if c.flex), None)

    def _fit_bars(self, width: int | None) -> Grid:
        """This grid with its bar columns drawn in the room the other columns leave."""
        bars = [i for i, c in enumerate(self.cols) if c.bar]
        if not bars:
            return self
        keep = [i for i in range(len(self.cols)) if i not in bars]
        sub = Grid([self.cols[i] for i in keep], self.title, self.caption, self.gap)
        sub.rows = [[r[i] for i in keep] for r in self.rows]
        sub._bars = [[b[i] for i in keep] for b in self._bars]
        w = sub._widths()
        room = self.cols[bars[0]].bar if width is None else min(
            self.cols[bars[0]].bar, width - sum(w) - self.gap * len(w))
        if room < MIN_BAR:
            return sub
        i = bars[0]
        sub.cols.append(Col("", "left", self.cols[i].style))
        for r, b in zip(sub.rows, self._bars, strict=True):
            cell = b[i]
            r.append(Text(cell.text(room) if cell else "", style=self.cols[i].style or ""))
        return sub

    def lines(self, width: int | None) -> list[Text]:
        """The rendered lines; `width` None = no limit."""
        fitted = self._fit_bars(width)
        if fitted is not self:
            return fitted.lines(width)
        out: list[Text] = []
        if self.title:
            out.append(Text(self.title, style="bold"))
        w = self._widths()
        gaps = self.gap * (len(self.cols) - 1)
        flex = self._flex()
        if width is None or sum(w) + gaps <= width:
            out += self._inline(w, None)
        elif flex is not None and self.cols[flex].flex == "text" and \
                width - (sum(w) - w[flex] + gaps) >= min(MIN_FLEX, w[flex]):
            # prose wraps in place; a name column that does not fit is stacked instead, so
            # every name stays whole on its own line (grep) as long as it fits the width
            w = list(w)
            w[flex] = width - (sum(w) - w[flex] + gaps)
            out += self._inline(w, width)
        elif flex is not None and sum(w) - w[flex] + self.gap * (len(self.cols) - 2) + 2 \
                <= width:
            out += self._stacked(w, flex, width)
        else:
            out += self._records(flex if flex is not None else 0, width)
        if self.caption:
            cap = Text(self.caption, style="dim")
            out += wrap_text(cap, width) if width else [cap]
        return out

    def _row_lines(self, cells: list[Text], w: list[int], idx: list[int]) -> list[Text]:
        cols = [wrap_text(cells[i], w[i], self.cols[i].flex == "name")
                if self.cols[i].flex and cells[i].cell_len > w[i] else [cells[i]]
                for i in idx]
        out = []
        for k in range(max(len(c) for c in cols)):
            t = Text()
            for j, i in enumerate(idx):
                piece = cols[j][k] if k < len(cols[j]) else Text()
                pad = w[i] - piece.cell_len
                last = j == len(idx) - 1
                if j:
                    t.append(" " * self.gap)
                if self.cols[i].justify == "right":
                    t.append(" " * pad)
                    t.append_text(piece)
                else:
                    t.append_text(piece)
                    if not last:
                        t.append(" " * pad)
            t.rstrip()
            out.append(t)
        return out

    def _header(self, w: list[int], idx: list[int], indent: int = 0) -> list[Text]:
        cells = [Text(self.cols[i].header, style="bold") for i in range(len(self.cols))]
        head = self._row_lines(cells, w, idx)
        total = sum(w[i] for i in idx) + self.gap * (len(idx) - 1)
        rule = Text("─" * total, style="dim")
        return [Text(" " * indent) + h for h in head] + [Text(" " * indent) + rule]

    def _inline(self, w: list[int], width: int | None) -> list[Text]:
        idx = list(range(len(self.cols)))
        out = self._header(w, idx)
        for r in self.rows:
            out += self._row_lines(r, w, idx)
        return out

    def _stacked(self, w: list[int], flex: int, width: int) -> list[Text]:
        idx = [i for i in range(len(self.cols)) if i != flex]
        out = [Text(self.cols[flex].header, style="bold")] + self._header(w, idx, 2)
        for r in self.rows:
            out += wrap_text(r[flex], width, self.cols[flex].flex == "name")
            out += [Text("  ") + x for x in self._row_lines(r, w, idx)]
        return out

    def _records(self, key: int, width: int) -> list[Text]:
        out: list[Text] = []
        for r in self.rows:
            out += wrap_text(r[key], width, self.cols[key].flex != "text")
            cur = Text("  ")
            for i, c in enumerate(self.cols):
                if i == key:
                    continue
                item = Text.assemble((f"{c.header}: ", "bold"), r[i])
                if cur.cell_len > 2 and cur.cell_len + 3 + item.cell_len > width:
                    out.append(cur)
                    cur = Text("  ")
                if cur.cell_len > 2:
                    cur.append("   ")
                if 2 + item.cell_len > width:
                    out += [Text("  ") + x for x in wrap_text(item, width - 2)]
                    continue
                cur.append_text(item)
            if cur.cell_len > 2:
                out.append(cur)
        return out

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = None if natural(console) else options.max_width
        for t in self.lines(width):
            t.no_wrap = True
            t.overflow = "ignore"
            t.end = "\n"
            yield t


class KV(Grid):
    """'label  value' lines without a header; values wrap at spaces (never cut)."""

    def __init__(self, rows: Iterable[tuple[str, Text | str]] = (), title: str | None = None,
                 label_style: str | Style = "bold") -> None:
        super().__init__([Col("", "left", str(label_style)), Col("", "left", flex="text")],
                         title)
        for k, v in rows:
            self.add_row(k, v)

    def _header(self, w: list[int], idx: list[int], indent: int = 0) -> list[Text]:
        return []

    def _stacked(self, w: list[int], flex: int, width: int) -> list[Text]:
        out: list[Text] = []
        for r in self.rows:
            out.append(r[0])
            out += [Text("  ") + x for x in wrap_text(r[1], width - 2)]
        return out
