"""`check` on real captures: good samples load, damaged samples fail the way QEMU 10
failed on them (samples/damaged/<name>.json records QEMU's own load error), and
--target finds what QEMU's loader would complain about, with QEMU's figures
(info ramblock, machine type) recorded beside each sample."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
from pathlib import Path

import pytest
from conftest import SAMPLES, sample_meta, sample_names, sample_path, unpack
from qemu_harness import QemuVM, QmpError

from miginspect.cli import main as cli_main
from miginspect.formats import stream as S
from miginspect.inspector.check import check_file
from miginspect.inspector.target import load_target, parse_info_ramblock

GOOD = sample_names()
DAMAGED_DIR = SAMPLES / "damaged"


def _damaged() -> list[str]:
    return sorted(p.name[:-5] for p in DAMAGED_DIR.glob("*.json")
                  if (DAMAGED_DIR / f"{p.name[:-5]}.mig.zst").exists())


DAMAGED = _damaged()


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli_main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def _caps(meta: dict) -> list[str]:
    return [c["capability"] for c in meta["migration"]["query-migrate-capabilities"]
            if c["state"] and c["capability"] in ("mapped-ram", "x-ignore-shared")]


# -- good samples -------------------------------------------------------------------
@pytest.mark.skipif(not GOOD, reason="no bundled samples (samples/generate.py)")
@pytest.mark.parametrize("name", GOOD)
def test_good_sample_is_loadable(name: str) -> None:
    meta = sample_meta(name)
    assert meta["query-migrate"]["status"] == "completed"
    rc, out, err = _cli("check", str(sample_path(name)), "--json")
    assert rc == 0, out + err
    rep = json.loads(out)
    assert rep["loadable"] is True
    assert [p for p in rep["problems"] if p["severity"] == "error"] == []
    assert all({"severity", "offset", "where", "cause", "fix"} <= set(p) for p in rep["problems"])
    # what the file says agrees with what QEMU was asked to do
    assert rep["machine_type"] == meta["capture"]["header"]["machine"]
    want = _caps(meta)
    assert rep["incoming"]["capabilities"] == want
    cmds = "\n".join(rep["incoming"]["commands"])
    assert "-incoming defer" in cmds and '"migrate-incoming"' in cmds
    for c in want:
        assert f'{{"capability": "{c}", "state": true}}' in cmds
    assert ('"migrate-set-capabilities"' in cmds) == bool(want)
    assert rep["format"] == ("mapped-ram" if "mapped-ram" in want else "legacy")


@pytest.mark.skipif(not GOOD, reason="no bundled samples")
def test_terminal_view_names_the_verdict() -> None:
    name = GOOD[0]
    rc, out, _ = _cli("check", str(sample_path(name)))
    assert rc == 0
    assert "loadable" in out and "migrate-incoming" in out


# -- damaged samples: agree with QEMU 10 --------------------------------------------
def _qemu_text(meta: dict) -> str:
    q = meta["qemu_load"]
    return f"{q.get('stderr') or ''}\n{q.get('error-desc') or ''}"


@pytest.mark.skipif(not DAMAGED, reason="no damaged samples (samples/generate.py damaged)")
@pytest.mark.parametrize("name", DAMAGED)
def test_damaged_sample_agrees_with_qemu(name: str) -> None:
    meta = json.loads((DAMAGED_DIR / f"{name}.json").read_text())
    path = unpack(DAMAGED_DIR / f"{name}.mig.zst")
    rc, out, err = _cli("check", str(path), "--json")
    rep = json.loads(out)
    q = meta["qemu_load"]
    qemu = _qemu_text(meta)
    probs = rep["problems"]
    if q["loaded"]:
        assert rc == 0, f"QEMU loaded it, check says {rep['verdict']}: {probs}"
        warned = [p for p in probs if p["severity"] == "warning"]
        assert warned, "QEMU loads it but the damage deserves a warning"
        first = warned[0]
    else:
        assert rc == 1, f"QEMU refused it ({qemu.strip()}), check says {rep['verdict']}"
        first = next(p for p in probs if p["severity"] == "error")
        # QEMU's own message and our cause agree on a key phrase
        assert any(phrase in qemu for phrase in first["qemu"]), (
            f"QEMU said {qemu.strip()!r}; our first error: {first}")
    # the offset is named: one of the damage's recorded offsets is a problem's offset,
    # or appears (in hex) in its cause
    wanted = {meta[k] for k in ("offset", "record_offset", "section_offset", "header_offset",
                                "vmdescription_offset") if isinstance(meta.get(k), int)}
    named = {p["offset"] for p in probs} | {
        w for w in wanted for p in probs if f"0x{w:x}" in p["cause"]}
    assert wanted & named, f"none of {sorted(wanted)} named by {probs}"


def test_damaged_sample_terminal_view() -> None:
    if "trunc-ram" not in DAMAGED:
        pytest.skip("damaged/trunc-ram is not bundled")
    meta = json.loads((DAMAGED_DIR / "trunc-ram.json").read_text())
    rc, out, _ = _cli("check", str(unpack(DAMAGED_DIR / "trunc-ram.mig.zst")))
    assert rc == 1
    assert "will not load" in out
    assert f"0x{meta['record_offset']:x}" in out


# -- --target ---------------------------------------------------------------------
def _first_with_ramblocks() -> str | None:
    for n in GOOD:
        if sample_meta(n).get("info_ramblock", {}).get("parsed"):
            return n
    return None


TNAME = _first_with_ramblocks()
need_target = pytest.mark.skipif(TNAME is None, reason="no sample with `info ramblock`")


@pytest.mark.skipif(TNAME is None, reason="no sample with `info ramblock`")
@pytest.mark.parametrize("name", [n for n in GOOD if sample_meta(n).get("info_ramblock")])
def test_info_ramblock_text_is_parsed_like_qemu_figures(name: str) -> None:
    meta = sample_meta(name)
    blocks = parse_info_ramblock(meta["info_ramblock"]["raw"])
    parsed = meta["info_ramblock"]["parsed"]
    assert [(b.name, b.used_length, b.max_length, b.page_size) for b in blocks] == [
        (p["name"], p["used_length"], p["total_length"], p["page_size"]) for p in parsed]


@need_target
def test_target_same_host_info_ramblock_is_clean(tmp_path: Path) -> None:
    meta = sample_meta(TNAME)
    t = tmp_path / "ramblock.txt"
    t.write_text(meta["info_ramblock"]["raw"])
    rc, out, err = _cli("check", str(sample_path(TNAME)), "--target", str(t), "--json")
    rep = json.loads(out)
    assert rc == 0, rep["problems"]
    assert rep["target"]["kind"] == "info ramblock"
    assert "RAMBlocks" in rep["target"]["compared"]


def _desc(meta: dict) -> dict:
    return {
        "machine_type": meta["capture"]["header"]["machine"],
        "ramblocks": [{"name": p["name"], "used_length": p["used_length"],
                       "max_length": p["total_length"], "page_size": p["page_size"]}
                      for p in meta["info_ramblock"]["parsed"]],
    }


@need_target
def test_target_json_mismatches_use_qemu_wording(tmp_path: Path) -> None:
    meta = sample_meta(TNAME)
    d = _desc(meta)
    ram = next(b for b in d["ramblocks"] if b["name"] == "pc.ram")
    file_len = ram["used_length"]
    ram["used_length"] = ram["max_length"] = 2 * file_len  # the target has twice the -m
    gone = next(b for b in d["ramblocks"] if b["max_length"] == b["used_length"]
                and b["name"] != "pc.ram")
    d["ramblocks"].remove(gone)  # a device (ROM) the target lacks
    d["machine_type"] = "pc-q35-10.0"
    t = tmp_path / "target.json"
    t.write_text(json.dumps(d))
    rc, out, _ = _cli("check", str(sample_path(TNAME)), "--target", str(t), "--json")
    assert rc == 1
    probs = json.loads(out)["problems"]
    causes = "\n".join(p["cause"] for p in probs if p["severity"] == "error")
    assert f"Size mismatch: pc.ram: 0x{file_len:x} != 0x{2 * file_len:x}" in causes
    assert f'Unknown ramblock "{gone["name"]}", cannot accept migration' in causes
    assert (f"Machine type received is '{meta['capture']['header']['machine']}' and local is "
            "'pc-q35-10.0'") in causes


@need_target
def test_target_resizeable_block_within_max_is_fine(tmp_path: Path) -> None:
    meta = sample_meta(TNAME)
    d = _desc(meta)
    res = [b for b in d["ramblocks"] if b["max_length"] > b["used_length"]]
    if not res:
        pytest.skip("no resizeable RAMBlock in this sample")
    res[0]["used_length"] = res[0]["max_length"] // 2 if res[0]["max_length"] // 2 != \
        res[0]["used_length"] else res[0]["max_length"]
    t = tmp_path / "target.json"
    t.write_text(json.dumps(d))
    rc, out, _ = _cli("check", str(sample_path(TNAME)), "--target", str(t), "--json")
    assert rc == 0, out


def _pair() -> tuple[str, str] | None:
    """Two samples from different QEMU versions (machine types differ)."""
    by_machine: dict[str, str] = {}
    for n in GOOD:
        by_machine.setdefault(sample_meta(n)["capture"]["header"]["machine"], n)
    ms = sorted(by_machine)
    return (by_machine[ms[0]], by_machine[ms[-1]]) if len(ms) > 1 else None


def test_target_snapshot_from_other_qemu() -> None:
    pair = _pair()
    if pair is None:
        pytest.skip("needs samples from two QEMU versions")
    a, b = pair
    ma, mb = (sample_meta(x)["capture"]["header"]["machine"] for x in pair)
    rc, out, _ = _cli("check", str(sample_path(a)), "--target", str(sample_path(b)), "--json")
    rep = json.loads(out)
    assert rc == 1
    assert rep["target"]["kind"] == "snapshot"
    assert any(p["code"] == "target-machine"
               and f"Machine type received is '{ma}' and local is '{mb}'" == p["cause"]
               for p in rep["problems"])


def test_target_snapshot_same_vm_is_clean() -> None:
    legacy = [n for n in GOOD if not _caps(sample_meta(n))]
    mapped = [n for n in GOOD if "mapped-ram" in _caps(sample_meta(n))]
    pairs = [(a, b) for a in legacy for b in mapped
             if sample_meta(a)["capture"]["header"]["machine"]
             == sample_meta(b)["capture"]["header"]["machine"]
             and sample_meta(a)["qemu"]["argv"][1:] == sample_meta(b)["qemu"]["argv"][1:]]
    if not pairs:
        pairs = [(a, b) for a in legacy for b in mapped
                 if sample_meta(a)["capture"]["header"]["machine"]
                 == sample_meta(b)["capture"]["header"]["machine"]]
    if not pairs:
        pytest.skip("needs a legacy and a mapped-ram sample of one machine type")
    a, b = pairs[0]
    rc, out, _ = _cli("check", str(sample_path(a)), "--target", str(sample_path(b)), "--json")
    rep = json.loads(out)
    assert rc == 0, rep["problems"]
    assert set(rep["target"]["compared"]) >= {"machine type", "RAMBlocks", "device sections"}


def test_target_bad_description_is_a_usage_error(tmp_path: Path) -> None:
    t = tmp_path / "t.json"
    t.write_text('{"ramblocks": [{"name": "pc.ram"}]}')
    f = tmp_path / "f"
    f.write_bytes(b"")
    rc, _, err = _cli("check", str(f), "--target", str(t))
    assert rc == 2 and "used_length" in err
    t.write_text("not json and not info ramblock")
    rc, _, err = _cli("check", str(f), "--target", str(t))
    assert rc == 2
    with pytest.raises(Exception):  # noqa: B017 - load_target raises a UsageError
        load_target(str(tmp_path / "missing"))


def test_check_file_never_raises_on_damage(tmp_path: Path) -> None:
    p = tmp_path / "x"
    p.write_bytes(b"QEVM\0\0\0\3\x07\0\0\0\x05pc-10\x09")
    rep = check_file(str(p))
    assert rep.verdict == "will not load"
    assert rep.primary is not None
    assert rep.primary.offset == 8 + 1 + 4 + 5  # header, 0x07, len, "pc-10"
    assert "Unknown savevm section type" in rep.primary.qemu


# -- live QEMU agreement on more damage kinds -------------------------------------
# A BIOS-only VM (no guest kernel) saved by the installed QEMU, damaged here in ways the
# bundled damaged samples do not cover, loaded back into a fresh QEMU: `check` must
# exit as QEMU behaved and name QEMU's message.
def _on(caps: list[str]) -> dict[str, bool]:
    return {c: True for c in caps}


def _save(qemu: str, out: Path, caps: list[str], extra: tuple[str, ...] = ()) -> None:
    with QemuVM(*extra, binary=qemu) as vm:  # -m 64 comes first; a later -m in extra wins
        st = vm.save(out, _on(caps))["status"]
        assert st == "completed", st


def _load(qemu: str, path: Path, caps: list[str], uri: str | None = None
          ) -> tuple[bool, str]:
    """(loaded, QEMU's stderr) for `path` (or `uri`) loaded into a fresh -incoming defer
    QEMU."""
    vm = QemuVM("-incoming", "defer", binary=qemu)
    loaded = False
    try:
        try:
            loaded = vm.load(uri or f"file:{path}", _on(caps))["status"] == "completed"
        except (EOFError, OSError, QmpError):
            pass  # QEMU exits on a failed incoming migration
        vm.qmp.quit()
        try:
            vm.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            vm.proc.kill()
            vm.proc.wait()
        return loaded, vm.stderr()
    finally:
        vm.close()


@pytest.fixture(scope="module")
def bios_captures(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from conftest import qemu_binary

    q = qemu_binary()
    if q is None:
        pytest.skip("qemu-system-x86_64 is not installed (bash samples/install-lab.sh)")
    d = tmp_path_factory.mktemp("bios")
    _save(q, d / "legacy.mig", [])
    _save(q, d / "mapped.mig", ["mapped-ram"])
    return {"qemu": q, "dir": d, "legacy": (d / "legacy.mig").read_bytes(),
            "mapped": (d / "mapped.mig").read_bytes()}


def _w(raw: bytes):  # noqa: ANN202
    from miginspect.inspector.stream import walk_stream

    return walk_stream(raw)


def _patch(raw: bytes, off: int, new: bytes) -> bytes:
    return raw[:off] + new + raw[off + len(new):]


def _dmg_footer(raw: bytes) -> bytes:
    s = [x for x in _w(raw).sections if x.kind == S.KIND_FULL][3]
    return _patch(raw, s.end - 1, bytes([raw[s.end - 1] ^ 1]))


def _dmg_section_type(raw: bytes) -> bytes:
    s = [x for x in _w(raw).sections if x.kind == S.KIND_FULL][3]
    return _patch(raw, s.offset, b"\x09")


def _dmg_command(raw: bytes) -> bytes:
    s = next(x for x in _w(raw).sections if x.kind == S.KIND_COMMAND)
    return _patch(raw, s.offset + 1, b"\x00\x33")


def _record(raw: bytes, kind: int) -> int:
    rt = _w(raw).records
    return int(rt.rec_off[[i for i in range(len(rt)) if int(rt.kind[i]) == kind][3]])


def _dmg_zero_fill(raw: bytes) -> bytes:
    return _patch(raw, _record(raw, 2) + 8, b"\x05")


def _dmg_offset(raw: bytes) -> bytes:
    o = _record(raw, 8)
    w = int.from_bytes(raw[o:o + 8], "big")
    return _patch(raw, o, ((w & 0x3FF) | 0x7FF0000000).to_bytes(8, "big"))


def _dmg_memsize(raw: bytes) -> bytes:
    s = _w(raw).sections[0]
    o = s.payload_offset
    return _patch(raw, o, (int.from_bytes(raw[o:o + 8], "big") + (1 << 40)).to_bytes(8, "big"))


def _dmg_no_eof(raw: bytes) -> bytes:
    return raw[: _w(raw).eof_offset]


def _dmg_cut_after_eof(raw: bytes) -> bytes:
    return raw[: _w(raw).eof_offset + 1]


def _dmg_trailer_json(raw: bytes) -> bytes:
    return _patch(raw, _w(raw).trailer.offset + 100, b"\x00")


def _mr_hdr(raw: bytes) -> int:
    return _w(raw).blocks[0].mapped_ram.header_offset


def _dmg_mr_misaligned(raw: bytes) -> bytes:
    h = _mr_hdr(raw)
    v = int.from_bytes(raw[h + 20:h + 28], "big") + 8
    return _patch(raw, h + 20, v.to_bytes(8, "big"))


def _dmg_mr_version(raw: bytes) -> bytes:
    return _patch(raw, _mr_hdr(raw), (2).to_bytes(4, "big"))


def _dmg_mr_bits_past(raw: bytes) -> bytes:
    """A bit set past the last page of a one-page block (QEMU never reads it)."""
    b = next(b for b in _w(raw).blocks if b.pages % 8)
    o = b.mapped_ram.bitmap_offset + b.pages // 8
    return _patch(raw, o, bytes([raw[o] | 0x80]))


def _dmg_no_footers(raw: bytes) -> bytes:
    return _strip_footers(raw)


def _dmg_no_eos(raw: bytes) -> bytes:
    s = next(x for x in _w(raw).sections if x.kind == S.KIND_PART and x.idstr == "ram")
    return raw[: s.payload_end - 8] + raw[s.payload_end:]


LIVE_CASES = [  # base, damage, our code for it
    ("legacy", "footer-id", _dmg_footer, "footer-mismatch"),
    ("legacy", "section-type", _dmg_section_type, "unknown-section-type"),
    ("legacy", "unknown-command", _dmg_command, "unknown-command"),
    ("legacy", "zero-fill", _dmg_zero_fill, "zero-fill"),
    ("legacy", "illegal-offset", _dmg_offset, "page-offset-beyond"),
    ("legacy", "mem-size-inflated", _dmg_memsize, "ramblock-list"),
    ("legacy", "no-eos", _dmg_no_eos, "missing-eos"),
    ("legacy", "no-eof", _dmg_no_eof, "no-eof"),
    ("legacy", "no-footers", _dmg_no_footers, "footer-missing"),
    ("legacy", "cut-after-eof", _dmg_cut_after_eof, "no-trailer"),
    ("legacy", "trailer-json", _dmg_trailer_json, "trailer-damaged"),
    ("mapped", "mapped-ram-misaligned", _dmg_mr_misaligned, "mapped-ram-alignment"),
    ("mapped", "mapped-ram-version", _dmg_mr_version, "mapped-ram-version"),
    ("mapped", "mapped-ram-bits-past-used-length", _dmg_mr_bits_past, "bitmap-past-used-length"),
]


@pytest.mark.qemu
@pytest.mark.parametrize("base,label,damage,code", LIVE_CASES, ids=[c[1] for c in LIVE_CASES])
def test_check_agrees_with_live_qemu(bios_captures: dict, base: str, label: str,
                                     damage, code: str) -> None:  # noqa: ANN001
    raw = damage(bios_captures[base])
    p = bios_captures["dir"] / f"{label}.mig"
    p.write_bytes(raw)
    caps = ["mapped-ram"] if base == "mapped" else []
    loaded, qerr = _load(bios_captures["qemu"], p, caps)
    rc, out, _ = _cli("check", str(p), "--json")
    rep = json.loads(out)
    if loaded:
        assert rc == 0, (qerr, rep["problems"])
        assert any(p["severity"] == "warning" for p in rep["problems"])
        w = next(p for p in rep["problems"] if p["severity"] == "warning")
        assert w["offset"] is not None
        assert w["code"] == code
        if w["qemu"]:  # QEMU printed a note even though it loaded
            assert any(x in qerr for x in w["qemu"]), (qerr, w)
    else:
        assert rc == 1, (qerr, rep["problems"])
        first = rep["problems"][[p["severity"] for p in rep["problems"]].index("error")]
        assert first["offset"] is not None
        assert first["code"] == code
        assert any(x in qerr for x in first["qemu"]), (qerr, first)


def _wrap_libvirt(raw: bytes) -> bytes:
    from miginspect.formats import libvirt as lv

    xml = b"<domain type='kvm'><name>t</name></domain>"
    pad = 4096 - 92 - len(xml) - 1
    hdr = lv.virQEMUSaveHeader_le.build(dict(magic=lv.QEMU_SAVE_MAGIC, version=2,
                                             data_len=len(xml) + 1 + pad, was_running=0,
                                             format=0, cookieOffset=0))
    return hdr + xml + bytes(1 + pad) + raw


@pytest.mark.qemu
@pytest.mark.parametrize("variant", ["legacy", "legacy-zstd", "mapped", "legacy-in-libvirt"])
def test_incoming_qmp_loads_in_qemu(bios_captures: dict, variant: str, tmp_path: Path) -> None:
    """The exact migrate-set-capabilities / migrate-incoming that `check` prints load the
    file into a fresh `-incoming defer` QEMU."""
    import shutil

    import zstandard

    raw = bios_captures["mapped" if variant == "mapped" else "legacy"]
    p = tmp_path / f"{variant}.mig"
    if variant == "legacy-zstd":
        if shutil.which("zstd") is None:
            pytest.skip("the zstd program is not installed")
        raw = zstandard.ZstdCompressor().compress(raw)
    elif variant == "legacy-in-libvirt":
        raw = _wrap_libvirt(raw)
    p.write_bytes(raw)
    rc, out, _ = _cli("check", str(p), "--json")
    assert rc == 0
    inc = json.loads(out)["incoming"]
    assert inc["capabilities"] == (["mapped-ram"] if variant == "mapped" else [])
    assert json.dumps({"execute": "migrate-incoming", "arguments": {"uri": inc["uri"]}}) \
        in inc["commands"]
    loaded, err = _load(bios_captures["qemu"], p, inc["capabilities"], inc["uri"])
    assert loaded, err


# -- libvirt images: check agrees with `virsh restore` ------------------------------
LIBVIRT_DIR = SAMPLES / "libvirt"


def _libvirt_images() -> list[str]:
    out = []
    for j in sorted(LIBVIRT_DIR.glob("*.json")):
        m = json.loads(j.read_text())
        f = (m.get("stored_as") or {}).get("file")
        if f and (LIBVIRT_DIR / f).exists() and m.get("restore"):
            out.append(j.name[:-5])
    return out


LIBVIRT = _libvirt_images()


@pytest.mark.skipif(not LIBVIRT, reason="no libvirt sample images (samples/libvirt)")
@pytest.mark.parametrize("name", LIBVIRT)
def test_libvirt_image_agrees_with_virsh_restore(name: str, tmp_path: Path) -> None:
    meta = json.loads((LIBVIRT_DIR / f"{name}.json").read_text())
    f = LIBVIRT_DIR / meta["stored_as"]["file"]
    path = unpack(f) if f.name.endswith(".zst") else f
    restore = meta["restore"][0]
    rc, out, _ = _cli("check", str(path), "--json")
    rep = json.loads(out)
    if restore["accepted"]:
        assert rc == 0, rep["problems"]
        rb = restore.get("info_ramblock", {}).get("raw")
        if rb:  # the restored VM's own RAMBlocks as the target: nothing to complain about
            t = tmp_path / "rb.txt"
            t.write_text(rb)
            rc, out, _ = _cli("check", str(path), "--target", str(t), "--json")
            assert rc == 0, json.loads(out)["problems"]
    else:
        assert rc == 1
        first = next(p for p in rep["problems"] if p["severity"] == "error")
        assert any(x in restore["stderr"] for x in first["qemu"]), (restore["stderr"], first)


def _strip_footers(raw: bytes) -> bytes:
    from miginspect.inspector.stream import walk_stream

    w = walk_stream(raw)
    out = bytearray(raw[: w.sections[0].offset])
    for sec in w.sections:
        out += raw[sec.offset: sec.payload_end if sec.payload_end is not None else sec.end]
    if w.trailer is not None and w.eof_offset is not None:
        out += raw[w.eof_offset + 1:]
    return bytes(out)


def _rename_machine(raw: bytes, name: bytes) -> bytes:
    from miginspect.inspector.stream import walk_stream

    c = walk_stream(raw).configuration
    n = int.from_bytes(raw[c.offset + 1: c.offset + 5], "big")
    return (raw[: c.offset + 1] + len(name).to_bytes(4, "big") + name
            + raw[c.offset + 5 + n:])


def test_no_footers_no_trailer(tmp_path: Path) -> None:
    """Without footers QEMU 10 refuses a >= 2.4 machine's stream ("Missing section
    footer"); for a 2.3 machine nothing can size the device sections: exit 2."""
    if not GOOD:
        pytest.skip("no bundled samples")
    from fuzzing import shrink_legacy

    legacy = [n for n in GOOD if not _caps(sample_meta(n))]
    raw = Path(sample_path(legacy[0])).read_bytes()
    bare = _strip_footers(shrink_legacy(raw, keep_trailer=False).data)
    p = tmp_path / "nofooters.mig"
    p.write_bytes(bare)
    rc, js, _ = _cli("check", str(p), "--json")
    rep = json.loads(js)
    assert rc == 1, rep["problems"]
    first = next(x for x in rep["problems"] if x["severity"] == "error")
    assert first["code"] == "footer-missing" and "Missing section footer" in first["qemu"]
    p.write_bytes(_rename_machine(bare, b"pc-i440fx-2.3"))
    rc, js, _ = _cli("check", str(p), "--json")
    rep = json.loads(js)
    assert rc == 2, rep["problems"]
    assert rep["verdict"] == "could not tell"
    assert [x["code"] for x in rep["problems"] if x["severity"] == "error"] == ["cannot-size"]


def test_mapped_ram_overlapping_regions(tmp_path: Path) -> None:
    """Two blocks' page regions at one offset: an error naming both regions."""
    mapped = [n for n in GOOD if "mapped-ram" in _caps(sample_meta(n))]
    if not mapped:
        pytest.skip("no mapped-ram sample")
    from fuzzing import shrink_mapped_ram

    from miginspect.inspector.stream import walk_stream

    base = shrink_mapped_ram(Path(sample_path(mapped[0])).read_bytes()).data
    w = walk_stream(base)
    a, b = w.blocks[0].mapped_ram, w.blocks[1].mapped_ram
    raw = bytearray(base)
    raw[b.header_offset + 20: b.header_offset + 28] = a.pages_offset.to_bytes(8, "big")
    p = tmp_path / "overlap.mig"
    p.write_bytes(bytes(raw))
    rc, js, _ = _cli("check", str(p), "--json")
    rep = json.loads(js)
    assert rc == 1
    ov = [x for x in rep["problems"] if x["code"] == "mapped-ram-overlap"]
    assert ov and f"pages of {w.blocks[0].name}" in ov[0]["cause"] \
        and f"pages of {w.blocks[1].name}" in ov[0]["cause"]
    assert ov[0]["offset"] in (a.header_offset + 20, b.header_offset + 20)


@pytest.mark.qemu
@pytest.mark.parametrize("extra", [("-m", "128"), ("-device", "i6300esb")],
                         ids=["other-memory-size", "extra-device"])
def test_target_snapshot_agrees_with_live_qemu(bios_captures: dict, extra: tuple,
                                               tmp_path: Path) -> None:
    """A file saved by a VM with other -m / an extra device, checked against a snapshot of
    the plain VM as --target, and loaded into the plain VM: QEMU's first complaint is
    among ours, with its wording."""
    q = bios_captures["qemu"]
    f = tmp_path / "other.mig"
    _save(q, f, [], extra)  # QEMU_ARGS' -m 64 comes first; a later -m wins
    target = bios_captures["dir"] / "legacy.mig"
    rc, out, _ = _cli("check", str(f), "--target", str(target), "--json")
    rep = json.loads(out)
    assert rc == 1, rep["problems"]
    loaded, qerr = _load(q, f, [])
    assert not loaded
    errors = [p for p in rep["problems"] if p["severity"] == "error"]
    assert all(p["code"].startswith("target-") for p in errors)
    first = errors[0]
    assert any(x in qerr for x in first["qemu"]), (qerr, first)
    # QEMU's own message text for it, word for word up to the first colon-separated value
    line = next(ln for ln in qerr.splitlines() if any(x in ln for x in first["qemu"]))
    assert line.split(": ", 1)[1].split(".")[0][:40] in first["cause"], (line, first["cause"])


@pytest.mark.qemu
def test_mapped_ram_without_capability_fails_as_noted(bios_captures: dict) -> None:
    """Loading a mapped-ram file without setting the capability fails with the message the
    `needs-mapped-ram` note names."""
    p = bios_captures["dir"] / "mapped.mig"
    rc, out, _ = _cli("check", str(p), "--json")
    note = next(x for x in json.loads(out)["problems"] if x["code"] == "needs-mapped-ram")
    loaded, qerr = _load(bios_captures["qemu"], p, [])
    assert not loaded
    assert any(x in qerr for x in note["qemu"]), qerr


# -- issue 17: damage `check` once called loadable, against QEMU 10 -----------------------
# Each damage is made from a real bundled capture; the expected problem is what QEMU 10
# did with that damage (tests load the file into it again where it is installed).
def _i17_sample() -> str | None:
    for n in GOOD:
        meta = sample_meta(n)
        if meta["qemu"].get("label") == "qemu72" or _caps(meta):
            continue
        w = _w_path(sample_path(n))
        if any(s.cmd == S.MIG_CMD_SWITCHOVER_START for s in w.sections) and w.trailer:
            return n
    return None


def _w_path(p: Path):  # noqa: ANN202
    from miginspect.inspector.stream import walk_stream

    with open(p, "rb") as f:
        return walk_stream(f.read())


def _full(w, idstr: str):  # noqa: ANN001, ANN202
    return next(s for s in w.sections if s.kind == S.KIND_FULL and s.idstr == idstr)


def _i17_idstr(raw: bytes, w) -> tuple[bytes, int]:  # noqa: ANN001
    """The first byte of a device section's idstr changed (same length)."""
    s = _full(w, "serial")
    return _patch(raw, s.offset + 6, b"X"), s.offset


def _i17_instance(raw: bytes, w) -> tuple[bytes, int]:  # noqa: ANN001
    s = _full(w, "serial")
    return _patch(raw, s.offset + 6 + len("serial"), (3).to_bytes(4, "big")), s.offset


def _i17_insert(raw: bytes, w) -> tuple[bytes, int]:  # noqa: ANN001
    """Four bytes inserted inside a device section's state: QEMU reads the state by its
    own description and expects the footer where the original one was."""
    s = _full(w, "timer")
    mid = s.payload_offset + (s.payload_end - s.payload_offset) // 2
    return raw[:mid] + b"\x01\x02\x03\x04" + raw[mid:], s.payload_end


def _i17_command_length(raw: bytes, w) -> tuple[bytes, int]:  # noqa: ANN001
    c = next(s for s in w.sections if s.cmd == S.MIG_CMD_SWITCHOVER_START)
    return _patch(raw, c.offset + 3, (1).to_bytes(2, "big")), c.offset


def _i17_ram_instance(raw: bytes, w) -> tuple[bytes, int]:  # noqa: ANN001
    s = next(s for s in w.sections if s.kind == S.KIND_START and s.idstr == "ram")
    return _patch(raw, s.offset + 6 + len("ram"), (1).to_bytes(4, "big")), s.offset


def _i17_ram_idstr(raw: bytes, w) -> tuple[bytes, int]:  # noqa: ANN001
    """The ram section's idstr 'ram' -> 'raS': the RAM state under a name QEMU has no
    handler for."""
    s = next(s for s in w.sections if s.kind == S.KIND_START and s.idstr == "ram")
    return _patch(raw, s.offset + 8, b"S"), s.offset


def _i17_idstr_length(raw: bytes, w) -> tuple[bytes, int]:  # noqa: ANN001
    """A device idstr's length byte one too large: QEMU compares the idstr as a C string
    (the next byte, the instance id's first, is 0) and reads the instance and version
    one byte late: version 3 becomes 0x309."""
    s = _full(w, "mc146818rtc")
    return _patch(raw, s.offset + 5, bytes([raw[s.offset + 5] + 1])), s.offset


def _i17_early_eof(raw: bytes, w) -> tuple[bytes, int]:  # noqa: ANN001
    """The ram END section's type byte overwritten with QEMU_VM_EOF: the RAM section is
    left open and every device section unread."""
    s = next(s for s in w.sections if s.kind == S.KIND_END and s.idstr == "ram")
    return _patch(raw, s.offset, b"\x00"), s.offset


#: label, damage, QEMU loads it, our code for the problem QEMU's message belongs to
I17_CASES = [
    ("device-idstr", _i17_idstr, False, "unknown-section"),
    ("device-instance-id", _i17_instance, False, "unknown-section"),
    ("bytes-inserted-in-device", _i17_insert, False, "footer-missing"),
    ("switchover-start-length", _i17_command_length, False, "command-length"),
    ("ram-instance-id", _i17_ram_instance, False, "unknown-section"),
    ("ram-idstr", _i17_ram_idstr, False, "unknown-section"),
    ("device-idstr-length", _i17_idstr_length, False, "section-version"),
    ("early-eof", _i17_early_eof, True, "bytes-after-eof"),
]


@pytest.fixture(scope="module")
def i17_base() -> tuple[str, bytes, object]:
    name = _i17_sample()
    if name is None:
        pytest.skip("no bundled QEMU 10 legacy capture with SWITCHOVER_START and a trailer")
    raw = Path(sample_path(name)).read_bytes()
    return name, raw, _w_path(sample_path(name))


def _i17_check(i17_base: tuple, damage, tmp_path: Path) -> tuple[Path, dict, int]:  # noqa: ANN001
    _, raw, w = i17_base
    data, off = damage(raw, w)
    p = tmp_path / "damaged.mig"
    p.write_bytes(data)
    rc, out, _ = _cli("check", str(p), "--json")
    return p, json.loads(out) | {"rc": rc}, off


@pytest.mark.parametrize("label,damage,loads,code", I17_CASES, ids=[c[0] for c in I17_CASES])
def test_issue17_damage_is_judged_as_qemu_does(i17_base: tuple, tmp_path: Path, label: str,
                                               damage, loads: bool, code: str) -> None:  # noqa: ANN001
    _, rep, off = _i17_check(i17_base, damage, tmp_path)
    probs = rep["problems"]
    if loads:
        assert rep["rc"] == 0, probs
        assert any(p["code"] == "early-eof" and p["offset"] == off for p in probs), probs
        hit = next(p for p in probs if p["code"] == code)
        assert hit["offset"] == off + 1 and hit["severity"] == "warning"
    else:
        assert rep["rc"] == 1, probs
        first = next(p for p in probs if p["severity"] == "error")
        assert (first["code"], first["offset"]) == (code, off), first


@pytest.mark.qemu
@pytest.mark.parametrize("label,damage,loads,code", I17_CASES, ids=[c[0] for c in I17_CASES])
def test_issue17_damage_agrees_with_live_qemu(i17_base: tuple, tmp_path: Path, label: str,
                                              damage, loads: bool, code: str) -> None:  # noqa: ANN001
    from qemu_harness import sample_qemu_available, try_load

    name = i17_base[0]
    meta = sample_meta(name)
    if not sample_qemu_available(meta):
        pytest.skip(f"the QEMU that wrote {name} is not installed")
    p, rep, _ = _i17_check(i17_base, damage, tmp_path)
    loaded, qerr = try_load(meta, p, timeout=120)
    assert loaded == loads, qerr
    assert (rep["rc"] == 0) == loaded, (qerr, rep["problems"])
    if loaded:
        hit = next(x for x in rep["problems"] if x["code"] == code)
    else:
        hit = next(x for x in rep["problems"] if x["severity"] == "error")
    assert hit["code"] == code
    assert hit["qemu"] and any(x in qerr for x in hit["qemu"]), (qerr, hit)


@pytest.mark.qemu
def test_instance_any_is_could_not_tell(i17_base: tuple, tmp_path: Path) -> None:
    """Instance id 0xffffffff: QEMU gives the section to a device without a legacy
    instance alias (timer) and refuses it for one with an alias (the RTC's I/O base);
    the file cannot tell which, so `check` says "could not tell"."""
    from qemu_harness import sample_qemu_available, try_load

    name, raw, w = i17_base
    meta = sample_meta(name)
    if not sample_qemu_available(meta):
        pytest.skip(f"the QEMU that wrote {name} is not installed")
    for idstr, loads in (("timer", True), ("mc146818rtc", False)):
        s = _full(w, idstr)
        p = tmp_path / f"{idstr}.mig"
        p.write_bytes(_patch(raw, s.offset + 6 + len(idstr), b"\xff\xff\xff\xff"))
        rc, out, _ = _cli("check", str(p), "--json")
        rep = json.loads(out)
        assert rc == 2, rep["problems"]
        first = next(x for x in rep["problems"] if x["severity"] == "error")
        assert (first["code"], first["offset"]) == ("instance-alias", s.offset)
        loaded, qerr = try_load(meta, p, timeout=120)
        assert loaded == loads, qerr
        if not loaded:
            assert any(x in qerr for x in first["qemu"]), qerr
