"""Golden reports: the text of info, map, size, diff, devices, check, snapshots and audit
at 80 and 120 columns (piped), on an 80-column terminal under NO_COLOR, and their JSON,
compared whole with tests/golden/.

Regenerate after an intended change (and read the diff before committing it):

    MIGINSPECT_UPDATE_GOLDEN=1 python3 -m pytest tests/test_golden.py

Files are named <case>.<variant>; paths in them are relative to the repository root (the
commands run from there), so they hold no absolute path and no timing. Inputs made at
test time (a qcow2 image unpacked, a saved state of the target matrix, a target's
-dump-vmstate JSON) are linked under a fixed name into a temporary folder the command runs
in; the `check --target-qemu` cases start the lab's QEMU (paused) and skip without it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, SAMPLES, unpack
from target_matrix import matrix, prefix, qemu_missing, source_path, target_cmdline

from miginspect import cli

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("MIGINSPECT_UPDATE_GOLDEN") == "1"

CASES = {
    "info-legacy": ["info", "samples/q10-paused-legacy.mig.zst"],
    "info-mapped-ram": ["info", "samples/q10-paused-mapped-ram.mig.zst"],
    "info-libvirt-partial": ["info", "samples/libvirt/part-raw-1g.img.zst", "--no-sections"],
    "map-live": ["map", "samples/q10-live-legacy.mig.zst"],
    "map-mapped-ram": ["map", "samples/q10-paused-mapped-ram.mig.zst", "--block", "pc.ram"],
    "size-live": ["size", "samples/q10-live-legacy.mig.zst"],
    "diff-devices": ["diff", "samples/q10-state-A-legacy.mig.zst",
                     "samples/q10-state-A-legacy-resave.mig.zst", "--jobs", "1"],
    "diff-ram": ["diff", "samples/q10-sameboot-idle.mig.zst",
                 "samples/q10-sameboot-live.mig.zst", "--jobs", "1", "--ram-only"],
    "devices-rtc": ["devices", "samples/q10-paused-legacy.mig.zst", "--device", "mc146818rtc"],
    "devices-globalstate": ["devices", "samples/q72-paused-legacy.mig.zst", "--device",
                            "globalstate"],
    "check-live": ["check", "samples/q10-live-legacy.mig.zst"],
    "check-mapped-ram": ["check", "samples/q10-paused-mapped-ram.mig.zst"],
    "check-damaged": ["check", "samples/damaged/trunc-ram.mig.zst"],
    "info-qcow2": ["info", "samples/qcow2/q10-snapshots.qcow2.zst", "--snapshot", "s2",
                   "--no-sections"],
    "check-qcow2": ["check", "samples/qcow2/q10-snapshots.qcow2.zst", "--snapshot", "1"],
    "extract-cpu": ["extract", "samples/q10-paused-legacy.mig.zst", "--cpu"],
    "snapshots-qcow2": ["snapshots", "{qcow2:q10-snapshots}", "{qcow2:q72-snapshots}"],
    # a small fixed tree: the damaged samples (and the JSON beside them: not states), a
    # libvirt image and a compressed qcow2 image with two snapshots
    "audit-tree": ["audit", "samples/damaged", "samples/libvirt/save-gzip.img",
                   "samples/qcow2/q10-snapshots.qcow2.zst"],
    # the target matrix: a pair that fails (two causes: the NICs swapped and -smp 2), one
    # that loads, one whose guest may not run; and a -dump-vmstate JSON of a q35 target
    "check-target-fails": ["check", "{state:q10-i440fx10-nics}", "--target-qemu",
                           "{cmdline:nics-swapped:-smp 2}"],
    "check-target-loads": ["check", "{state:q10-i440fx10-nics}", "--target-qemu",
                           "{cmdline:nics-extra-device}"],
    "check-target-cpu": ["check", "{state:q10-cpu-max}", "--target-qemu",
                         "{cmdline:cpu-max-default}"],
    "check-target-dump": ["check", "{state:q10-i440fx10-nics}", "--target",
                          "{dump:nics-q35}"],
    # --partial on a killed virsh save, a cut mapped-ram file, a cut vmdescription and a
    # file cut inside a device section
    "map-partial": ["map", "samples/libvirt/part-raw-1g.img.zst", "--partial"],
    "map-partial-mapped-ram": ["map", "samples/damaged/mapped-ram-truncated.mig.zst",
                               "--partial"],
    "extract-partial": ["extract", "samples/libvirt/part-raw-1g.img.zst", "--partial", "-o",
                        "{out:extracted}"],
    "devices-partial": ["devices", "samples/damaged/trunc-vmdesc.mig.zst", "--partial",
                        "--device", "mc146818rtc"],
    "devices-partial-cut": ["devices", "samples/damaged/trunc-device-state.mig.zst",
                            "--partial"],
}

VARIANTS = {
    "80.txt": (["--width", "80"], {}),
    "120.txt": (["--width", "120"], {}),
    "nocolor.txt": (["--width", "80"], {"NO_COLOR": "1", "FORCE_COLOR": "1",
                                        "TERM": "xterm-256color"}),
    "json": (["--json"], {}),
}


def _inputs(argv: list[str]) -> list[Path]:
    return [ROOT / a for a in argv if a.startswith("samples/")]


def _pair(pid: str) -> dict:
    p = next((x for x in matrix()["pairs"] if x["id"] == pid), None)
    if p is None:
        pytest.skip(f"no pair {pid} in samples/matrix/matrix.json")
    why = qemu_missing(p["qemu"])
    if why:
        pytest.skip(why)
    return p


def _dump_vmstate(pair: dict, out: Path) -> None:
    """The -dump-vmstate JSON of the pair's target QEMU."""
    words = prefix(pair["qemu"]) + list(pair["args"]) + [
        "-display", "none", "-S", "-dump-vmstate", str(out)]
    env = dict(os.environ)
    while words[0] == "env" or "=" in words[0]:
        w = words.pop(0)
        if w != "env":
            k, v = w.split("=", 1)
            env[k] = v
    subprocess.run(words, env=env, check=True, timeout=120, capture_output=True)


def _made(arg: str, where: Path) -> str:
    """An input made at test time, linked into `where` under a fixed name ('{kind:name}'),
    a target command line ('{cmdline:pair[:extra args]}'), or an output folder in `where`
    ('{out:name}'; samples/ is linked beside it); other words as they are."""
    if not (arg.startswith("{") and arg.endswith("}")):
        return arg
    kind, _, name = arg[1:-1].partition(":")
    if kind == "out":
        if not (where / "samples").exists():
            (where / "samples").symlink_to(SAMPLES)
        return name
    if kind == "cmdline":
        pid, _, extra = name.partition(":")
        line = target_cmdline(_pair(pid))
        return f"{line} {extra}" if extra else line
    if kind == "qcow2":
        src, link = unpack(SAMPLES / "qcow2" / f"{name}.qcow2.zst"), f"{name}.qcow2"
    elif kind == "state":
        src, link = source_path(name), f"{name}.mig"
    else:  # dump
        src, link = where / f"{name}.vmstate.json", f"{name}.vmstate.json"
        _dump_vmstate(_pair(name), src)
        return link
    (where / link).symlink_to(src)
    return link


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("case", list(CASES))
def test_golden(case: str, variant: str, capsys, monkeypatch, tmp_path) -> None:
    argv = CASES[case]
    missing = [p for p in _inputs(argv) if not p.exists()]
    if missing:
        pytest.skip(f"sample {missing[0].name} is not bundled")
    extra, env = VARIANTS[variant]
    if variant == "nocolor.txt" and any(a.startswith("{out:") for a in argv):
        pytest.skip("a terminal wraps the output folder's absolute path (a temporary one)")
    made = [_made(a, tmp_path) for a in argv]
    monkeypatch.chdir(tmp_path if made != argv else ROOT)
    argv = made
    for k in ("NO_COLOR", "FORCE_COLOR", "COLUMNS"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    rc = cli.main(argv + extra)
    out = capsys.readouterr().out
    assert rc in (0, 1), rc
    for a in CASES[case]:  # an output folder is named by its absolute path: as given
        if a.startswith("{out:"):
            out = out.replace(os.path.realpath(tmp_path / a[5:-1]), a[5:-1])
    path = GOLDEN / f"{case}.{variant}"
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(out)
        return
    if not path.exists():
        pytest.fail(f"no golden file {path.name}: run MIGINSPECT_UPDATE_GOLDEN=1 python3 -m "
                    "pytest tests/test_golden.py")
    want = path.read_text()
    assert out == want, f"{path.name} differs (see the module doc to regenerate)"
