"""A fuzz campaign with figures (not collected by pytest): mutated real captures through
every per-file command (with and without --partial), the structure mutations of issue 17,
and bit flips in the metadata of a real qcow2 image (header, snapshot table, L1 and L2
tables) through the commands that read a snapshot. Prints runs, exit statuses, the slowest
run (CPU seconds) and the largest resident-set growth per command, and every failure
(the same checks as tests/test_fuzz.py).

    python3 tests/fuzz_campaign.py [RUNS] [--seed N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import struct
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import test_fuzz as TF  # noqa: E402
from conftest import SAMPLES, unpack  # noqa: E402

from miginspect.formats import qcow2 as Q  # noqa: E402
from miginspect.inspector import qcow2 as R  # noqa: E402

QCOW2_COMMANDS = [["snapshots"], ["info"], ["map", "--partial"], ["check", "--json"],
                  ["devices", "--partial"], ["size", "--json"], ["extract", "--partial"]]


def _qcow2_regions(path: str) -> list[tuple[int, int]]:
    with R.open_image(path) as img:
        h = img.header
        regions = [(0, 112), (h.snapshots_offset, img.file_size - h.snapshots_offset - 8),
                   (h.l1_table_offset, h.l1_size * 8)]
        for sn in img.snapshots:
            regions.append((sn.l1_table_offset, sn.l1_size * 8))
            if sn.vm_state_size:
                i = sn.vm_state_offset // h.l1_coverage
                l1e = struct.unpack(">Q", img.pread(sn.l1_table_offset + 8 * i, 8, "l1"))[0]
                if l1e & Q.L1E_OFFSET_MASK:
                    regions.append((l1e & Q.L1E_OFFSET_MASK, 256))
    return [(s, n) for s, n in regions if n > 0]


def qcow2_campaign(runs: int, rnd: random.Random, work: Path, stats: dict) -> list[str]:
    src = SAMPLES / "qcow2" / "q10-snapshots.qcow2.zst"
    if not src.exists():
        return []
    base = unpack(src)
    regions = _qcow2_regions(str(base))
    failures: list[str] = []
    inp, out = work / "in.qcow2", work / "out"
    for i in range(runs):
        shutil.copyfile(base, inp)
        with open(inp, "r+b") as f:
            for _ in range(rnd.randint(1, 3)):
                start, n = rnd.choice(regions)
                off = start + rnd.randrange(n)
                f.seek(off)
                old = bytearray(f.read(8))
                if not old:
                    continue
                if rnd.random() < 0.5:
                    old[rnd.randrange(len(old))] ^= 1 << rnd.randrange(8)
                else:
                    old = bytearray(rnd.randbytes(len(old)))
                f.seek(off)
                f.write(old)
        os.chmod(inp, 0o444)
        cmd = QCOW2_COMMANDS[i % len(QCOW2_COMMANDS)]
        argv = [cmd[0], str(inp), *cmd[1:]]
        if cmd[0] != "snapshots":
            argv += ["--snapshot", rnd.choice(["s1", "s2", "1", "3"])]
        if cmd[0] == "extract":
            argv[2:2] = ["-o", str(out)]
        rc, _o, err, dt, peak = TF._run(argv)
        TF._count(stats, ["qcow2 " + argv[0], *argv[1:]], rc, dt, peak)
        bad = []
        if rc not in (0, 1, 2):
            bad.append(f"exit {rc}: {err.strip()[-200:]}")
        if "Traceback" in err:
            bad.append("traceback")
        if dt > TF.TIME_LIMIT:
            bad.append(f"{dt:.2f} s")
        if bad:
            keep = work / f"fail-qcow2-{len(failures)}.qcow2"
            shutil.copyfile(inp, keep)
            failures.append(f"{' '.join(argv[:1])} (kept as {keep}): {'; '.join(bad)}")
        shutil.rmtree(out, ignore_errors=True)
        os.chmod(inp, 0o644)
    return failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=int, nargs="?", default=3000)
    ap.add_argument("--seed", type=int, default=20261202)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    bases = TF.make_bases()
    stats: dict = {}
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="miginspect-fuzz-") as tmp:
        parts = [("mutate", a.runs // 2), ("structure", a.runs // 4)]
        for kind, n in parts:
            work = Path(tmp) / kind
            work.mkdir()
            failures += TF._fuzz(bases, TF._CASES[kind](bases, n, rnd), work, rnd, stats)
        work = Path(tmp) / "qcow2"
        work.mkdir()
        failures += qcow2_campaign(a.runs - sum(n for _, n in parts), rnd, work, stats)
    if a.json:
        print(json.dumps({"stats": stats, "failures": failures}, indent=2))
        return 1 if failures else 0
    total = sum(c["runs"] for c in stats.values())
    exits: dict[str, int] = {}
    for c in stats.values():
        for k, v in c["exits"].items():
            exits[k] = exits.get(k, 0) + v
    print(f"{total:,} runs; exits " + ", ".join(f"{k}: {v:,}" for k, v in sorted(exits.items()))
          + f"; slowest {max(c['slowest_s'] for c in stats.values()):.2f} s CPU; largest "
          f"peak RSS growth {max(c['peak_bytes'] for c in stats.values()) / 2**20:.1f} MiB; "
          f"{len(failures)} failures")
    print(f"{'command':<22}{'runs':>7}  {'exits':<28}{'slowest s':>10}{'peak MiB':>10}")
    for k, c in sorted(stats.items()):
        ex = " ".join(f"{e}:{n}" for e, n in sorted(c["exits"].items()))
        print(f"{k:<22}{c['runs']:>7}  {ex:<28}{c['slowest_s']:>10.2f}"
              f"{c['peak_bytes'] / 2**20:>10.1f}")
    for f in failures:
        print("FAIL", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
