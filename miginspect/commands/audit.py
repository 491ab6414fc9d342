"""`miginspect audit PATH...`: every saved VM state under folders, or on many hosts with
Dask, in one table: sizes, what converting gives back, whether each loads."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..inspector.choices import DEFAULT_TIMEOUT
from .common import common_options, emit

if TYPE_CHECKING:
    from ..inspector.audit_report import AuditReport

Progress = Callable[[int, int, "int | None", "int | None"], None]

#: seconds a host may be without a worker before its files are `worker-lost` rows
DEFAULT_LOST_AFTER = 60.0


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return v


def _jobs(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a number of processes: {text!r}")
    return int(text)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "audit", help="every saved VM state under folders (or on many hosts): one table",
        parents=[common_options(page_size=False)],
        description="Find every saved VM state under the PATHs by its content (migration "
        "streams, compressed ones, libvirt save/managedsave images, qcow2 images with internal "
        "snapshots: one row per snapshot with VM state) and give one row per state: sizes, "
        "RAM, data, amplification, the mapped-ram bound, the disk a conversion to mapped-ram "
        "gives back, and whether it loads (check's verdict and first error). Most "
        "reclaimable first, with totals. Exit 0: every state loadable; 1: one will not "
        "load; 2: one could not be judged, or a usage error.")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="files and folders (folders are walked; symlinks under them are not "
                   "followed; FIFOs and devices are never opened)")
    p.add_argument("--csv", metavar="FILE",
                   help="also write the rows as CSV to FILE (never over a file without "
                   "--force); `--csv -` prints the CSV instead of the table")
    p.add_argument("-j", "--jobs", type=_jobs, default=None, metavar="N",
                   help="files read at once (default: one per core)")
    p.add_argument("--timeout", type=_positive, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"time limit per file (default {DEFAULT_TIMEOUT:g}); a file over it "
                   "is a `timeout` row")
    g = p.add_argument_group("distributed (Dask: pip install 'miginspect[dask]')")
    g.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                   help="run on this Dask scheduler's workers (`dask worker` on each host); "
                   "a PATH is then audited on every host")
    g.add_argument("--on-host", action="append", default=[], metavar="WORKER:PATH",
                   help="audit PATH (absolute) on the host of WORKER (a worker's name, "
                   "address or host); repeatable")
    g.add_argument("--lost-after", type=_positive, default=DEFAULT_LOST_AFTER,
                   metavar="SECONDS", help="a host without a worker for this long loses its "
                   f"files to `worker-lost` rows (default {DEFAULT_LOST_AFTER:g})")
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    if not args.paths and not args.on_host:
        raise UsageError("give at least one PATH (or --on-host WORKER:PATH)", code="usage")
    if args.on_host and not args.scheduler:
        raise UsageError("--on-host needs --scheduler", code="usage")
    if args.csv == "-" and (args.json or args.export):
        raise UsageError("--csv - prints the CSV on standard output: not with --json or "
                         "--export", code="usage")
    if args.csv and args.csv != "-":
        from ..outfile import check_output_file

        check_output_file(args.csv, args.force)


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _local(args: argparse.Namespace, progress: Progress, show: bool) -> AuditReport:
    from ..inspector import audit_walk
    from ..inspector.audit_pool import run_local
    from ..inspector.audit_report import AuditSummary, collect

    counts = audit_walk.WalkCounts()
    total = audit_walk.count(args.paths) if show else None
    jobs = args.jobs or _cores()
    results = run_local(audit_walk.walk(args.paths, counts), jobs, args.timeout)

    def cb(files: int, done: int) -> None:
        progress(files, done, total.files if total else None, total.bytes if total else None)

    return collect(results, counts, AuditSummary(list(args.paths), None), cb)


def _dask(args: argparse.Namespace, progress: Progress, show: bool) -> AuditReport:
    from ..inspector import audit_dask as D
    from ..inspector import audit_walk
    from ..inspector.audit_report import AuditSummary, collect

    D.require_dask()
    on_host = [D.parse_on_host(x) for x in args.on_host]
    client = D.connect(args.scheduler)
    try:
        rts = D.routes(client, on_host, list(args.paths))
        counts = audit_walk.WalkCounts()
        results = D.run_dask(client, rts, args.timeout, args.lost_after, counts)

        def cb(files: int, done: int) -> None:
            progress(files, done, counts.files or None, counts.bytes or None)

        paths = [f"{w}:{p}" for w, p in on_host] + list(args.paths)
        return collect(results, counts, AuditSummary(paths, args.scheduler), cb)
    finally:
        client.close()


def _write_csv(args: argparse.Namespace, report: AuditReport) -> None:
    """The CSV file, written under a temporary name and renamed (outfile's rules)."""
    from .. import ui
    from ..outfile import AtomicFile
    from ..render.audit import write_csv
    from ..render.text import printable

    with AtomicFile(args.csv, args.force) as f:
        with open(f.fd, "w", encoding="utf-8", newline="", closefd=False) as out:
            write_csv(report, out)
        f.commit()
    ui.err_console().print(f"CSV written to {printable(args.csv)}", markup=False,
                           soft_wrap=True, highlight=False)


def run(args: argparse.Namespace) -> int:
    from .. import ui
    from ..jsondata import JsonLines
    from ..render.audit import json_objects, render_audit, write_csv

    _check_args(args)
    show = sys.stderr.isatty()
    with ui.file_progress("auditing", show) as progress:
        report = (_dask if args.scheduler else _local)(args, progress, show)
    try:
        if args.csv == "-":
            emit(args, report, lambda con: write_csv(report, con.file))
        else:
            emit(args, report, lambda con: render_audit(report, con),
                 JsonLines(lambda: json_objects(report)))
            if args.csv:
                _write_csv(args, report)
        return report.summary.exit_code
    finally:
        report.close()
