"""`miginspect map FILE`: a picture of every RAMBlock's pages by final state."""

from __future__ import annotations

import argparse

from .. import ui
from ..errors import UsageError
from ..inspector.capture import open_capture
from ..inspector.mapview import page_map
from ..render.map import render_map


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "map", help="picture of each RAMBlock's pages (never sent / zero / data / re-sent)",
        description="Draw each RAMBlock as a grid of cells of N pages, scaled to the terminal "
        "width, coloured by the final page state: never sent, zero, data, or re-sent k times "
        "(legacy streams). For mapped-ram files only the bitmaps are read. --json gives "
        "run-length page ranges per state.")
    p.add_argument("file", help="migration stream, mapped-ram file or libvirt save image "
                   "(.gz/.xz/.zst read transparently)")
    p.add_argument("--block", action="append", metavar="NAME",
                   help="only this RAMBlock (repeatable)")
    p.add_argument("--json", action="store_true",
                   help="print counts and run-length ranges per state as JSON")
    p.add_argument("--rows", type=int, default=8,
                   help="lines per block at most (default 8; sets the cell size)")
    p.add_argument("--pages-per-cell", type=int, default=None, metavar="N",
                   help="fixed cell size instead of fitting --rows")
    p.add_argument("--page-size", type=int, default=None,
                   help="target page size when the file does not record it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.rows < 1 or (args.pages_per_cell is not None and args.pages_per_cell < 1):
        raise UsageError("--rows and --pages-per-cell must be at least 1")
    with ui.progress("reading") as cb:
        cap = open_capture(args.file, progress=cb, page_size=args.page_size)
    with cap:
        report = page_map(cap, args.block)
        if args.json:
            ui.print_json(report.to_json())
        else:
            render_map(report, ui.console(), rows=args.rows, per_cell=args.pages_per_cell)
    return 0
