#!/usr/bin/env python3
"""Benchmark `miginspect audit` on a tree of 2,000 saved states, locally and on a Dask
cluster started here, against `cat` of every file to /dev/null in the same run.

    python benchmarks/bench_audit.py [--states 2000] [--workdir DIR] [--no-dask] [--json]

The tree is made of hard links of a few real samples (decompressed once into the tree's
folder): paused and live legacy streams, a mapped-ram file, a raw libvirt save image, a
qcow2 image with two snapshots holding VM state (two states per file), a zstd-compressed
stream, a damaged stream, and a file that is not a saved state; 100 per folder. Every
file is read once first so that all runs see a warm page cache.

Printed: states/s and files/s of the local run (a process per core), of the Dask run (a
`dask scheduler` and one `dask worker` with a thread per core on this machine, the tree
routed to it with --on-host), and of `cat`; the ratios; the peak RSS of the command
(the largest of its processes: wait4's ru_maxrss covers the audit's child processes) and,
for Dask, of the worker and its audit processes (VmHWM). Memory stays flat: the local run
on a tenth of the tree is measured too and its peak RSS printed beside.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import cat_argv, miginspect_argv, run_once  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import unzstd_sparse  # noqa: E402  (the tests' sparse .zst unpacking)

ROOT = Path(__file__).resolve().parent.parent
S = ROOT / "samples"
#: (sample, states in it, how many of every 20 files)
MIX = [("q10-paused-legacy.mig.zst", 1, 5), ("q10-live-legacy.mig.zst", 1, 4),
       ("q10-paused-mapped-ram.mig.zst", 1, 3), ("libvirt/save-raw-paused.img.zst", 1, 2),
       ("qcow2/q10-snapshots.qcow2.zst", 2, 2), ("damaged/trunc-ram.mig.zst", 1, 1),
       ("=q10-paused-legacy.mig.zst", 1, 1), ("=q10-live-legacy.json", 0, 2)]
PER_FOLDER = 100


def build(tree: Path, states: int) -> tuple[list[Path], int]:
    """The tree: hard links of the mix until `states` saved states; (files, states)."""
    src = tree / "sources"
    src.mkdir(parents=True)
    made = []
    for name, n, share in MIX:
        raw = name.startswith("=")
        p = S / name.lstrip("=")
        if not p.exists():
            sys.exit(f"sample {p} is not bundled")
        out = src / (p.name if raw else p.name.removesuffix(".zst"))
        if raw:
            shutil.copyfile(p, out)
        else:
            unzstd_sparse(p, out)
        made.append((out, n, share))
    files: list[Path] = []
    count = i = 0
    while count < states:
        for out, n, share in made:
            for _ in range(share):
                if n and count + n > states:
                    continue
                d = tree / "tree" / f"d{len(files) // PER_FOLDER:03d}"
                d.mkdir(parents=True, exist_ok=True)
                f = d / f"{i:05d}-{out.name}"
                os.link(out, f)
                files.append(f)
                count += n
                i += 1
        if count >= states:
            break
    return files, count


def read_all(files: list[Path]) -> None:
    subprocess.run(cat_argv([str(f) for f in files]), check=True)


def timed(argv: list[str], out: str = os.devnull, ok: tuple[int, ...] = (0, 1)
          ) -> tuple[float, float]:
    dt, rss, code = run_once(argv, out)
    if code not in ok:
        sys.exit(f"{' '.join(argv[:6])} ... exited {code}")
    return dt, rss / 1024


def summary(path: str) -> dict:
    with open(path) as f:
        last = f.read().splitlines()[-1]
    return json.loads(last)["summary"]


def _hwm() -> dict:
    """Run on the Dask worker: VmHWM (MiB) of the worker and of its audit processes."""
    def hwm(pid: int) -> float:
        with open(f"/proc/{pid}/status") as f:
            for ln in f:
                if ln.startswith("VmHWM:"):
                    return int(ln.split()[1]) / 1024
        return 0.0

    import psutil

    kids = [c.pid for c in psutil.Process().children(recursive=True)]
    return {"worker": hwm(os.getpid()), "audit_processes": max(
        [hwm(k) for k in kids], default=0.0)}


class Cluster:
    def __init__(self, where: Path, threads: int) -> None:
        self.procs: list[subprocess.Popen] = []
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        sf = where / "scheduler.json"
        self._start(["dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                     "--no-dashboard", "--scheduler-file", str(sf)], env, where)
        while not sf.exists():
            time.sleep(0.2)
        self.address = json.loads(sf.read_text())["address"]
        self._start(["dask", "worker", "--scheduler-file", str(sf), "--name", "bench",
                     "--nthreads", str(threads), "--no-dashboard"], env, where)
        import distributed

        self.client = distributed.Client(self.address, set_as_default=False, timeout=60)
        self.client.wait_for_workers(1, timeout=120)

    def _start(self, argv: list[str], env: dict, where: Path) -> None:
        self.procs.append(subprocess.Popen(argv, env=env, cwd=where, start_new_session=True,
                                           stdout=subprocess.DEVNULL,
                                           stderr=subprocess.DEVNULL))

    def close(self) -> None:
        self.client.close()
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--states", type=int, default=2000)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--no-dask", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    base = Path(tempfile.mkdtemp(prefix="bench-audit-", dir=args.workdir))
    cluster = None
    try:
        files, states = build(base, args.states)
        tree = str(base / "tree")
        small = [str(p) for p in sorted((base / "tree").iterdir())[:max(1, len(
            list((base / "tree").iterdir())) // 10)]]
        read_all(files)
        res: dict = {"files": len(files), "states": states, "cores": cores}
        res["cat_s"], _ = timed(cat_argv([str(f) for f in files]), ok=(0,))
        out = str(base / "local.jsonl")
        res["local_s"], res["local_rss_mib"] = timed(miginspect_argv("audit", tree, "--json"),
                                                     out)
        got = summary(out)
        if got["states"] != states:
            sys.exit(f"local audit found {got['states']} states, expected {states}")
        _, res["local_tenth_rss_mib"] = timed(miginspect_argv("audit", *small, "--json"))
        if not args.no_dask:
            cluster = Cluster(base, cores)
            out = str(base / "dask.jsonl")
            res["dask_s"], res["dask_client_rss_mib"] = timed(miginspect_argv(
                "audit", "--scheduler", cluster.address, "--on-host", f"bench:{tree}",
                "--json"), out)
            if summary(out)["states"] != states:
                sys.exit("the Dask audit found another number of states")
            w = next(iter(cluster.client.run(_hwm).values()))
            res["dask_worker_rss_mib"] = w["worker"]
            res["dask_audit_process_rss_mib"] = w["audit_processes"]
        show(res, args.json)
    finally:
        if cluster is not None:
            cluster.close()
        shutil.rmtree(base, ignore_errors=True)


def show(res: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(res, indent=2))
        return
    n, f = res["states"], res["files"]
    print(f"tree: {n:,} saved states in {f:,} files (hard links of real samples), "
          f"{res['cores']} cores")
    print(f"{'cat':>6}: {res['cat_s']:7.2f} s  {f / res['cat_s']:8.1f} files/s  (baseline)")
    rows = [("local", res["local_s"], f"peak RSS {res['local_rss_mib']:.0f} MiB (a tenth of "
             f"the tree: {res['local_tenth_rss_mib']:.0f} MiB)")]
    if "dask_s" in res:
        rows.append(("dask", res["dask_s"], f"peak RSS client {res['dask_client_rss_mib']:.0f} "
                     f"MiB, worker {res['dask_worker_rss_mib']:.0f} MiB, audit process "
                     f"{res['dask_audit_process_rss_mib']:.0f} MiB"))
    for label, s, rss in rows:
        print(f"{label:>6}: {s:7.2f} s  {n / s:8.1f} states/s  {f / s:8.1f} files/s  "
              f"ratio to cat {res['cat_s'] / s:.2f}  {rss}")


if __name__ == "__main__":
    main()
