"""The target matrix (samples/matrix): its record, its saved states, and the command line
of each pair's target QEMU as `--target-qemu` takes it.

A target command line is the pair's recorded arguments behind the binary of its QEMU:
`/usr/bin/qemu-system-x86_64 ARGS` for QEMU 10, and for the QEMU 7.2 unpacked in the lab
`env QEMU_MODULE_DIR=<lab>/usr/lib/x86_64-linux-gnu/qemu <lab>/usr/bin/qemu-system-x86_64
-L <lab>/usr/share/qemu -L /usr/share/seabios ARGS` (its TCG accelerator is a module).
The guest kernel options are left out: they do not change the state's layout.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import tarfile
from pathlib import Path

import pytest
import zstandard
from conftest import SAMPLES
from qemu_harness import QEMU72_ROOT

MATRIX = SAMPLES / "matrix"
QEMU10_BIN = "/usr/bin/qemu-system-x86_64"


def matrix() -> dict:
    p = MATRIX / "matrix.json"
    return json.loads(p.read_text()) if p.exists() else {"pairs": [], "sources": {}}


def qemu_missing(label: str) -> str | None:
    """Why the QEMU of `label` cannot run here (None: it can)."""
    if label == "qemu72":
        if not (QEMU72_ROOT / "usr/bin/qemu-system-x86_64").exists():
            return f"QEMU 7.2 is not unpacked in {QEMU72_ROOT} (bash samples/install-lab.sh)"
        return None
    if shutil.which(QEMU10_BIN) is None:
        return "QEMU 10 (/usr/bin/qemu-system-x86_64) is not installed (samples/install-lab.sh)"
    return None


def prefix(label: str) -> list[str]:
    if label == "qemu72":
        r = QEMU72_ROOT
        return ["env", f"QEMU_MODULE_DIR={r}/usr/lib/x86_64-linux-gnu/qemu",
                f"{r}/usr/bin/qemu-system-x86_64", "-L", f"{r}/usr/share/qemu",
                "-L", "/usr/share/seabios"]
    return [QEMU10_BIN]


def target_cmdline(pair: dict) -> str:
    return shlex.join(prefix(pair["qemu"]) + list(pair["args"]))


def source_path(name: str) -> Path:
    """The raw saved state `name`, unpacked once from sources.tar.zst into the cache."""
    arc = MATRIX / "sources.tar.zst"
    if not arc.exists():
        pytest.skip("samples/matrix/sources.tar.zst is not there (samples/matrix/generate.py)")
    digest = hashlib.sha256(arc.read_bytes()).hexdigest()[:16]
    root = Path(os.environ.get("MIGINSPECT_SAMPLE_CACHE", "/tmp/miginspect-sample-cache"))
    d = root / f"matrix-{digest}"
    if not d.exists():
        tmp = root / f"matrix-{digest}.part{os.getpid()}"
        tmp.mkdir(parents=True, exist_ok=True)
        with open(arc, "rb") as f:
            r = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
            with tarfile.open(fileobj=r, mode="r|") as tar:
                for m in tar:
                    if m.isfile() and "/" not in m.name:
                        src = tar.extractfile(m)
                        assert src is not None
                        (tmp / m.name).write_bytes(src.read())
        try:
            tmp.rename(d)
        except OSError:  # another process unpacked it first
            shutil.rmtree(tmp, ignore_errors=True)
    p = d / f"{name}.mig"
    assert p.exists(), f"{name} is not in sources.tar.zst"
    return p
