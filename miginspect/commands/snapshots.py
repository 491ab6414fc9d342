"""`miginspect snapshots IMG...`: the internal snapshots of qcow2 images."""

from __future__ import annotations

import argparse

from .. import ui
from ..inspector.snapshots import list_snapshots
from ..render.snapshots import render_snapshots


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("snapshots", help="internal snapshots of qcow2 images",
                       description="List the snapshot table of one or several qcow2 images "
                       "(ID, name, date, VM clock, VM state size, disk size then, icount), "
                       "where each snapshot's VM state is and how much of the image it takes. "
                       "Give all the disks of a VM to see which one holds the VM state.")
    p.add_argument("images", nargs="+", metavar="IMG", help="qcow2 image")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = list_snapshots(args.images)
    if args.json:
        ui.print_json(report.to_json())
    else:
        render_snapshots(report, ui.console())
    return 1 if report.problems else 0
