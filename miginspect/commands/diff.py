"""`miginspect diff A B`: RAM page by page and device state field by field.

Exit status like cmp(1): 0 identical, 1 different, 2 trouble (bad input,
usage). Definitions of equal / changed / only_a / only_b are in
miginspect.inspector.diff.
"""

from __future__ import annotations

import argparse
import os
from contextlib import ExitStack

from ..errors import UsageError
from .common import SNAPSHOT_HELP, common_options, emit

EXIT_SAME = 0
EXIT_DIFFERENT = 1
EXIT_TROUBLE = 2

EPILOG = """\
Pages are compared by final content (xxh3-64 of the page after all records are
applied): a page never sent, a zero page and a page of a missing block count
as zeros. equal = same content; only_a = A has data where B's page is zero;
only_b = the reverse; changed = both hold different non-zero data. State
transitions (never sent / zero / data) are counted separately (zero->data,
data->zero). Guest-physical addresses are shown for pc.ram on x86 pc/q35.
Exit status: 0 identical, 1 different, 2 error."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "diff", help="compare two captures page by page and field by field",
        parents=[common_options(snapshot=False)],
        description="Compare the RAM (per RAMBlock, page by page) and the device state of\n"
        "two captures, across layouts (legacy / mapped-ram) and QEMU versions.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a", help="first capture (A); - reads it from standard input")
    p.add_argument("b", nargs="?", default=None,
                   help="second capture (B); left out: A again (two snapshots of one image, "
                   "with --snapshot-a and --snapshot-b)")
    p.add_argument("--snapshot-a", metavar="ID|NAME", default=None,
                   help="A is a qcow2 image: the internal snapshot to compare (" + SNAPSHOT_HELP
                   .split("(", 1)[1])
    p.add_argument("--snapshot-b", metavar="ID|NAME", default=None,
                   help="B (or A again, when B is left out) is a qcow2 image: its snapshot")
    p.add_argument("--pages", action="store_true",
                   help="list every differing page with both hashes")
    p.add_argument("--page", metavar="BLOCK:OFFSET",
                   help="hex diff of the page holding byte OFFSET of BLOCK (e.g. pc.ram:0x9f000)")
    p.add_argument("--ram-only", action="store_true",
                   help="do not compare device state (exit status from RAM only)")
    p.add_argument("--partial", action="store_true",
                   help="compare what can be read of damaged files instead of failing")
    p.add_argument("--jobs", type=int, choices=(1, 2), default=2 if (os.cpu_count() or 1) > 1
                   else 1, help="processes: 2 reads A and B at the same time (default when "
                   "there is more than one CPU)")
    # like cmp(1): any error is exit status 2 (cli.main maps it)
    p.set_defaults(func=run, error_exit=EXIT_TROUBLE)


def _sides(args: argparse.Namespace) -> None:
    """B left out: the same image as A, another snapshot of it."""
    if args.b is None:
        if args.snapshot_a is None or args.snapshot_b is None:
            raise UsageError("diff needs two captures A B, or one disk image with "
                             "--snapshot-a X --snapshot-b Y", code="usage")
        args.b = args.a
    if args.a == "-" and args.b == "-":
        raise UsageError("standard input (-) can be only one of A and B", code="usage")


def run(args: argparse.Namespace) -> int:
    _sides(args)
    if args.page is not None:
        return _run_page(args)
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from .. import ui
    from ..inspector.capture import open_capture
    from ..inspector.diff import diff_sides, raise_worker_error, summarize, summarize_path
    from ..render.diff import render_diff

    strict = not args.partial
    devices = not args.ram_only
    with ExitStack() as stack:
        worker = None
        if args.jobs > 1 and "fork" in mp.get_all_start_methods():
            # A is read and hashed in a second process while this one does B
            pool = stack.enter_context(
                ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("fork")))
            worker = pool.submit(summarize_path, args.a, strict, args.page_size, devices,
                                 args.snapshot_a)
        with ui.progress(f"reading {args.b}") as cb:
            cap_b = stack.enter_context(open_capture(args.b, progress=cb, strict=strict,
                                                     page_size=args.page_size,
                                                     snapshot=args.snapshot_b))
        with ui.progress("hashing pages") as cb:
            side_b = summarize(cap_b, cb, devices)
        if worker is not None:
            res = worker.result()
            if isinstance(res, tuple):
                raise_worker_error(res)
            side_a = res
        else:
            with ui.progress(f"reading {args.a}") as cb:
                cap_a = stack.enter_context(open_capture(args.a, progress=cb, strict=strict,
                                                         page_size=args.page_size,
                                                         snapshot=args.snapshot_a))
            side_a = summarize(cap_a, None, devices)
        report = diff_sides(side_a, side_b, devices)
    emit(args, report, lambda con: render_diff(report, con, pages=args.pages),
         report.to_json(pages=args.pages))
    return EXIT_SAME if report.identical else EXIT_DIFFERENT


def _run_page(args: argparse.Namespace) -> int:
    from .. import ui
    from ..inspector.capture import open_capture
    from ..inspector.diff import page_hexdiff, parse_page_spec
    from ..render.diff import render_page_hexdiff

    block, offset = parse_page_spec(args.page)
    with ExitStack() as stack:
        caps = []
        for path, snap in ((args.a, args.snapshot_a), (args.b, args.snapshot_b)):
            with ui.progress(f"reading {path}") as cb:
                caps.append(stack.enter_context(open_capture(
                    path, progress=cb, strict=not args.partial, page_size=args.page_size,
                    snapshot=snap)))
        h = page_hexdiff(caps[0], caps[1], block, offset)
    emit(args, h, lambda con: render_page_hexdiff(h, con))
    return EXIT_SAME if not h.rows else EXIT_DIFFERENT
