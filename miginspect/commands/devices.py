"""`miginspect devices FILE`: device state decoded with the vmdescription JSON."""

from __future__ import annotations

import argparse

from .. import ui
from ..errors import UsageError
from ..inspector.capture import open_capture
from ..inspector.devices import decode_devices
from ..render.devices import render_devices


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "devices", help="decode device state (VMState sections) into a tree",
        description="Decode every device (FULL) section with the file's vmdescription JSON: "
        "fields, arrays, nested structs and subsections. Integers are decoded by their "
        "VMState type, other fields are shown as hex. Needs the vmdescription trailer.")
    p.add_argument("file", help="migration stream, mapped-ram file or libvirt save image")
    p.add_argument("--device", metavar="NAME",
                   help="only this device: section idstr (e.g. mc146818rtc, "
                   "0000:00:01.1/ide), idstr#instance, or vmsd name; a part of one matches too")
    p.add_argument("--json", action="store_true", help="print the tree as JSON")
    p.add_argument("--page-size", type=int, default=None,
                   help="target page size when the file does not record it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    with ui.progress("reading") as cb:
        cap = open_capture(args.file, progress=cb, page_size=args.page_size)
    with cap:
        report = decode_devices(cap, only=args.device)
    if args.device is not None and not report.devices:
        raise UsageError(f"no device section matches {args.device!r}")
    if args.json:
        ui.print_json(report.to_json())
    else:
        render_devices(report, ui.console())
    return 0
