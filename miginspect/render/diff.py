"""Terminal rendering of `DiffReport` and `PageHexDiff`: the verdict first (identical, or
what differs), the RAM table, a picture of where each differing block differs (glyphs from
`vocab`: · equal, X changed, A only A, B only B), the device fields that differ with both
values in full, and notices."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from ..inspector.devices import StateNode
from ..inspector.diff import CHANGED, EQUAL, ONLY_A, ONLY_B, BlockDiff, DiffReport, PageHexDiff
from . import vocab as V
from .devices import value_lines
from .fmt import hexoff, num, size
from .layout import Col, Grid, layout_width, say
from .text import line, note_text, stop_text

#: Cells of the change picture per block row at most.
PICTURE_CELLS = 64
_MARK = {EQUAL: V.EQUAL, CHANGED: V.CHANGED, ONLY_A: V.ONLY_A, ONLY_B: V.ONLY_B}
#: Ranges listed per block before "the N largest of M".
MAX_RANGES = 12


def verdict(r: DiffReport) -> Text:
    head = line(("diff: ", "bold"))
    if r.identical:
        dev = "" if r.devices_identical is None else " and device state"
        return head + line(("identical", V.GOOD), f": RAM{dev} the same in A and B")
    tot = r.totals()
    parts = []
    if not r.ram_identical:
        blocks = [b.name for b in r.blocks if not b.identical]
        parts.append(f"RAM differs in {num(tot['pages'] - tot['equal'])} of "
                     f"{num(tot['pages'])} pages ({', '.join(blocks)})")
    else:
        parts.append("RAM identical")
    if r.devices is None:
        parts.append("devices not compared")
    elif r.devices.identical:
        parts.append("device state identical")
    else:
        parts.append(f"device state differs in {len(r.devices.devices)} of "
                     f"{r.devices.compared} devices")
    return head + line(("different", V.BAD), ": " + "; ".join(parts))


def _blocks(r: DiffReport) -> Grid:
    g = Grid([Col("block", "left", flex="name"), Col("pages"),
              Col(V.EQUAL.word, style=V.EQUAL.style),
              Col(V.CHANGED.word, style=V.CHANGED.style),
              Col(V.ONLY_A.word, style=V.ONLY_A.style), Col(V.ONLY_B.word, style=V.ONLY_B.style),
              Col("to data"), Col("to zero")], "RAM",
             "changed: both hold different data; only A / only B: data on one side, zero on "
             "the other; to data / to zero: pages whose state went from zero or never sent to "
             "data, or back")
    for b in r.blocks:
        g.add_row(line(b.name), num(b.pages), num(b.equal), num(b.changed), num(b.only_a),
                  num(b.only_b), num(b.zero_to_data), num(b.data_to_zero))
    return g


def _block_notes(r: DiffReport, console: Console) -> None:
    for b in r.blocks:
        if b.missing == "a":
            say(console, (b.name, "bold"), ": ", ("only in B", V.BAD))
        elif b.missing == "b":
            say(console, (b.name, "bold"), ": ", ("only in A", V.BAD))
        elif b.used_length_a != b.used_length_b:
            say(console, (b.name, "bold"), ": ", (f"used length {size(b.used_length_a)} in A, "
                                                   f"{size(b.used_length_b)} in B", V.BAD))


def _ranges(b: BlockDiff, console: Console) -> None:
    width = layout_width(console, PICTURE_CELLS + 2)
    cells = b.picture(max(16, min(PICTURE_CELLS, width - 2)))
    per = -(-b.pages // max(len(cells), 1))
    say(console, (b.name, "bold"), f"  {num(b.pages)} pages, one cell = {num(per)} page"
        f"{'s' if per != 1 else ''}")
    pic = Text("  ")
    for c in cells:
        m = _MARK[c]
        pic.append(m.glyph, style=m.style)
    console.print(pic, soft_wrap=True)
    shown = b.ranges
    if len(shown) > MAX_RANGES:  # the largest runs, in address order
        big = sorted(range(len(shown)), key=lambda i: -shown[i].pages)[:MAX_RANGES]
        shown = [shown[i] for i in sorted(big)]
    for rg in shown:
        gpa = f", GPA {hexoff(rg.gpa)}-{hexoff(rg.gpa + rg.length - 1)}" \
            if rg.gpa is not None else ""
        what = ", ".join(f"{num(n)} {m.word}" for m, n in ((V.CHANGED, rg.changed),
                                                           (V.ONLY_A, rg.only_a),
                                                           (V.ONLY_B, rg.only_b)) if n)
        say(console, f"  {hexoff(rg.offset)}-{hexoff(rg.offset + rg.length - 1)}: "
            f"{num(rg.pages)} page{'s' if rg.pages != 1 else ''} ({what}){gpa}")
    if len(b.ranges) > MAX_RANGES:
        say(console, (f"  the {MAX_RANGES} largest of {num(len(b.ranges))} ranges (--json or "
                      "--pages lists all)", "dim"))


def _pages(b: BlockDiff, console: Console) -> None:
    rows = b.changed_pages()
    gpa = any(p.gpa is not None and p.gpa != p.offset for p in rows)
    same = not gpa and b.gpa_low is not None
    cols = [Col("page"), Col("offset")] + ([Col("GPA")] if gpa else []) + [
        Col("kind", "left"), Col("A → B", "left"), Col("xxh3 A", "left"), Col("xxh3 B", "left")]
    g = Grid(cols, f"differing pages of {b.name}",
             "offset = guest-physical address" if same else None)
    for p in rows:
        row = [num(p.page), hexoff(p.offset)] + ([hexoff(p.gpa)] if gpa else [])
        g.add_row(*row, p.kind, f"{p.state_a} → {p.state_b}", p.hash_a, p.hash_b)
    console.print(g)


def _value(node_type: str | None, value: object, offset: int | None, room: int | None) -> \
        list[str]:
    if offset is None:
        return ["(absent)"]
    head, extra = value_lines(StateNode("", node_type or "?", offset, 0, value), room)
    return [head] + ["    " + x for x in extra]


def _hex_delta(a: object, b: object, most: int = 16) -> tuple[str | None, str | None]:
    """For two hex strings of one length: only the differing bytes, as `[i]=xx`."""
    if not (isinstance(a, str) and isinstance(b, str) and len(a) == len(b)):
        return None, None
    try:
        xa, xb = bytes.fromhex(a), bytes.fromhex(b)
    except ValueError:
        return None, None
    idx = [i for i in range(len(xa)) if xa[i] != xb[i]]
    if len(idx) > most:
        return None, None
    return (" ".join(f"[{i}]={xa[i]:02x}" for i in idx),
            " ".join(f"[{i}]={xb[i]:02x}" for i in idx))


def _devices(r: DiffReport, console: Console) -> None:
    dd = r.devices
    if dd is None or dd.identical:
        return
    console.print(Text(f"Device state ({dd.compared} devices compared, {len(dd.devices)} "
                       "differ)", style="bold"))
    room = None if getattr(console, "natural", False) else layout_width(console) - 8
    for d in dd.devices:
        if d.status != "changed":
            side = "A" if d.status == "only_a" else "B"
            say(console, (d.key, "bold"), ": ", (f"section only in {side}", V.BAD))
            continue
        say(console, (d.key, "bold"))
        if d.version_a != d.version_b:
            say(console, f"  version: A {num(d.version_a)}, B {num(d.version_b)}")
        for f in d.fields:
            da, db = _hex_delta(f.a, f.b)
            say(console, "  ", (f.path, "bold"), (f" {f.type or ''}", "dim"),
                " (bytes that differ)" if da is not None else "")
            va = [da] if da is not None else _value(f.type, f.a, f.offset_a, room)
            vb = [db] if db is not None else _value(f.type, f.b, f.offset_b, room)
            for side, vals, st in (("A", va, V.ONLY_A.style), ("B", vb, V.ONLY_B.style)):
                say(console, "    ", (side, st), " ", vals[0])
                for x in vals[1:]:
                    console.print(line("    ", x), soft_wrap=True)
        if d.error:
            say(console, "  ", ("decoding stopped", V.BAD), ": ", d.error)


def render_diff(r: DiffReport, console: Console, pages: bool = False) -> None:
    say(console, verdict(r))
    for side, path, fmt, machine, snap in (("A ", r.path_a, r.format_a, r.machine_a,
                                            r.snapshot_a),
                                           ("B ", r.path_b, r.format_b, r.machine_b,
                                            r.snapshot_b)):
        at = ("snapshot ", snap, " ") if snap is not None else ()
        say(console, (side, "bold"), path, " ", *at, f"({fmt}, {machine or '-'})")
    console.print()
    console.print(_blocks(r))
    _block_notes(r, console)
    differing = [b for b in r.blocks if not b.identical]
    if differing:
        console.print()
        say(console, ("where: ", "bold"), V.diff_legend())
        for b in differing:
            _ranges(b, console)
            if pages and b.differing:
                _pages(b, console)
    if r.devices is not None and not r.devices.identical:
        console.print()
        _devices(r, console)
    if r.notices:
        console.print()
    for n in r.notices:
        say(console, note_text(n))
    for tag, stop in (("A", r.stopped_a), ("B", r.stopped_b)):
        if stop is not None:
            say(console, (f"{tag} stopped early", V.BAD), ": ", stop_text(stop))


def render_page_hexdiff(h: PageHexDiff, console: Console) -> None:
    gpa = f", GPA {hexoff(h.gpa)}" if h.gpa is not None else ""
    word = "identical" if not h.rows else f"{num(h.differing_bytes)} bytes differ"
    say(console, ("diff: ", "bold"), (h.block, "bold"), f" page {num(h.page)} (offset "
        f"{hexoff(h.offset)}{gpa}): ", (word, V.GOOD if not h.rows else V.BAD))
    say(console, f"  A: {h.state_a}, xxh3 {h.hash_a}")
    say(console, f"  B: {h.state_b}, xxh3 {h.hash_b}")
    if not h.rows:
        return
    say(console, f"{num(h.differing_bytes)} bytes differ in {len(h.rows)} rows of 16 "
        "(differing bytes marked ^ below)")
    for row in h.rows:
        a = " ".join(f"{v:02x}" for v in row.a)
        b = " ".join(f"{v:02x}" for v in row.b)
        marks = " ".join("^^" if v != w else "  " for v, w in zip(row.a, row.b, strict=True))
        console.print(line(f"  {row.offset:04x}  A ", (a, V.ONLY_A.style)), soft_wrap=True)
        console.print(line("        B ", (b, V.ONLY_B.style)), soft_wrap=True)
        console.print(line("          ", (marks.rstrip(), V.CHANGED.style)), soft_wrap=True)
