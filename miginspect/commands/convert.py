"""`miginspect convert IN OUT --to mapped-ram|legacy`: rewrite a capture in the other
RAM layout (final page states, device state copied byte for byte)."""

from __future__ import annotations

import argparse

from ..errors import FormatError, UsageError
from ..inspector.choices import TARGETS
from .common import common_options, emit


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert", help="legacy stream <-> mapped-ram file",
        parents=[common_options(page_size=False, snapshot=True)],
        description="Write OUT holding the final state of every page of IN in the chosen RAM "
        "layout: mapped-ram (bounded by the RAM size, sparse, zero pages as holes; restore with "
        "the mapped-ram capability on) or legacy (every page once; restore on any QEMU). "
        "Device state is copied byte for byte. libvirt save images stay libvirt images (format "
        "sparse or raw); the VM state of a qcow2 image's internal snapshot (--snapshot) becomes a "
        "standalone migration file (restore it with -incoming). IN is never modified; OUT is "
        "written to a temporary name and renamed.")
    p.add_argument("input", metavar="IN", help="migration stream, mapped-ram file, libvirt "
                   "save image or qcow2 image with --snapshot (.gz/.xz/.zst read "
                   "transparently)")
    p.add_argument("output", metavar="OUT", help="file to write")
    p.add_argument("--to", required=True, choices=TARGETS, help="RAM layout of OUT")
    p.add_argument("--verify", action="store_true",
                   help="read OUT back and prove its page maps and contents equal IN's")
    p.add_argument("--update-vmdesc", action="store_true",
                   help="also make the vmdescription JSON's \"configuration\" object describe "
                   "the new capabilities as QEMU writes it (QEMU's loader ignores the JSON; "
                   "analyze-migration.py reads the configuration through it). Default: the "
                   "JSON is copied byte for byte")
    p.add_argument("--sync", action="store_true",
                   help="fsync OUT before renaming it into place (waits for the disk)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import ui
    from ..inspector.convert import convert
    from ..inspector.spool import is_stream_input
    from ..render.convert import render_convert

    if is_stream_input(args.input):
        raise UsageError(f"convert reads IN more than once: save the stream from {args.input} "
                         "to a file first", code="usage")
    # one bar (rich allows one live display): bytes read while walking IN, then page
    # bytes written to OUT
    with ui.progress("converting") as cb:
        report = convert(args.input, args.output, args.to, force=args.force,
                         verify=args.verify, progress=cb, read_progress=cb,
                         update_vmdesc=args.update_vmdesc, sync=args.sync,
                         snapshot=args.snapshot)
    emit(args, report, lambda con: render_convert(report, con))
    if report.verify is not None and not report.verify.ok:
        first = [(f"{p.where}: " if p.where else "") + p.message
                 for p in report.verify.problems[:3]]
        raise FormatError("verification failed: " + "; ".join(first), None, args.output,
                          code="convert-verify")
    return 0
