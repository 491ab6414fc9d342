#!/usr/bin/env python3
"""Benchmark `miginspect diff A B` against `cat A B > /dev/null` in the same run.

    python benchmarks/bench_diff.py A B [--runs 3] [--ram-only] [--jobs 1|2] [--cold] [--target 0.5]

Both files are read once first so every run sees a warm page cache (with `--cold`,
instead, both files are dropped from the page cache before every run with
posix_fadvise(DONTNEED), so each run reads them from the disk). Then, `--runs`
times, `cat A B` and `miginspect diff A B --json` are run one after the other
(interleaved, so a busy machine slows both alike), each in a fresh process. Reported:
median wall time of each, throughput (bytes of A + B per second), the ratio of diff's
throughput to cat's (the issue asks for >= 0.5) and diff's peak RSS (ru_maxrss; it
includes resident pages of the read-only mmaps, which are file cache, not
allocations). Exit status 0 when the target is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchlib import Timing, cat_argv, miginspect_argv, record, run_once  # noqa: E402


def drop_cache(files: list[str]) -> None:
    """Evict the files' pages from the page cache (only these files)."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd) if os.access(f, os.W_OK) else None
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ram-only", action="store_true", help="pass --ram-only to diff")
    ap.add_argument("--jobs", type=int, choices=(1, 2), default=None,
                    help="pass --jobs to diff (default: diff's own default)")
    ap.add_argument("--cold", action="store_true",
                    help="drop both files from the page cache before every run")
    ap.add_argument("--target", type=float, default=0.5)
    args = ap.parse_args()
    if args.runs < 3:
        ap.error("--runs must be >= 3 (medians)")
    files = [os.path.abspath(args.a), os.path.abspath(args.b)]
    total = sum(os.path.getsize(f) for f in files)
    cat = cat_argv(files)
    diff = miginspect_argv("diff", *files, "--json", *(["--ram-only"] if args.ram_only else []),
                           *(["--jobs", str(args.jobs)] if args.jobs else []))
    if not args.cold:
        run_once(cat)  # warm the page cache
    tc, td = Timing("cat", [], []), Timing("diff", [], [])
    codes = set()
    for _ in range(args.runs):
        for t, argv in ((tc, cat), (td, diff)):
            if args.cold:
                drop_cache(files)
            code = record(t, argv, ok_codes=(0, 1) if t is td else (0,))
            if t is td:
                codes.add(code)
    mb = total / 1e6
    print(f"A: {files[0]} ({os.path.getsize(files[0]):,} B)")
    print(f"B: {files[1]} ({os.path.getsize(files[1]):,} B)")
    print(f"diff exit status: {sorted(codes)} (0 identical, 1 different); page cache "
          f"{'dropped before each run' if args.cold else 'warm'}; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for t in (tc, td):
        runs = ", ".join(f"{s:.3f}" for s in t.seconds)
        print(f"{t.label:>5}: median {t.median:.3f} s  ({mb / t.median:,.0f} MB/s)  "
              f"runs [{runs}]  peak RSS {t.peak_rss_mib:.1f} MiB")
    ratio = statistics.median(tc.seconds) / statistics.median(td.seconds)
    verdict = "meets" if ratio >= args.target else "MISSES"
    print(f"diff throughput / cat throughput: {ratio:.2f} ({verdict} the target {args.target})")
    return 0 if ratio >= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
