"""`miginspect snapshots IMG...`: the internal snapshots of qcow2 images."""

from __future__ import annotations

import argparse

from .common import common_options, emit


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("snapshots", help="internal snapshots of qcow2 images",
                       parents=[common_options(page_size=False)],
                       description="List the snapshot table of one or several qcow2 images "
                       "(ID, name, date, VM clock, VM state size, disk size then, icount), "
                       "where each snapshot's VM state is and how much of the image it takes. "
                       "Give all the disks of a VM to see which one holds the VM state.")
    p.add_argument("images", nargs="+", metavar="IMG", help="qcow2 image")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..inspector.snapshots import list_snapshots
    from ..render.snapshots import render_snapshots

    report = list_snapshots(args.images)
    emit(args, report, lambda con: render_snapshots(report, con))
    return 1 if report.problems else 0
