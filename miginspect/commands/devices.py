"""`miginspect devices FILE`: device state decoded with the vmdescription JSON."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from .common import INPUT_HELP, common_options, emit


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "devices", help="decode device state (VMState sections) into a tree",
        parents=[common_options()],
        description="Decode every device (FULL) section with the file's vmdescription JSON: "
        "fields, arrays, nested structs and subsections, every value in full. Integers are "
        "decoded by their VMState type (shown in decimal and hex), byte buffers as hex and "
        "ASCII (NUL-padded text such as globalstate's runstate as text). Needs the "
        "vmdescription trailer.")
    p.add_argument("file", help=INPUT_HELP)
    p.add_argument("--device", metavar="NAME",
                   help="only this device: section idstr (e.g. mc146818rtc, "
                   "0000:00:01.1/ide), idstr#instance, or vmsd name; a part of one matches too")
    p.add_argument("--flat", action="store_true",
                   help="print one 'device.field.path = value' line per value (for grep and "
                   "diff) instead of trees")
    p.add_argument("--partial", action="store_true",
                   help="a cut or damaged file: decode the device sections it holds whole "
                   "(with what is whole of a cut vmdescription) and list where it stops and "
                   "the sections it does not hold (exit status 1 when anything is missing)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import ui
    from ..inspector.capture import open_capture
    from ..inspector.devices import decode_devices
    from ..render.devices import render_devices

    with ui.progress("reading") as cb:
        cap = open_capture(args.file, progress=cb, strict=not args.partial,
                           page_size=args.page_size, snapshot=args.snapshot)
    with cap:
        report = decode_devices(cap, only=args.device, partial=args.partial)
    if args.device is not None and not report.devices and report.salvage is None:
        raise UsageError(f"no device section matches {args.device!r}", code="usage")
    emit(args, report, lambda con: render_devices(report, con, flat=args.flat))
    return 1 if report.salvage is not None and not report.salvage.complete else 0
