"""Recovery never costs more than the bytes it reads (issue 17): a section this tool
cannot size is searched for its footer in a bounded window, then reported as
`cannot-size` with its offset; memory does not grow with a file's apparent size; an
unknown `ram` instance stops the walk as it stops QEMU; `devices` names an offset when
the trailer is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SAMPLES, sample_meta, sample_names, sample_path, unpack

from miginspect.formats import stream as S
from miginspect.inspector.check import check_file
from miginspect.inspector.stream import walk_stream

LEGACY = [n for n in sample_names() if not sample_meta(n)["capture"]["header"].get(
    "capabilities") and "q10" in n]

# VmHWM, not getrusage's ru_maxrss: Linux keeps the larger of the forking parent's and
# the child's peak across exec, so a child of a big test process would report its parent
_RSS_PROBE = """
import json, sys
from miginspect.inspector.check import check_file
rep = check_file(sys.argv[1])
hwm = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:"))
print(json.dumps({"verdict": rep.verdict, "problems": [(p.code, p.offset, p.severity)
      for p in rep.problems], "rss": hwm}))
"""


def _check_in_child(path: Path, **env: str) -> dict:
    """check_file in a fresh interpreter: its verdict, problems and peak RSS (KiB)."""
    out = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(path)], capture_output=True,
                         text=True, cwd=ROOT, env=os.environ | env, timeout=300, check=True)
    return json.loads(out.stdout)


def _legacy() -> tuple[bytes, object]:
    if not LEGACY:
        pytest.skip("no bundled QEMU 10 legacy capture")
    raw = Path(sample_path(LEGACY[0])).read_bytes()
    return raw, walk_stream(raw)


def _rename_ram(raw: bytes, w) -> bytes:  # noqa: ANN001
    """The ram START section's idstr 'ram' -> 'rbm' (same length) and its MEM_SIZE
    record's flags cleared (a section carrying a MEM_SIZE record is recognised as the RAM
    state under a damaged name): its PART sections become megabytes of a live section's
    state that nothing describes, sized only by finding their footers."""
    s = next(s for s in w.sections if s.kind == S.KIND_START and s.idstr == "ram")
    p = s.payload_offset
    word = int.from_bytes(raw[p:p + 8], "big") & ~(w.page_size - 1)
    return raw[:s.offset + 6] + b"rbm" + raw[s.offset + 9:p] + word.to_bytes(8, "big") \
        + raw[p + 8:]


def test_footer_search_is_bounded_by_its_window(tmp_path: Path) -> None:
    """A section whose footer lies past the window is `cannot-size` at its offset (could
    not tell); the default window finds it. (QEMU itself would refuse the renamed live
    section; without --target nothing in the file says which live sections the
    destination registers.)"""
    raw, w = _legacy()
    parts = [s for s in w.sections if s.kind == S.KIND_PART and s.idstr == "ram"]
    big = max(parts, key=lambda s: s.length)
    p = tmp_path / "rbm.mig"
    p.write_bytes(_rename_ram(raw, w))
    window = big.length // 2
    os.environ["MIGINSPECT_FOOTER_WINDOW"] = str(window)
    try:
        small = walk_stream(p.read_bytes())
    finally:
        del os.environ["MIGINSPECT_FOOTER_WINDOW"]
    assert small.error is not None and small.error.code == "cannot-size", small.error
    stop = small.error.offset
    assert stop in {s.offset for s in parts if s.length - 5 > window}
    assert f"{window:,} bytes" in small.error.message
    rep = _check_in_child(p, MIGINSPECT_FOOTER_WINDOW=str(window))
    assert rep["verdict"] == "could not tell"
    assert ["cannot-size", stop, "error"] in rep["problems"]
    # the default window finds every footer
    whole = walk_stream(p.read_bytes())
    assert whole.error is None, whole.error
    assert all(s.sized_by == "footer-search" for s in whole.sections if s.idstr == "rbm")


def test_memory_does_not_grow_with_apparent_size(tmp_path: Path) -> None:
    """A device section cut short and followed by a hole of 1 GiB or 8 GiB: the footer
    search reads one window of it, so peak RSS is the same for both and far below the
    size of the file (the old unbounded search mapped all of it)."""
    raw, w = _legacy()
    data = _rename_ram(raw, w)
    start = next(s for s in w.sections if s.kind == S.KIND_PART)
    cut = start.offset + 4096
    rss = {}
    for gib in (1, 8):
        p = tmp_path / f"hole{gib}.mig"
        with open(p, "wb") as f:
            f.write(data[:cut])
            f.truncate(gib << 30)
        rep = _check_in_child(p)
        assert rep["verdict"] == "could not tell", rep
        assert ["cannot-size", start.offset, "error"] in rep["problems"]
        rss[gib] = rep["rss"] * 1024
        p.unlink()
    assert rss[8] < rss[1] + (16 << 20), rss
    assert rss[8] < 400 << 20, rss


def test_ram_under_another_instance_is_unknown_section(tmp_path: Path) -> None:
    """The `ram` section under instance 1 on a 140 MB sparse libvirt image (mapped-ram):
    QEMU's 'Unknown savevm section or instance', found at the section header without
    reading the file (it was a footer search over all of it)."""
    img = SAMPLES / "libvirt" / "save-sparse.img.zst"
    if not img.exists():
        pytest.skip("samples/libvirt/save-sparse.img.zst is not bundled")
    src = unpack(img)
    with open(src, "rb") as f:
        raw = f.read()
    w = walk_stream(raw, next_qemu_offset(raw))
    s = next(s for s in w.sections if s.kind == S.KIND_START and s.idstr == "ram")
    p = tmp_path / "ram1.img"
    with open(p, "wb") as f:
        f.write(raw[:s.offset + 9] + (1).to_bytes(4, "big"))
        f.seek(s.offset + 13)
        f.write(raw[s.offset + 13:1 << 20])  # headers and bitmaps; the rest stays holes
        f.truncate(len(raw))
    rep = _check_in_child(p)
    assert rep["verdict"] == "will not load"
    first = next(x for x in rep["problems"] if x[2] == "error")
    assert first[:2] == ["unknown-section", s.offset], rep["problems"]
    assert rep["rss"] * 1024 < len(raw), rep["rss"]
    direct = check_file(str(p)).primary
    assert direct is not None and "Unknown savevm section or instance" in direct.qemu


def next_qemu_offset(raw: bytes) -> int:
    """Where the QEMU stream starts inside a libvirt image (92 + data_len)."""
    return 92 + int.from_bytes(raw[20:24], "little")


def test_devices_names_the_offset_of_a_missing_trailer(tmp_path: Path) -> None:
    """A file cut right after its EOF record: `devices` says where the trailer should be."""
    raw, w = _legacy()
    p = tmp_path / "cut-after-eof.mig"
    p.write_bytes(raw[:w.eof_offset + 1])
    err = subprocess.run([sys.executable, "-m", "miginspect", "devices", str(p)],
                         capture_output=True, text=True, cwd=ROOT).stderr
    at = w.eof_offset + 1
    assert f"at offset 0x{at:x} ({at})" in err, err


def test_malformed_vmdescription_entry_falls_back_to_the_footer(tmp_path: Path) -> None:
    """A vmdescription entry that does not compute (a field size or an instance id that is
    not a number): QEMU never reads the trailer, so the file stays loadable; the section
    is sized by its footer (and not called unknown: the device list is damaged)."""
    raw, w = _legacy()
    t = w.trailer
    js = raw[t.json_offset:t.json_offset + t.length]
    for old, new, code in ((b'"size": 8', b'"size": "x"', "trailer-damaged"),
                           (b'"instance_id": 0', b'"instance_id": "x"', "sized-by-footer")):
        bad = js.replace(old, new, 1)
        assert bad != js
        data = raw[:t.offset + 1] + len(bad).to_bytes(4, "big") + bad
        p = tmp_path / "baddesc.mig"
        p.write_bytes(data)
        rep = check_file(str(p))
        assert rep.verdict == "loadable", [(x.code, x.cause) for x in rep.problems]
        assert any(x.code == code for x in rep.problems), [x.code for x in rep.problems]
