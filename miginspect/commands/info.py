"""`miginspect info FILE`: format, machine, sections and RAMBlocks."""

from __future__ import annotations

import argparse

from ..errors import FormatError
from .common import INPUT_HELP, common_options, emit


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="what a migration file holds",
                       parents=[common_options()],
                       description="Show format, machine type, page size, capabilities, the "
                       "section table and the RAMBlock table of a migration file.")
    p.add_argument("file", help=INPUT_HELP)
    p.add_argument("--no-sections", action="store_true", help="omit the section table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import ui
    from ..inspector.capture import open_capture
    from ..inspector.info import info
    from ..render.info import render_info

    with ui.progress("reading") as cb:
        cap = open_capture(args.file, progress=cb, page_size=args.page_size, strict=False,
                           snapshot=args.snapshot)
    with cap:
        err = cap.walk.error
        if isinstance(err, FormatError) and not cap.source.container.incomplete:
            raise cap.source.explain(err)
        report = info(cap)
    emit(args, report, lambda con: render_info(report, con,
                                               show_sections=not args.no_sections))
    # an incomplete save (libvirt's LibvirtQemudPart) is reported in full; exit 1 when
    # its stream is cut or the container's data around it is damaged
    return 1 if isinstance(err, FormatError) or cap.source.container.damaged else 0
