"""Terminal rendering of `ConvertReport`."""

from __future__ import annotations

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table

from ..inspector.convert import ConvertReport, FileSizes
from .fmt import hexoff, name, num, size


def _container(c: dict, fmt: str) -> str:
    if c.get("kind") == "libvirt":
        return f"{fmt} inside a libvirt save image ({c.get('libvirt_format')})"
    if c.get("compression"):
        return f"{fmt} ({c['compression']}-compressed)"
    return fmt


def _sizes(label: str, s: FileSizes) -> tuple[str, str, str]:
    return label, f"{size(s.apparent)} ({num(s.apparent)} B)", \
        f"{size(s.allocated)} ({num(s.allocated)} B)"


def _summary(r: ConvertReport) -> Table:
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    t.add_row("input", f"{name(r.input)}: {_container(r.input_container, r.from_format)}")
    t.add_row("output", f"{name(r.output)}: {_container(r.output_container, r.to_format)}")
    t.add_row("machine type", name(r.machine_type))
    t.add_row("capabilities", f"{name(', '.join(r.capabilities_in)) or 'none'} -> "
              f"{name(', '.join(r.capabilities_out)) or 'none'}")
    t.add_row("RAM", f"{size(r.ram_total)} in {len(r.blocks)} RAMBlocks, "
              f"{size(r.data_bytes)} of page data written")
    t.add_row("records", f"{r.sections_copied} non-RAM records copied byte for byte, "
              f"{r.ram_sections} ram sections rewritten"
              + ("; vmdescription \"configuration\" updated"
                 if r.vmdescription_configuration_updated else ""))
    t.add_row("time", f"{r.seconds:.2f} s")
    return t


def _size_table(r: ConvertReport) -> Table:
    t = Table(title="Sizes", title_justify="left", title_style="bold")
    t.add_column("file")
    t.add_column("apparent", justify="right")
    t.add_column("allocated", justify="right")
    t.add_row(*_sizes("before (input)", r.input_size))
    t.add_row(*_sizes("after (output)", r.output_size))
    bound = r.mapped_ram_bound
    alloc = r.mapped_ram_allocated_bound
    limit = bound + r.vmdescription_growth
    ok = r.output_size.apparent <= limit if r.to_format == "mapped-ram" else None
    mark = "" if ok is None else (" [green](output within it)[/]" if ok else " [red](EXCEEDED)[/]")
    t.add_row(f"mapped-ram bound{mark}", f"{size(bound)} ({num(bound)} B)",
              "-" if alloc is None else f"{size(alloc)} ({num(alloc)} B)")
    if r.vmdescription_growth:
        t.add_row("  + vmdescription update", f"{num(r.vmdescription_growth)} B", "")
    t.caption = f"bound from the {r.mapped_ram_bound_source}"
    return t


def _blocks(r: ConvertReport) -> Table:
    t = Table(title="RAMBlocks", title_justify="left", title_style="bold")
    t.add_column("name", overflow="fold")
    t.add_column("used length", justify="right")
    t.add_column("pages", justify="right")
    t.add_column("data", justify="right", style="green")
    t.add_column("zero", justify="right", style="cyan")
    t.add_column("never sent", justify="right", style="dim")
    t.add_column("sent in input", justify="right", style="yellow")
    mapped = r.to_format == "mapped-ram"
    if mapped:
        t.add_column("pages at", justify="right", no_wrap=True)
    for b in r.blocks:
        row = [name(b.name), size(b.used_length), num(b.pages), num(b.data_pages),
               num(b.zero_pages), num(b.absent_pages), num(b.input_sends)]
        if mapped:
            row += [hexoff(b.pages_offset)]
        t.add_row(*row)
    return t


def render_convert(r: ConvertReport, console: Console) -> None:
    console.print(Panel(Group(_summary(r)), title="miginspect convert", title_align="left"))
    console.print(_size_table(r))
    console.print(_blocks(r))
    for n in r.notices:
        console.print(f"[yellow]{name(n)}[/]")
    v = r.verify
    if v is not None:
        if v.ok:
            console.print(f"[green]verified[/]: {num(v.pages)} pages in {v.blocks} RAMBlocks "
                          f"({num(v.data_pages)} data) have the input's state and content; "
                          f"{v.sections} non-RAM records identical")
        else:
            console.print("[red]verification FAILED[/]:")
            for p in v.problems:
                console.print(f"  [red]{name(p)}[/]")
