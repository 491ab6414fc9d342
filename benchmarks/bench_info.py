"""`miginspect info` throughput on a large legacy stream against `cat FILE > /dev/null`.

usage: python benchmarks/bench_info.py FILE [--runs N]

Make FILE with `python3 samples/generate.py --big DIR` (a >= 1 GiB capture; not
committed). Targets (issue 2): ratio >= 0.25, peak RSS < 200 MB + 32 B per page record.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from benchlib import (  # noqa: E402
    Timing,
    cat_argv,
    interleaved,
    miginspect_argv,
    report,
    run_once,
)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--target", type=float, default=0.25)
    a = ap.parse_args()
    size = os.path.getsize(a.file)
    cat = cat_argv([a.file])
    run_once(cat)  # warm the page cache
    base, tool = Timing("cat", [], []), Timing("info", [], [])
    interleaved([(base, cat), (tool, miginspect_argv("info", "--json", a.file))], a.runs)
    ratio = report(size, base, tool, a.target)
    with tempfile.NamedTemporaryFile(suffix=".json") as tf:
        run_once(miginspect_argv("info", "--json", a.file), tf.name)
        data = json.load(open(tf.name))
    recs = sum(b["page_records"] + b["zero_records"] + b["xbzrle_records"]
               for b in data["ramblocks"])
    budget = 200e6 + 32 * recs
    rss = tool.peak_rss_mib * 1024 * 1024
    print(f"page records: {recs:,}; peak RSS {rss / 1e6:.1f} MB vs budget {budget / 1e6:.1f} MB "
          f"({'within' if rss < budget else 'OVER'})")
    return 0 if ratio >= a.target and rss < budget else 1


if __name__ == "__main__":
    sys.exit(main())
