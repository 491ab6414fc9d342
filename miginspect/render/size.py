"""Terminal rendering of `SizeReport`: the verdict first, then tables and text bar charts.

Bars only repeat the numbers beside them (in a pipe and under NO_COLOR they read the same)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.text import Text

from ..inspector.size import (
    A_COPY_SPARSE,
    A_PAUSE,
    A_SAVE_MAPPED_RAM,
    V_AMPLIFIED,
    V_INCOMPLETE,
    V_MAPPED_AT_BOUND,
    V_MAPPED_LAYOUT_MISMATCH,
    V_MAPPED_OFF_BOUND,
    HotSummary,
    SizeReport,
    SizeVerdict,
)
from ..jsondata import jsonable
from . import vocab as V
from .fmt import hexoff, num, short_size, size
from .layout import KV, Bar, Col, Grid, say
from .text import line, note_text, printable, stop_text

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


# -- the verdict: a short answer, then why (worded from `verdict_basis` only) -------------

def _cut(v: SizeVerdict) -> str:
    return "; stream cut short, figures cover what was read" if v.stopped else ""


def _advice(v: SizeVerdict, short: bool) -> str:
    parts = []
    if A_PAUSE in v.advice:
        parts.append("pause the VM before saving" + ("" if short else
                                                     ", so each page is written once"))
    if A_SAVE_MAPPED_RAM in v.advice:
        parts.append("save as mapped-ram" + ("" if short else " to take less disk space"))
    if A_COPY_SPARSE in v.advice:
        parts.append("copy it sparse-aware" + ("" if short else
                                               " (cp --sparse=always, rsync -S)"))
    return " and ".join(parts)


def verdict_answer(r: SizeReport) -> str:
    """The short answer: the report's first line and `size --json`'s `verdict`."""
    v = r.verdict_basis
    if v is None:
        return "no verdict"
    advice = _advice(v, short=True)
    tail = (f"; {advice}" if advice else "") + _cut(v)
    if v.kind == V_INCOMPLETE:
        return "incomplete: no RAM could be read" + _cut(v)
    if v.kind == V_MAPPED_LAYOUT_MISMATCH:
        n = len(v.mismatched_blocks)
        return f"mapped-ram headers break QEMU's layout rules ({n} block{_s(n)})" + tail
    if v.kind == V_MAPPED_OFF_BOUND:
        return f"mapped-ram file {v.bound_difference:+,} B off its layout bound" + tail
    if v.kind == V_MAPPED_AT_BOUND:
        return "mapped-ram file at its layout bound" + tail
    if v.kind == V_AMPLIFIED:
        amp = f"{v.resend_amplification:.2f}x" if v.resend_amplification else "some"
        return f"{amp} redirty amplification" + tail
    return "every page sent once, no redirty amplification" + tail


def _s(n: int) -> str:
    return "" if n == 1 else "s"


def _hot_text(h: HotSummary) -> str:
    """'9,753 pc.ram pages sent 2-5 times, 96% of them in 0x0-0x800000'"""
    times = f"{h.min_sends} times" if h.min_sends == h.max_sends else \
        f"{h.min_sends}-{h.max_sends} times"
    text = f"{num(h.pages)} {printable(h.block)} pages sent {times}"
    if h.spans:
        spans = ", ".join(f"{hexoff(a)}-{hexoff(b)}" for a, b in h.spans)
        text += f", {h.share:.0%} of them in {spans}"
        if h.more_ranges:
            text += f" (the rest in {h.more_ranges} more range{_s(h.more_ranges)})"
    if h.other_blocks_pages:
        text += f"; {num(h.other_blocks_pages)} more in other blocks"
    return text


def _versus_rows(v: SizeVerdict) -> list[tuple[str, str]]:
    """This file against its mapped-ram equivalent: apparent with apparent, on disk with
    on disk (a compressed file: its compressed size on disk)."""
    if not v.mapped_ram_bound:
        return [("vs mapped-ram", "no mapped-ram bound (no ram START section)")]
    stream = "its inflated stream is" if v.compressed else "it is"
    rows = [("vs mapped-ram", f"{stream} {v.apparent_ratio:.2f}x its mapped-ram equivalent "
             f"in apparent size ({num(v.apparent_size)} B vs {num(v.mapped_ram_bound)} B)")]
    if v.allocated_ratio is not None:
        what = "compressed, it takes" if v.compressed else "it takes"
        rows.append(("on disk", f"{what} {num(v.allocated_size)} B, {v.allocated_ratio:.2f}x "
                     f"the {num(v.mapped_ram_allocated_bound)} B a sparse mapped-ram file "
                     "would take"))
    return rows


def _mapped_rows(v: SizeVerdict) -> list[tuple[str, str]]:
    if v.kind == V_MAPPED_LAYOUT_MISMATCH:
        return [("blocks", ", ".join(printable(b) for b in v.mismatched_blocks)),
                ("why", "their bitmap or pages offsets are not where QEMU's mapped-ram "
                 "writer puts them: another writer, or an edited file")]
    if v.kind == V_MAPPED_OFF_BOUND:
        return [("bound", f"the layout bound is {num(v.mapped_ram_bound)} B; the file is "
                 f"{v.bound_difference:+,} B off it: extra data after the stream or a "
                 "cut-short file")]
    disk = ("compressed, it takes " + f"{num(v.allocated_size)} B on disk; decompressed as a "
            "sparse file it needs" if v.compressed else "copied sparse-aware it needs")
    return [("bound", f"the file is exactly its layout bound, {num(v.mapped_ram_bound)} B "
             "apparent"),
            ("holes", f"{v.zero_share or 0:.0%} of the RAM regions are zero pages (holes): "
             f"{disk} about {num(v.mapped_ram_allocated_bound)} B on disk")]


def verdict_rows(r: SizeReport) -> list[tuple[str, str]]:
    """Why: the numbers the verdict rests on, one labelled sentence each."""
    v = r.verdict_basis
    if v is None or v.kind == V_INCOMPLETE:
        return []
    if v.kind in (V_MAPPED_LAYOUT_MISMATCH, V_MAPPED_OFF_BOUND, V_MAPPED_AT_BOUND):
        rows = _mapped_rows(v)
    elif v.kind == V_AMPLIFIED:
        rows = [("re-sent", f"{num(v.resent_bytes)} B of the {num(v.ram_bytes_written)} B of "
                 "page records re-send pages already sent")]
        if v.hot is not None:
            rows.append(("hottest", _hot_text(v.hot)))
        rows += _versus_rows(v)
    else:
        rows = [("framing", f"{num(v.record_framing_bytes)} B of record framing (be64 words, "
                 "block names, fill bytes) is not re-sending")]
        rows += _versus_rows(v)
    advice = _advice(v, short=False)
    if advice:
        rows.append(("advice", advice[0].upper() + advice[1:]))
    return rows


def verdict(r: SizeReport) -> Text:
    return line(("size: ", "bold"), verdict_answer(r))


def size_json(r: SizeReport) -> dict[str, Any]:
    """`size --json`: the report, with the `verdict` line beside `verdict_basis` (worded
    by the same helper as the terminal's first line)."""
    out: dict[str, Any] = {}
    for k, v in jsonable(r).items():
        if k == "verdict_basis":
            out["verdict"] = verdict_answer(r)
        out[k] = v
    return out


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
    if r.never_sent_pages:
        ram += line(", ", (f"{num(r.never_sent_pages)} {V.NEVER_SENT.word}",
                           V.NEVER_SENT.style))
    rows.append(("RAM", ram))
    if r.resend_amplification is not None:
        rows.append(("redirty", line((f"{r.resend_amplification:.3f}x", "bold"),
                                     f" RAM bytes written per byte sent once: "
                                     f"{num(r.resent_bytes)} B of re-sent pages")))
        rows.append(("record framing", f"{num(r.record_framing_bytes)} B of record headers "
                     "and block names (not re-sending)"))
    return KV(rows)


def _where(r: SizeReport) -> Grid:
    g = Grid([Col("part", "left", flex="text"), Col("bytes"), Col("share"),
              Col("", "left", style=V.BLUE, bar=BAR_WIDTH)], "Where the bytes go")
    whole = r.stream_bytes + r.stream_offset
    ram_label = "RAM records" if r.format == "legacy" else "RAM data pages"
    rows = [(ram_label, r.ram_bytes_written), ("device state", r.device_state_bytes),
            ("vmdescription JSON", r.vmdescription_bytes)]
    rows += [(k.replace("_", " "), v) for k, v in r.overhead.parts() if v]
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
    if c.layout_matches_headers and not c.difference:
        return line(("mapped-ram layout check: every header's bitmap and pages offsets follow "
                     "QEMU's rules and the file ends exactly at the bound", V.GOOD))
    return line(("mapped-ram layout check: ", V.BAD), "mismatched blocks ",
                ", ".join(c.mismatched_blocks) or "none",
                f", {num(c.difference)} bytes beyond the bound")


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
    top = r.send_histogram.most
    for b in r.send_histogram.buckets:
        label = V.NEVER_SENT.word if b.times == 0 else f"x{b.times}"
        g.add_row(label, num(b.pages), Bar(b.pages, top))
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
    why = verdict_rows(r)
    if why:
        console.print(KV(why))
        console.print()
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
        say(console, ("XBZRLE", "bold"), f": {num(x.records)} delta records, "
            f"{num(x.encoded_bytes)} B encoded; saved {num(x.saved_bytes)} B against "
            f"sending them as pages; {num(x.final_pages)} pages end on a delta")
    if r.notices or r.stopped:
        console.print()
    for n in r.notices:
        say(console, note_text(n))
    if r.stopped:
        say(console, ("stopped early", V.BAD), ": ", stop_text(r.stopped))
