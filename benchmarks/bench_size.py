#!/usr/bin/env python3
"""Benchmark `miginspect size FILE` against `cat FILE > /dev/null` in the same run.

    python benchmarks/bench_size.py FILE [--runs 3] [--target 0.25]

Meant for a >= 1 GiB live capture with redirty amplification >= 2 (samples/generate.py
--big DIR writes big-live-legacy.mig). FILE is read once first so every run sees a warm
page cache; then `--runs` times, `cat FILE` and `miginspect size --json FILE` run one
after the other (interleaved, so a busy machine slows both alike), each in a fresh
process. Reported: median wall time and throughput (file bytes / s) of each, the ratio of
size's throughput to cat's (target >= 0.25), size's peak RSS (ru_maxrss; it includes
resident pages of the read-only mmap, which are file cache, not allocations), and the
capture's figures from the report (amplification, rounds). Exit status 0 when the target
is met, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchlib import Timing, cat_argv, miginspect_argv, record, report, run_once  # noqa: E402

GIB = 1 << 30


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--target", type=float, default=0.25)
    args = ap.parse_args()
    if args.runs < 3:
        ap.error("--runs must be >= 3 (medians)")
    path = os.path.abspath(args.file)
    total = os.path.getsize(path)
    cat = cat_argv([path])
    size = miginspect_argv("size", "--json", path)
    run_once(cat)  # warm the page cache
    tc, ts = Timing("cat", [], []), Timing("size", [], [])
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "size.json")
        for _ in range(args.runs):
            record(tc, cat)
            record(ts, size, out)
        with open(out) as f:
            r = json.load(f)
    print(f"file: {path}")
    amp = r.get("amplification")
    print(f"capture: {r['format']}, {total / GIB:.2f} GiB, RAM {r['ram_total'] / GIB:.2f} GiB, "
          f"final data {r['data_bytes']:,} B, RAM written {r['ram_bytes_written']:,} B, "
          f"amplification {amp:.3f}" if amp is not None else "amplification -")
    print(f"rounds: {len(r['rounds'])} ({', '.join(str(x['pages']) for x in r['rounds'])} "
          f"pages); re-sent pages {r['resent_pages']:,}")
    print(f"verdict: {r['verdict']}")
    if total < GIB:
        print("WARNING: the file is smaller than 1 GiB")
    if amp is None or amp < 2:
        print("WARNING: amplification below 2 (use samples/generate.py --big)")
    ratio = report(total, tc, ts, args.target)
    return 0 if ratio >= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
