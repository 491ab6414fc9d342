"""Terminal rendering of `SizeReport`: tables and text bar charts."""

from __future__ import annotations

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..inspector.size import SizeReport
from .fmt import hexoff, name, num, size

BAR_WIDTH = 40
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


def _summary(r: SizeReport) -> Table:
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    t.add_row("file", name(r.path))
    fmt = r.format + (f" ({r.compression}-compressed)" if r.compression else "")
    t.add_row("format", fmt)
    alloc = f", allocated {size(r.allocated_size)}" if r.allocated_size != r.file_size else ""
    t.add_row("file size", f"{size(r.file_size)} = {num(r.file_size)} B{alloc}")
    if r.stream_bytes + r.stream_offset != r.file_size:
        t.add_row("QEMU stream", f"{size(r.stream_bytes)} = {num(r.stream_bytes)} B")
    t.add_row("RAM", f"{size(r.ram_total)} in {len(r.blocks)} RAMBlocks, {num(r.pages)} pages: "
              f"{num(r.data_pages)} data ({size(r.data_bytes)}), {num(r.zero_pages)} zero"
              + (f", {num(r.absent_pages)} never sent" if r.absent_pages else ""))
    if r.amplification is not None:
        t.add_row("amplification", f"[bold]{r.amplification:.3f}x[/] RAM bytes written per byte "
                  "of final page data")
    return t


def _where(r: SizeReport) -> Table:
    t = Table(title="Where the bytes go", title_justify="left", title_style="bold")
    t.add_column("part")
    t.add_column("bytes", justify="right")
    t.add_column("share", justify="right")
    t.add_column("")
    whole = r.stream_bytes + r.stream_offset
    ram_label = "RAM records" if r.format == "legacy" else "RAM data pages"
    rows = [(ram_label, r.ram_bytes_written), ("device state", r.device_state_bytes),
            ("vmdescription JSON", r.vmdescription_bytes)]
    for k, v in r.overhead.items():
        if v:
            rows.append((k.replace("_", " "), v))
    top = max(v for _, v in rows) if rows else 0
    for label, v in rows:
        t.add_row(label, num(v), _pct(v, whole), f"[blue]{bar(v, top, 30)}[/]")
    t.add_row("[bold]total[/]", f"[bold]{num(whole)}[/]", "", "")
    return t


def _bounds(r: SizeReport) -> Table:
    t = Table(title="Bounds", title_justify="left", title_style="bold")
    t.add_column("")
    t.add_column("apparent", justify="right")
    t.add_column("allocated", justify="right")
    t.add_column("vs this file", justify="right")
    whole = r.stream_bytes + r.stream_offset
    t.add_row("this file", num(r.file_size), num(r.allocated_size), "")
    if whole != r.file_size:
        t.add_row("its QEMU stream" + (" (inflated)" if r.compression else ""), num(whole),
                  "-", "")
    t.columns[3].header = "vs the stream" if whole != r.file_size else "vs this file"
    t.add_row("as mapped-ram", num(r.mapped_ram_bound), num(r.mapped_ram_allocated_bound),
              f"{whole / r.mapped_ram_bound:.2f}x" if r.mapped_ram_bound else "-")
    if r.legacy_minimum is not None:
        t.add_row("legacy, every page once", num(r.legacy_minimum), "-",
                  f"{whole / r.legacy_minimum:.2f}x" if r.legacy_minimum else "-")
    return t


def _mapped_check(r: SizeReport) -> Text | None:
    c = r.mapped_ram_check
    if not c:
        return None
    if c["layout_matches_headers"] and not c["difference"]:
        return Text.from_markup("[green]mapped-ram layout check: every header's bitmap and "
                                "pages offsets follow QEMU's rules and the file ends exactly "
                                "at the bound[/]")
    return Text.from_markup(f"[red]mapped-ram layout check: mismatched blocks "
                            f"{name(', '.join(c['mismatched_blocks'])) or 'none'}, "
                            f"{num(c['difference'])} bytes beyond the bound[/]")


def _blocks(r: SizeReport, wide: bool = True) -> Table:
    legacy = r.format == "legacy"
    t = Table(title="RAMBlocks", title_justify="left", title_style="bold")
    t.add_column("name", overflow="fold", min_width=14)
    t.add_column("used", justify="right")
    t.add_column("data", justify="right", style="green")
    t.add_column("zero", justify="right", style="cyan")
    t.add_column("written", justify="right")
    if legacy:
        if wide:
            t.add_column("ampl.", justify="right")
        t.add_column("re-sent", justify="right", style="yellow")
    if wide:
        t.add_column("as mapped-ram", justify="right")
    for b in r.blocks:
        row = [name(b.name), size(b.used_length), num(b.data_pages), num(b.zero_pages),
               size(b.ram_bytes_written)]
        if legacy:
            if wide:
                row.append(f"{b.amplification:.2f}x" if b.amplification else "-")
            row.append(f"{num(b.resent_pages)} ({b.max_sends}x)" if b.resent_pages else "0")
        if wide:
            row.append(size(b.mapped_ram_bytes))
        t.add_row(*row)
    return t


def _rounds(r: SizeReport) -> Table:
    t = Table(title="Precopy rounds (bytes per round)", title_justify="left",
              title_style="bold")
    t.add_column("#", justify="right")
    t.add_column("kind")
    t.add_column("pages", justify="right")
    t.add_column("zero", justify="right", style="cyan")
    t.add_column("xbzrle", justify="right")
    t.add_column("bytes", justify="right")
    t.add_column("")
    top = max((x.bytes for x in r.rounds), default=0)
    for x in r.rounds:
        t.add_row(str(x.index), x.kind, num(x.pages), num(x.zero_records),
                  num(x.xbzrle_records), num(x.bytes), f"[magenta]{bar(x.bytes, top)}[/]")
    return t


def _histogram(r: SizeReport) -> Table:
    t = Table(title="Pages by times sent", title_justify="left", title_style="bold")
    t.add_column("sent", justify="right")
    t.add_column("pages", justify="right")
    t.add_column("")
    top = max(r.send_histogram.values(), default=0)
    for k, v in sorted(r.send_histogram.items(), key=lambda kv: int(kv[0])):
        label = "never" if k == "0" else f"{k}x"
        t.add_row(label, num(v), f"[yellow]{bar(v, top)}[/]")
    return t


def _hot(r: SizeReport) -> Group:
    t = Table(title="Hottest ranges (re-dirtied working set)", title_justify="left",
              title_style="bold")
    t.add_column("block")
    t.add_column("range", justify="right")
    t.add_column("re-sent pages", justify="right")
    t.add_column("sends", justify="right")
    t.add_column("extra bytes", justify="right")
    for h in r.hot_ranges:
        t.add_row(name(h.block), f"{hexoff(h.start)}-{hexoff(h.end)}", num(h.pages),
                  num(h.sends), num(h.extra_bytes))
    strips = Table.grid(padding=(0, 1))
    strips.add_column(style="bold")
    strips.add_column()
    for b in r.blocks:
        if b.resent_pages:
            strips.add_row(name(b.name), f"[red]{heat_strip(b.resend_heat)}[/]  "
                           f"0x0-{hexoff(b.used_length)}, one cell = "
                           f"{size(b.used_length / max(1, len(b.resend_heat)))}")
    title = Text("Where the hot pages are (extra sends per slice of the block)", style="bold")
    return Group(t, title, strips)


def render_size(r: SizeReport, console: Console) -> None:
    console.print(Panel(_summary(r), title="miginspect size", title_align="left"))
    console.print(_where(r))
    console.print(_bounds(r))
    chk = _mapped_check(r)
    if chk is not None:
        console.print(chk)
    console.print(_blocks(r, wide=console.width >= 100))
    if r.rounds:
        console.print(_rounds(r))
    if r.format == "legacy" and r.send_histogram:
        console.print(_histogram(r))
    if r.hot_ranges:
        console.print(_hot(r))
    if r.xbzrle:
        x = r.xbzrle
        console.print(f"[bold]XBZRLE[/]: {num(x['records'])} delta records, "
                      f"{num(x['encoded_bytes'])} B encoded; saved {num(x['saved_bytes'])} B "
                      f"against sending them as pages; {num(x['final_pages'])} pages end on a "
                      "delta")
    for n in r.notices:
        console.print(f"[dim]note: {name(n)}[/]")
    if r.stopped:
        console.print(f"[red]stopped early: {name(r.stopped)}[/]")
    console.print(Text.from_markup(f"[bold]verdict:[/] {name(r.verdict)}"))
