"""libvirt save images written by real libvirt 11.3 + QEMU 10 (samples/libvirt/, made by
samples/libvirt/make-images.py), checked against libvirt's and QEMU's own figures recorded
beside each image: the header fields libvirt wrote, `virsh save-image-dumpxml`, the
job-completed statistics of the save, and the pmemsave digests of the guest restored from
the image (`virsh restore --paused`). Also hostile and cut variants built from them."""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import zstandard
from conftest import SAMPLES, sample_names, sample_path, unpack

from miginspect import cli
from miginspect.errors import FormatError, TruncatedError, UnsupportedError
from miginspect.formats import libvirt as LV
from miginspect.inspector.capture import open_capture
from miginspect.inspector.extract import extract_blocks
from miginspect.inspector.info import info
from miginspect.inspector.libvirt_image import memory_kib, parse_domain
from miginspect.inspector.pagemap import PAGE_DATA
from miginspect.inspector.source import open_source, read_container
from miginspect.ui import jsonable

LV_DIR = Path(os.environ.get("MIGINSPECT_LIBVIRT_SAMPLES", SAMPLES / "libvirt"))
VGA = (0xA0000, 0xC0000)  # pmemsave shows VGA memory here, pc.ram holds something else
PAGE = 4096


def lv_names(prefix: str = "") -> list[str]:
    out = []
    for j in sorted(LV_DIR.glob(f"{prefix}*.json")):
        n = j.name[: -len(".json")]
        if (LV_DIR / f"{n}.img").exists() or (LV_DIR / f"{n}.img.zst").exists():
            out.append(n)
    return out


def lv_meta(name: str) -> dict:
    return json.loads((LV_DIR / f"{name}.json").read_text())


def lv_path(name: str) -> Path:
    """The image as libvirt wrote it (stored .img.zst copies are unpacked once)."""
    p = LV_DIR / f"{name}.img"
    if p.exists():
        return p
    z = LV_DIR / f"{name}.img.zst"
    if not z.exists():
        pytest.skip(f"libvirt sample {name} is not bundled (samples/libvirt/make-images.py)")
    return unpack(z)


def _params(names: list[str], what: str) -> list:
    return names or [pytest.param(None, marks=pytest.mark.skip(
        reason=f"no {what} in {LV_DIR} (make them with samples/libvirt/make-images.py)"))]


COMPLETE = [n for n in lv_names() if lv_meta(n)["expected_header"]["magic"] == "LibvirtQemudSave"]
PARTIAL = [n for n in lv_names() if lv_meta(n)["expected_header"]["magic"] == "LibvirtQemudPart"]
ALL = COMPLETE + PARTIAL


def _restored_pmem(meta: dict) -> dict | None:
    for r in meta.get("restore", []):
        if r.get("accepted") and r.get("pmemsave_after_restore"):
            return r["pmemsave_after_restore"]
    return None


# one open capture per image for the whole module (compressed ones inflate once)
_CAPS: dict[str, object] = {}


@pytest.fixture(scope="module")
def caps():
    yield _CAPS
    for c in _CAPS.values():
        c.close()
    _CAPS.clear()


def need_tools(name: str) -> None:
    if lv_meta(name)["expected_header"]["format_name"] == "lzop" and not shutil.which("lzop"):
        pytest.skip("the lzop program is not installed (bash samples/install-lab.sh)")


def cap_of(caps: dict, name: str):
    need_tools(name)
    if name not in caps:
        caps[name] = open_capture(str(lv_path(name)), strict=False)
    return caps[name]


def pc_ram(cap, tmp_path: Path) -> bytearray:
    """pc.ram as `extract` writes it."""
    extract_blocks(cap, tmp_path, blocks=["pc.ram"], manifest=False)
    files = list(tmp_path.iterdir())
    assert len(files) == 1
    return bytearray(files[0].read_bytes())


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


# ---------------------------------------------------------------------------
# header, XML, domain


@pytest.mark.parametrize("name", _params(ALL, "libvirt images"))
def test_header_fields_match_libvirt(name, caps):
    m = lv_meta(name)
    hr, exp = m["header_read"], m["expected_header"]
    cap = cap_of(caps, name)
    c = jsonable(info(cap).container)  # as info --json shows it
    assert c["kind"] == "libvirt"
    assert c["magic"] == exp["magic"] == hr["magic"]
    assert c["complete"] is (exp["magic"] == "LibvirtQemudSave")
    assert c["version"] == hr["version"] == 2
    assert c["format"] == exp["format_name"]
    assert c["was_running"] is bool(hr["was_running"])
    assert c["payload_offset"] == hr["qemu_data_offset"]
    assert c["data_len"] == hr["data_len"]
    assert c["cookie_offset"] == hr["cookieOffset"]
    assert c["byte_order"] == "little"
    assert c["xml_length"] + 1 == hr["xml_length_incl_nul"]
    h = cap.source.container.libvirt
    if hr.get("cookie") is not None:
        assert h.cookie == hr["cookie"]
    compressed = exp["format_name"] in ("gzip", "bzip2", "xz", "lzop", "zstd")
    assert c["compression"] == (exp["format_name"] if compressed else None)
    # the QEMU stream starts where libvirt put it
    if not compressed:
        first = bytes.fromhex(hr["qemu_data_first_bytes"])
        assert bytes(cap.source.buf[cap.source.base : cap.source.base + 16]) == first
    else:
        assert bytes(cap.source.buf[:4]) == b"QEVM"


@pytest.mark.parametrize("name", _params(ALL, "libvirt images"))
def test_xml_matches_save_image_dumpxml(name, capsys):
    m = lv_meta(name)
    dump = m["save_image_dumpxml"]
    if dump["rc"] != 0:
        pytest.skip(f"virsh save-image-dumpxml refused {name}: {dump['stderr'].strip()}")
    rc, out, _ = run_cli(["xml", str(lv_path(name))], capsys)
    assert rc == 0
    ours, theirs = out.splitlines(), dump["stdout"].splitlines()
    # libvirt re-formats the stored XML and adds implicit defaults; nothing else differs
    ops = difflib.SequenceMatcher(None, ours, theirs, autojunk=False).get_opcodes()
    assert all(op in ("equal", "insert") for op, *_ in ops), [o for o in ops if o[0] != "equal"]
    root = ET.fromstring(dump["stdout"])
    mem = root.find("memory")
    rc, out, _ = run_cli(["xml", "--json", str(lv_path(name))], capsys)
    d = json.loads(out)["domain"]
    assert d["name"] == root.findtext("name")
    assert d["uuid"] == root.findtext("uuid")
    assert mem.get("unit") == "KiB" and d["memory_kib"] == int(mem.text)
    assert d["memory_kib"] == m["guest"]["mem_mib"] * 1024
    assert d["machine"] == root.find("os/type").get("machine")


@pytest.mark.parametrize("name", _params(COMPLETE[:1], "libvirt images"))
def test_info_shows_domain(name, capsys):
    rc, out, _ = run_cli(["info", "--no-sections", str(lv_path(name))], capsys)
    assert rc == 0
    m = lv_meta(name)
    root = ET.fromstring(m["save_image_dumpxml"]["stdout"])
    assert root.findtext("name") in out and root.findtext("uuid") in out
    assert "LibvirtQemudSave" in out and "complete" in out


# ---------------------------------------------------------------------------
# the QEMU stream inside: QEMU's counters, pmemsave of the restored guest


@pytest.mark.parametrize("name", _params(COMPLETE, "complete libvirt images"))
def test_stream_matches_qemu_counters(name, caps):
    m = lv_meta(name)
    ev = (m.get("job_completed_event") or {}).get("stats")
    if not ev:
        pytest.skip("no job-completed statistics recorded")
    cap = cap_of(caps, name)
    assert cap.walk.error is None
    r = info(cap)
    assert jsonable(r.container)["stream"]["complete"] is True
    assert r.ram_total == ev["memory_total"]
    if r.format == "legacy":
        assert sum(b.page_records for b in r.ramblocks) == ev["memory_normal"]
        assert sum(b.zero_records for b in r.ramblocks) == ev["memory_constant"]
        # QEMU's byte count is the stream libvirt wrote (before compression)
        assert jsonable(r.container)["stream"]["bytes"] == ev["data_processed"]
    else:  # sparse: mapped-ram, the guest was paused, so every page was written once
        assert r.format == "mapped-ram" and m["expected_header"]["format_name"] == "sparse"
        assert sum(b.data_pages for b in r.ramblocks) == ev["memory_normal"]
        assert sum(b.zero_pages for b in r.ramblocks) == ev["memory_constant"]
        # absolute offsets: every region lies behind libvirt's header
        for b in r.ramblocks:
            assert b.mapped_ram.pages_offset > r.container.payload_offset


@pytest.mark.parametrize("name", _params(COMPLETE, "complete libvirt images"))
def test_extract_pc_ram_equals_pmemsave(name, caps, tmp_path):
    pm = _restored_pmem(lv_meta(name))
    if pm is None:
        pytest.skip("libvirt did not restore this image (no pmemsave)")
    ram = pc_ram(cap_of(caps, name), tmp_path)
    assert len(ram) == pm["size"]
    ram[VGA[0] : VGA[1]] = bytes(VGA[1] - VGA[0])
    assert hashlib.sha256(ram).hexdigest() == pm["sha256_vga_zeroed"]


@pytest.mark.parametrize("name", _params(COMPLETE, "complete libvirt images"))
def test_page_map_matches_restored_ram(name, caps, tmp_path):
    """The map read from the image (legacy records or mapped-ram bitmap) marks exactly the
    non-zero pages of the RAM QEMU restored from it: pc.ram's content equals the restored
    pmemsave (sha256 above) and its data pages are its non-zero pages."""
    pm = _restored_pmem(lv_meta(name))
    if pm is None:
        pytest.skip("libvirt did not restore this image (no pmemsave)")
    cap = cap_of(caps, name)
    ram = pc_ram(cap, tmp_path)
    n = len(ram) // PAGE
    nonzero = np.frombuffer(ram, np.uint64).reshape(n, PAGE // 8).any(axis=1)
    data = cap.maps["pc.ram"].state == PAGE_DATA
    outside = np.ones(n, bool)
    outside[VGA[0] // PAGE : VGA[1] // PAGE] = False
    assert np.array_equal(data[outside], nonzero[outside])
    ram[VGA[0] : VGA[1]] = bytes(VGA[1] - VGA[0])
    assert hashlib.sha256(ram).hexdigest() == pm["sha256_vga_zeroed"]


TOOLS = {"gzip": ["gzip", "-1", "-c"], "bzip2": ["bzip2", "-1", "-c"],
         "xz": ["xz", "-0", "-c"], "lzop": ["lzop", "-1", "-c"], "zstd": ["zstd", "-1", "-q", "-c"]}


@pytest.mark.parametrize("fmt", sorted(TOOLS))
def test_every_format_of_one_saved_state(fmt, caps, tmp_path):
    """The bundled images are a chain of different states, so the same state is also
    written in every compressed format the way libvirt does it (the QEMU stream of the
    real raw save piped through `<tool> -c`, behind the real header with its format field
    set): each decodes to the raw image's page map and page hashes, which equal the
    per-page pmemsave digests of that state (test_page_map_equals_pmemsave_pages)."""
    import subprocess

    if not shutil.which(TOOLS[fmt][0]):
        pytest.skip(f"the {TOOLS[fmt][0]} program is not installed")
    names = [n for n in COMPLETE if (lv_meta(n).get("pmemsave_before_save") or {}).get(
        "pages_file")] or [_raw_image()]
    name = names[0]
    raw = lv_path(name)
    start = lv_meta(name)["header_read"]["qemu_data_offset"]
    head, h = _header_of(name)
    h["format"] = {v: k for k, v in LV.QEMU_SAVE_FORMAT_NAMES.items()}[fmt]
    p = tmp_path / f"state.{fmt}.img"
    with open(raw, "rb", buffering=0) as fi, open(p, "wb", buffering=0) as fo:
        fo.write(LV.virQEMUSaveHeader_le.build(h))
        fi.seek(92)
        fo.write(fi.read(start - 92))
        fi.seek(start)  # unbuffered: the tool reads from exactly here
        subprocess.run(TOOLS[fmt], stdin=fi, stdout=fo, check=True)
    ref = cap_of(caps, name)
    with open_capture(str(p)) as cap:
        c = jsonable(info(cap).container)  # as info --json shows it
        assert c["format"] == fmt and c["compression"] == fmt and c["stream"]["complete"]
        assert c["stream"]["bytes"] == lv_meta(name)["job_completed_event"]["stats"][
            "data_processed"]
        for b in ref.blocks:
            assert np.array_equal(cap.maps[b.name].state, ref.maps[b.name].state), b.name
            assert np.array_equal(cap.hashes(b.name), ref.hashes(b.name)), b.name


def _states() -> dict[str, list[str]]:
    """Images grouped by the RAM QEMU loaded from them (pmemsave sha256 after restore)."""
    groups: dict[str, list[str]] = {}
    for n in COMPLETE:
        pm = _restored_pmem(lv_meta(n))
        if pm:
            groups.setdefault(pm["sha256"], []).append(n)
    return {k: v for k, v in groups.items() if len(v) > 1}


@pytest.mark.parametrize(
    "names", _params([pytest.param(v, id="+".join(v)) for v in _states().values()],
                     "two images of one saved state"))
def test_formats_of_one_state_give_one_page_map(names, caps):
    """Images whose restore loaded the same RAM (other formats of the same state, legacy
    and mapped-ram alike) decode to identical pc.ram page maps and page hashes."""
    first = cap_of(caps, names[0])
    ref_state = first.maps["pc.ram"].state
    ref_hash = first.hashes("pc.ram")
    for n in names[1:]:
        cap = cap_of(caps, n)
        assert np.array_equal(cap.maps["pc.ram"].state, ref_state), n
        assert np.array_equal(cap.hashes("pc.ram"), ref_hash), n


@pytest.mark.parametrize("name", _params(
    [n for n in COMPLETE if (lv_meta(n).get("pmemsave_before_save") or {}).get("pages_file")],
    "image with per-page pmemsave digests"))
def test_page_map_equals_pmemsave_pages(name, caps, tmp_path):
    """Per page: the image's map and content equal the paused guest's pmemsave taken right
    before the save (the state a bare QEMU capture would hold)."""
    pm = lv_meta(name)["pmemsave_before_save"]
    with open(LV_DIR / pm["pages_file"], "rb") as f:
        digests = zstandard.ZstdDecompressor().decompressobj().decompress(f.read())
    want = np.frombuffer(digests, dtype="S8")
    cap = cap_of(caps, name)
    ram = pc_ram(cap, tmp_path)
    n = len(ram) // PAGE
    assert n == len(want) == pm["pages"]
    mv = memoryview(ram)
    ours = np.array([hashlib.blake2b(mv[i * PAGE : (i + 1) * PAGE], digest_size=8).digest()
                     for i in range(n)], dtype="S8")
    outside = np.ones(n, bool)
    outside[VGA[0] // PAGE : VGA[1] // PAGE] = False
    assert np.array_equal(ours[outside], want[outside])
    zero = np.frombuffer(hashlib.blake2b(bytes(PAGE), digest_size=8).digest(), dtype="S8")[0]
    data = cap.maps["pc.ram"].state == PAGE_DATA
    assert np.array_equal(data[outside], (want != zero)[outside])


# ---------------------------------------------------------------------------
# incomplete saves


@pytest.mark.parametrize("name", _params(PARTIAL, "incomplete (Part) libvirt images"))
def test_real_partial_image_is_reported_as_partial(name, capsys):
    m = lv_meta(name)
    path = str(lv_path(name))
    rc, out, err = run_cli(["info", "--json", path], capsys)
    d = json.loads(out)
    c = d["container"]
    assert c["magic"] == "LibvirtQemudPart" and c["complete"] is False
    s = c["stream"]
    present = m["image"]["apparent_size"] - m["header_read"]["qemu_data_offset"]
    assert s["bytes"] == present
    # libvirt refused to restore it; we say whether its stream is whole
    assert not any(r["accepted"] for r in m["restore"])
    assert rc == (0 if s["complete"] else 1)
    if not s["complete"]:
        assert s["stopped_at"] is not None and s["stopped_at"] <= m["image"]["apparent_size"]
        assert "incomplete libvirt save" in s["stopped"]["message"]
        assert s["stopped"]["offset"] == s["stopped_at"]
        assert 0 < s["ram_pages_sent"] < s["ram_pages"]
    rc, out, _ = run_cli(["info", "--no-sections", path], capsys)
    assert "INCOMPLETE" in out and "LibvirtQemudPart" in out
    # every other command names it incomplete in its one-line error
    rc, out, err = run_cli(["map", path], capsys)
    if not s["complete"]:
        assert rc == 1 and "incomplete libvirt save" in err and len(err.splitlines()) == 1


def _copy(src: Path, dst: Path, length: int | None = None) -> Path:
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        if length is None:
            shutil.copyfileobj(fi, fo)
        else:
            fo.write(fi.read(length))
    return dst


def _part(path: Path) -> None:
    with open(path, "r+b") as f:
        f.write(LV.QEMU_SAVE_PARTIAL)


def _raw_image() -> str:
    raws = [n for n in COMPLETE if lv_meta(n)["expected_header"]["format_name"] == "raw"]
    if not raws:
        pytest.skip("no raw libvirt image bundled")
    return raws[0]


def test_partial_with_complete_stream(tmp_path, capsys):
    """A Part magic over a whole stream (libvirt died after QEMU finished): partial, yet
    the stream is complete and reads in full."""
    name = _raw_image()
    p = _copy(lv_path(name), tmp_path / "part.img")
    _part(p)
    rc, out, _ = run_cli(["info", "--json", str(p)], capsys)
    assert rc == 0
    c = json.loads(out)["container"]
    assert c["complete"] is False and c["magic"] == "LibvirtQemudPart"
    assert c["stream"]["complete"] is True
    ev = lv_meta(name)["job_completed_event"]["stats"]
    assert c["stream"]["bytes"] == ev["data_processed"]


def test_partial_with_cut_stream(tmp_path, capsys):
    name = _raw_image()
    m = lv_meta(name)
    cut = m["header_read"]["qemu_data_offset"] + m["job_completed_event"]["stats"][
        "data_processed"] // 3
    p = _copy(lv_path(name), tmp_path / "partcut.img", cut)
    _part(p)
    rc, out, _ = run_cli(["info", "--json", str(p)], capsys)
    assert rc == 1
    d = json.loads(out)
    s = d["container"]["stream"]
    assert d["container"]["complete"] is False and s["complete"] is False
    assert s["bytes"] == cut - m["header_read"]["qemu_data_offset"]
    assert cut - 2 * PAGE <= s["stopped_at"] <= cut
    assert 0 < s["ram_pages_sent"] < s["ram_pages"]
    # the same file with the Save magic is damage: one line naming the offset
    with open(p, "r+b") as f:
        f.write(LV.QEMU_SAVE_MAGIC)
    rc, out, err = run_cli(["info", str(p)], capsys)
    assert rc == 1 and out == "" and len(err.splitlines()) == 1 and "offset 0x" in err


@pytest.mark.parametrize("fmt", ["gzip", "zstd"])
def test_partial_compressed_image(fmt, tmp_path, capsys):
    """A Part image whose compressor output stops mid-stream (libvirt died while QEMU
    wrote through gzip/zstd): reported in full, compressed data cut, stream cut."""
    name = _one(fmt)
    if name is None:
        pytest.skip(f"no {fmt} libvirt image bundled")
    src = lv_path(name)
    start = lv_meta(name)["header_read"]["qemu_data_offset"]
    cut = start + (src.stat().st_size - start) // 2
    p = _copy(src, tmp_path / "part.img", cut)
    _part(p)
    rc, out, _ = run_cli(["info", "--json", str(p)], capsys)
    assert rc == 1
    c = json.loads(out)["container"]
    assert c["complete"] is False and c["format"] == fmt
    s = c["stream"]
    z = s["decompressed"]
    assert s["complete"] is False and z["complete"] is False and z["truncated"] is True
    assert z["error_offset"] == cut and s["bytes"] == z["inflated"] > 0
    why = s["stopped"]
    assert why["code"] == "container-truncated" and why["kind"] == "truncated"
    assert "incomplete libvirt save" in why["message"] and f"{fmt} data" in why["message"]


def test_version_1_header_is_raw(tmp_path):
    """Version 1 images predate compression: the format field is not read (libvirt's rule)."""
    name = _raw_image()
    raw, h = _header_of(name)
    h["version"], h["format"] = 1, 5
    p = _copy(lv_path(name), tmp_path / "v1.img")
    with open(p, "r+b") as f:
        f.write(LV.virQEMUSaveHeader_le.build(h))
    with open_capture(str(p)) as cap:
        c = jsonable(info(cap).container)  # as info --json shows it
        assert c["version"] == 1 and c["format"] == "raw" and c["stream"]["complete"]


# ---------------------------------------------------------------------------
# compressed data: cut, damaged, hostile


COMPRESSED = [n for n in COMPLETE
              if lv_meta(n)["expected_header"]["format_name"] in ("gzip", "xz", "lzop", "zstd")]


@pytest.mark.parametrize("name", _params(COMPRESSED, "compressed libvirt images"))
def test_cut_compressed_image(name, tmp_path, capsys):
    need_tools(name)
    src = lv_path(name)
    m = lv_meta(name)
    start = m["header_read"]["qemu_data_offset"]
    cut = start + (src.stat().st_size - start) // 4
    p = _copy(src, tmp_path / "cut.img", cut)
    rc, out, err = run_cli(["info", str(p)], capsys)
    assert rc == 1 and out == ""
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    fmt = m["expected_header"]["format_name"]
    assert f"{fmt} data" in err and "offset 0x" in err
    with pytest.raises(TruncatedError) as e:
        open_capture(str(p))
    assert start < e.value.offset <= cut  # a file offset, near the cut
    with open_source(str(p)) as s:
        inf = s.container.inflation
        assert not inf.complete and inf.inflated == len(s.buf) > 0
        if fmt != "lzop":
            assert inf.truncated and inf.error_offset == cut


@pytest.mark.parametrize("name", _params(COMPRESSED[:1], "compressed libvirt images"))
def test_damaged_compressed_image(name, tmp_path, capsys):
    src = lv_path(name)
    data = bytearray(src.read_bytes())
    start = lv_meta(name)["header_read"]["qemu_data_offset"]
    mid = start + (len(data) - start) // 2
    data[mid : mid + 64] = bytes(64)
    p = tmp_path / "damaged.img"
    p.write_bytes(data)
    rc, out, err = run_cli(["info", str(p)], capsys)
    assert rc == 1 and len(err.splitlines()) <= 1 and "Traceback" not in err + out


def test_lzop_program_missing(monkeypatch):
    names = [n for n in COMPLETE if lv_meta(n)["expected_header"]["format_name"] == "lzop"]
    if not names:
        pytest.skip("no lzop libvirt image bundled")
    # inflate imports shutil only when it decodes lzop data: patch the module itself
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    with pytest.raises(UnsupportedError) as e:
        open_source(str(lv_path(names[0])))
    assert "lzop" in e.value.message and "install" in e.value.message


def test_inflate_limit(monkeypatch):
    if not COMPRESSED:
        pytest.skip("no compressed libvirt image bundled")
    monkeypatch.setenv("MIGINSPECT_MAX_INFLATE", str(1 << 20))
    with pytest.raises(FormatError, match="inflates past"):
        open_source(str(lv_path(COMPRESSED[0])))


def test_zero_bomb_inflates_into_holes(tmp_path):
    """256 MiB of zeros in ~10 KiB of zstd: decoded in bounded steps into a sparse file."""
    p = tmp_path / "bomb.zst"
    cobj = zstandard.ZstdCompressor(level=1).compressobj()
    zeros = bytes(16 << 20)
    with open(p, "wb") as f:
        for _ in range(16):
            f.write(cobj.compress(zeros))
        f.write(cobj.flush())
    assert p.stat().st_size < 1 << 20
    with open_source(str(p)) as s:
        assert len(s.buf) == 256 << 20 and s.container.inflation.complete
        assert os.fstat(s.fd).st_blocks * 512 < 4 << 20


def test_concatenated_members(tmp_path):
    """gzip members / zstd frames one after the other decode as one stream, as the tools do."""
    import gzip

    for kind, comp in (("gzip", gzip.compress), ("zstd", zstandard.compress)):
        p = tmp_path / f"two.{kind}"
        p.write_bytes(comp(b"A" * 100000) + comp(b"B" * 5000) + b"junk")
        with open_source(str(p)) as s:
            inf = s.container.inflation
            assert bytes(s.buf) == b"A" * 100000 + b"B" * 5000
            assert inf.complete and inf.members == 2 and inf.trailing == 4
    # pzstd output: a skippable frame before each frame, one right at the start
    import struct

    skip = struct.pack("<II", 0x184D2A50, 4) + b"\0\0\0\0"
    p = tmp_path / "p.zst"
    p.write_bytes(skip + zstandard.compress(b"C" * 7000) + skip + zstandard.compress(b"D"))
    with open_source(str(p)) as s:
        assert s.container.compression == "zstd" and bytes(s.buf) == b"C" * 7000 + b"D"
        assert s.container.inflation.complete


# ---------------------------------------------------------------------------
# hostile headers and XML built around a real image


def _header_of(name: str) -> tuple[bytes, dict]:
    p = lv_path(name)
    with open(p, "rb") as f:
        raw = f.read(LV.QEMU_SAVE_HEADER_SIZE)
    return raw, dict(LV.virQEMUSaveHeader_le.parse(raw))


def test_big_endian_header(tmp_path):
    name = _raw_image()
    raw, h = _header_of(name)
    p = _copy(lv_path(name), tmp_path / "be.img")
    with open(p, "r+b") as f:
        f.write(LV.virQEMUSaveHeader_be.build(h))
    c = read_container(str(p))
    hr = lv_meta(name)["header_read"]
    assert c.libvirt.byte_order == "big"
    assert (c.libvirt.data_len, c.libvirt.cookie_offset, c.libvirt.payload_offset) == (
        hr["data_len"], hr["cookieOffset"], hr["qemu_data_offset"])


@pytest.mark.parametrize("field,value,exc,offset", [
    ("data_len", 0x7FFFFFF0, TruncatedError, 20),
    ("format", 9, UnsupportedError, 28),
    ("version", 7, FormatError, 16),
])
def test_hostile_header_fields(tmp_path, field, value, exc, offset, capsys):
    name = _raw_image()
    raw, h = _header_of(name)
    h[field] = value
    p = tmp_path / "bad.img"
    p.write_bytes(LV.virQEMUSaveHeader_le.build(h) + (lv_path(name).read_bytes()[92:200000]))
    with pytest.raises(exc) as e:
        open_source(str(p))
    assert e.value.offset == offset
    rc, out, err = run_cli(["xml", str(p)], capsys)
    assert rc == 1 and len(err.splitlines()) == 1


def test_xml_entities_are_not_expanded():
    d = parse_domain('<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x "boom">]>'
                     "<domain><name>&x;</name></domain>")
    assert d.name is None and "entities" in d.error
    d = parse_domain("<domain><name>vm</name><uuid>u</uuid>"
                     "<memory unit='GiB'>2</memory></domain>")
    assert (d.name, d.uuid, d.memory_kib) == ("vm", "u", 2 << 20)
    assert parse_domain("<dom").error
    assert memory_kib("1000", "KB") == 977 and memory_kib("5", "bytes") == 1
    assert memory_kib("512", None) == 512 and memory_kib("x", "KiB") is None


# ---------------------------------------------------------------------------
# every command takes a libvirt image directly


def _one(fmt: str) -> str | None:
    for n in COMPLETE:
        if lv_meta(n)["expected_header"]["format_name"] == fmt:
            return n
    return None


@pytest.mark.parametrize("fmt", ["gzip", "sparse"])
def test_commands_accept_libvirt_images(fmt, tmp_path, capsys):
    name = _one(fmt)
    if name is None:
        pytest.skip(f"no {fmt} libvirt image bundled")
    path = str(lv_path(name))
    other = _one("zstd" if fmt == "gzip" else "raw")
    ran = []
    for cmd in cli.COMMANDS:
        if cmd in ("xml", "convert"):  # xml tested above; convert has its own tests
            continue
        try:
            __import__(f"miginspect.commands.{cmd}")
        except ModuleNotFoundError:
            continue
        argv = {"extract": ["extract", path, "-o", str(tmp_path / "x")],
                "diff": ["diff", path, str(lv_path(other)) if other else path]}.get(
                    cmd, [cmd, path])
        rc, out, err = run_cli(argv, capsys)
        assert rc in ((0, 1) if cmd == "diff" else (0,)), (cmd, err)
        assert out and "internal error" not in err and "Traceback" not in err, cmd
        ran.append(cmd)
    assert "info" in ran


@pytest.mark.parametrize("fmt", ["raw", "sparse"])
def test_whole_image_compressed_by_hand(fmt, caps):
    """A libvirt image stored compressed as a whole (save.img.zst, as samples/ keeps raw and
    sparse ones) reads transparently; for sparse, mapped-ram offsets then count in the
    decompressed data."""
    name = _one(fmt)
    z = LV_DIR / f"{name}.img.zst"
    if name is None or not z.exists():
        pytest.skip(f"no {fmt} image stored as .img.zst")
    with open_capture(str(z)) as cap:
        c = jsonable(info(cap).container)  # as info --json shows it
        assert c["kind"] == "libvirt" and c["format"] == fmt and c["compression"] == "zstd"
        assert c["stream"]["complete"] is True
        ref = cap_of(caps, name)
        assert cap.format == ref.format
        for b in ref.blocks:
            assert np.array_equal(cap.maps[b.name].state, ref.maps[b.name].state)
        assert np.array_equal(cap.hashes("pc.ram"), ref.hashes("pc.ram"))


@pytest.mark.parametrize("name", sample_names("*mapped*")[:1] or [pytest.param(
    None, marks=pytest.mark.skip(reason="no mapped-ram capture bundled in samples/"))])
def test_mapped_ram_inside_compressed_file(name):
    """A bare mapped-ram capture read straight from its .zst: offsets count from the
    start of the decompressed data, and the maps equal those of the plain file."""
    with open_capture(str(SAMPLES / f"{name}.mig.zst")) as zc, \
            open_capture(str(sample_path(name))) as pc:
        assert zc.format == pc.format == "mapped-ram"
        for b in pc.blocks:
            assert np.array_equal(zc.maps[b.name].state, pc.maps[b.name].state)
        assert np.array_equal(zc.hashes("pc.ram"), pc.hashes("pc.ram"))
