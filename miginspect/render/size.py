"""Terminal rendering of `SizeReport`: the verdict first, then tables and text bar charts.

Bars only repeat the numbers beside them (in a pipe and under NO_COLOR they read the same)."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from ..inspector.size import SizeReport
from . import vocab as V
from .fmt import hexoff, num, short_size, size
from .layout import KV, Bar, Col, Grid, say
from .text import line

BAR_WIDTH = 30
_EIGHTHS = " ▏▎▍▌▋▊▉█"
_HEAT = " ░▒▓█"


def bar(value: float, maximum: float, width: int = BAR_WIDTH) -> str:
    """A horizontal bar of `width` cells, in eighths of a cell."""
    if maximum <= 0 or value <= 0:
        return ""
    eighths = max(1, round(value / maximum * width * 8))
    full, part = divmod(min(eighths, width * 8), 8)
    return "█" * full + (_EIGHTHS[part] if part else "")


def heat_strip(cells: list[int]) -> str:
    top = max(cells) if cells else 0
    if not top:
        return "·" * len(cells)
    out = []
    for c in cells:
        if not c:
            out.append("·")
        else:
            out.append(_HEAT[min(4, 1 + int(c / top * 3.999))])
    return "".join(out)


def _pct(part: int, whole: int) -> str:
    return f"{part / whole:.1%}" if whole else "-"


def _ratio(a: int, b: int) -> str:
    return f"{a / b:.2f}x" if b else "-"


def verdict(r: SizeReport) -> Text:
    return line(("size: ", "bold"), r.verdict)


def _summary(r: SizeReport) -> KV:
    rows: list[tuple[str, Text | str]] = [("file", line(r.path))]
    rows.append(("format", r.format + (f" ({r.compression}-compressed)" if r.compression
                                       else "")))
    alloc = f", allocated {size(r.allocated_size)} = {num(r.allocated_size)} B" \
        if r.allocated_size != r.file_size else ""
    rows.append(("file size", f"{size(r.file_size)} = {num(r.file_size)} B{alloc}"))
    if r.stream_bytes + r.stream_offset != r.file_size:
        rows.append(("QEMU stream", f"{size(r.stream_bytes)} = {num(r.stream_bytes)} B"))
    ram = line(f"{size(r.ram_total)} in {len(r.blocks)} RAMBlocks, {num(r.pages)} pages: ",
               (f"{num(r.data_pages)} {V.DATA.word} ({size(r.data_bytes)})", V.DATA.style),
               ", ", (f"{num(r.zero_pages)} {V.ZERO.word}", V.ZERO.style))
    if r.absent_pages:
        ram += line(", ", (f"{num(r.absent_pages)} {V.NEVER_SENT.word}", V.NEVER_SENT.style))
    rows.append(("RAM", ram))
    if r.resend_amplification is not None:
        rows.append(("redirty", line((f"{r.resend_amplification:.3f}x", "bold"),
                                     f" RAM bytes written per byte sent once: "
                                     f"{num(r.resent_bytes)} B of re-sent pages")))
        rows.append(("record framing", f"{num(r.framing_bytes)} B of record headers and "
                     "block names (not re-sending)"))
    return KV(rows)


def _where(r: SizeReport) -> Grid:
    g = Grid([Col("part", "left", flex="text"), Col("bytes"), Col("share"),
              Col("", "left", style=V.BLUE, bar=BAR_WIDTH)], "Where the bytes go")
    whole = r.stream_bytes + r.stream_offset
    ram_label = "RAM records" if r.format == "legacy" else "RAM data pages"
    rows = [(ram_label, r.ram_bytes_written), ("device state", r.device_state_bytes),
            ("vmdescription JSON", r.vmdescription_bytes)]
    rows += [(k.replace("_", " "), v) for k, v in r.overhead.items() if v]
    top = max(v for _, v in rows) if rows else 0
    for label, v in rows:
        g.add_row(label, num(v), _pct(v, whole), Bar(v, top))
    g.add_row(line(("total", "bold")), line((num(whole), "bold")), "", "")
    return g


def _bounds(r: SizeReport) -> Grid:
    whole = r.stream_bytes + r.stream_offset
    vs = "vs the stream" if whole != r.file_size else "vs this file"
    g = Grid([Col("", "left", flex="text"), Col("apparent"), Col("allocated"), Col(vs)],
             "Bounds", "apparent: the file's length; allocated: the disk blocks it takes "
             "(holes are free)")
    g.add_row("this file", num(r.file_size), num(r.allocated_size), "")
    if whole != r.file_size:
        g.add_row("its QEMU stream" + (" (inflated)" if r.compression else ""), num(whole),
                  "-", "")
    g.add_row("as mapped-ram", num(r.mapped_ram_bound), num(r.mapped_ram_allocated_bound),
              _ratio(whole, r.mapped_ram_bound))
    if r.legacy_minimum is not None:
        g.add_row("legacy, every page once", num(r.legacy_minimum), "-",
                  _ratio(whole, r.legacy_minimum))
    return g


def _mapped_check(r: SizeReport) -> Text | None:
    c = r.mapped_ram_check
    if not c:
        return None
    if c["layout_matches_headers"] and not c["difference"]:
        return line(("mapped-ram layout check: every header's bitmap and pages offsets follow "
                     "QEMU's rules and the file ends exactly at the bound", V.GOOD))
    return line(("mapped-ram layout check: ", V.BAD), "mismatched blocks ",
                ", ".join(c["mismatched_blocks"]) or "none",
                f", {num(c['difference'])} bytes beyond the bound")


def _blocks(r: SizeReport) -> Grid:
    legacy = r.format == "legacy"
    cols = [Col("name", "left", flex="name"), Col("used"),
            Col(V.DATA.word, style=V.DATA.style), Col(V.ZERO.word, style=V.ZERO.style),
            Col("written")]
    if legacy:
        cols += [Col("redirty"), Col(V.RESENT.word, style=V.RESENT.style)]
    cols.append(Col("as mapped-ram"))
    g = Grid(cols, "RAMBlocks", "written: RAM record bytes (legacy) or data page bytes "
             "(mapped-ram); redirty: written / written with every page sent once; re-sent: "
             "pages sent more "
             "than once (the most times)" if legacy else
             "written: data page bytes; as mapped-ram: the block's share of the bound")
    for b in r.blocks:
        row: list[str | Text] = [line(b.name), short_size(b.used_length), num(b.data_pages),
                                 num(b.zero_pages), size(b.ram_bytes_written)]
        if legacy:
            row.append(f"{b.resend_amplification:.2f}x" if b.resend_amplification else "-")
            row.append(f"{num(b.resent_pages)} (x{b.max_sends})" if b.resent_pages else "0")
        row.append(size(b.mapped_ram_bytes))
        g.add_row(*row)
    return g


def _rounds(r: SizeReport) -> Grid:
    g = Grid([Col("#"), Col("kind", "left"), Col("pages"),
              Col(V.ZERO.word, style=V.ZERO.style), Col("xbzrle"), Col("bytes"),
              Col("", "left", style=V.ORANGE, bar=BAR_WIDTH)],
             "Precopy rounds (bytes per round)")
    top = max((x.bytes for x in r.rounds), default=0)
    for x in r.rounds:
        g.add_row(str(x.index), x.kind, num(x.pages), num(x.zero_records),
                  num(x.xbzrle_records), num(x.bytes), Bar(x.bytes, top))
    return g


def _histogram(r: SizeReport) -> Grid:
    g = Grid([Col("sent"), Col("pages"), Col("", "left", style=V.RESENT.style,
                                              bar=BAR_WIDTH)], "Pages by times sent")
    top = max(r.send_histogram.values(), default=0)
    for k, v in sorted(r.send_histogram.items(), key=lambda kv: int(kv[0])):
        label = V.NEVER_SENT.word if k == "0" else f"x{k}"
        g.add_row(label, num(v), Bar(v, top))
    return g


def _hot(r: SizeReport) -> Grid:
    g = Grid([Col("block", "left", flex="name"), Col("range"), Col("re-sent pages"),
              Col("sends"), Col("extra bytes")], "Hottest ranges (re-dirtied working set)")
    for h in r.hot_ranges:
        g.add_row(line(h.block), f"{hexoff(h.start)}-{hexoff(h.end)}", num(h.pages),
                  num(h.sends), num(h.extra_bytes))
    return g


def _heat(r: SizeReport, console: Console) -> None:
    """One strip per block with re-sent pages: extra sends per slice of the block."""
    say(console, ("Where the hot pages are", "bold"),
        " (extra sends per slice of the block: · none, ░ ▒ ▓ █ more)")
    for b in r.blocks:
        if b.resent_pages:
            n = max(1, len(b.resend_heat))
            say(console, (b.name, "bold"), f"  0x0-{hexoff(b.used_length)}, {n} slices of "
                f"{size(b.used_length / n)}")
            console.print(line((heat_strip(b.resend_heat), V.RESENT.style)), soft_wrap=True)


def render_size(r: SizeReport, console: Console) -> None:
    say(console, verdict(r))
    console.print(_summary(r))
    for part in (_where(r), _bounds(r)):
        console.print()
        console.print(part)
    chk = _mapped_check(r)
    if chk is not None:
        say(console, chk)
    console.print()
    console.print(_blocks(r))
    if r.rounds:
        console.print()
        console.print(_rounds(r))
    if r.format == "legacy" and r.send_histogram:
        console.print()
        console.print(_histogram(r))
    if r.hot_ranges:
        console.print()
        console.print(_hot(r))
        console.print()
        _heat(r, console)
    if r.xbzrle:
        x = r.xbzrle
        console.print()
        say(console, ("XBZRLE", "bold"), f": {num(x['records'])} delta records, "
            f"{num(x['encoded_bytes'])} B encoded; saved {num(x['saved_bytes'])} B against "
            f"sending them as pages; {num(x['final_pages'])} pages end on a delta")
    if r.notices or r.stopped:
        console.print()
    for n in r.notices:
        say(console, ("note: ", "dim"), n)
    if r.stopped:
        say(console, ("stopped early", V.BAD), ": ", r.stopped)
