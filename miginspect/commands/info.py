"""`miginspect info FILE`: format, machine, sections and RAMBlocks."""

from __future__ import annotations

import argparse

from .. import ui
from ..errors import FormatError
from ..inspector.capture import open_capture
from ..inspector.info import info
from ..render.info import render_info


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="what a migration file holds",
                       description="Show format, machine type, page size, capabilities, the "
                       "section table and the RAMBlock table of a migration file.")
    p.add_argument("file", help="migration stream, mapped-ram file or libvirt save image "
                   "(.gz/.xz/.zst read transparently)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--no-sections", action="store_true", help="omit the section table")
    p.add_argument("--page-size", type=int, default=None,
                   help="target page size when the file does not record it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with ui.progress("reading") as cb:
        cap = open_capture(args.file, progress=cb, page_size=args.page_size, strict=False)
    with cap:
        err = cap.walk.error
        lv = cap.source.container.libvirt
        partial = lv is not None and not lv.complete
        if isinstance(err, FormatError) and not partial:
            raise cap.source.explain(err)
        report = info(cap)
    if args.json:
        ui.print_json(report.to_json())
    else:
        render_info(report, ui.console(), show_sections=not args.no_sections)
    # an incomplete libvirt save is reported in full; exit 1 when its stream is cut
    # or the compressed data around it is damaged
    inf = cap.source.container.inflation
    return 1 if isinstance(err, FormatError) or (inf is not None and inf.error) else 0
