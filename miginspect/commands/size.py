"""`miginspect size FILE`: where the bytes go, redirty amplification, size bounds."""

from __future__ import annotations

import argparse

from .common import INPUT_HELP, common_options, emit


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "size", help="size audit: where the bytes go, amplification, mapped-ram bound",
        parents=[common_options()],
        description="Account for every byte of a migration file (RAM records, device state, "
        "vmdescription, overhead), measure redirty amplification (pages sent more than once, "
        "precopy rounds, hottest ranges), and compare the file with the size the same VM "
        "state takes as mapped-ram and as a stream sending every page once.")
    p.add_argument("file", help=INPUT_HELP)
    p.add_argument("--top", type=int, default=10, metavar="N",
                   help="number of hottest ranges to list (default 10)")
    p.add_argument("--partial", action="store_true",
                   help="size what can be read of a damaged or cut-short file instead of "
                   "stopping at the first error (the report says where reading stopped)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import ui
    from ..inspector.capture import open_capture
    from ..inspector.size import size_report
    from ..render.size import render_size, size_json

    with ui.progress("reading") as cb:
        cap = open_capture(args.file, progress=cb, strict=not args.partial,
                           page_size=args.page_size, snapshot=args.snapshot)
    with cap:
        report = size_report(cap, top=max(0, args.top))
    emit(args, report, lambda con: render_size(report, con), size_json(report))
    return 0
