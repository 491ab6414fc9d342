"""`--partial` of extract, map and devices on cut files and killed saves (issue 15, point 4).

Real killed saves: the bundled `virsh save` libvirt never finished (samples/libvirt/
part-raw-1g), a QEMU save of a paused guest SIGKILLed half-way, and a `virsh save` of a
paused guest killed with libvirtd (tests/killed_save.py; slow); each checked against a
walk of the file and, for the paused guests, against a complete save of the same guest.
Also cuts of a bundled capture inside a page payload, a record header, a RAMBlock name, a
device section, the vmdescription, and of a mapped-ram file inside its pages regions.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLES, sample_path, unpack
from killed_save import KilledSave, libvirt_killed_save, libvirt_missing, qemu_killed_save

from miginspect import cli
from miginspect.formats import libvirt as LV
from miginspect.formats import ram as R
from miginspect.inspector.capture import open_capture
from miginspect.inspector.devices import decode_devices
from miginspect.inspector.extract import MANIFEST, PHYSICAL_MANIFEST
from miginspect.inspector.pagemap import PAGE_DATA, PAGE_NEVER_SENT
from miginspect.inspector.salvage import (
    DESCRIPTION_CUT,
    DESCRIPTION_MISSING,
    MISSING_CUT_RECORD,
    MISSING_NEVER_SENT,
    MISSING_NOT_REACHED,
    MISSING_PAST_END,
    salvage,
)

PAGE = 4096
PART = SAMPLES / "libvirt" / "part-raw-1g.img.zst"
LEGACY = "q10-paused-legacy"
MAPPED = "q10-paused-mapped-ram"


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def part_image() -> Path:
    if not PART.exists():
        pytest.skip("samples/libvirt/part-raw-1g.img.zst is not bundled")
    return unpack(PART)


def held_mask(missing: list[dict], pages: int) -> np.ndarray:
    held = np.ones(pages, bool)
    for m in missing:
        held[m["first_page"]:m["end_page"]] = False
    return held


def pages_of(path: Path) -> np.ndarray:
    return np.fromfile(path, np.uint8).reshape(-1, PAGE)


def check_against_walk(cap_path: str, out: Path, manifest: dict) -> None:
    """The files hold exactly the data pages a walk of the input gives (bytes equal to
    the capture's page reader), zeros elsewhere; held + missing = pages."""
    with open_capture(cap_path, strict=False) as cap:
        s = salvage(cap)
        for f in manifest["files"]:
            ext = s.extent(f["block"])
            assert f["held_pages"] + f["missing_pages"] == f["pages"] == ext.pages
            data = pages_of(out / f["file"])
            bm = ext.block_map
            written = data.any(axis=1)
            assert np.array_equal(written, bm.state == PAGE_DATA), f["file"]
            for i in np.flatnonzero(written)[:: max(1, int(written.sum()) // 64)]:
                assert bytes(data[i]) == cap.reader.page(bm, int(i)), (f["file"], i)
            assert not data[~held_mask(f["missing"], f["pages"])].any()


def check_same_pages(partial: Path, complete: Path, manifest: dict) -> None:
    """Held pages of the killed save equal the complete save's pages of the same guest."""
    for f in manifest["files"]:
        held = held_mask(f["missing"], f["pages"])
        a, b = pages_of(partial / f["file"]), pages_of(complete / f["file"])
        assert np.array_equal(a[held], b[held]), f["file"]


# -- the bundled killed libvirt save -------------------------------------------------------

def test_bundled_killed_libvirt_save(tmp_path, capsys):
    """`virsh save` of a running 1 GiB guest, libvirtd and QEMU killed mid-save: every
    page it holds is written, the rest listed with its reason, exit status 1."""
    p = part_image()
    meta = json.loads((SAMPLES / "libvirt" / "part-raw-1g.json").read_text())
    start = meta["header_read"]["qemu_data_offset"]
    rc, out, err = run(["extract", str(p), "--partial", "-o", str(tmp_path / "x"), "--json"],
                       capsys)
    assert rc == 1, err
    rep = json.loads(out)
    m = json.loads((tmp_path / "x" / MANIFEST).read_text())
    assert m["salvage"] == rep["salvage"] and m["files"] == rep["files"]
    s = m["salvage"]
    assert s["complete"] is False and s["ram_complete"] is False
    st = s["stopped"]
    assert st["code"] == "truncated-ram" and "incomplete libvirt save" in st["message"]
    assert start < st["offset"] == s["read_to"] <= meta["image"]["apparent_size"]
    assert any(n["code"] == "libvirt-partial" for n in m["notes"])
    with open_capture(str(p), strict=False) as cap:
        rt = cap.records
        sent = len(np.unique(rt.block.astype(np.int64) << 32 | rt.page))
        assert s["held_pages"] == sent  # every page the walk read is held
        ram = cap.maps["pc.ram"]
    pc = next(f for f in m["files"] if f["block"] == "pc.ram")
    cut = s["cut_record"]
    assert cut == {"offset": st["offset"], "block": "pc.ram", "page": pc["held_pages"]}
    assert pc["missing"] == [
        {"first_page": cut["page"], "end_page": cut["page"] + 1,
         "reason": MISSING_CUT_RECORD, "gpa": None},
        {"first_page": cut["page"] + 1, "end_page": pc["pages"],
         "reason": MISSING_NEVER_SENT, "gpa": None}]
    assert pc["data_pages"] == ram.count(PAGE_DATA)
    for f in m["files"]:
        if f["block"] != "pc.ram":  # QEMU sends pc.ram first: the stop came before the rest
            assert f["held_pages"] == 0
            assert f["missing"] == [{"first_page": 0, "end_page": f["pages"],
                                     "reason": MISSING_NOT_REACHED, "gpa": None}]
    check_against_walk(str(p), tmp_path / "x", m)
    # the same pages as a guest-physical core, with their addresses
    rc, _, _ = run(["extract", str(p), "--partial", "--physical", "-o", str(tmp_path / "p")],
                   capsys)
    assert rc == 1
    pm = json.loads((tmp_path / "p" / PHYSICAL_MANIFEST).read_text())
    (elf,) = pm["files"]
    assert elf["missing_pages"] == pc["missing_pages"]
    assert [r["gpa"] for r in elf["missing"]] == [cut["page"] * PAGE, (cut["page"] + 1) * PAGE]


def test_bundled_killed_save_map_and_devices(capsys):
    p = str(part_image())
    rc, out, _ = run(["map", p, "--partial", "--width", "80"], capsys)
    assert rc == 1
    lines = out.splitlines()
    assert lines[0].startswith("map: ") and "255,178 missing" in lines[0]
    assert lines[2].startswith("stopped at offset 0xef92a1 (15700641): truncated-ram [ram]")
    assert "? missing" in out and "?" in next(ln for ln in lines if ln.startswith("0x3b8"))
    assert "1 cut inside its record (page 7,096)" in out
    assert all(len(ln) <= 80 for ln in lines if ln.startswith("0x"))
    rc, out, _ = run(["map", p, "--partial", "--json"], capsys)
    d = json.loads(out)
    assert rc == 1 and d["salvage"]["missing_pages"] == 255_178
    assert d["stopped"] == d["salvage"]["stopped"]
    rc, out, _ = run(["devices", p, "--partial", "--json"], capsys)
    d = json.loads(out)
    assert rc == 1 and d["devices"] == []
    s = d["salvage"]
    assert s["description"] == DESCRIPTION_MISSING and s["not_reached"] is None
    assert s["stopped"]["code"] == "truncated-ram" and s["sections_read"] == 0
    # without --partial: one line that says --partial reads what is there
    for cmd in (["map", p], ["devices", p], ["extract", p, "-o", "/nonexistent/x"]):
        rc, out, err = run(cmd, capsys)
        assert rc == 1 and len(err.splitlines()) == 1 and "--partial reads what is there" in err


# -- killed saves of a paused guest, against a complete save of the same guest -----------

def _check_killed(ks: KilledSave, tmp_path: Path, capsys) -> dict:
    rc, _, err = run(["extract", str(ks.killed), "--partial", "-o", str(tmp_path / "k")],
                     capsys)
    assert rc == 1, err
    rc, _, err = run(["extract", str(ks.full), "-o", str(tmp_path / "f")], capsys)
    assert rc == 0, err
    m = json.loads((tmp_path / "k" / MANIFEST).read_text())
    s = m["salvage"]
    assert s["complete"] is False and s["held_pages"] > 0 and s["missing_pages"] > 0
    check_against_walk(str(ks.killed), tmp_path / "k", m)
    check_same_pages(tmp_path / "k", tmp_path / "f", m)
    # a complete file read with --partial: nothing missing, exit status 0
    rc, out, _ = run(["map", str(ks.full), "--partial", "--json"], capsys)
    assert rc == 0 and json.loads(out)["salvage"]["complete"] is True
    return m


@pytest.mark.qemu
def test_killed_qemu_save_of_a_paused_guest(need_qemu, tmp_path, capsys):
    ks = qemu_killed_save(tmp_path)
    m = _check_killed(ks, tmp_path, capsys)
    s = m["salvage"]
    assert s["stopped"]["code"] in ("truncated-ram", "truncated-footer",
                                    "truncated-section-header", "no-eof")
    # the same stream in a libvirt image libvirt never finished: the same pages, and the
    # report says the save is incomplete
    img = tmp_path / "part.img"
    xml = b"<domain type='qemu'><name>killed</name></domain>\0"
    head = LV.virQEMUSaveHeader_le.build(dict(
        magic=LV.QEMU_SAVE_PARTIAL, version=2, data_len=len(xml), was_running=0, format=0,
        cookieOffset=0))
    with open(img, "wb") as f:
        f.write(head + xml)
        with open(ks.killed, "rb") as g:
            shutil.copyfileobj(g, f)
    rc, _, _ = run(["extract", str(img), "--partial", "-o", str(tmp_path / "l")], capsys)
    assert rc == 1
    lm = json.loads((tmp_path / "l" / MANIFEST).read_text())
    assert [f["sha256"] for f in lm["files"]] == [f["sha256"] for f in m["files"]]
    assert lm["salvage"]["held_pages"] == s["held_pages"]
    assert lm["salvage"]["read_to"] == s["read_to"] + len(head) + len(xml)
    assert any(n["code"] == "libvirt-partial" for n in lm["notes"])


@pytest.mark.slow
@pytest.mark.libvirt
def test_killed_libvirt_save_of_a_paused_guest(tmp_path, capsys):
    """`virsh save` of a paused guest restored from its complete save (`virsh restore
    --paused`), killed with libvirtd mid-save: a LibvirtQemudPart image whose held pages
    equal the complete save's."""
    why = libvirt_missing()
    if why:
        pytest.skip(why)
    ks = libvirt_killed_save(tmp_path)
    rc, out, _ = run(["info", str(ks.killed), "--json"], capsys)
    c = json.loads(out)["container"]
    assert rc == 1 and c["magic"] == "LibvirtQemudPart" and c["stream"]["complete"] is False
    m = _check_killed(ks, tmp_path, capsys)
    assert any(n["code"] == "libvirt-partial" for n in m["notes"])
    assert m["salvage"]["held_pages"] == c["stream"]["ram_pages_sent"]


# -- cuts of a bundled capture ----------------------------------------------------------------

def _cut(src: Path, off: int, where: Path) -> Path:
    p = where / f"cut-{off}.mig"
    with open(src, "rb") as f, open(p, "wb") as g:
        g.write(f.read(off))
    return p


def _legacy_cuts(cap) -> dict[str, int]:  # noqa: ANN001
    """Offsets inside each kind of thing a cut can hit."""
    rt, w = cap.records, cap.walk
    page = np.flatnonzero(rt.kind == R.RAM_SAVE_FLAG_PAGE)
    mid = int(page[len(page) // 2])
    named = next(int(i) for i in page if rt.data_off[i] - rt.rec_off[i] > 8)  # not CONTINUE
    cpu = next(s for s in w.sections if s.kind == "FULL" and s.idstr == "cpu")
    t = w.trailer
    return {
        "page payload": int(rt.data_off[mid]) + 100,
        "record header": int(rt.rec_off[mid]) + 3,
        "RAMBlock name": int(rt.rec_off[named]) + 10,
        "device section": (cpu.payload_offset + cpu.payload_end) // 2,
        "vmdescription": t.json_offset + t.length // 2,
    }


@pytest.fixture(scope="module")
def legacy():
    path = sample_path(LEGACY)
    cap = open_capture(str(path))
    yield path, cap
    cap.close()


@pytest.mark.parametrize("what", ["page payload", "record header", "RAMBlock name",
                                  "device section", "vmdescription"])
def test_cuts_of_a_bundled_capture(what, legacy, tmp_path):
    path, whole = legacy
    off = _legacy_cuts(whole)[what]
    p = _cut(path, off, tmp_path)
    with open_capture(str(p), strict=False) as cap:
        s = salvage(cap)
        assert s.read_to <= off
        in_ram = what in ("page payload", "record header", "RAMBlock name")
        assert s.ram_complete is not in_ram
        assert (s.stopped is None) == (what == "vmdescription")
        assert s.complete is (what == "vmdescription")
        if in_ram:
            assert s.stopped.code == "truncated-ram" and s.cut_record.offset == s.read_to
            assert s.missing_pages > 0
        else:
            assert s.missing_pages == 0 and s.held_pages == sum(b.pages for b in whole.blocks)
        known = what == "page payload"
        assert (s.cut_record is not None and s.cut_record.page is not None) is known
        for ext in s.blocks:
            held = ~ext.missing_mask
            assert np.array_equal(cap.hashes(ext.name)[held], whole.hashes(ext.name)[held])
            assert ext.held_pages + ext.missing_pages == ext.pages
            reasons = {m.reason for m in ext.missing}
            assert reasons <= {MISSING_NEVER_SENT, MISSING_CUT_RECORD, MISSING_NOT_REACHED}
        if known:
            c = s.cut_record
            ext = s.extent(c.block)
            assert [m.reason for m in ext.missing if m.first_page == c.page] == \
                [MISSING_CUT_RECORD]


def test_devices_of_cut_files(legacy, tmp_path, capsys):
    path, whole = legacy
    cuts = _legacy_cuts(whole)
    full = {d.key: d for d in decode_devices(whole).devices}
    # cut in the vmdescription: the sections are all there; the entries still whole decode
    p = _cut(path, cuts["vmdescription"], tmp_path)
    with open_capture(str(p), strict=False) as cap:
        r = decode_devices(cap, partial=True)
    s = r.salvage
    assert s.description == DESCRIPTION_CUT and s.stopped is None and not s.complete
    assert 0 < s.described_devices == len(r.devices) < len(full)
    assert s.sections_read == len(full) and s.not_reached == []
    assert len(r.devices) + len(s.undescribed) == len(full)
    for d in r.devices:
        assert d.error is None and d.to_json() == full[d.key].to_json()
    rc, out, _ = run(["devices", str(p), "--partial"], capsys)
    assert rc == 1 and "PARTIAL: the vmdescription is not whole" in out.splitlines()[0]
    # cut in a device section: the sections before it are whole, that one is named
    p = _cut(path, cuts["device section"], tmp_path)
    with open_capture(str(p), strict=False) as cap:
        r = decode_devices(cap, partial=True)
    s = r.salvage
    assert s.stopped.code == "truncated-device" and s.cut_section.idstr == "cpu"
    assert s.description == DESCRIPTION_MISSING and s.not_reached is None
    assert [x.idstr for x in s.undescribed] == ["timer", "cpu_common"] == \
        list(full)[:2]
    # the whole file, read with --partial: nothing missing
    rc, out, _ = run(["devices", str(path), "--partial", "--json", "--device", "rtc"], capsys)
    assert rc == 0 and json.loads(out)["salvage"]["complete"] is True


def test_damage_in_the_middle_lists_the_devices_not_reached(legacy, tmp_path):
    """A stream damaged inside RAM keeps its vmdescription at the end: it names every
    device whose section the stop kept from being read."""
    path, whole = legacy
    raw = bytearray(path.read_bytes())
    rec = int(whole.records.rec_off[len(whole.records) // 2])
    raw[rec + 7] = 0x41  # unknown RAM flags
    p = tmp_path / "damaged.mig"
    p.write_bytes(raw)
    with open_capture(str(p), strict=False) as cap:
        r = decode_devices(cap, partial=True)
        s = salvage(cap)
    assert s.stopped.code == "unknown-ram-flags" and s.stopped.offset == rec
    ds = r.salvage
    assert ds.description == "whole" and r.devices == []
    full = decode_devices(whole).devices
    assert [x.key for x in ds.not_reached] == [d.key for d in full]


@pytest.mark.parametrize("where", ["pc.ram region", "second region", "pc.ram bitmap"])
def test_cuts_of_a_mapped_ram_file(where, tmp_path, capsys):
    path = sample_path(MAPPED)
    with open_capture(str(path)) as whole:
        b0, b1 = whole.blocks[0], whole.blocks[1]
        off = {"pc.ram region": b0.mapped_ram.pages_offset + b0.used_length * 3 // 4 + 100,
               "second region": b1.mapped_ram.pages_offset + 10 * PAGE + 5,
               "pc.ram bitmap": b0.mapped_ram.bitmap_offset + 100}[where]
        p = _cut(path, off, tmp_path)
        with open_capture(str(p), strict=False) as cap:
            s = salvage(cap)
            listed = sum(b.used_length for b in cap.walk.blocks) + (
                cap.walk.cut_block.used_length if cap.walk.cut_block else 0)
            assert s.unlisted_ram_bytes == whole.walk.ram_total - listed > 0
            assert not s.complete and s.stopped.code.startswith("mapped-ram-")
            for ext in s.blocks:
                bm, full = ext.block_map, whole.maps[ext.name]
                held = ~ext.missing_mask
                assert np.array_equal(bm.state[held], full.state[held])
                lost = full.offset[~held] + PAGE > off
                assert lost.all() and (full.state[~held] == PAGE_DATA).all()
                assert {m.reason for m in ext.missing} <= {MISSING_PAST_END}
                assert (bm.state[~held] == PAGE_NEVER_SENT).all()
    if where == "pc.ram bitmap":
        assert s.blocks == []
        return
    rc, _, _ = run(["extract", str(p), "--partial", "-o", str(tmp_path / "x")], capsys)
    assert rc == 1
    rc, _, _ = run(["extract", str(path), "-o", str(tmp_path / "f")], capsys)
    m = json.loads((tmp_path / "x" / MANIFEST).read_text())
    check_same_pages(tmp_path / "x", tmp_path / "f", m)
    check_against_walk(str(p), tmp_path / "x", m)


@pytest.mark.parametrize("pages_offset", [1 << 63, (1 << 64) - 1, 1 << 40])
def test_a_mapped_ram_region_offset_past_any_file(pages_offset, tmp_path, capsys):
    """A damaged pages_offset (any 64-bit value): the block is missing past the end,
    never an internal error (the fuzz run that found it: map --partial, exit 3)."""
    path = sample_path(MAPPED)
    with open_capture(str(path)) as whole:
        hoff = whole.blocks[0].mapped_ram.header_offset
    p = tmp_path / "bad.mig"
    shutil.copyfile(path, p)
    at = hoff + 4 + 8 + 8  # MappedRamHeader: version, page_size, bitmap_offset, pages_offset
    with open(p, "r+b") as f:
        f.seek(at)
        f.write(pages_offset.to_bytes(8, "big"))
    for argv in (["map", str(p), "--partial"], ["devices", str(p), "--partial"],
                 ["extract", str(p), "--partial", "-o", str(tmp_path / "x")]):
        rc, out, err = run(argv, capsys)
        assert rc == 1 and "internal error" not in err, (argv, err)
    with open_capture(str(p), strict=False) as cap:
        s = salvage(cap)
        name = cap.blocks[0].name if cap.blocks else "pc.ram"
        assert not s.complete and s.stopped is not None and s.stopped.offset is not None
        assert all(b.missing_mask.all() for b in s.blocks if b.name == name)


def test_a_cut_compressed_capture(tmp_path, capsys):
    """A .zst capture whose compressed data is cut: read up to the break."""
    src = SAMPLES / f"{LEGACY}.mig.zst"
    if not src.exists():
        pytest.skip(f"{src.name} is not bundled")
    p = tmp_path / "cut.mig.zst"
    p.write_bytes(src.read_bytes()[: os.path.getsize(src) // 2])
    rc, out, err = run(["map", str(p), "--partial", "--json"], capsys)
    assert rc == 1, err
    s = json.loads(out)["salvage"]
    assert s["stopped"]["code"] == "container-truncated"
    assert s["held_pages"] > 0 and s["missing_pages"] > 0
    assert any(n["code"] == "container-truncated" for n in s["notes"])


def test_a_cut_inside_a_resent_page_keeps_its_older_copy(tmp_path):
    """Live migration re-sends dirty pages: a cut inside a later copy holds the earlier."""
    path = sample_path("q10-live-legacy")
    with open_capture(str(path)) as whole:
        rt = whole.records
        key = rt.block.astype(np.int64) << 32 | rt.page
        _, first = np.unique(key, return_index=True)
        again = np.setdiff1d(np.arange(len(rt)), first)
        i = int(again[rt.kind[again] == R.RAM_SAVE_FLAG_PAGE][0])
        p = _cut(path, int(rt.data_off[i]) + 1000, tmp_path)
        blk, page = whole.blocks[int(rt.block[i])].name, int(rt.page[i])
    with open_capture(str(p), strict=False) as cap:
        s = salvage(cap)
        assert (s.cut_record.block, s.cut_record.page) == (blk, page)
        ext = s.extent(blk)
        assert not ext.missing_mask[page]  # the older copy is held
        older = [n for n in s.notes if n.code == "older-copy-held"]
        assert len(older) == 1 and older[0].where == blk and older[0].offset == s.read_to
        assert MISSING_CUT_RECORD not in {m.reason for m in ext.missing}


def test_a_killed_mapped_ram_save_has_no_bitmaps(tmp_path):
    """QEMU writes the mapped-ram bitmaps when a save completes: a save killed before has
    none set, and the report says so instead of calling every page zero silently."""
    path = sample_path(MAPPED)
    with open_capture(str(path)) as whole:
        b0 = whole.blocks[0]
        info = b0.mapped_ram
        cut = info.pages_offset + b0.used_length // 2
    raw = bytearray(path.read_bytes()[:cut])
    raw[info.bitmap_offset:info.bitmap_offset + info.bitmap_bytes] = bytes(info.bitmap_bytes)
    p = tmp_path / "killed-mapped-ram.mig"
    p.write_bytes(raw)
    with open_capture(str(p), strict=False) as cap:
        s = salvage(cap)
    assert s.stopped.code == "mapped-ram-truncated" and s.held_pages == b0.pages
    assert [n.code for n in s.notes] == ["blocks-not-listed", "bitmaps-not-written"]
