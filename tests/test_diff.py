"""`diff`: RAM page by page, device state field by field.

Real captures are checked against QEMU's own figures: the per-page pmemsave
digests recorded beside each sample decide which guest pages differ, and the
layout variants of one VM state must diff as identical RAM. Hand-built
streams cover what real captures do not show (missing blocks, length
mismatches, never-sent pages)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import xxhash
import zstandard
from conftest import SAMPLES as SAMPLE_DIR
from conftest import sample_meta, sample_names, sample_path
from synthetic_stream import PS, build_stream

from miginspect.cli import main as cli_main
from miginspect.inspector.capture import open_capture
from miginspect.inspector.devices import decode_devices
from miginspect.inspector.diff import (
    CHANGED,
    ONLY_A,
    ONLY_B,
    block_gpa,
    diff_captures,
    page_hexdiff,
    parse_page_spec,
)

# -- hand-built streams ----------------------------------------------------------------


def _page(tag: int) -> bytes:
    return bytes([tag]) * PS


def _write(tmp_path, name, blocks, pages):
    p = tmp_path / name
    p.write_bytes(build_stream(blocks, pages))
    return str(p)


@pytest.fixture
def pair(tmp_path):
    """A and B with one page of each kind in pc.ram, an extra block only in A and a
    block whose used_length differs."""
    a = _write(tmp_path, "a.mig", {"pc.ram": 8 * PS, "onlya": PS, "grow": 2 * PS}, [
        ("pc.ram", 0, _page(1)),      # equal data
        ("pc.ram", 1, _page(2)),      # changed
        ("pc.ram", 2, _page(3)),      # only in A (B sends ZERO)
        ("pc.ram", 3, None),          # only in B (A zero)
        ("pc.ram", 4, None),          # zero in A, never sent in B: equal content
        ("pc.ram", 5, _page(9)), ("pc.ram", 5, _page(4)),  # re-sent: the last copy wins
        ("onlya", 0, _page(5)),
        ("grow", 0, _page(6)),
    ])
    b = _write(tmp_path, "b.mig", {"pc.ram": 8 * PS, "grow": 3 * PS}, [
        ("pc.ram", 0, _page(1)),
        ("pc.ram", 1, _page(7)),
        ("pc.ram", 2, None),
        ("pc.ram", 3, _page(8)),
        ("pc.ram", 5, _page(4)),
        ("grow", 0, _page(6)), ("grow", 2, _page(6)),
    ])
    return a, b


def test_page_classes_transitions_and_block_mismatches(pair):
    a, b = pair
    with open_capture(a) as ca, open_capture(b) as cb:
        r = diff_captures(ca, cb)
    blocks = {x.name: x for x in r.blocks}
    ram = blocks["pc.ram"]
    assert (ram.pages, ram.equal, ram.changed, ram.only_a, ram.only_b) == (8, 5, 1, 1, 1)
    assert [int(k) for k in ram.kind[:4]] == [0, CHANGED, ONLY_A, ONLY_B]
    assert ram.zero_to_data == 1 and ram.data_to_zero == 1
    assert {(t.a, t.b): t.pages for t in ram.transitions} == {
        ("zero", "never sent"): 1, ("data", "zero"): 1, ("zero", "data"): 1}
    assert ram.to_json()["transitions"] == {"zero->never sent": 1, "data->zero": 1,
                                            "zero->data": 1}
    assert [(g.first_page, g.pages, g.changed, g.only_a, g.only_b) for g in ram.ranges] == [
        (1, 3, 1, 1, 1)]
    assert ram.ranges[0].gpa == PS  # pc.ram below the PCI hole: GPA == block offset
    onlya = blocks["onlya"]
    assert onlya.missing == "b" and onlya.only_a == 1 and not onlya.identical
    grow = blocks["grow"]
    assert (grow.used_length_a, grow.used_length_b) == (2 * PS, 3 * PS)
    assert (grow.pages, grow.equal, grow.only_b) == (3, 2, 1)
    assert not r.ram_identical and not r.identical


def test_identical_streams_exit_0_different_exit_1_errors_exit_2(pair, tmp_path, capsys):
    a, b = pair
    assert cli_main(["diff", a, a]) == 0
    assert cli_main(["diff", a, b]) == 1
    assert cli_main(["diff", a, b, "--jobs", "1"]) == 1
    bad = tmp_path / "bad.mig"
    bad.write_bytes(b"not a migration stream at all")
    assert cli_main(["diff", a, str(bad)]) == 2
    assert cli_main(["diff", a, str(tmp_path / "missing.mig")]) == 2
    assert cli_main(["diff", a, b, "--page", "nosuchblock:0"]) == 2
    # A is read by the second process: its errors come back whole
    assert cli_main(["diff", str(bad), b]) == 2
    assert cli_main(["diff", str(tmp_path / "missing.mig"), b]) == 2
    assert cli_main(["diff", str(bad), b, "--jobs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 6 and all(e.startswith("miginspect: ") for e in err)
    assert "0x0" in err[0] and "bad magic" in err[3] and "0x0" in err[3]
    assert err[3] == err[5]


def test_json_contract_and_page_list(pair, capsys):
    a, b = pair
    assert cli_main(["diff", a, b, "--json", "--pages"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["identical"] is False
    for blk in data["blocks"]:
        assert {"name", "pages", "equal", "changed", "only_a", "only_b"} <= set(blk)
        assert blk["equal"] + blk["changed"] + blk["only_a"] + blk["only_b"] == blk["pages"]
    ram = next(x for x in data["blocks"] if x["name"] == "pc.ram")
    listed = {p["page"]: p for p in ram["changed_pages"]}
    assert sorted(listed) == [1, 2, 3]
    assert listed[1]["hash_a"] != listed[1]["hash_b"]
    assert (listed[2]["state_a"], listed[2]["state_b"]) == ("data", "zero")


def test_xbzrle_delta_pages_compare_by_their_final_content(tmp_path):
    base = _page(1)
    delta = bytes([0x10, 0x03]) + b"xyz"  # skip 16 bytes, 3 new bytes
    final = base[:16] + b"xyz" + base[19:]
    a = _write(tmp_path, "a.mig", {"pc.ram": 2 * PS}, [("pc.ram", 0, final),
                                                       ("pc.ram", 1, base)])
    b = _write(tmp_path, "b.mig", {"pc.ram": 2 * PS}, [
        ("pc.ram", 0, base), ("pc.ram", 1, base), ("pc.ram", 0, ("xbzrle", delta))])
    with open_capture(a) as ca, open_capture(b) as cb:
        r = diff_captures(ca, cb)
        assert r.ram_identical
        assert int(cb.hashes("pc.ram")[0]) == xxhash.xxh3_64_intdigest(final)


def test_page_hexdiff(pair, capsys):
    a, b = pair
    with open_capture(a) as ca, open_capture(b) as cb:
        h = page_hexdiff(ca, cb, "pc.ram", PS + 17)  # any byte of page 1
        assert (h.page, h.offset, h.differing_bytes, len(h.rows)) == (1, PS, PS, PS // 16)
        assert page_hexdiff(ca, cb, "pc.ram", 0).rows == []
    assert cli_main(["diff", a, b, "--page", "pc.ram:0x1000"]) == 1
    assert cli_main(["diff", a, b, "--page", "pc.ram:0"]) == 0
    out = capsys.readouterr().out
    assert "page 1" in out and "identical" in out


def test_page_spec_and_gpa_rules():
    assert parse_page_spec("0000:00:02.0/vga.vram:0x2000") == ("0000:00:02.0/vga.vram", 0x2000)
    assert parse_page_spec("pc.ram:4096") == ("pc.ram", 4096)
    # pc (i440fx) with 4 GiB: 3 GiB below the hole, the rest from 4 GiB up
    assert block_gpa("pc-i440fx-10.0", "pc.ram", 4 << 30, 0xBFFFF000) == 0xBFFFF000
    assert block_gpa("pc-i440fx-10.0", "pc.ram", 4 << 30, 0xC0000000) == 0x100000000
    # q35 with 3 GiB: 2 GiB below
    assert block_gpa("pc-q35-10.0", "pc.ram", 3 << 30, 0x80000000) == 0x100000000
    assert block_gpa("pc-q35-10.0", "pc.ram", 1 << 30, 0x1000) == 0x1000
    assert block_gpa("virt-9.2", "mach-virt.ram", 1 << 30, 0) is None


# -- real captures ---------------------------------------------------------------------

ALL = sample_names()
STATE_A = [n for n in ("q10-state-A-legacy", "q10-state-A-mapped-ram", "q10-state-A-multifd4",
                       "q10-state-A-legacy-resave") if n in ALL]
needs = pytest.mark.skipif


def _pmem_pages(name: str) -> np.ndarray:
    """QEMU's pmemsave of the VM after the save, as 8-byte blake2b per 4 KiB page."""
    meta = sample_meta(name)["pmemsave"]
    raw = zstandard.ZstdDecompressor().decompress(
        (SAMPLE_DIR / meta["pages_file"]).read_bytes())
    return np.frombuffer(raw, np.uint64)


#: 0xA0000-0xFFFFF: VGA window and shadowed BIOS, where pmemsave is not pc.ram.
MASKED = range(0xA0000 // PS, 0x100000 // PS)


def _oracle_changed_pages(a: str, b: str) -> set[int]:
    pa, pb = _pmem_pages(a), _pmem_pages(b)
    assert len(pa) == len(pb)
    return {int(i) for i in np.flatnonzero(pa != pb)} - set(MASKED)


def _diff_pages(r, block="pc.ram") -> set[int]:
    bd = next(x for x in r.blocks if x.name == block)
    return {int(i) for i in np.flatnonzero(bd.kind != 0)} - set(MASKED)


@needs(len(STATE_A) < 3, reason="q10-state-A-{legacy,mapped-ram,multifd4} not bundled")
@pytest.mark.parametrize("other", ["q10-state-A-mapped-ram", "q10-state-A-multifd4",
                                   "q10-state-A-legacy-resave"])
def test_layouts_of_one_paused_vm_diff_as_identical_ram(other, opened):
    base = "q10-state-A-legacy"
    # QEMU's own view: the guest memory after each save is the same
    assert sample_meta(base)["pmemsave"]["sha256"] == sample_meta(other)["pmemsave"]["sha256"]
    r = diff_captures(opened(base), opened(other), devices=False)
    assert r.format_a == "legacy"
    assert r.format_b == ("legacy" if other.endswith("resave") else "mapped-ram")
    assert r.ram_identical, [(b.name, b.changed, b.only_a, b.only_b) for b in r.blocks]
    assert {b.name for b in r.blocks} == {b["name"] for b in
                                          sample_meta(base)["info_ramblock"]["parsed"]}


@needs(not {"q10-sameboot-idle", "q10-sameboot-live"} <= set(ALL),
       reason="q10-sameboot-idle/live not bundled")
def test_idle_and_live_captures_differ_exactly_where_pmemsave_differs(opened, capsys):
    a, b = "q10-sameboot-idle", "q10-sameboot-live"
    r = diff_captures(opened(a), opened(b), devices=False)
    want = _oracle_changed_pages(a, b)
    got = _diff_pages(r)
    assert want, "the pmemsave dumps should differ"
    assert got == want, (f"only in diff: {sorted(got - want)[:10]}, only in pmemsave: "
                         f"{sorted(want - got)[:10]}")
    assert cli_main(["diff", str(sample_path(a)), str(sample_path(b)), "--ram-only",
                     "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    ram = next(x for x in data["blocks"] if x["name"] == "pc.ram")
    assert ram["pages"] - ram["equal"] >= len(want)
    assert sum(g["pages"] for g in ram["ranges"]) == ram["pages"] - ram["equal"]


def _pmem_pairs() -> list[tuple[str, str]]:
    """Pairs of captures of different QEMU versions / layouts / boots with page digests."""
    have = [n for n in ALL if (SAMPLE_DIR / f"{n}.pmem-pages.bin.zst").exists()]
    want = [("q72-paused-legacy", "q10-paused-legacy"),
            ("q72-live-legacy", "q10-live-mapped-ram"),
            ("q10-live-legacy", "q10-live-mapped-ram"),
            ("q10-live-xbzrle", "q10-paused-legacy"),
            ("q10-paused-legacy", "q10-paused-mapped-ram"),
            ("q10-paused-legacy", "q10-paused-mapped-ram-multifd4")]
    return [p for p in want if p[0] in have and p[1] in have]


@needs(not _pmem_pairs(), reason="no capture pairs with pmemsave page digests bundled")
@pytest.mark.parametrize("a,b", _pmem_pairs())
def test_across_versions_and_layouts_differing_pages_match_pmemsave(a, b, opened):
    r = diff_captures(opened(a), opened(b), devices=False)
    assert _diff_pages(r) == _oracle_changed_pages(a, b)


#: Device fields that follow the host or guest clock (they move between two saves
#: of a paused VM because the saves happen at different host times).
CLOCK_FIELD = re.compile(r"(time|clock|tick|offset|last_update|base_rtc|expire|tsc)",
                         re.IGNORECASE)
#: MC146818 CMOS registers 0x00-0x0A: seconds ... year and status register A (UIP).
RTC_CLOCK_REGISTERS = range(0x0B)


@needs(not {"q10-state-A-mapped-ram", "q10-state-A-legacy-resave"} <= set(ALL),
       reason="q10-state-A-mapped-ram / -legacy-resave not bundled")
def test_two_saves_of_one_paused_vm_differ_only_in_clock_fields(opened):
    # both are saves of the same loaded state (reloaded from q10-state-A-legacy)
    a, b = "q10-state-A-mapped-ram", "q10-state-A-legacy-resave"
    r = diff_captures(opened(a), opened(b))
    assert r.ram_identical
    assert r.devices is not None and r.devices.compared == len(
        decode_devices(opened(a)).devices)
    for d in r.devices.devices:
        assert d.status == "changed" and d.version_a == d.version_b and d.error is None
        for f in d.fields:
            if f.path == "cmos_data":
                xa, xb = bytes.fromhex(f.a), bytes.fromhex(f.b)
                assert {i for i in range(len(xa)) if xa[i] != xb[i]} <= set(
                    RTC_CLOCK_REGISTERS), f
            else:
                assert CLOCK_FIELD.search(f.path), f"{d.key}: {f.path} {f.a} -> {f.b}"
    # and `devices` decodes those fields by name
    for d in r.devices.devices:
        dev, = decode_devices(opened(a), only=d.key).devices
        paths = {p for p, _ in dev.leaves()}
        assert {f.path for f in d.fields} <= paths


def test_without_vmdescription_devices_are_not_compared(tmp_path, capsys):
    raw = build_stream({"pc.ram": PS}, [("pc.ram", 0, _page(1))])
    a = tmp_path / "a.mig"
    a.write_bytes(raw)
    b = tmp_path / "b.mig"
    b.write_bytes(raw[: raw.rindex(b"\x06")])  # no trailer
    assert cli_main(["diff", str(a), str(b), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ram_identical"] and data["devices_identical"] is None
    assert any("device state not compared" in n["message"] for n in data["notices"])


def test_device_fields_differ_by_name_and_array_element(tmp_path, capsys):
    desc = {"vmsd_name": "dev", "version": 1, "fields": [
        {"name": "regs", "array_len": 4, "type": "uint32", "size": 4},
        {"name": "clock", "type": "int64", "size": 8}]}
    other = {"vmsd_name": "dev", "version": 1, "fields": [
        {"name": "regs", "array_len": 4, "type": "uint32", "size": 4},
        {"name": "clock_save", "type": "int64", "size": 8}]}

    def stream(name, regs, d):
        p = tmp_path / name
        payload = b"".join(r.to_bytes(4, "big") for r in regs) + (5).to_bytes(8, "big")
        p.write_bytes(build_stream({"pc.ram": PS}, [("pc.ram", 0, None)],
                                   [("dev", d, payload)]))
        return str(p)

    a = stream("a.mig", [1, 2, 3, 4], desc)
    b = stream("b.mig", [1, 9, 3, 4], other)
    assert cli_main(["diff", a, b, "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ram_identical"] and data["devices_identical"] is False
    dev, = data["devices"]["devices"]
    got = {f["path"]: (f["a"], f["b"]) for f in dev["fields"]}
    assert got == {"regs[1]": (2, 9), "clock": (5, None), "clock_save": (None, 5)}
    regs1 = next(f for f in dev["fields"] if f["path"] == "regs[1]")
    assert regs1["offset_b"] - regs1["offset_a"] == 0  # same layout, element 1 at +4 in both
    assert cli_main(["diff", a, b]) == 1
    out = capsys.readouterr().out
    assert "regs[1]" in out and "(absent)" in out
