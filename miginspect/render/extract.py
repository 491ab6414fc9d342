"""Terminal rendering of `ExtractReport`."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table

from ..inspector.extract import ExtractReport
from .fmt import hexoff, name, num, short_size, size


def safe_differs(block: str, file: str) -> bool:
    return file.removesuffix(".raw") != block


def render_extract(r: ExtractReport, console: Console) -> None:
    t = Table(title=f"extracted into {name(r.output_dir)}", title_justify="left",
              title_style="bold", box=box.SIMPLE_HEAD,
              caption="zero and never-sent pages are holes in the files", caption_justify="left",
              caption_style="dim")
    t.add_column("file", overflow="fold", min_width=12)
    t.add_column("size", justify="right", no_wrap=True)
    t.add_column("data", justify="right", style="green", no_wrap=True)
    t.add_column("zero pages", justify="right", style="cyan", no_wrap=True)
    t.add_column("never sent", justify="right", style="dim", no_wrap=True)
    for f in r.files:
        label = name(f.file)
        if f.block and f.kind == "block" and safe_differs(f.block, f.file):
            label += f" [dim]({name(f.block)})[/]"
        t.add_row(label, short_size(f.size), short_size(f.data_bytes), num(f.zero_pages),
                  num(f.absent_pages))
    console.print(t)
    p = r.physical
    if p:
        console.print(f"guest-physical ({name(p['machine_type'])}, {name(p['ram_block'])} "
                      f"{size(p['ram_size'])}): "
                      + ", ".join(f"GPA {hexoff(x['gpa'])}-{hexoff(x['gpa'] + x['length'])} "
                                  f"= block {hexoff(x['block_offset'])}"
                                  for x in p["ranges"]))
    for n in r.notes:
        console.print(f"[dim]{name(n)}[/]")
