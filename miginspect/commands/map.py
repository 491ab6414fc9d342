"""`miginspect map FILE`: a picture of every RAMBlock's pages by final state."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from .common import INPUT_HELP, common_options, emit


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "map", help="picture of each RAMBlock's pages (data / zero / never sent / re-sent)",
        parents=[common_options()],
        description="Draw each RAMBlock as a grid of cells of N pages, scaled to the terminal "
        "width, one glyph per cell for the final page state (data, zero, never sent) or the "
        "times a page was re-sent (legacy streams); colour only repeats the glyph. For "
        "mapped-ram files only the bitmaps are read. --json gives run-length page ranges per "
        "state.")
    p.add_argument("file", help=INPUT_HELP)
    p.add_argument("--block", action="append", metavar="NAME",
                   help="only this RAMBlock (repeatable)")
    p.add_argument("--rows", type=int, default=8,
                   help="lines per block at most (default 8; sets the cell size)")
    p.add_argument("--pages-per-cell", type=int, default=None, metavar="N",
                   help="fixed cell size instead of fitting --rows")
    p.add_argument("--partial", action="store_true",
                   help="a cut or damaged file (a killed virsh save): draw the pages it holds, "
                   "the missing ones as ? and say where and why it stops (exit status 1 when "
                   "anything is missing)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.rows < 1 or (args.pages_per_cell is not None and args.pages_per_cell < 1):
        raise UsageError("--rows and --pages-per-cell must be at least 1", code="usage")
    from .. import ui
    from ..inspector.capture import open_capture
    from ..inspector.mapview import page_map
    from ..render.map import render_map

    with ui.progress("reading") as cb:
        cap = open_capture(args.file, progress=cb, strict=not args.partial,
                           page_size=args.page_size, snapshot=args.snapshot)
    with cap:
        report = page_map(cap, args.block, partial=args.partial)
        emit(args, report, lambda con: render_map(report, con, rows=args.rows,
                                                  per_cell=args.pages_per_cell))
    return 1 if report.salvage is not None and not report.salvage.complete else 0
