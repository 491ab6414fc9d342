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


def record(t: Timing, argv: list[str], stdout_path: str = os.devnull,
           ok_codes: tuple[int, ...] = (0,)) -> int:
    """Run `argv` once, add its wall time and peak RSS to `t`; exit on an unexpected status."""
    dt, rss, code = run_once(argv, stdout_path)
    if code not in ok_codes:
        sys.exit(f"{t.label}: {' '.join(argv)} exited {code}")
    t.seconds.append(dt)
    t.max_rss_kib.append(rss)
    return code


def interleaved(cmds: list[tuple[Timing, list[str]]], runs: int) -> None:
    """`runs` rounds of every command in turn, so a busy machine slows them alike."""
    for _ in range(runs):
        for t, argv in cmds:
            record(t, argv)


def cat_argv(files: list[str]) -> list[str]:
    """`cat FILE... > /dev/null`, the baseline every benchmark is compared with."""
    return ["sh", "-c", 'cat "$@" > /dev/null', "cat", *files]


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
