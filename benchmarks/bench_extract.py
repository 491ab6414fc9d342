#!/usr/bin/env python3
"""Benchmark `miginspect extract --physical` (the ELF core with vCPU notes, its manifest
and sha256) against `cat FILE > /dev/null` in the same run.

    python benchmarks/bench_extract.py FILE [--runs 3] [--format elf|lime|raw ...]

Each run writes into a fresh temporary folder beside FILE (or --workdir) with --force;
zero pages are holes, so the time follows the data pages (copied file to file) plus the
sha256 of every output, which reads the data extents and hashes the holes as zeros.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from benchlib import Timing, cat_argv, interleaved, miginspect_argv, report  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--format", action="append", default=None)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--target", type=float, default=0.5,
                    help="minimum throughput ratio to cat (default 0.5)")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench-extract-", dir=a.workdir or
                            os.path.dirname(os.path.abspath(a.file)))
    try:
        fmts = [x for f in (a.format or ["elf"]) for x in ("--format", f)]
        argv = miginspect_argv("extract", a.file, "-o", work, "--force", *fmts)
        base, tool = Timing("cat", [], []), Timing("extract", [], [])
        interleaved([(base, cat_argv([a.file])), (tool, argv)], 1)  # warm the cache
        base.seconds.clear(), tool.seconds.clear()
        base.max_rss_kib.clear(), tool.max_rss_kib.clear()
        interleaved([(base, cat_argv([a.file])), (tool, argv)], a.runs)
        report(os.path.getsize(a.file), base, tool, a.target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
