"""`miginspect check FILE [--target T]`: will this file restore, and if not, why."""

from __future__ import annotations

import argparse

from .common import INPUT_HELP, common_options, emit


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "check", help="will this file restore? (problems with offsets, causes and fixes)",
        parents=[common_options()],
        description="Walk the whole file and report every problem with its byte offset, "
        "section or RAMBlock, a plain cause, QEMU's own message for it and a fix. Exit 0: "
        "loadable as far as the file can tell; 1: will not load; 2: could not tell or usage "
        "error.")
    p.add_argument("file", help=INPUT_HELP)
    p.add_argument("--target", metavar="T",
                   help="compare with the destination: another snapshot from it, a saved "
                   "`info ramblock` text, or a JSON description (see the docs of "
                   "miginspect.inspector.target)")
    p.add_argument("--target-qemu", metavar="CMDLINE",
                   help="predict the load on the target QEMU itself: its command line (binary "
                   "and arguments, split like a shell; leading `env NAME=VALUE` words set its "
                   "environment). It is started paused and never runs guest code")
    p.add_argument("-v", "--verbose", action="store_true", help="also show info notes")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import ui
    from ..inspector.check import check_file
    from ..inspector.target_formats import load_any_target
    from ..render.check import render_check

    target = load_any_target(args.target) if args.target else None
    with ui.progress("checking") as cb:
        report = check_file(args.file, cb, args.page_size, target, args.target_qemu,
                            snapshot=args.snapshot)
    emit(args, report, lambda con: render_check(report, con, show_info=args.verbose))
    return report.exit_code
