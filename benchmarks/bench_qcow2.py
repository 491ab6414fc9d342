"""Reading a qcow2 snapshot's VM state through the reader, against `cat` of the state's
bytes (a plain file holding exactly them) in the same run.

usage: python benchmarks/bench_qcow2.py IMG [--snapshot ID|NAME] [--runs N] [--target 0.5]

Three figures, each in a fresh process per run, interleaved with `cat`:

* read (the target, issue 13: "reading is fast ... >= 0.5x cat of the state's bytes"):
  the state opened through the container layer (`open_source(IMG, snapshot)`: image
  header, snapshot table, the snapshot's L1/L2 tables mapped into host runs once) and
  every byte of it copied into this process in 128 KiB pieces, as `cat` reads; timed in
  the process from the open to the last byte (the interpreter's start and imports, the
  same for every input, are printed beside it);
* the same read, whole process;
* walk: `open_capture` and the stream walk (what `info` does), whole process, on the
  image and on the plain copy of the state: their ratio is what the qcow2 layer costs.

Make IMG with `python3 samples/qcow2/make-images.py --big /var/tmp/qcow2-big` (not
committed): big.qcow2 (64 KiB clusters: the state is one contiguous run, mapped from the
image) and big-4k.qcow2 (4 KiB clusters: L2 tables between the data; the image's pages
are stitched into one mapping).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchlib import Timing, cat_argv, record, run_once  # noqa: E402


def child_read(img: str, snap: str | None) -> None:
    """Open the state through the container layer and copy every byte of it into this
    process, 128 KiB at a time (`Source.read_into`: pread from the image's clusters, by
    the runs the state was mapped to when opened); print the seconds from the open to
    the last byte."""
    from miginspect.inspector.containers.base import OpenOptions
    from miginspect.inspector.source import open_source

    piece = 128 << 10  # as `cat`: a buffer that stays in the CPU's cache (1 MiB: 3x slower)
    t0 = time.perf_counter()
    with open_source(img, options=OpenOptions(snapshot=snap)) as src:
        size = len(src)
        out = memoryview(bytearray(piece))
        for p in range(0, size, piece):
            if src.read_into(p, out[: min(piece, size - p)]) != min(piece, size - p):
                sys.exit(f"short read at {p}")
    print(json.dumps({"seconds": time.perf_counter() - t0, "bytes": size}))


def child(img: str, snap: str | None, maps: bool) -> None:
    """What the timed process does: open the state through the path every command takes
    (`open_capture(IMG, snapshot=...)`: the container layer picks the qcow2 kind) and walk
    it (with `maps`, also build the page maps, as `info` does)."""
    from miginspect.inspector.capture import open_capture

    with open_capture(img, snapshot=snap) as cap:
        src = cap.source
        pages = sum(m.pages for m in cap.maps.values()) if maps else 0
        zero_copy = getattr(src.container, "zero_copy", None)
        print(f"{len(src.buf)} bytes, {pages} pages, zero-copy {zero_copy}")


def state_file(img: str, snap: str | None) -> tuple[str, int, bool]:
    """A plain file with exactly the state's bytes, beside IMG (made once)."""
    from miginspect.inspector.containers.base import OpenOptions
    from miginspect.inspector.source import open_source

    with open_source(img, options=OpenOptions(snapshot=snap)) as src:
        size, zero_copy = len(src.buf), src.container.zero_copy
        name = src.container.snapshot.name
        out = f"{img}.{name}.state"
        if not os.path.exists(out) or os.path.getsize(out) != size:
            with open(out + ".tmp", "wb") as f:
                mv = memoryview(src.buf)
                for i in range(0, size, 64 << 20):
                    f.write(mv[i : i + (64 << 20)])
                mv.release()
            os.rename(out + ".tmp", out)
    return out, size, zero_copy


def timed_child(argv: list[str]) -> tuple[float, float]:
    """Run a `--child read` process: (its in-process seconds, its wall seconds)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate()
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"{' '.join(argv)} exited {p.returncode}: {err.decode()[-2000:]}")
    return json.loads(out.decode().strip().splitlines()[-1])["seconds"], wall


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("image")
    ap.add_argument("--snapshot", default=None)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--maps", action="store_true", help="the walk also builds the page maps")
    ap.add_argument("--child", choices=["read", "walk"], help=argparse.SUPPRESS)
    ap.add_argument("--make-state", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child == "read":
        child_read(a.image, a.snapshot)
        return 0
    if a.child == "walk":
        child(a.image, a.snapshot, a.maps)
        return 0
    snap = ["--snapshot", a.snapshot] if a.snapshot else []
    if a.make_state:
        print(*state_file(a.image, a.snapshot), sep="\n")
        return 0
    # in a child, so that this process stays small (children inherit its RSS at fork)
    made = subprocess.run([sys.executable, __file__, a.image, "--make-state", *snap],
                          capture_output=True, text=True, check=True).stdout.split()
    plain, size, zero_copy = made[0], int(made[1]), made[2] == "True"
    print(f"{a.image}: state of {size:,} bytes; "
          + ("read in place (mapped from the image's pages)" if zero_copy
             else "copied into a sparse temporary file first"))
    read_argv = [sys.executable, __file__, a.image, "--child", "read", *snap]
    walk_argv = [sys.executable, __file__, a.image, "--child", "walk", *snap]
    plain_argv = [sys.executable, __file__, plain, "--child", "walk"]
    if a.maps:
        walk_argv.append("--maps")
        plain_argv.append("--maps")
    cat = cat_argv([plain])
    run_once(cat)  # warm the page cache: the plain copy and the image's state clusters
    run_once(walk_argv)
    run_once(plain_argv)
    base = Timing("cat", [], [])
    inproc: list[float] = []
    read_wall: list[float] = []
    walk, walk_plain = Timing("walk qcow2", [], []), Timing("walk plain", [], [])
    for _ in range(a.runs):
        record(base, cat)
        sec, wall = timed_child(read_argv)
        inproc.append(sec)
        read_wall.append(wall)
        record(walk, walk_argv)
        record(walk_plain, plain_argv)
    mb = size / 1e6
    print(f"cat of the state's bytes: median {base.median:.3f} s ({mb / base.median:,.0f} MB/s)"
          f"  runs [{', '.join(f'{x:.3f}' for x in base.seconds)}]")
    med = statistics.median(inproc)
    ratio = base.median / med
    print(f"read through the qcow2 reader, from the open to the last byte: median {med:.3f} s "
          f"({mb / med:,.0f} MB/s)  runs [{', '.join(f'{x:.3f}' for x in inproc)}]")
    whole = statistics.median(read_wall)
    print(f"  whole process (interpreter start and imports included): median "
          f"{whole:.3f} s = {base.median / whole:.2f}x cat")
    verdict = "meets" if ratio >= a.target else "MISSES"
    print(f"ratio read/cat throughput: {ratio:.2f} ({verdict} the target {a.target})")
    for t in (walk, walk_plain):
        print(f"{t.label:>10} (open_capture and walk, whole process): median {t.median:.3f} s"
              f" = {base.median / t.median:.2f}x cat  peak RSS {t.peak_rss_mib:.1f} MiB")
    print(f"the qcow2 layer's cost on the walk: {walk.median / walk_plain.median:.2f}x the "
          "plain file's time")
    return 0 if ratio >= a.target else 1


if __name__ == "__main__":
    sys.exit(main())
