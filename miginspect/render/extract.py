"""Terminal rendering of `ExtractReport`."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table

from ..inspector.extract import ExtractReport
from .fmt import hexoff, name, num, size


def render_extract(r: ExtractReport, console: Console) -> None:
    t = Table(title=f"extracted into {name(r.output_dir)}", title_justify="left",
              title_style="bold", box=box.SIMPLE_HEAD)
    t.add_column("file", overflow="fold")
    t.add_column("from", overflow="fold")
    t.add_column("size", justify="right")
    t.add_column("data written", justify="right", style="green")
    t.add_column("zero / never sent (holes)", justify="right", style="dim")
    for f in r.files:
        holes = (f"{num(f.zero_pages)} / {num(f.absent_pages)} pages"
                 if f.zero_pages is not None else size(f.size - f.data_bytes))
        t.add_row(name(f.file), name(f.block), size(f.size), size(f.data_bytes), holes)
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
