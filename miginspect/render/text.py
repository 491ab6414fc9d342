"""Strings from files are data: the one helper that makes them safe to show.

Every string a capture supplies (idstrs, RAMBlock names, vmdescription names, XML values,
paths, and error messages that embed them) goes through `printable` before it is shown:
control and other non-printable characters become escapes (``\\x00``, ``\\x1b``,
``\\u202e``), so a name can neither move the cursor nor hide what follows it. Renderers
build `rich.text.Text` objects (`line`), which rich never parses as markup, so a name such
as ``/rom@etc/acpi/rsdp`` or ``[bold]`` prints as itself. `markup` is for the few places
that still hand a string to rich's markup parser. JSON keeps the real string
(``json.dumps`` escapes control characters itself).

The wrapping helpers break names at ``/ : . @ - _`` and prose at spaces, and never drop
a character: a piece longer than the width is split across lines.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from rich.cells import cell_len
from rich.markup import escape
from rich.style import Style
from rich.text import Text

from ..inspector.report import Note, Stop

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(value: object) -> str:
    """`value` as text with every non-printable character written as an escape."""
    s = value if isinstance(value, str) else str(value)
    if s.isprintable():
        return s
    out = []
    for ch in s:
        if ch.isprintable():
            out.append(ch)
            continue
        o = ord(ch)
        out.append(_NAMED.get(ch) or (f"\\x{o:02x}" if o < 0x100 else
                                      f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"))
    return "".join(out)


def markup(value: object) -> str:
    """`printable(value)` escaped for rich markup (only where markup cannot be avoided)."""
    return escape(printable(value))


Part = str | Text | tuple[object, str | Style | None] | None


def line(*parts: Part) -> Text:
    """A Text from parts: plain strings, (value, style) pairs, or Text objects. Every
    string is passed through `printable`; nothing is parsed as markup."""
    t = Text()
    for p in parts:
        if p is None:
            continue
        if isinstance(p, Text):
            t.append_text(p)
        elif isinstance(p, tuple):
            t.append(printable(p[0]), style=p[1] or "")
        else:
            t.append(printable(p))
    return t


def joined(items: Iterable[Text | str], sep: str = ", ") -> Text:
    t = Text()
    for i, item in enumerate(items):
        if i:
            t.append(sep)
        t.append_text(item if isinstance(item, Text) else line(item))
    return t


def stop_text(s: Stop) -> Text:
    """'truncated at offset 0x1f (31) [ram]: the data ends ...' (the error line's form)."""
    at = f" at offset 0x{s.offset:x} ({s.offset})" if s.offset is not None else ""
    return line(f"{s.kind}{at}", f" [{s.where}]" if s.where else None, ": ", s.message)


def note_text(n: Note) -> Text:
    """'warning at 0x1234 (where): message', the severity in its colour."""
    from .vocab import SEVERITY_STYLE

    at = f" at 0x{n.offset:x}" if n.offset is not None else ""
    where = f" ({n.where})" if n.where else ""
    return line((n.severity, SEVERITY_STYLE.get(n.severity, "")), at, where, ": ", n.message)


# -- wrapping ---------------------------------------------------------------------------

_NAME_BREAK = re.compile(r"[^/:.@\-_, ]*[/:.@\-_, ]|[^/:.@\-_, ]+")


def name_pieces(s: str) -> list[str]:
    """'0000:00:01.3/piix4_pm' -> ['0000:', '00:', '01.', '3/', 'piix4_', 'pm']"""
    return _NAME_BREAK.findall(s) or [""]


def _fold(piece: str, width: int) -> list[str]:
    """Split one piece longer than `width` cells into pieces of at most `width` cells."""
    out, cur = [], ""
    for ch in piece:
        if cur and cell_len(cur + ch) > width:
            out.append(cur)
            cur = ""
        cur += ch
    out.append(cur)
    return out


def wrap_pieces(pieces: list[str], width: int) -> list[str]:
    """Greedy packing of pieces into lines of at most `width` cells (pieces longer than
    a line are folded)."""
    width = max(1, width)
    lines: list[str] = []
    cur = ""
    for p in pieces:
        if cell_len(cur + p) <= width:
            cur += p
            continue
        if cur:
            lines.append(cur)
            cur = ""
        if cell_len(p) > width:
            *full, cur = _fold(p, width)
            lines.extend(full)
        else:
            cur = p
    lines.append(cur)
    return lines


def wrap_name(s: str, width: int) -> list[str]:
    """A name broken at / : . @ - _ into lines of at most `width` cells; no character lost."""
    return [ln.rstrip(" ") or ln for ln in wrap_pieces(name_pieces(s), width)]


_ENDS_IN_DIGIT = re.compile(r"\d$")
_UNIT = re.compile(r"(B|KiB|MiB|GiB|TiB|PiB|bytes?|pages?)\b")


def _keep_units(words: list[str]) -> list[str]:
    """Words with every number joined to the unit after it ('33.32 MiB' stays one piece)."""
    out: list[str] = []
    for w in words:
        if out and _ENDS_IN_DIGIT.search(out[-1]) and _UNIT.match(w):
            out[-1] += " " + w
        else:
            out.append(w)
    return out


def wrap_words(s: str, width: int) -> list[str]:
    """Prose broken at spaces, never between a number and its unit (a word longer than a
    line is broken at / : . too)."""
    lines: list[str] = []
    for para in s.split("\n"):
        words = _keep_units(para.split(" "))
        pieces: list[str] = []
        for i, w in enumerate(words):
            w = w + (" " if i + 1 < len(words) else "")
            pieces.extend([w] if cell_len(w) <= width else name_pieces(w))
        lines.extend(ln.rstrip(" ") for ln in wrap_pieces(pieces, width))
    return lines


def wrap_text(t: Text, width: int, names: bool = False) -> list[Text]:
    """Wrap a styled Text without losing a character: at / : . (names) or at spaces."""
    plain = t.plain
    if cell_len(plain) <= width and "\n" not in plain:
        return [t]
    rows = wrap_name(plain, width) if names else wrap_words(plain, width)
    out: list[Text] = []
    pos = 0
    for r in rows:
        start = plain.find(r, pos) if r else pos
        if start < 0:  # cannot happen (rows are slices of plain); stay whole anyway
            return [t]
        out.append(t[start : start + len(r)])
        pos = start + len(r)
    return out
