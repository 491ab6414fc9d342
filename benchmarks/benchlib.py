"""Shared timing helpers for the benchmarks: run a command several times, report the
median wall time and peak RSS, against `cat FILE... > /dev/null` measured in the same run."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass


@dataclass
class Timing:
    label: str
    seconds: list[float]
    max_rss_kib: list[int]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def peak_rss_mib(self) -> float:
        return max(self.max_rss_kib) / 1024


def run_once(argv: list[str], stdout_path: str = os.devnull) -> tuple[float, int, int]:
    """Wall seconds, peak RSS (KiB) of the child, exit status."""
    with open(stdout_path, "wb") as out:
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.DEVNULL)
        _, status, ru = os.wait4(p.pid, 0)
        dt = time.perf_counter() - t0
    return dt, ru.ru_maxrss, os.waitstatus_to_exitcode(status)


def measure(label: str, argv: list[str], runs: int, ok_codes: tuple[int, ...] = (0,)) -> Timing:
    t = Timing(label, [], [])
    for _ in range(runs):
        dt, rss, code = run_once(argv)
        if code not in ok_codes:
            sys.exit(f"{label}: {' '.join(argv)} exited {code}")
        t.seconds.append(dt)
        t.max_rss_kib.append(rss)
    return t


def cat_baseline(files: list[str], runs: int) -> Timing:
    argv = ["sh", "-c", 'cat "$@" > /dev/null', "cat", *files]
    measure("warm-up", argv, 1)  # page cache warm
    return measure("cat", argv, runs)


def miginspect_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "miginspect.cli", *args]


def report(total_bytes: int, base: Timing, tool: Timing, target: float) -> float:
    mb = total_bytes / 1e6
    ratio = base.median / tool.median
    print(f"data: {total_bytes:,} bytes")
    for t in (base, tool):
        runs = ", ".join(f"{s:.3f}" for s in t.seconds)
        print(f"{t.label:>10}: median {t.median:.3f} s  ({mb / t.median:,.0f} MB/s)  "
              f"runs [{runs}]  peak RSS {t.peak_rss_mib:.1f} MiB")
    verdict = "meets" if ratio >= target else "MISSES"
    print(f"ratio {tool.label}/cat throughput: {ratio:.2f} ({verdict} the target {target})")
    return ratio
