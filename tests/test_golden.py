"""Golden reports: the text of info, map, size, diff, devices and check at 80 and 120
columns (piped), on an 80-column terminal under NO_COLOR, and their JSON, compared whole
with tests/golden/.

Regenerate after an intended change (and read the diff before committing it):

    MIGINSPECT_UPDATE_GOLDEN=1 python3 -m pytest tests/test_golden.py

Files are named <case>.<variant>; paths in them are relative to the repository root (the
commands run from there), so they hold no absolute path and no timing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import ROOT

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


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("case", list(CASES))
def test_golden(case: str, variant: str, capsys, monkeypatch) -> None:
    argv = CASES[case]
    missing = [p for p in _inputs(argv) if not p.exists()]
    if missing:
        pytest.skip(f"sample {missing[0].name} is not bundled")
    extra, env = VARIANTS[variant]
    monkeypatch.chdir(ROOT)
    for k in ("NO_COLOR", "FORCE_COLOR", "COLUMNS"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    rc = cli.main(argv + extra)
    out = capsys.readouterr().out
    assert rc in (0, 1), rc
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
