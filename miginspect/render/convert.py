"""Terminal rendering of `ConvertReport`: the verdict (what was written, verified or not),
then the summary, sizes and per-RAMBlock table."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from ..inspector.containers.base import ContainerBrief
from ..inspector.convert import ConvertReport, FileSizes
from . import vocab as V
from .fmt import hexoff, num, size
from .layout import KV, Col, Grid, say
from .text import line, note_text


def _container(c: ContainerBrief, fmt: str) -> str:
    return c.wraps(fmt)  # the container words where the stream is


def _sizes(s: FileSizes) -> tuple[str, str]:
    return (f"{size(s.apparent)} = {num(s.apparent)} B",
            f"{size(s.allocated)} = {num(s.allocated)} B")


def verdict(r: ConvertReport) -> Text:
    t = line(("convert: ", "bold"), f"wrote {r.to_format} ", r.output,
             f" ({size(r.output_size.apparent)}, {size(r.output_size.allocated)} on disk) from "
             f"{r.from_format} ", r.path, f": {len(r.blocks)} RAMBlocks, "
             f"{num(sum(b.pages for b in r.blocks))} pages")
    v = r.verify
    if v is None:
        return t + line(" (not verified; --verify reads it back)")
    if v.ok:
        return t + line("; ", ("verified", V.GOOD), ": page maps and contents equal the input's")
    return t + line("; ", ("verification FAILED", V.BAD))


def _summary(r: ConvertReport) -> KV:
    caps_in = ", ".join(r.capabilities_in) or "none"
    caps_out = ", ".join(r.capabilities_out) or "none"
    rows: list[tuple[str, Text | str]] = [
        ("input", line(r.path, f": {_container(r.input_container, r.from_format)}")),
        ("output", line(r.output, f": {_container(r.output_container, r.to_format)}")),
        ("machine type", line(r.machine_type or "-")),
        ("capabilities", line(f"{caps_in} -> {caps_out}")),
        ("RAM", f"{size(r.ram_total)} in {len(r.blocks)} RAMBlocks, {size(r.data_bytes)} of "
                "page data written"),
        ("records", f"{r.sections_copied} non-RAM records copied byte for byte, "
                    f"{r.ram_sections} ram sections rewritten"
                    + ("; vmdescription \"configuration\" updated"
                       if r.vmdescription_configuration_updated else "")),
    ]
    return KV(rows)


def _size_table(r: ConvertReport) -> Grid:
    g = Grid([Col("file", "left", flex="text"), Col("apparent"), Col("allocated")], "Sizes",
             f"bound from the {r.mapped_ram_bound_source}")
    g.add_row("before (input)", *_sizes(r.input_size))
    g.add_row("after (output)", *_sizes(r.output_size))
    bound, alloc = r.mapped_ram_bound, r.mapped_ram_allocated_bound
    g.add_row("mapped-ram bound", f"{size(bound)} = {num(bound)} B",
              "-" if alloc is None else f"{size(alloc)} = {num(alloc)} B")
    if r.vmdescription_growth:
        g.add_row("  + vmdescription update", f"{num(r.vmdescription_growth)} B", "")
    return g


def _blocks(r: ConvertReport) -> Grid:
    mapped = r.to_format == "mapped-ram"
    cols = [Col("name", "left", flex="name"), Col("used length"), Col("pages"),
            Col(V.DATA.word, style=V.DATA.style), Col(V.ZERO.word, style=V.ZERO.style),
            Col(V.NEVER_SENT.word, style=V.NEVER_SENT.style), Col("sent in input")]
    if mapped:
        cols.append(Col("pages at"))
    g = Grid(cols, "RAMBlocks")
    for b in r.blocks:
        row = [line(b.name), size(b.used_length), num(b.pages), num(b.data_pages),
               num(b.zero_pages), num(b.never_sent_pages), num(b.input_sends)]
        if mapped:
            row.append(hexoff(b.pages_offset))
        g.add_row(*row)
    return g


def render_convert(r: ConvertReport, console: Console) -> None:
    say(console, verdict(r))
    console.print(_summary(r))
    console.print()
    console.print(_size_table(r))
    if r.to_format == "mapped-ram":
        if r.output_size.apparent <= r.mapped_ram_bound + r.vmdescription_growth:
            say(console, ("the output is within the mapped-ram bound", V.GOOD))
        else:
            say(console, ("the output EXCEEDS the mapped-ram bound", V.BAD))
    console.print()
    console.print(_blocks(r))
    for n in r.notices:
        say(console, note_text(n))
    v = r.verify
    if v is not None:
        if v.ok:
            say(console, ("verified", V.GOOD), f": {num(v.pages)} pages in {v.blocks} "
                f"RAMBlocks ({num(v.data_pages)} data) have the input's state and content; "
                f"{v.sections} non-RAM records identical")
        else:
            say(console, ("verification FAILED", V.BAD), ":")
            for p in v.problems:
                say(console, "  ", (f"{p.where}: " if p.where else "", V.BAD), (p.message, V.BAD))
