"""Reading a qcow2 snapshot's VM state through the reader and walking it, against `cat` of
the state's bytes (a plain file holding exactly them) in the same run.

usage: python benchmarks/bench_qcow2.py IMG [--snapshot ID|NAME] [--runs N] [--target 0.5]

Make IMG with `python3 samples/qcow2/make-images.py --big /var/tmp/qcow2-big` (not
committed): big.qcow2 (64 KiB clusters: the state is one contiguous run, read through an
mmap of the image) and big-4k.qcow2 (4 KiB clusters: L2 tables between the data, so the
state is copied into a sparse temporary file first). Target (issue 13): ratio >= 0.5.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from benchlib import Timing, cat_argv, interleaved, report, run_once  # noqa: E402


def child(img: str, snap: str | None, maps: bool) -> None:
    """What the timed process does: open the state through the path every command takes
    (`open_capture(IMG, snapshot=...)`: the container layer picks the qcow2 kind) and walk
    it (with `maps`, also build the page maps, as `info` does)."""
    from miginspect.inspector.capture import open_capture

    with open_capture(img, snapshot=snap) as cap:
        src = cap.source
        pages = sum(m.pages for m in cap.maps.values()) if maps else 0
        print(f"{len(src.buf)} bytes, {pages} pages, zero-copy {src.container.zero_copy}")


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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("image")
    ap.add_argument("--snapshot", default=None)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--target", type=float, default=0.5)
    ap.add_argument("--maps", action="store_true", help="also build the page maps")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--make-state", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
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
    tool_argv = [sys.executable, __file__, a.image, "--child", *snap]
    if a.maps:
        tool_argv.append("--maps")
    cat = cat_argv([plain])
    run_once(cat)  # warm the page cache: the plain copy and the image's state clusters
    run_once(tool_argv)
    base, tool = Timing("cat", [], []), Timing("qcow2", [], [])
    interleaved([(base, cat), (tool, tool_argv)], a.runs)
    ratio = report(size, base, tool, a.target)
    return 0 if ratio >= a.target else 1


if __name__ == "__main__":
    sys.exit(main())
