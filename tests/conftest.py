"""Shared fixtures: real samples (decompressed once per session), their QEMU figures,
and skips with a reason where QEMU or libvirt is absent."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import zstandard

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"


def sample_names(pattern: str = "*") -> list[str]:
    """Names of bundled captures (samples/<name>.mig.zst with samples/<name>.json)."""
    return sorted(
        p.name[: -len(".mig.zst")]
        for p in SAMPLES.glob(f"{pattern}.mig.zst")
        if (SAMPLES / (p.name[: -len(".mig.zst")] + ".json")).exists()
    )


def sample_meta(name: str) -> dict:
    """QEMU's own figures recorded by samples/generate.py beside the capture."""
    return json.loads((SAMPLES / f"{name}.json").read_text())


_CACHE: dict[str, Path] = {}


def _cache_dir() -> Path:
    d = Path(os.environ.get("MIGINSPECT_SAMPLE_CACHE", "/tmp/miginspect-sample-cache"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def unzstd_sparse(src: Path, dst: Path) -> None:
    """Decompress a .zst sample into `dst`, zero runs as holes (mapped-ram stays sparse)."""
    zero = bytes(1 << 16)
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        reader = zstandard.ZstdDecompressor().stream_reader(fi, read_across_frames=True)
        size = 0
        while chunk := reader.read(1 << 16):
            if chunk == zero[: len(chunk)]:
                fo.seek(len(chunk), os.SEEK_CUR)
            else:
                fo.write(chunk)
            size += len(chunk)
        fo.truncate(size)


def unpack(src: Path) -> Path:
    """Decompress a .zst sample once into the cache and return the raw file's path.
    Zero runs become holes, so mapped-ram samples keep their sparse layout."""
    key = str(src)
    if key in _CACHE:
        return _CACHE[key]
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:16]
    out = _cache_dir() / f"{src.parent.name}-{src.name[:-4]}-{digest}"
    if not out.exists():
        tmp = out.with_suffix(f".part{os.getpid()}")
        unzstd_sparse(src, tmp)
        tmp.rename(out)
    _CACHE[key] = out
    return out


def sample_path(name: str) -> Path:
    """Path of the decompressed capture `name`."""
    p = SAMPLES / f"{name}.mig.zst"
    if not p.exists():
        pytest.skip(f"sample {name} is not bundled (regenerate with samples/generate.py)")
    return unpack(p)


def qemu_binary() -> str | None:
    return shutil.which("qemu-system-x86_64")


@pytest.fixture(scope="module")
def opened():
    """`opened(name)`: the bundled capture `name`, opened once per test module."""
    from miginspect.inspector.capture import open_capture

    caps: dict = {}

    def get(name: str):  # noqa: ANN202
        if name not in caps:
            caps[name] = open_capture(str(sample_path(name)))
        return caps[name]

    yield get
    for c in caps.values():
        c.close()


@pytest.fixture
def need_qemu() -> str:
    q = qemu_binary()
    if q is None:
        pytest.skip("qemu-system-x86_64 is not installed (bash samples/install-lab.sh)")
    return q
