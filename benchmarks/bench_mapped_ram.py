#!/usr/bin/env python3
"""Benchmark `miginspect info` and `miginspect map` on a mapped-ram file against
`cat FILE > /dev/null` in the same run.

    python benchmarks/bench_mapped_ram.py FILE [--runs 3] [--target 0.5]

FILE should be a mapped-ram capture of a guest with >= 1 GiB of RAM, as QEMU wrote it
(sparse: zero pages are holes). The file is read once first so every run sees a warm page
cache; then, `--runs` times, `cat`, `info --json` and `map --json` run one after the other
(interleaved, so a busy machine slows all alike), each in a fresh process. Reported per
command: median wall time, throughput (apparent file size / s), ratio to cat's throughput
(the issue asks for >= 0.5) and peak RSS of that child (ru_maxrss from wait4; it includes
resident pages of the read-only mmap, which are file cache, not allocations). Exit status 0
when both commands meet the target.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchlib import Timing, cat_argv, miginspect_argv, record, run_once  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--target", type=float, default=0.5)
    args = ap.parse_args()
    if args.runs < 3:
        ap.error("--runs must be >= 3 (medians)")
    path = os.path.abspath(args.file)
    st = os.stat(path)
    out = subprocess.run(miginspect_argv("info", "--json", "--no-sections", path),
                         capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"miginspect info failed: {out.stderr.strip()}")
    rep = json.loads(out.stdout)
    if rep["format"] != "mapped-ram":
        sys.exit(f"{path} is a {rep['format']} file, not mapped-ram")
    ram = rep["ram_total"] or 0
    data = sum(b["data_pages"] * rep["page_size"] for b in rep["ramblocks"])
    print(f"file: {path}")
    print(f"  apparent {st.st_size:,} B, allocated {st.st_blocks * 512:,} B; guest RAM "
          f"{ram / 2**30:.2f} GiB, data pages {data / 2**30:.2f} GiB"
          + ("" if ram >= 1 << 30 else "  (note: guest below 1 GiB)"))
    cat = cat_argv([path])
    cmds = [
        (Timing("cat", [], []), cat),
        (Timing("info", [], []), miginspect_argv("info", "--json", path)),
        (Timing("map", [], []), miginspect_argv("map", "--json", path)),
    ]
    startup = Timing("startup", [], [])  # interpreter + imports, for context
    run_once(cat)  # warm the page cache
    for _ in range(args.runs):
        record(startup, miginspect_argv("--help"))
        for t, argv in cmds:
            record(t, argv)
    mb = st.st_size / 1e6
    base = cmds[0][0]
    ok = True
    for t, _ in cmds:
        runs = ", ".join(f"{s:.3f}" for s in t.seconds)
        line = (f"{t.label:>5}: median {t.median:.3f} s  ({mb / t.median:,.0f} MB/s)  "
                f"runs [{runs}]  peak RSS {t.peak_rss_mib:.1f} MiB")
        if t is not base:
            ratio = base.median / t.median
            ok &= ratio >= args.target
            line += f"  ratio to cat {ratio:.2f} ({'meets' if ratio >= args.target else 'MISSES'}" \
                    f" {args.target})"
        print(line)
    print(f"(for context, python startup + every command's imports, `miginspect --help`: median "
          f"{startup.median:.3f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
