"""One bitmap verdict per file, the same in every command: a mapped-ram file whose bitmaps
were written by a big-endian host (made from a real QEMU sample by byte-swapping each
64-bit bitmap word; the pages regions unchanged) is read with the right layout and the
same verdict by info, map, extract, diff, size and convert."""

from __future__ import annotations

import io
import json
import shutil
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pytest
from conftest import sample_meta, sample_names, sample_path
from test_extract import _check_against_pmemsave

from miginspect.cli import main
from miginspect.inspector.capture import open_capture
from miginspect.inspector.mapped_ram import (
    VERDICT_OTHER_HOST,
    VERDICT_TRUSTED,
    best_layout,
    padding_bits,
)
from miginspect.inspector.pagemap import LAYOUT_BE64, LAYOUT_LE64, all_bitmap_bits

#: a paused mapped-ram sample with pmemsave's per-page digests
NAME = next((n for n in sample_names("q10-paused-mapped-ram*")
             if "pages_file" in sample_meta(n).get("pmemsave", {})), None)


def _run(argv: list[str]) -> tuple[int, dict]:
    out = io.StringIO()
    with redirect_stdout(out):
        rc = main(argv)
    return rc, json.loads(out.getvalue())


@pytest.fixture(scope="module")
def swapped(tmp_path_factory) -> tuple[Path, Path]:  # noqa: ANN001
    """(original, copy with every block's bitmap byte-swapped per 8-byte word)."""
    if NAME is None:
        pytest.skip("no paused mapped-ram sample with pmemsave digests bundled")
    orig = sample_path(NAME)
    p = tmp_path_factory.mktemp("swap") / "be64.mig"
    shutil.copyfile(orig, p)
    with open_capture(str(orig)) as cap, open(p, "r+b") as f:
        assert cap.bitmap_layout == LAYOUT_LE64
        for b in cap.blocks:
            m = b.mapped_ram
            if m is None or m.skipped:
                continue
            raw = cap.raw_bitmap(b)
            assert len(raw) % 8 == 0
            f.seek(m.bitmap_offset)
            f.write(raw.reshape(-1, 8)[:, ::-1].tobytes())
    return orig, p


def test_every_command_reads_the_right_pages_and_says_the_same(swapped, tmp_path) -> None:  # noqa: ANN001
    orig, p = swapped
    said: dict[str, dict[str, tuple]] = {}  # command -> block -> (layout, verdict, why)

    rc, a = _run(["info", "--json", str(orig)])
    rc2, b = _run(["info", "--json", str(p)])
    assert rc == rc2 == 0
    for x, y in zip(a["ramblocks"], b["ramblocks"], strict=True):
        assert (x["data_pages"], x["zero_pages"]) == (y["data_pages"], y["zero_pages"]), x["name"]
        assert x["mapped_ram"]["bitmap_verdict"] == VERDICT_TRUSTED
        m = y["mapped_ram"]
        said.setdefault("info", {})[y["name"]] = (m["bitmap_layout"], m["bitmap_verdict"],
                                                  m["bitmap_untrusted"])

    _, a = _run(["map", "--json", str(orig)])
    _, b = _run(["map", "--json", str(p)])
    for x, y in zip(a["blocks"], b["blocks"], strict=True):
        assert x["ranges"] == y["ranges"], x["name"]
        said.setdefault("map", {})[y["name"]] = (y["bitmap_layout"], y["bitmap_verdict"],
                                                 y["bitmap_untrusted"])

    _, s = _run(["size", "--json", str(p)])
    _, s0 = _run(["size", "--json", str(orig)])
    assert (s["data_pages"], s["zero_pages"]) == (s0["data_pages"], s0["zero_pages"])
    said["size"] = {x["name"]: (x["bitmap_layout"], x["bitmap_verdict"], x["bitmap_untrusted"])
                    for x in s["blocks"]}

    rc, d = _run(["diff", "--json", str(orig), str(p)])
    assert rc == 0 and d["ram_identical"] and d["identical"]
    assert d["a"]["bitmap_layout"] == LAYOUT_LE64 and not d["a"]["bitmap_untrusted"]
    assert d["b"]["bitmap_layout"] == LAYOUT_BE64
    said["diff"] = {n: (d["b"]["bitmap_layout"], VERDICT_OTHER_HOST, why)
                    for n, why in d["b"]["bitmap_untrusted"].items()}

    out = tmp_path / "x"
    _, e = _run(["extract", "--json", str(p), "-o", str(out)])
    said["extract"] = {f["block"]: (f["bitmap_layout"], f["bitmap_verdict"],
                                    f["bitmap_untrusted"]) for f in e["files"]}
    _check_against_pmemsave(sample_meta(NAME), (out / "pc.ram.raw").read_bytes())
    ref = tmp_path / "ref"
    assert main(["extract", str(orig), "-o", str(ref)]) == 0
    for f in e["files"]:
        assert (out / f["file"]).read_bytes() == (ref / f["file"]).read_bytes(), f["file"]

    legacy = tmp_path / "as-legacy.mig"
    _, c = _run(["convert", "--json", "--verify", "--to", "legacy", str(p), str(legacy)])
    assert c["verify"]["ok"], c["verify"]["problems"]
    said["convert"] = {x["name"]: (x["bitmap_layout"], x["bitmap_verdict"],
                                   x["bitmap_untrusted"]) for x in c["blocks"]}
    le = tmp_path / "as-le.mig"
    _, c2 = _run(["convert", "--json", "--to", "mapped-ram", str(p), str(le)])
    with open_capture(str(orig)) as c0, open_capture(str(legacy)) as c1, \
            open_capture(str(le)) as c3:
        assert c3.bitmap_layout == LAYOUT_LE64 and c3.bitmap_trust.trusted
        for blk in c0.blocks:
            h = c0.hashes(blk.name)
            assert np.array_equal(h, c1.hashes(blk.name)), blk.name
            assert np.array_equal(h, c3.hashes(blk.name)), blk.name

    # one verdict: every command names the same layout, verdict and words for each block
    ref_said = said["info"]
    assert any(v[1] == VERDICT_OTHER_HOST for v in ref_said.values())
    for cmd, got in said.items():
        for block, v in got.items():
            assert v == ref_said[block], (cmd, block, v, ref_said[block])
        missing = {k for k, v in ref_said.items() if v[2]} - set(got)
        assert not missing, (cmd, missing)


def test_legacy_reports_carry_no_bitmap_verdict() -> None:
    names = sample_names("q10-paused-legacy")
    if not names:
        pytest.skip("q10-paused-legacy is not bundled")
    p = str(sample_path(names[0]))
    _, m = _run(["map", "--json", p])
    assert all(b["bitmap_layout"] is None and b["bitmap_verdict"] is None for b in m["blocks"])
    _, s = _run(["size", "--json", p])
    assert all(b["bitmap_layout"] is None for b in s["blocks"])
    with open_capture(p) as cap:
        assert cap.bitmap_layout is None and cap.bitmap_trust.trusted


def test_padding_bits_rule() -> None:
    rng = np.random.default_rng(7)
    raw = rng.integers(0, 256, 64, dtype=np.uint8)
    for n in (0, 1, 7, 8, 9, 63, 64, 65, 300, 511, 512):
        for layout in ("le64", "be64", "be32"):
            want = int(all_bitmap_bits(raw, layout)[n:].sum())
            assert padding_bits(raw, n, layout) == want, (n, layout)


def test_best_layout_needs_a_clear_win() -> None:
    assert best_layout({"le64": 100, "be64": 0, "be32": 90}) == "be64"
    assert best_layout({"le64": 10, "be64": 6, "be32": 9}) == "le64"  # not half as many
    assert best_layout({"le64": 9, "be64": 2, "be32": 9}) == "le64"  # fewer than 8 better
    assert best_layout({"le64": 0, "be64": 0, "be32": 0}) == "le64"
