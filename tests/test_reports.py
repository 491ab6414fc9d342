"""Reports that read right anywhere: nothing cut at 80 columns or in a pipe, meaning never
by colour alone, a verdict first, full device values, errors and odd inputs handled by the
command line, exports, and strings from files shown as data (issues 11 and 17)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zstandard
from conftest import ROOT, SAMPLES, sample_meta, sample_names, sample_path
from rich.console import Console
from synthetic_stream import PS, build_stream

from miginspect import __version__, cli
from miginspect.errors import FormatError, MigError
from miginspect.inspector.capture import open_capture
from miginspect.inspector.info import BlockInfo, InfoReport, SectionInfo
from miginspect.inspector.mapview import BlockView, MapReport
from miginspect.inspector.pagemap import PAGE_DATA, PAGE_NEVER_SENT, PAGE_ZERO
from miginspect.inspector.report import Note, PageCounts, SendHistogram
from miginspect.render import vocab as V
from miginspect.render.info import render_info
from miginspect.render.layout import Col, Grid
from miginspect.render.map import render_map
from miginspect.render.text import name_pieces, printable, wrap_name

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def run(argv: list[str], capsys, env: dict[str, str] | None = None,
        monkeypatch=None) -> tuple[int, str, str]:
    if env:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _sample(name: str) -> str:
    p = SAMPLES / f"{name}.mig.zst"
    if not p.exists():
        pytest.skip(f"sample {name} is not bundled")
    return str(p)


# -- layout --------------------------------------------------------------------------------

def test_names_wrap_at_separators_and_lose_nothing() -> None:
    name = "0000:00:01.3/piix4_pm"
    assert name_pieces(name) == ["0000:", "00:", "01.", "3/", "piix4_", "pm"]
    for w in range(1, 30):
        lines = wrap_name(name, w)
        assert "".join(lines) == name and all(len(x) <= w for x in lines), w
    assert wrap_name("/rom@etc/acpi/tables", 12) == ["/rom@etc/", "acpi/tables"]


@pytest.mark.parametrize("width", [20, 40, 60, 80, 100, 140, None])
def test_grid_never_crops_a_cell(width: int | None) -> None:
    g = Grid([Col("name", "left", flex="name")] + [Col(h) for h in
                                                  ("size", "pages", "data", "zero")], "T")
    rows = [("0000:00:01.3/piix4_pm", "5 GiB", "1,310,720", "1,310,719", "1"),
            ("/rom@etc/acpi/tables", "128 KiB", "32", "3", "29"),
            ("a" * 70, "4 KiB", "1", "1", "0")]
    for r in rows:
        g.add_row(*r)
    con = Console(width=width or 1000, file=io.StringIO(), color_system=None)
    con.natural = width is None  # type: ignore[attr-defined]
    con.print(g)
    out = con.file.getvalue()
    assert "…" not in out
    for r in rows:
        for cell in r[1:]:
            assert re.search(rf"(?<![\d,]){re.escape(cell)}(?![\d,])", out), (width, cell)
        # a name may be broken at / : . (or folded) but no piece of it is lost
        pieces = [x[i:i + 8] for x in name_pieces(r[0]) for i in range(0, len(x), 8)]
        assert all(p in out for p in pieces), (width, r[0])
    if width:
        assert all(len(ln) <= width for ln in out.splitlines()), width
    else:
        assert all(r[0] in out for r in rows)  # no limit: every name whole on one line


def _q35_info() -> InfoReport:
    """A q35 guest with 5 GiB of RAM (1,310,720 pages) and QEMU's long block names."""
    names = [("pc.ram", 5 << 30), ("0000:00:01.0/vga.vram", 16 << 20),
             ("/rom@etc/acpi/tables", 128 << 10), ("/rom@etc/acpi/rsdp", 4096),
             ("0000:00:02.0/e1000e.rom", 256 << 10)]
    blocks = [BlockInfo(n, ln, ln // PS, ln // PS - 7, 7, 0, ln // PS + 52_001, 7, 0)
              for n, ln in names]
    secs = [SectionInfo("FULL", "0000:00:1f.2/ich9_ahci", 0, 1, 0x4321, 1234, 9),
            SectionInfo("FULL", "0000:00:01.3/piix4_pm", 0, 3, 0x5000, 2472, 10)]
    return InfoReport("/srv/captures/q35-5g.mig", "legacy", 5 << 30, 5 << 30, 0, None,
                      "pc-q35-10.0", PS, "vmdescription", 3, [], sum(n[1] for n in names),
                      blocks, secs, None)


@pytest.mark.parametrize("width", [80, 100, 120])
def test_q35_counts_and_block_names_in_full(width: int) -> None:
    r = _q35_info()
    con = Console(width=width, file=io.StringIO(), color_system=None)
    render_info(r, con)
    out = con.file.getvalue()
    assert "…" not in out
    for b in r.ramblocks:
        assert b.name in out.splitlines() or re.search(rf"^{re.escape(b.name)}\s", out, re.M), \
            (width, b.name)
        for n in (b.pages, b.data_pages, b.page_records):
            assert f"{n:,}" in out, (width, n)
    assert "1,310,720" in out and "0000:00:01.3/piix4_pm" in out and "0000:00:1f.2/ich9_ahci" in out


# -- README's first command, at 80 columns and in a pipe -------------------------------------

def _blocks(path: str) -> list[dict]:
    out = io.StringIO()
    from contextlib import redirect_stdout

    with redirect_stdout(out):
        assert cli.main(["info", "--json", path]) == 0
    return json.loads(out.getvalue())["ramblocks"]


@pytest.mark.parametrize("columns", ["80", None])
def test_readme_first_command_shows_every_block_and_number(columns, capsys, monkeypatch):
    path = _sample("q10-live-legacy")
    if columns:
        monkeypatch.setenv("COLUMNS", columns)
    else:
        monkeypatch.delenv("COLUMNS", raising=False)
    rc, out, _ = run(["info", path], capsys)
    assert rc == 0 and "…" not in out
    first = out.splitlines()[0]
    assert first.startswith("info: legacy stream") and "reads whole" in first
    for b in _blocks(path):
        assert re.search(rf"^{re.escape(b['name'])}(\s|$)", out, re.M), b["name"]
        for k in ("pages", "data_pages", "zero_pages", "page_records", "zero_records"):
            assert f"{b[k]:,}" in out, (b["name"], k)
    for s in ("0000:00:01.3/piix4_pm", "0000:00:00.0/I440FX"):
        assert s in out
    if columns is None:  # no limit in a pipe: one row per block, one line per message
        row = next(ln for ln in out.splitlines() if ln.startswith("pc.ram "))
        assert "32,768" in row


# -- map: glyphs, not colours ----------------------------------------------------------------

def _view(name: str = "blk") -> BlockView:
    state = np.array([PAGE_DATA, PAGE_ZERO, PAGE_NEVER_SENT, PAGE_DATA, PAGE_ZERO, PAGE_DATA],
                     np.uint8)
    sends = np.array([1, 1, 0, 3, 12, 1], np.uint32)
    counts = PageCounts(never_sent=1, zero=2, data=3, resent=2)
    return BlockView(name, 6 * PS, PS, 6, counts, 12, SendHistogram.of([(3, 1), (12, 1)]),
                     state=state, sends=sends)


def test_map_cells_are_glyphs_and_the_legend_names_them() -> None:
    con = Console(width=80, file=io.StringIO(), color_system=None)
    render_map(MapReport("f", "legacy", PS, [_view()]), con, per_cell=1)
    out = con.file.getvalue()
    grid = [ln for ln in out.splitlines() if ln.startswith("0x")]
    assert grid == ["0x00000000  " + "█·-3+█"]
    legend = next(ln for ln in out.splitlines() if ln.startswith("legend:"))
    for m in (V.DATA, V.ZERO, V.NEVER_SENT):
        assert f"{m.glyph} {m.word}" in legend
    assert "2-9 re-sent" in legend and "+ x10 or more" in legend
    # two pages per cell: a cell with some data pages is "some data", one with none sent
    # is "never sent", one with zero pages (and maybe never-sent ones) is "zero"
    state = np.array([PAGE_DATA, PAGE_ZERO, PAGE_NEVER_SENT, PAGE_NEVER_SENT, PAGE_ZERO,
                      PAGE_NEVER_SENT],
                     np.uint8)
    v = BlockView("b", 6 * PS, PS, 6, PageCounts(never_sent=3, zero=2, data=1, resent=0), 1,
                  SendHistogram(), state=state, sends=(state != PAGE_NEVER_SENT).astype(np.uint32))
    con = Console(width=80, file=io.StringIO(), color_system=None)
    render_map(MapReport("f", "legacy", PS, [v]), con, per_cell=2)
    assert "0x00000000  ▒-·" in con.file.getvalue()


def _plain(text: str) -> str:
    return " ".join(ANSI.sub("", text).split())


def test_map_reads_the_same_in_a_pipe_under_no_color_and_on_a_terminal(capsys, monkeypatch):
    path = _sample("q10-live-legacy")
    _, piped, _ = run(["map", path, "--width", "80"], capsys)
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("TERM", "xterm-256color")
    _, term, _ = run(["map", path, "--width", "80"], capsys)
    assert not re.search(r"\x1b\[[0-9;]*(3[0-9]|38;|4[0-9])[0-9;]*m", term)  # no colour codes
    assert _plain(term) == _plain(piped)
    monkeypatch.delenv("NO_COLOR")
    _, colour, _ = run(["map", path, "--width", "80"], capsys)
    assert "\x1b[" in colour and _plain(colour) == _plain(piped)


def test_one_vocabulary_across_commands(capsys):
    """The page-state words of map are the column headers of info, size and convert."""
    path = _sample("q10-live-legacy")
    outs = {c: run([c, path, "--width", "200"], capsys)[1] for c in ("info", "map", "size")}
    for word in (V.DATA.word, V.ZERO.word, V.RESENT.word):
        assert all(word in o for o in outs.values()), word
    assert V.NEVER_SENT.word in outs["info"] and V.NEVER_SENT.word in outs["map"]
    for o in outs.values():
        assert "unsent" not in o and "×" not in o and " MB" not in o and " KB" not in o


def _keys(o) -> set[str]:  # noqa: ANN001
    """Every key at any depth of a JSON document."""
    if isinstance(o, dict):
        return set(o) | {k for v in o.values() for k in _keys(v)}
    if isinstance(o, list):
        return {k for v in o for k in _keys(v)}
    return set()


def test_one_vocabulary_in_the_json(tmp_path, capsys):
    """The same words in every command's JSON: `never_sent_pages`, the input as `path`,
    the two kinds of framing apart, `stopped` and notes as objects; README names each
    rename."""
    path = _sample("q10-live-legacy")
    docs = {}
    for cmd, argv in (("info", ["info", path]), ("size", ["size", path]),
                      ("extract", ["extract", path, "-o", str(tmp_path / "x")]),
                      ("convert", ["convert", path, str(tmp_path / "c.mig"), "--to",
                                   "mapped-ram"])):
        rc, out, _ = run(argv + ["--json"], capsys)
        assert rc == 0, cmd
        docs[cmd] = json.loads(out)
        keys = _keys(docs[cmd])
        assert "absent_pages" not in keys and "input" not in keys, cmd
        assert docs[cmd]["path"] == path, cmd
        assert "never_sent_pages" in keys, cmd
    manifest = json.loads((tmp_path / "x" / "miginspect-extract.json").read_text())
    assert manifest["path"] == path and "input" not in manifest
    size = docs["size"]
    assert "ram_section_framing" in size["overhead"] and "record_framing_bytes" in size
    assert "framing_bytes" not in size and "ram_framing" not in size["overhead"]
    assert all(isinstance(n, dict) and {"code", "message"} <= set(n) for n in size["notices"])
    readme = (ROOT / "README.md").read_text()
    for old, new in (("absent_pages", "never_sent_pages"), ("ram_framing", "ram_section_framing"),
                     ("framing_bytes", "record_framing_bytes")):
        assert re.search(rf"\| `[^|]*{old}[^|]*` \| `[^|]*{new}", readme), (old, new)
    assert '"loads, guest may not run"' in readme


# -- verdict first ----------------------------------------------------------------------------

@pytest.mark.parametrize("cmd", ["info", "map", "size", "devices", "check"])
def test_every_report_opens_with_its_verdict(cmd, capsys):
    rc, out, _ = run([cmd, _sample("q10-paused-legacy"), "--width", "80"], capsys)
    assert rc == 0 and out.splitlines()[0].startswith(f"{cmd}: ")


def test_diff_verdict_first(capsys):
    a, b = _sample("q10-state-A-legacy"), _sample("q10-state-A-legacy-resave")
    rc, out, _ = run(["diff", a, a, "--width", "80", "--jobs", "1"], capsys)
    assert rc == 0 and out.startswith("diff: identical")
    rc, out, _ = run(["diff", a, b, "--width", "80", "--jobs", "1"], capsys)
    assert rc == 1 and out.startswith("diff: different: RAM identical; device state differs")


def test_check_verdict_names_the_qemu_version_and_capabilities(capsys):
    for name, want, absent in (("q10-live-legacy", "needs QEMU >= 10.0", "capabilit"),
                               ("q10-paused-mapped-ram", "the mapped-ram capability", None),
                               ("q72-paused-legacy", None, "QEMU >= 10")):
        path = _sample(name)
        rc, js, _ = run(["check", path, "--json"], capsys)
        doc = json.loads(js)
        codes = {p["code"] for p in doc["problems"]}
        req = doc["requirements"]  # found with the problems, the verdict words it
        assert (req["min_qemu"] == "10.0") == ("needs-qemu-10" in codes), req
        assert ("mapped-ram" in req["capabilities"]) == ("needs-mapped-ram" in codes), req
        assert set(req["because"]) <= codes
        rc, out, _ = run(["check", path, "--width", "80"], capsys)
        first = out.splitlines()[0]
        assert rc == 0 and first.startswith("check: loadable"), first
        if want:
            assert want in first, first
        if absent:
            assert absent not in first, first
        if "needs-qemu-10" in codes:
            assert "QEMU >= 10.0" in first
        if "needs-mapped-ram" in codes:
            assert "mapped-ram" in first


def test_check_fix_texts_are_never_cut(capsys, monkeypatch):
    path = _sample_damaged("trunc-ram")
    rc, js, _ = run(["check", path, "--json", "--verbose"], capsys)
    probs = json.loads(js)["problems"]
    monkeypatch.setenv("FORCE_COLOR", "1")  # a terminal: rich wraps at spaces
    rc, out, _ = run(["check", path, "--width", "80", "--verbose"], capsys)
    flat = _plain(out)
    assert rc == 1 and "…" not in out
    for p in probs:
        for text in (p["cause"], p["fix"]):
            assert " ".join(text.split()) in flat, text


def _sample_damaged(name: str) -> str:
    p = SAMPLES / "damaged" / f"{name}.mig.zst"
    if not p.exists():
        pytest.skip(f"damaged sample {name} is not bundled")
    return str(p)


# -- devices: every value in full ----------------------------------------------------------

@pytest.mark.parametrize("name", [n for n in sample_names() if "state" not in n][:6])
def test_runstate_is_shown_by_name(name, capsys):
    live = sample_meta(name)["migration"]["live"]
    rc, out, _ = run(["devices", _sample(name), "--device", "globalstate", "--width", "80"],
                     capsys)
    # QEMU stores the run state when migration starts: running for a live migration,
    # paused after `stop`
    assert rc == 0 and f'runstate buffer = "{"running" if live else "paused"}"' in out
    rc, out, _ = run(["devices", _sample(name), "--device", "globalstate", "--flat"], capsys)
    assert f'globalstate.runstate = "{"running" if live else "paused"}" (hex ' in out


def test_devices_show_registers_and_buffers_whole(capsys):
    path = _sample("q10-paused-legacy")
    rc, js, _ = run(["devices", path, "--json"], capsys)
    devs = {d["idstr"]: d for d in json.loads(js)["devices"]}
    regs = next(f for f in devs["cpu"]["fields"] if f["name"] == "env.regs")["value"]
    cmos = next(f for f in devs["mc146818rtc"]["fields"] if f["name"] == "cmos_data")["value"]
    rc, out, _ = run(["devices", path, "--width", "80"], capsys)
    assert rc == 0 and "…" not in out and "chars)" not in out
    for i, v in enumerate(regs):
        shown = f"[{i}] {v} (0x{v:x})" if v >= 10 else f"[{i}] {v}"
        assert shown in out, shown
    # the hex dump of cmos_data gives back every byte
    rtc = out[out.index("cmos_data buffer"):]
    dump = re.findall(r"^[│ ]*([0-9a-f]{4})  ((?:[0-9a-f]{2} ?)+)\s+\|", rtc, re.M)
    got = bytearray()
    for off, hx in dump:
        if int(off, 16) == len(got):
            got += bytes.fromhex(hx.replace(" ", ""))
        if len(got) >= len(cmos) // 2:
            break
    assert got.hex() == cmos
    rc, flat, _ = run(["devices", path, "--flat"], capsys)
    lines = flat.splitlines()
    assert f"cpu.env.regs[15] = {regs[15]}" in " ".join(lines) and \
        f"mc146818rtc.cmos_data = {cmos}" in lines
    assert all(" = " in ln for ln in lines)


# -- errors and input ------------------------------------------------------------------------

def test_json_error_object_keeps_the_exit_code(capsys):
    path = _sample_damaged("trunc-ram")
    with pytest.raises(FormatError) as ei:
        with open_capture(path):
            pass
    rc, out, err = run(["size", path, "--json"], capsys)
    d = json.loads(out)
    assert rc == 1 and d["exit_code"] == 1
    e = d["error"]
    assert e["offset"] == ei.value.offset and e["where"] == ei.value.where
    assert e["message"] == ei.value.message and e["code"]
    assert "miginspect check" in e["hint"] and "--partial" in e["hint"]
    assert len(err.splitlines()) == 1 and "miginspect check" in err
    rc, out, err = run(["diff", path, path, "--json", "--jobs", "1"], capsys)
    assert rc == 2 and json.loads(out)["exit_code"] == 2
    rc, out, _ = run(["info", "/nonexistent/x.mig", "--json"], capsys)
    assert rc == 2 and json.loads(out)["error"]["code"] == "not-found"


def test_usage_mistakes_get_a_hint(capsys):
    rc, _, err = run(["FILE", "info"], capsys)
    assert rc == 2 and "did you mean 'miginspect info FILE'" in err
    assert err.startswith("usage: miginspect info ")
    rc, _, err = run(["inof", "x"], capsys)
    assert rc == 2 and "did you mean 'miginspect info ...'" in err
    rc, out, err = run(["map", "--json"], capsys)
    assert rc == 2 and err.startswith("usage: miginspect map") and json.loads(out)["error"]


def test_traceback_anywhere_and_version(capsys):
    path = _sample_damaged("trunc-ram")
    with pytest.raises(MigError):
        cli.main(["info", path, "--traceback"])
    with pytest.raises(MigError):
        cli.main(["--traceback", "info", path])
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"miginspect {__version__}"


def test_commands_on_damaged_input_point_to_check(capsys):
    path = _sample_damaged("trunc-ram")
    for cmd, partial in (("map", True), ("size", True), ("extract", True), ("devices", True)):
        argv = [cmd, path] + (["-o", "/nonexistent-parent/x"] if cmd == "extract" else [])
        rc, _, err = run(argv, capsys)
        assert rc == 1 and len(err.splitlines()) == 1, (cmd, err)
        assert f"'miginspect check {path}'" in err and ("--partial" in err) == partial, err


def _zst_bytes(name: str) -> bytes:
    return (SAMPLES / f"{name}.mig.zst").read_bytes()


def test_stdin_is_spooled(tmp_path):
    name = "q10-paused-legacy"
    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(_zst_bytes(name)),
                                                     read_across_frames=True).read()
    env = {**os.environ, "MIGINSPECT_TMPDIR": str(tmp_path)}
    for data in (raw, _zst_bytes(name)):  # a plain stream, and a compressed one
        p = subprocess.run([sys.executable, "-m", "miginspect", "info", "-", "--json"],
                           input=data, capture_output=True, cwd=ROOT, env=env, timeout=120)
        assert p.returncode == 0, p.stderr
        d = json.loads(p.stdout)
        assert d["path"] == "-" and d["ramblocks"] == _blocks(str(sample_path(name)))
    assert not list(tmp_path.iterdir())  # the spool file was unnamed


def test_a_fifo_never_hangs(tmp_path, capsys, monkeypatch):
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    monkeypatch.setenv("MIGINSPECT_INPUT_WAIT", "0.5")
    t0 = time.monotonic()
    rc, _, err = run(["info", str(fifo)], capsys)
    assert rc == 2 and time.monotonic() - t0 < 5 and "no data" in err
    data = _zst_bytes("q10-paused-legacy")

    def writer() -> None:
        with open(fifo, "wb") as f:
            f.write(data)

    monkeypatch.setenv("MIGINSPECT_INPUT_WAIT", "20")
    th = threading.Thread(target=writer)
    th.start()
    rc, out, err = run(["info", str(fifo), "--json"], capsys)
    th.join()
    assert rc == 0, err
    assert json.loads(out)["ramblocks"] == _blocks(str(sample_path("q10-paused-legacy")))


def test_devices_and_terminals_are_refused_at_once(capsys):
    t0 = time.monotonic()
    rc, _, err = run(["info", "/dev/zero"], capsys)
    assert rc == 1 and "does not start like" in err and time.monotonic() - t0 < 5
    rc, _, err = run(["info", "/dev/null"], capsys)
    assert rc == 1 and "too short" in err
    master, slave = os.openpty()
    try:
        p = subprocess.run([sys.executable, "-m", "miginspect", "info", "-"], stdin=slave,
                           capture_output=True, text=True, cwd=ROOT, timeout=60)
    finally:
        os.close(master)
        os.close(slave)
    assert p.returncode == 2 and "terminal" in p.stderr


# -- export ------------------------------------------------------------------------------

def test_export_writes_self_contained_files_atomically(tmp_path, capsys):
    path = _sample("q10-paused-legacy")
    for suffix, marks in ((".html", ("<html", "<title>")), (".svg", ("<svg",)),
                          (".txt", ("info: legacy stream",))):
        out = tmp_path / f"report{suffix}"
        rc, stdout, err = run(["info", path, "--export", str(out)], capsys)
        assert rc == 0 and "report written to" in err and stdout.startswith("info: ")
        doc = out.read_text()
        assert all(m in doc for m in marks), suffix
        assert "0000:00:02.0/vga.vram" in doc and "https://" not in doc, suffix
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.svg",
                                                          "report.txt"]
    # the picture is in the export, glyphs and colours
    rc, _, _ = run(["map", path, "--export", str(tmp_path / "map.html")], capsys)
    doc = (tmp_path / "map.html").read_text()
    assert rc == 0 and "█" in doc and V.DATA.style.lower().lstrip("#") in doc.lower()


def test_export_never_replaces_without_force_nor_anything_but_a_file(tmp_path, capsys):
    path = _sample("q10-paused-legacy")
    out = tmp_path / "r.txt"
    out.write_text("keep")
    rc, _, err = run(["info", path, "--export", str(out)], capsys)
    assert rc == 2 and "--force" in err and out.read_text() == "keep"
    rc, _, _ = run(["info", path, "--export", str(out), "--force"], capsys)
    assert rc == 0 and out.read_text().startswith("info: ")
    link = tmp_path / "link.txt"
    link.symlink_to(out)
    fifo = tmp_path / "f.txt"
    os.mkfifo(fifo)
    for target in (link, fifo, tmp_path / "dir.txt"):
        if target.name == "dir.txt":
            target.mkdir()
        rc, _, err = run(["info", path, "--export", str(target), "--force"], capsys)
        assert rc == 2, (target, err)
    assert link.is_symlink() and fifo.is_fifo() and out.read_text().startswith("info: ")
    rc, _, err = run(["info", path, "--export", str(tmp_path / "r.pdf")], capsys)
    assert rc == 2 and ".html, .svg or .txt" in err


# -- strings from files are data -----------------------------------------------------------

HOSTILE = ["[bold]", "[pc.ram]", "/rom@etc/acpi/rsdp", "evil\x1b[2J\x07name", "nul\x00x"]


def _hostile_stream(tmp_path: Path) -> Path:
    blocks = dict.fromkeys(HOSTILE, PS)
    pages = [(n, 0, bytes([i + 1]) * PS) for i, n in enumerate(HOSTILE)]
    devices = [("[/dev]\x1b]0;title\x07", {"vmsd_name": "[i]x\x00",
                                            "fields": [{"name": "[b]\x1b", "type": "buffer",
                                                        "size": 4}]}, b"ab\x00\x00")]
    p = tmp_path / "hostile.mig"
    p.write_bytes(build_stream(blocks, pages, devices))
    return p


@pytest.mark.parametrize("cmd", ["info", "map", "size", "devices", "check", "diff", "extract"])
def test_file_strings_are_escaped_everywhere(cmd, tmp_path, capsys, monkeypatch):
    p = str(_hostile_stream(tmp_path))
    argv = {"diff": ["diff", p, p, "--jobs", "1"],
            "extract": ["extract", p, "-o", str(tmp_path / "x"), "--force"]}.get(cmd, [cmd, p])
    for env in ({}, {"FORCE_COLOR": "1", "TERM": "xterm-256color"}):
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        rc, out, err = run(argv + ["--width", "80"], capsys)
        assert rc == 0, err
        plain = ANSI.sub("", out)
        assert "\x00" not in plain + err and "\x07" not in plain + err
        assert "\x1b" not in plain + err  # only our own colour codes, which ANSI removed
        for n in ("[bold]", "[pc.ram]", "/rom@etc/acpi/rsdp"):
            if cmd in ("info", "map", "size"):
                assert n in plain, (cmd, n)
        if cmd in ("info", "map"):
            assert printable("evil\x1b[2J\x07name") in _plain(plain).replace(" ", "") or \
                "evil\\x1b[2J\\x07name" in plain
    rc, out, _ = run(argv + ["--json"], capsys)
    if cmd == "info":
        assert [b["name"] for b in json.loads(out)["ramblocks"]] == HOSTILE  # JSON: real


def test_notice_where_and_error_lines_are_escaped(capsys, monkeypatch):
    r = _q35_info()
    r.notices = [Note("warning", 0x10, "/rom@etc/acpi/rsdp", "bad [bold]thing\x1b[31m",
                      "sized-by-footer")]
    con = Console(width=80, file=io.StringIO(), color_system=None)
    render_info(r, con)  # used to raise MarkupError
    out = con.file.getvalue()
    assert "(/rom@etc/acpi/rsdp): bad [bold]thing\\x1b[31m" in out

    def boom(args) -> int:
        raise FormatError("idstr '\x00\x1b[2J[/x]' is odd", 5, "[/rom@etc]")

    import miginspect.commands.info as info_cmd

    monkeypatch.setattr(info_cmd, "run", boom)
    rc, _, err = run(["info", "whatever"], capsys)
    assert rc == 1 and "\x00" not in err and "\x1b" not in err
    assert "\\x00\\x1b[2J[/x]" in err and "[[/rom@etc]]" in err


# -- every command at 80 columns on every bundled file --------------------------------------

def _bundled() -> list[str]:
    files = sorted(SAMPLES.glob("*.mig.zst")) + sorted((SAMPLES / "damaged").glob("*.mig.zst"))
    files += sorted(p for p in (SAMPLES / "libvirt").glob("*.img*"))
    return [str(p.relative_to(ROOT)) for p in files]


#: commands whose text names every RAMBlock with its page count
NAMES_AND_PAGES = {"info", "map", "diff"}
NAMES_ONLY = {"size", "convert", "extract"}


@pytest.fixture(scope="module")
def dump_vmstate(tmp_path_factory) -> str | None:
    """A -dump-vmstate JSON of a QEMU 10 pc-i440fx-10.0 target (None without QEMU)."""
    qemu = "/usr/bin/qemu-system-x86_64"
    if not os.path.exists(qemu):
        return None
    out = tmp_path_factory.mktemp("dump") / "vmstate.json"
    subprocess.run([qemu, "-machine", "pc-i440fx-10.0", "-m", "128", "-display", "none",
                    "-S", "-dump-vmstate", str(out)], check=True, timeout=120,
                   capture_output=True)
    return str(out)


def _argv(cmd: str, path: str, tmp_path: Path, dump: str | None) -> list[str] | None:
    return {"diff": ["diff", path, path, "--jobs", "1"],
            "extract": ["extract", path, "-o", str(tmp_path / "x"), "--force"],
            "extract-cpu": ["extract", path, "--cpu"],
            "check-target": ["check", path, "--target", dump] if dump else None,
            "convert": ["convert", path, str(tmp_path / "c.mig"), "--to", "legacy",
                        "--force"]}.get(cmd, [cmd, path])


@pytest.mark.slow
@pytest.mark.parametrize("path", _bundled())
def test_every_command_at_80_columns_on_every_bundled_file(path, tmp_path, capsys,
                                                           monkeypatch, dump_vmstate):
    monkeypatch.chdir(ROOT)
    rc, js, _ = run(["info", path, "--json"], capsys)
    blocks = json.loads(js).get("ramblocks", []) if rc == 0 else []
    cmds = ["info", "map", "size", "devices", "check", "diff", "extract", "extract-cpu",
            "snapshots", "check-target"]
    if "libvirt" in path:
        cmds.append("xml")
    if path.endswith(("q10-paused-legacy.mig.zst", "q10-paused-mapped-ram.mig.zst",
                      "save-sparse.img.zst")):
        cmds.append("convert")
    for cmd in cmds:
        argv = _argv(cmd, path, tmp_path, dump_vmstate)
        if argv is None:
            continue
        rc, out, err = run(argv + ["--width", "80"], capsys)
        assert rc in (0, 1, 2) and "Traceback" not in err, (cmd, err)
        assert "…" not in out + err, (cmd, path)
        if rc != 0:
            assert len(err.splitlines()) == 1 or cmd in ("check", "check-target", "info"), \
                (cmd, err)
            continue
        for b in blocks if cmd in NAMES_AND_PAGES | NAMES_ONLY else []:
            name = b["name"]
            if cmd == "extract":  # the file, named after the block, or the block beside it
                assert f"{name}.raw" in out or f"({name})" in out, (cmd, name)
                continue
            assert re.search(rf"^\s*{re.escape(name)}(\s|$)", out, re.M), (cmd, name)
            if cmd in NAMES_AND_PAGES:
                assert f"{b['pages']:,}" in out, (cmd, name, b["pages"])


def _qcow2_images() -> list[str]:
    return [str(p) for p in sorted((SAMPLES / "qcow2").glob("*.qcow2.zst"))] or [
        pytest.param(None, marks=pytest.mark.skip(reason="no qcow2 samples bundled"))]


@pytest.mark.slow
@pytest.mark.parametrize("image", _qcow2_images())
def test_qcow2_images_at_80_columns(image, capsys, monkeypatch):
    """`snapshots` on each bundled qcow2 image (unpacked) at 80 columns, in a pipe: every
    snapshot's id, name, date and state size in full, nothing cut, every table line within
    80 columns (messages are never hard-wrapped in a pipe)."""
    from conftest import unpack

    path = str(unpack(Path(image)))
    rc, js, _ = run(["snapshots", path, "--json"], capsys)
    assert rc == 0
    (im,) = json.loads(js)["images"]
    rc, out, err = run(["snapshots", path, "--width", "80"], capsys)
    assert rc == 0 and "…" not in out and "Traceback" not in err
    assert out.splitlines()[0].startswith("snapshots: ")
    flat = out.replace("\n", "")
    assert path in flat  # the path may be broken at / : . - _ but is whole
    for sn in im["snapshots"]:
        row = next((ln for ln in out.splitlines() if ln.split()[:2] == [sn["id"], sn["name"]]),
                   None)
        assert row is not None, sn["name"]
        when = sn["date"].replace("T", " ")[:19]
        assert when in out
    for ln in out.splitlines()[1:]:
        assert len(ln) <= 80 or ":" in ln.split()[0], ln


# -- one report contract ------------------------------------------------------------------

def test_one_json_serializer_for_every_report() -> None:
    from dataclasses import dataclass

    from miginspect.ui import dumps, jsonable

    @dataclass
    class Inner:
        raw: bytes
        n: np.int64

    @dataclass
    class Report:
        path: str
        inner: Inner
        arr: np.ndarray
        f: np.float32
        flag: np.bool_

    r = Report("p", Inner(b"\x00\xff", np.int64(7)), np.arange(3, dtype=np.uint64),
               np.float32(0.5), np.bool_(True))
    assert jsonable(r) == {"path": "p", "inner": {"raw": "00ff", "n": 7}, "arr": [0, 1, 2],
                           "f": 0.5, "flag": True}
    assert json.loads(dumps(r)) == jsonable(r)
    with pytest.raises(TypeError):
        jsonable(object())


def test_every_command_goes_through_emit_and_maps_no_errors() -> None:
    """A command parses, calls its analysis and hands the report to `emit`; only cli.main
    turns errors into messages and exit codes."""
    import miginspect.commands as pkg

    for name in cli.COMMANDS:
        src = (Path(pkg.__file__).parent / f"{name}.py").read_text()
        assert "emit(" in src and "common_options(" in src, name
        assert "print_json" not in src and "ui.console(" not in src, name
        assert "except MigError" not in src and "sys.exit" not in src, name
        # notices go to stderr through ui.err_console(); reports through emit
        assert "print(" not in src.replace("console.print(", "").replace(
            "err_console().print(", ""), name
