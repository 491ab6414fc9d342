#!/usr/bin/env python3
"""Benchmark `miginspect convert` against `cat FILE > /dev/null` in the same run.

    python benchmarks/bench_convert.py FILE [--runs 3] [--to mapped-ram|legacy|both] [--json]

Each run converts FILE in a fresh Python process (so the peak RSS is that run's own), into a
temporary folder in FILE's folder (or --workdir) that is removed afterwards. `cat` is timed
the same number of times, interleaved with the conversions; the medians are compared. The
file is read once first so both see a warm page cache. Reported per conversion: median wall
time, throughput (input bytes / s), ratio to cat's throughput, peak RSS (ru_maxrss: includes
the resident pages of the input's read-only mmap, which are file cache, not allocations) and
peak anonymous RSS (RssAnon sampled every 20 ms: what the process itself allocates).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, os, resource, sys, threading, time
from miginspect.inspector.convert import convert

peak = [0]
stop = threading.Event()

def anon():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0

def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], anon())
        time.sleep(0.02)

threading.Thread(target=sample, daemon=True).start()
src, dst, to = sys.argv[1:4]
t0 = time.perf_counter()
rep = convert(src, dst, to, force=True)
dt = time.perf_counter() - t0
stop.set()
peak[0] = max(peak[0], anon())
print(json.dumps({"seconds": dt, "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                  * 1024, "peak_anon": peak[0], "out_apparent": rep.output_size.apparent,
                  "out_allocated": rep.output_size.allocated, "pages": sum(
                      b.pages for b in rep.blocks), "data_bytes": rep.data_bytes,
                  "from": rep.from_format, "to": rep.to_format}))
"""


def time_cat(path: str) -> float:
    t0 = time.perf_counter()
    with open(os.devnull, "wb") as null:
        subprocess.run(["cat", path], stdout=null, check=True)
    return time.perf_counter() - t0


def run_convert(src: str, dst: str, to: str) -> dict:
    if os.path.exists(dst):  # freeing the previous output's blocks is not part of the run
        os.unlink(dst)
    r = subprocess.run([sys.executable, "-c", CHILD, src, dst, to], capture_output=True,
                       text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"convert failed: {r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--to", choices=["mapped-ram", "legacy", "both"], default="both",
                    help="both: FILE -> the other layout, then that output -> back")
    ap.add_argument("--workdir", help="folder for the outputs (default: FILE's folder); "
                    "a temporary folder is made inside it and removed afterwards")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.runs < 3:
        ap.error("--runs must be >= 3 (medians)")
    src = os.path.abspath(args.file)
    size = os.path.getsize(src)
    tmp = tempfile.mkdtemp(prefix="bench-convert-", dir=args.workdir or os.path.dirname(src))
    try:
        from miginspect.inspector.capture import open_capture

        with open_capture(src) as cap:
            fmt = cap.format
        first = "legacy" if fmt == "mapped-ram" else "mapped-ram"
        other = "mapped-ram" if first == "legacy" else "legacy"
        plan = [(src, os.path.join(tmp, "a.out"), first)]
        if args.to == "both":
            plan.append((os.path.join(tmp, "a.out"), os.path.join(tmp, "b.out"), other))
        elif args.to != first:
            plan = [(src, os.path.join(tmp, "a.out"), args.to)]
        time_cat(src)  # warm the page cache
        cats: list[float] = []
        runs: dict[int, list[dict]] = {i: [] for i in range(len(plan))}
        for _ in range(args.runs):
            cats.append(time_cat(src))
            for i, (a, b, to) in enumerate(plan):
                runs[i].append(run_convert(a, b, to))
        cat_s = statistics.median(cats)
        cat_tp = size / cat_s
        result = {"file": src, "size": size, "format": fmt, "runs": args.runs,
                  "cat_seconds": cats, "cat_median_seconds": cat_s,
                  "cat_throughput": cat_tp, "conversions": []}
        for i, (a, _b, to) in enumerate(plan):
            rs = runs[i]
            in_size = os.path.getsize(a) if a != src else size
            secs = [r["seconds"] for r in rs]
            med = statistics.median(secs)
            tp = in_size / med
            result["conversions"].append({
                "from": rs[0]["from"], "to": to, "input_size": in_size, "seconds": secs,
                "median_seconds": med, "throughput": tp, "ratio_to_cat": tp / cat_tp,
                "peak_rss": max(r["maxrss"] for r in rs),
                "peak_anon_rss": max(r["peak_anon"] for r in rs),
                "pages": rs[0]["pages"], "data_bytes": rs[0]["data_bytes"],
                "output_apparent": rs[0]["out_apparent"],
                "output_allocated": rs[0]["out_allocated"],
            })
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return 0
    print(f"{src}: {fmt_bytes(size)} ({size:,} B), {result['format']}, {args.runs} runs")
    print(f"cat > /dev/null      median {cat_s:.3f} s  {fmt_bytes(cat_tp)}/s")
    for c in result["conversions"]:
        print(f"{c['from']:>10} -> {c['to']:<10} median {c['median_seconds']:.3f} s  "
              f"{fmt_bytes(c['throughput'])}/s  = {c['ratio_to_cat']:.2f} x cat  "
              f"peak RSS {fmt_bytes(c['peak_rss'])} (anon {fmt_bytes(c['peak_anon_rss'])})  "
              f"out {fmt_bytes(c['output_apparent'])} apparent / "
              f"{fmt_bytes(c['output_allocated'])} allocated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
