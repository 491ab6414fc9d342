"""`miginspect map`: run-length ranges and cells against QEMU's own figures."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from conftest import sample_meta, sample_names, sample_path
from rich.console import Console

from miginspect.cli import main
from miginspect.inspector.capture import open_capture
from miginspect.inspector.mapview import (
    CLASS_DATA,
    CLASS_RESENT,
    CLASS_ZERO,
    BlockView,
    MapReport,
    cells,
    page_map,
    runs,
)
from miginspect.inspector.pagemap import PAGE_DATA, PAGE_NEVER_SENT, PAGE_ZERO
from miginspect.inspector.report import PageCounts, SendHistogram
from miginspect.render.map import pages_per_cell, render_map

ALL = sample_names("q*")
LEGACY = [n for n in ALL if "mapped-ram" not in n and "multifd" not in n]
MAPPED = [n for n in ALL if n not in LEGACY]


def _map_json(path: str, capsys, *extra: str) -> dict:  # noqa: ANN001
    assert main(["map", "--json", path, *extra]) == 0
    return json.loads(capsys.readouterr().out)


def _check_ranges(b: dict) -> np.ndarray:
    """The ranges of all states tile the block exactly; returns the state per page."""
    state = np.full(b["pages"], 255, np.uint8)
    for key, st in (("never_sent", PAGE_NEVER_SENT), ("zero", PAGE_ZERO), ("data", PAGE_DATA)):
        total = 0
        for s, e in b["ranges"][key]:
            assert 0 <= s < e <= b["pages"]
            assert (state[s:e] == 255).all(), f"{b['name']}: ranges overlap at {s}"
            state[s:e] = st
            total += e - s
        assert total == b["counts"][key]
    assert (state != 255).all(), f"{b['name']}: ranges leave pages out"
    return state


@pytest.mark.parametrize("name", ALL or ["none"])
def test_map_json_against_qemu(name: str, capsys) -> None:  # noqa: ANN001
    if not ALL:
        pytest.skip("no samples bundled yet (samples/generate.py)")
    meta = sample_meta(name)
    ram = meta["query-migrate"]["ram"]
    rep = _map_json(str(sample_path(name)), capsys)
    qemu_blocks = {b["name"]: b for b in meta["info_ramblock"]["parsed"]}
    assert [b["name"] for b in rep["blocks"]] == list(qemu_blocks)
    sends_total = 0
    for b in rep["blocks"]:
        assert b["pages"] * b["page_size"] == qemu_blocks[b["name"]]["used_length"]
        _check_ranges(b)
        for s, e, k in b["resent_ranges"]:
            assert k >= 2 and 0 <= s < e <= b["pages"]
        assert sum(e - s for s, e, _ in b["resent_ranges"]) == b["counts"]["resent"]
        assert sum(b["resent_histogram"].values()) == b["counts"]["resent"]
        sends_total += (b["counts"]["data"] + b["counts"]["zero"] - b["counts"]["resent"]
                        + sum(int(k) * v for k, v in b["resent_histogram"].items()))
    data = sum(b["counts"]["data"] for b in rep["blocks"])
    zero = sum(b["counts"]["zero"] for b in rep["blocks"])
    if rep["format"] == "mapped-ram":
        assert zero == ram["duplicate"]
        assert all(b["counts"]["resent"] == 0 for b in rep["blocks"])
        if "live" not in name:
            assert data == ram["normal"]
    elif "xbzrle" in name:
        # XBZRLE records count in neither normal nor duplicate
        assert sends_total > ram["normal"] + ram["duplicate"], (sends_total, ram)
    else:
        # every record is a PAGE (normal) or a ZERO (duplicate)
        assert sends_total == ram["normal"] + ram["duplicate"], (sends_total, ram)
        if "live" not in name:
            assert data == ram["normal"] and zero == ram["duplicate"]


def test_live_legacy_shows_resent_pages(capsys) -> None:  # noqa: ANN001
    live = [n for n in LEGACY if "live" in n and "xbzrle" not in n]
    if not live:
        pytest.skip("no live legacy sample bundled yet")
    meta = sample_meta(live[0])
    rep = _map_json(str(sample_path(live[0])), capsys, "--block", "pc.ram")
    (b,) = rep["blocks"]
    assert b["counts"]["resent"] > 0 and b["max_sends"] >= 2
    # the working set is re-sent: more records than pages
    assert meta["query-migrate"]["ram"]["normal"] > b["counts"]["data"]
    assert main(["map", str(sample_path(live[0])), "--block", "pc.ram"]) == 0
    out = capsys.readouterr().out
    assert "re-sent" in out and "x2" in out


def test_map_ignores_mapped_ram_region_bytes(tmp_path, capsys) -> None:  # noqa: ANN001
    """map reads only the bitmaps: scribbling over a pages region changes nothing."""
    if not MAPPED:
        pytest.skip("no mapped-ram sample bundled yet")
    src = str(sample_path(MAPPED[0]))
    p = tmp_path / "scribbled.mig"
    shutil.copyfile(src, p)
    with open_capture(src) as cap:
        b = next(x for x in cap.blocks if x.name == "pc.ram")
        start = b.mapped_ram.pages_offset
    with open(p, "r+b") as f:
        f.seek(start)
        f.write(b"\xa5" * (1 << 20))
    assert _map_json(src, capsys) == {**_map_json(str(p), capsys), "path": src}


def test_map_terminal_fits_width_and_escapes_names() -> None:
    state = np.array([PAGE_DATA] * 50 + [PAGE_ZERO] * 30 + [PAGE_NEVER_SENT] * 20, np.uint8)
    sends = np.where(state == PAGE_NEVER_SENT, 0, 1).astype(np.uint32)
    sends[:10] = 3
    v = BlockView("[red]evil/name:0", 100 * 4096, 4096, 100,
                  PageCounts(never_sent=20, zero=30, data=50, resent=10), 3,
                  SendHistogram.of([(3, 10)]),
                  state=state, sends=sends)
    for width in (30, 120):
        buf = io.StringIO()
        con = Console(file=buf, width=width, color_system=None)
        render_map(MapReport("f", "legacy", 4096, [v]), con, rows=2)
        out = buf.getvalue()
        assert "[red]evil/name:0" in out
        grid = [ln for ln in out.splitlines() if ln.startswith("0x")]
        assert grid and all(len(ln) <= width for ln in grid)
        assert 1 <= len(grid) <= 2


def test_cells_and_runs() -> None:
    state = np.array([2, 2, 1, 1, 1, 0, 2, 2], np.uint8)
    s, e, v = runs(state)
    assert s.tolist() == [0, 2, 5, 6] and e.tolist() == [2, 5, 6, 8] and v.tolist() == [2, 1, 0, 2]
    sends = np.array([1, 4, 1, 1, 1, 0, 1, 1], np.uint32)
    v = BlockView("b", 8 * 4096, 4096, 8, PageCounts(1, 3, 4, 1), 4, SendHistogram(),
                  state=state, sends=sends)
    c = cells(v, 3)
    assert c.size.tolist() == [3, 3, 2]
    assert c.dominant.tolist() == [CLASS_RESENT, CLASS_ZERO, CLASS_DATA]
    assert c.max_sends.tolist() == [4, 1, 1]
    assert c.purity.tolist()[2] == 1.0
    assert pages_per_cell(32768, 68, 8) == 64  # power of two that fits 8 rows of 68
    assert pages_per_cell(10, 68, 8) == 1


def test_unknown_block_is_a_usage_error(capsys) -> None:  # noqa: ANN001
    if not ALL:
        pytest.skip("no samples bundled yet")
    assert main(["map", str(sample_path(ALL[0])), "--block", "no-such-block"]) == 2
    err = capsys.readouterr().err
    assert "no RAMBlock named 'no-such-block'" in err and "pc.ram" in err


def test_page_map_api_matches_capture_maps() -> None:
    if not ALL:
        pytest.skip("no samples bundled yet")
    with open_capture(str(sample_path(ALL[0]))) as cap:
        rep = page_map(cap, ["pc.ram"])
        (v,) = rep.blocks
        bm = cap.maps["pc.ram"]
        assert v.counts.data == bm.count(PAGE_DATA)
        assert np.array_equal(cells(v, 1).dominant[v.sends < 2],
                              np.where(bm.state == PAGE_DATA, CLASS_DATA,
                                       np.where(bm.state == PAGE_ZERO, CLASS_ZERO, 0))
                              [v.sends < 2])


def test_walk_stopped_early_is_reported(tmp_path, capsys) -> None:  # noqa: ANN001
    """A record QEMU files never hold (HOOK, RDMA only) in the middle of a legacy stream:
    the walk stops there; map and extract still show what came before and say so."""
    if not LEGACY:
        pytest.skip("no legacy sample bundled yet")
    src = str(sample_path(LEGACY[0]))
    with open_capture(src) as cap:
        rt = cap.walk.records
        k = len(rt) // 2
        off = int(rt.rec_off[k])
        word = int.from_bytes(cap.source.buf[off:off + 8], "big")
    p = tmp_path / "hook.mig"
    shutil.copyfile(src, p)
    with open(p, "r+b") as f:
        f.seek(off)
        f.write(((word & ~0x3FF) | 0x80).to_bytes(8, "big"))
    rep = _map_json(str(p), capsys)
    assert rep["stopped"]["offset"] == off and "HOOK" in rep["stopped"]["message"]
    assert sum(b["counts"]["never_sent"] for b in rep["blocks"]) > 0
    assert main(["map", str(p), "--block", "pc.ram"]) == 0
    assert "stopped early" in capsys.readouterr().out
    assert main(["extract", str(p), "-o", str(tmp_path / "out"), "--json"]) == 0
    stopped = json.loads(capsys.readouterr().out)["stopped"]
    assert stopped["offset"] == off and "HOOK" in stopped["message"]
