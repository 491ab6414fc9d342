"""One vocabulary, one set of glyphs, one palette for every report.

A page's final state has the same word, the same glyph and the same colour in `info`,
`map`, `size`, `diff`, `convert` and `extract`; the glyph alone tells the states apart
(pipes, NO_COLOR, colour-blind readers), the colour only repeats it. The palette is
Okabe and Ito's colour-blind-safe set.

The words match the JSON keys of `map` (`never_sent`, `zero`, `data`, `resent`).
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text

# Okabe-Ito colours
BLUE = "#0072B2"
SKY = "#56B4E9"
GREEN = "#009E73"
ORANGE = "#E69F00"
VERMILLION = "#D55E00"
PURPLE = "#CC79A7"
GREY = "#999999"


@dataclass(frozen=True)
class Mark:
    """One meaning: its word (as in reports), its JSON key, its glyph and its colour."""

    key: str
    word: str
    glyph: str
    style: str


DATA = Mark("data", "data", "█", BLUE)
PART_DATA = Mark("part_data", "some data", "▒", BLUE)
ZERO = Mark("zero", "zero", "·", GREY)
NEVER_SENT = Mark("never_sent", "never sent", "-", PURPLE)
RESENT = Mark("resent", "re-sent", "2", ORANGE)  # the glyph is the send count, see resent_glyph
#: re-sent 10 times or more
RESENT_MANY = "+"

#: --partial: a page the file does not give (it stops before the page's last copy)
MISSING = Mark("missing", "missing", "?", VERMILLION)

#: the page states, in the order reports list them
PAGE_STATES = (DATA, ZERO, NEVER_SENT, RESENT)

#: why a page is missing (inspector/salvage.py MISSING_*), in words
MISSING_WORDS = {
    "never-sent-before-stop": "never sent before the stop",
    "cut-inside-record": "cut inside its record",
    "block-not-reached": "block not reached",
    "past-end-of-data": "past the end of the data",
}

# diff: how a page of A compares with the same page of B
EQUAL = Mark("equal", "equal", "·", GREY)
CHANGED = Mark("changed", "changed", "X", VERMILLION)
ONLY_A = Mark("only_a", "only A", "A", SKY)
ONLY_B = Mark("only_b", "only B", "B", GREEN)
DIFF_KINDS = (EQUAL, CHANGED, ONLY_A, ONLY_B)

# check severities (the word is always printed; the colour repeats it)
SEVERITY_STYLE = {"error": f"bold {VERMILLION}", "warning": ORANGE, "info": GREY}

# verdict words
GOOD = f"bold {GREEN}"
BAD = f"bold {VERMILLION}"
UNSURE = f"bold {ORANGE}"


def resent_glyph(times: int) -> str:
    """Glyph of a page (or cell) sent `times` >= 2 times: the digit, '+' from 10."""
    return str(times) if 2 <= times <= 9 else RESENT_MANY


def resent_word(times: int) -> str:
    return f"re-sent x{times}"


def mark(m: Mark, text: str | None = None) -> Text:
    """`glyph word` in the mark's colour (legends)."""
    return Text(f"{m.glyph} {text or m.word}", style=m.style)


def page_legend(legacy: bool, partial: bool = True, missing: bool = False) -> Text:
    """The page-state legend, the same in map, diff and everywhere a glyph is drawn
    (`partial`: the some-data cell glyph; `missing`: a --partial report's missing pages)."""
    t = Text()
    items = [mark(DATA)]
    if partial:
        items.append(mark(PART_DATA, "some data in the cell"))
    items.append(mark(ZERO))
    if legacy:
        items.append(mark(NEVER_SENT))
        items.append(Text(f"2-9 {RESENT.word} x2-x9, {RESENT_MANY} x10 or more",
                          style=RESENT.style))
    if missing:
        items.append(mark(MISSING, "missing (not in the file: it stops first)"))
    for i, it in enumerate(items):
        if i:
            t.append("  ")
        t.append_text(it)
    return t


def diff_legend() -> Text:
    t = Text()
    for i, m in enumerate(DIFF_KINDS):
        if i:
            t.append("  ")
        t.append_text(mark(m))
    return t
