"""Terminal rendering of `ExtractReport`: what was written where, the verdict first."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from ..inspector.extract import ExtractReport
from . import vocab as V
from .fmt import hexoff, num, short_size, size
from .layout import Col, Grid, say
from .text import line


def safe_differs(block: str, file: str) -> bool:
    return file.removesuffix(".raw") != block


def verdict(r: ExtractReport) -> Text:
    data = sum(f.data_bytes for f in r.files)
    return line(("extract: ", "bold"), f"wrote {len(r.files)} file"
                f"{'s' if len(r.files) != 1 else ''} into ", r.output_dir,
                f" ({size(data)} of data; zero and never-sent pages are holes)")


def render_extract(r: ExtractReport, console: Console) -> None:
    say(console, verdict(r))
    say(console, "from: ", r.input, f" ({r.format})")
    g = Grid([Col("file (RAMBlock when the name differs)", "left", flex="name"),
              Col("size"), Col(V.DATA.word, style=V.DATA.style),
              Col(f"{V.ZERO.word} pages", style=V.ZERO.style),
              Col(V.NEVER_SENT.word, style=V.NEVER_SENT.style)])
    for f in r.files:
        label = line(f.file)
        if f.block and f.kind == "block" and safe_differs(f.block, f.file):
            label += line((f" ({f.block})", "dim"))
        g.add_row(label, short_size(f.size), short_size(f.data_bytes), num(f.zero_pages),
                  num(f.absent_pages))
    console.print()
    console.print(g)
    p = r.physical
    if p:
        say(console, f"guest-physical ({p['machine_type']}, ", p["ram_block"],
            f" {size(p['ram_size'])}): " + ", ".join(
                f"GPA {hexoff(x['gpa'])}-{hexoff(x['gpa'] + x['length'])} = block "
                f"{hexoff(x['block_offset'])}" for x in p["ranges"]))
    for n in r.notes:
        say(console, ("note: ", "dim"), n)
