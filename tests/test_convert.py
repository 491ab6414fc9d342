"""`miginspect convert`: legacy <-> mapped-ram, checked against QEMU itself.

The strongest checks load the converted files into a fresh QEMU 10 (`-S -incoming defer`,
the sample's own command line) and compare `pmemsave` with the digest QEMU recorded when
the sample was made. Without QEMU the same conversions are checked against the
per-page digests of that pmemsave and against a real mapped-ram file of the same state.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import xxhash
import zstandard
from conftest import SAMPLES, sample_meta, sample_path, unpack
from qemu_harness import load_into_qemu

from miginspect.cli import main
from miginspect.formats import configuration as C
from miginspect.formats import libvirt as LV
from miginspect.formats import mapped_ram as M
from miginspect.formats import ram as R
from miginspect.inspector.capture import open_capture
from miginspect.inspector.convert import convert, mapped_ram_bound
from miginspect.inspector.pagemap import PAGE_DATA
from miginspect.inspector.parsing import parse_at

PAGE = 4096
LIVE = "q10-live-legacy"
MAPPED = "q10-paused-mapped-ram"


# ------------------------------------------------------------------------------------------
# helpers


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _pmem_pages(name: str, folder: Path = SAMPLES) -> np.ndarray:
    """QEMU's pmemsave digests: blake2b-64 of every 4 KiB guest-physical page."""
    raw = zstandard.ZstdDecompressor().decompress(
        (folder / f"{name}.pmem-pages.bin.zst").read_bytes(), max_output_size=1 << 30)
    return np.frombuffer(raw, dtype="S8")


def qemu_restore_digest(meta: dict, path: Path, caps: list[str]) -> tuple[str, dict]:
    """Load `path` into a fresh paused QEMU with the sample's command line; return
    pmemsave's masked sha256 and the final query-migrate. The guest is never resumed."""
    mem, st = load_into_qemu(meta, path, {c: True for c in caps})
    lo, hi = meta["pmemsave"]["masked_range"]
    mem = bytearray(mem)
    mem[lo : hi + 1] = bytes(hi + 1 - lo)
    return hashlib.sha256(mem).hexdigest(), st


def _layout_like_qemu(cap) -> None:  # noqa: ANN001
    """format-spec §4.3 + Corrections, checked on every RAMBlock of a mapped-ram file."""
    w = cap.walk
    for k, b in enumerate(w.blocks):
        info = b.mapped_ram
        assert info.bitmap_offset == info.header_offset + M.MAPPED_RAM_HEADER_SIZE, b.name
        assert info.pages_offset == M.pages_offset_for(info.bitmap_offset, b.pages), b.name
        assert info.pages_offset % M.MAPPED_RAM_FILE_OFFSET_ALIGNMENT == 0
        if k + 1 < len(w.blocks):
            assert w.blocks[k + 1].entry_offset == info.pages_offset + b.used_length, b.name
    ram_id = next(s.section_id for s in w.sections if s.kind == "START" and s.idstr == "ram")
    for s in w.sections:
        if s.section_id == ram_id and s.kind in ("PART", "END"):
            assert s.payload_end - s.payload_offset == 8  # EOS only


def _pc_ram_digests(cap) -> np.ndarray:  # noqa: ANN001
    bm = cap.maps["pc.ram"]
    out = np.empty(bm.pages, dtype="S8")
    for i in range(bm.pages):
        out[i] = hashlib.blake2b(cap.page("pc.ram", i), digest_size=8).digest()
    return out


def _vga_mask(n: int) -> np.ndarray:
    keep = np.ones(n, bool)
    keep[0xA0000 // PAGE : 0xC0000 // PAGE] = False  # pmemsave shows the VGA window there
    return keep


# ------------------------------------------------------------------------------------------
# legacy (live, re-dirtied) -> mapped-ram


@pytest.fixture(scope="module")
def live_to_mapped(tmp_path_factory):  # noqa: ANN001, ANN201
    src = sample_path(LIVE)
    out = tmp_path_factory.mktemp("conv") / "live.mapped-ram"
    before = (_sha256(src), src.stat().st_mtime_ns)
    rep = convert(str(src), str(out), "mapped-ram", verify=True)
    assert (_sha256(src), src.stat().st_mtime_ns) == before, "the input was modified"
    return src, out, rep


def test_live_legacy_is_amplified_and_converts_bounded(live_to_mapped) -> None:  # noqa: ANN001
    src, out, rep = live_to_mapped
    meta = sample_meta(LIVE)
    ram = meta["query-migrate"]["ram"]
    # QEMU's figures: PAGE records + ZERO records exceed the page count (re-sent pages)
    assert ram["normal"] + ram["duplicate"] > ram["total"] // PAGE
    assert rep.ram_total == ram["total"]
    assert rep.input_size.apparent == meta["capture"]["raw_size"]
    assert sum(b.input_sends for b in rep.blocks) >= ram["normal"] + ram["duplicate"]
    assert rep.verify is not None and rep.verify.ok, rep.verify
    # the file is bounded by the mapped-ram bound (the size audit's, when present), and
    # sparse: zero pages are holes
    assert rep.output_size.apparent <= rep.mapped_ram_bound
    with open_capture(str(src)) as cap:
        assert rep.output_size.apparent == mapped_ram_bound(cap)
    if rep.mapped_ram_allocated_bound is not None:
        assert rep.output_size.allocated <= rep.mapped_ram_allocated_bound + (64 << 10)
    assert rep.output_size.apparent == out.stat().st_size
    data = sum(b.data_pages for b in rep.blocks) * PAGE
    assert rep.data_bytes == data
    assert rep.output_size.allocated < data + (8 << 20)
    assert rep.output_size.allocated < rep.output_size.apparent


def test_live_legacy_to_mapped_ram_layout_and_content(live_to_mapped) -> None:  # noqa: ANN001
    src, out, rep = live_to_mapped
    with open_capture(str(out)) as cap:
        assert cap.format == "mapped-ram"
        assert cap.walk.capabilities == ["mapped-ram"]
        assert [(b.name, b.used_length) for b in cap.blocks] == [
            (b["name"], b["used_length"]) for b in sample_meta(LIVE)["info_ramblock"]["parsed"]]
        _layout_like_qemu(cap)
        got = _pc_ram_digests(cap)
        t = cap.walk.trailer
        json_out = bytes(cap.source.buf[t.offset : t.json_offset + t.length])
    assert not rep.vmdescription_configuration_updated
    with open_capture(str(src)) as cap:  # copied byte for byte by default
        t = cap.walk.trailer
        assert json_out == bytes(cap.source.buf[t.offset : t.json_offset + t.length])
    want = _pmem_pages(LIVE)[: len(got)]
    keep = _vga_mask(len(got))
    assert np.array_equal(got[keep], want[keep])


@pytest.mark.qemu
def test_live_legacy_to_mapped_ram_restored_by_qemu(live_to_mapped, need_qemu, tmp_path) \
        -> None:  # noqa: ANN001
    src, out, rep = live_to_mapped
    meta = sample_meta(LIVE)
    digest, st = qemu_restore_digest(meta, out, ["mapped-ram"])
    assert digest == meta["pmemsave"]["sha256_masked"]


def test_update_vmdesc_writes_qemus_configuration_description(tmp_path) -> None:  # noqa: ANN001
    src = sample_path(LIVE)
    out = tmp_path / "live.mapped-ram"
    rep = convert(str(src), str(out), "mapped-ram", update_vmdesc=True)
    assert rep.vmdescription_configuration_updated and rep.vmdescription_growth > 0
    with open_capture(str(out)) as cap, open_capture(str(sample_path(MAPPED))) as real:
        # QEMU's own mapped-ram file of the same machine describes the subsection this way
        assert cap.walk.trailer.data["configuration"] == \
            real.walk.trailer.data["configuration"]
    with open_capture(str(src)) as cap:
        assert out.stat().st_size == mapped_ram_bound(cap, update_vmdesc=True)
    back = tmp_path / "back.legacy"
    convert(str(out), str(back), "legacy", update_vmdesc=True)
    with open_capture(str(back)) as cap, open_capture(str(src)) as orig:
        assert cap.walk.trailer.data == orig.walk.trailer.data


@pytest.mark.qemu
def test_xbzrle_stream_to_mapped_ram(tmp_path, need_qemu) -> None:  # noqa: ANN001
    """Final pages that are XBZRLE deltas are replayed before they are written."""
    name = "q10-live-xbzrle"
    src = sample_path(name)
    meta = sample_meta(name)
    assert meta["query-migrate"]["xbzrle-cache"]["pages"] > 0
    out = tmp_path / "x.mapped-ram"
    calls: list[tuple[int, int]] = []
    rep = convert(str(src), str(out), "mapped-ram", verify=True,
                  progress=lambda done, total: calls.append((done, total)))
    assert rep.verify.ok, rep.verify
    assert calls and calls[-1] == (rep.data_bytes, rep.data_bytes)
    with open_capture(str(src)) as cap:
        assert any(len(m.replay_pages) for m in cap.maps.values())
    with open_capture(str(out)) as cap:
        got = _pc_ram_digests(cap)
    keep = _vga_mask(len(got))
    assert np.array_equal(got[keep], _pmem_pages(name)[: len(got)][keep])
    digest, _ = qemu_restore_digest(meta, out, ["mapped-ram"])
    assert digest == meta["pmemsave"]["sha256_masked"]


# ------------------------------------------------------------------------------------------
# mapped-ram -> legacy


@pytest.fixture(scope="module")
def mapped_to_legacy(tmp_path_factory):  # noqa: ANN001, ANN201
    src = sample_path(MAPPED)
    out = tmp_path_factory.mktemp("conv") / "paused.legacy"
    rep = convert(str(src), str(out), "legacy", verify=True, sync=True)
    return src, out, rep


def test_mapped_ram_to_legacy_records(mapped_to_legacy) -> None:  # noqa: ANN001
    src, out, rep = mapped_to_legacy
    meta = sample_meta(MAPPED)
    assert rep.verify is not None and rep.verify.ok, rep.verify
    ram = meta["query-migrate"]["ram"]
    with open_capture(str(out)) as cap:
        assert cap.format == "legacy" and cap.walk.capabilities == []
        with open_capture(str(src)) as orig:  # copied byte for byte by default
            assert cap.walk.trailer.data == orig.walk.trailer.data
        rt = cap.walk.records
        # every page exactly once; ZERO records = QEMU's clear bits (`duplicate`)
        assert len(rt) == ram["total"] // PAGE
        assert int(np.count_nonzero(rt.kind == R.RAM_SAVE_FLAG_ZERO)) == ram["duplicate"]
        for b in cap.blocks:
            assert int(cap.maps[b.name].sends.max()) == 1
        # the first record names its block, the next ones use CONTINUE (as QEMU does)
        first, _ = parse_at(R.ram_page_record, cap.source.buf, int(rt.rec_off[0]), "record",
                            page_size=PAGE)
        assert first.idstr == cap.blocks[0].name
        second, _ = parse_at(R.ram_page_record, cap.source.buf, int(rt.rec_off[1]), "record",
                             page_size=PAGE)
        assert second.flags & R.RAM_SAVE_FLAG_CONTINUE and second.idstr is None
        got = _pc_ram_digests(cap)
    want = _pmem_pages(MAPPED)[: len(got)]
    keep = _vga_mask(len(got))
    assert np.array_equal(got[keep], want[keep])


@pytest.mark.qemu
def test_mapped_ram_to_legacy_restored_by_qemu(mapped_to_legacy, need_qemu, tmp_path) \
        -> None:  # noqa: ANN001
    src, out, rep = mapped_to_legacy
    meta = sample_meta(MAPPED)
    digest, st = qemu_restore_digest(meta, out, [])
    assert digest == meta["pmemsave"]["sha256_masked"]


# ------------------------------------------------------------------------------------------
# the same VM state saved by QEMU both ways: our mapped-ram layout equals QEMU's


def test_state_a_layout_equals_qemus_mapped_ram(tmp_path) -> None:
    legacy = sample_path("q10-state-A-legacy")
    real = sample_path("q10-state-A-mapped-ram")
    out = tmp_path / "A.mapped-ram"
    convert(str(legacy), str(out), "mapped-ram", update_vmdesc=True)
    with open_capture(str(out)) as a, open_capture(str(real)) as b:
        ca, cb = a.walk.configuration, b.walk.configuration
        assert bytes(a.source.buf[ca.offset : ca.end]) == bytes(b.source.buf[cb.offset : cb.end])
        assert a.walk.trailer.data["configuration"] == b.walk.trailer.data["configuration"]
        for x, y in zip(a.blocks, b.blocks, strict=True):
            assert (x.name, x.used_length) == (y.name, y.used_length)
            mx, my = x.mapped_ram, y.mapped_ram
            assert (mx.header_offset, mx.bitmap_offset, mx.pages_offset) == \
                (my.header_offset, my.bitmap_offset, my.pages_offset), x.name
            assert np.array_equal(a.maps[x.name].state, b.maps[x.name].state), x.name
            assert np.array_equal(a.hashes(x.name), b.hashes(y.name)), x.name
        # our file has the size the bound predicts, and differs from QEMU's own file of the
        # same state only by the non-RAM records and the number of EOS-only ram PARTs (both
        # vary from one save to the next)
        with open_capture(str(legacy)) as c:
            assert mapped_ram_bound(c, update_vmdesc=True) == a.source.file_size
        assert a.source.file_size - _not_ram_start(a) == b.source.file_size - _not_ram_start(b)


def _not_ram_start(cap) -> int:  # noqa: ANN001
    """Bytes of everything but the ram START section (list, headers, bitmaps, regions)."""
    return sum(s.end - s.offset for s in cap.walk.sections
               if not (s.kind == "START" and s.idstr == "ram"))


def test_configuration_capabilities_bytes() -> None:
    want = b"\x05\x1aconfiguration/capabilities\x00\x00\x00\x01\x00\x00\x00\x01\x0amapped-ram"
    got = C.subsection_capabilities.build(dict(marker=5, name="configuration/capabilities",
                                              version_id=1, caps=["mapped-ram"]))
    assert got == want


# ------------------------------------------------------------------------------------------
# libvirt images


def _libvirt_sample(name: str) -> tuple[Path, dict]:
    z = SAMPLES / "libvirt" / f"{name}.img.zst"
    img = SAMPLES / "libvirt" / f"{name}.img"  # compressed formats are stored as written
    j = SAMPLES / "libvirt" / f"{name}.json"
    if not (z.exists() or img.exists()) or not j.exists():
        pytest.skip(f"libvirt sample {name} is not bundled (samples/libvirt/make-images.py)")
    return (unpack(z) if z.exists() else img), json.loads(j.read_text())


@pytest.mark.parametrize("name", ["save-raw-paused", "save-sparse", "save-gzip"])
def test_libvirt_image_round_trip(name: str, tmp_path) -> None:  # noqa: ANN001
    src, meta = _libvirt_sample(name)
    with open_capture(str(src)) as cap:
        lv = cap.source.container.libvirt
        fmt_in = cap.format
    to = "legacy" if fmt_in == "mapped-ram" else "mapped-ram"
    out = tmp_path / "out.img"
    rep = convert(str(src), str(out), to, verify=True)
    assert rep.verify is not None and rep.verify.ok, rep.verify
    with open_capture(str(out)) as cap:
        lo = cap.source.container.libvirt
        assert lo is not None and lo.complete
        assert lo.format_name == ("sparse" if to == "mapped-ram" else "raw")
        assert (lo.data_len, lo.xml, lo.cookie, lo.was_running, lo.cookie_offset) == \
            (lv.data_len, lv.xml, lv.cookie, lv.was_running, lv.cookie_offset)
        assert bytes(cap.source.buf[LV.QEMU_SAVE_HEADER_SIZE : lo.payload_offset]) == \
            _head_body(src, lv.payload_offset)
        if to == "mapped-ram":
            # offsets are absolute in the file: they include the libvirt header
            first = cap.blocks[0].mapped_ram
            assert first.header_offset > lo.payload_offset
            _layout_like_qemu(cap)
        pm = meta.get("pmemsave") or meta.get("pmemsave_before_save") or {}
        if pm.get("pages_file"):  # the guest was paused: its RAM is the image's
            got = _pc_ram_digests(cap)
            want = _pmem_pages(name, SAMPLES / "libvirt")[: len(got)]
            keep = _vga_mask(len(got))
            assert np.array_equal(got[keep], want[keep])


def _head_body(path: Path, end: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(LV.QEMU_SAVE_HEADER_SIZE)
        return f.read(end - LV.QEMU_SAVE_HEADER_SIZE)


# ------------------------------------------------------------------------------------------
# command line: refusals, atomic output, JSON


def test_cli_refuses_existing_output_and_input_as_output(tmp_path, capsys) -> None:  # noqa: ANN001
    src = sample_path(MAPPED)
    out = tmp_path / "x.mig"
    out.write_bytes(b"keep me")
    assert main(["convert", str(src), str(out), "--to", "legacy"]) == 2
    assert "--force" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"
    assert main(["convert", str(src), str(src), "--to", "legacy", "--force"]) == 2
    assert "input" in capsys.readouterr().err
    assert main(["convert", str(src), str(out), "--to", "legacy", "--force", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["to_format"] == "legacy" and rep["output_size"]["apparent"] == out.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.mig"]


def test_cli_bad_input_leaves_nothing(tmp_path, capsys) -> None:  # noqa: ANN001
    src = sample_path(LIVE)
    cut = tmp_path / "cut.mig"
    with open(src, "rb") as f:
        cut.write_bytes(f.read(src.stat().st_size // 2))  # cut inside the RAM records
    out = tmp_path / "out.mig"
    assert main(["convert", str(cut), str(out), "--to", "mapped-ram"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "offset 0x" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.mig"]


def test_cli_terminal_summary(tmp_path, capsys) -> None:  # noqa: ANN001
    src = sample_path(MAPPED)
    out = tmp_path / "y.mig"
    assert main(["convert", str(src), str(out), "--to", "legacy", "--verify"]) == 0
    text = capsys.readouterr().out
    assert "verified" in text and "mapped-ram bound" in text and "allocated" in text


def test_data_pages_match_between_directions(live_to_mapped, tmp_path) -> None:  # noqa: ANN001
    """mapped-ram -> legacy of our own output gives back the page map of the input."""
    src, mapped, _ = live_to_mapped
    back = tmp_path / "back.legacy"
    rep = convert(str(mapped), str(back), "legacy", verify=True)
    assert rep.verify.ok, rep.verify
    with open_capture(str(src)) as a, open_capture(str(back)) as b:
        for blk in a.blocks:
            assert np.array_equal(a.maps[blk.name].state == PAGE_DATA,
                                  b.maps[blk.name].state == PAGE_DATA)
            assert np.array_equal(a.hashes(blk.name), b.hashes(blk.name))


# ------------------------------------------------------------------------------------------
# virsh restore of converted libvirt images (real libvirtd, started privately)


def _make_images_module():  # noqa: ANN202
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_images", SAMPLES / "libvirt" / "make-images.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.libvirt
def test_virsh_restore_of_converted_images(tmp_path) -> None:  # noqa: ANN001
    """`virsh restore --paused` accepts a raw image turned sparse and a sparse image turned
    raw, and the restored guest's RAM is the RAM libvirt's own restore of the original gave."""
    import shutil

    if not (shutil.which("libvirtd") and shutil.which("virsh") and shutil.which("unshare")):
        pytest.skip("libvirtd/virsh not installed (bash samples/install-lab.sh)")
    if os.geteuid() != 0:
        pytest.skip("starting a private libvirtd needs root")
    mk = _make_images_module()
    if mk.Daemons.socket_answers("libvirt-sock") or mk.Daemons.socket_answers("virtlogd-sock"):
        pytest.skip("a libvirtd/virtlogd is already running on this machine")
    cases = [("save-raw-paused", "mapped-ram"), ("save-sparse", "legacy")]
    work = tmp_path / "libvirt"
    prepared = []
    made: list[Path] = []
    for name, to in cases:
        src, meta = _libvirt_sample(name)
        xml = meta["save_image_dumpxml"]["stdout"]
        alt_xml = None
        missing = [p for p in (meta["guest"]["kernel"], meta["guest"]["initrd"])
                   if not os.path.exists(p)]
        if missing:
            # A fresh machine lacks the guest's kernel/initrd. Restoring needs neither (RAM
            # comes from the image), but QEMU opens them: restore with an XML naming the lab
            # kernel and an empty initrd instead (`virsh restore --xml`).
            lab_kernel = "/opt/miginspect-lab/vmlinuz"
            if not os.path.exists(lab_kernel):
                pytest.skip(f"no guest kernel on this machine ({', '.join(missing)}; "
                            "bash samples/install-lab.sh)")
            initrd = tmp_path / "empty-initrd"
            initrd.write_bytes(b"")
            alt_xml = tmp_path / f"{name}.xml"
            alt_xml.write_text(xml.replace(meta["guest"]["kernel"], lab_kernel)
                               .replace(meta["guest"]["initrd"], str(initrd)))
        serial = Path(xml.split("<source path='", 1)[1].split("'", 1)[0])
        if not serial.parent.exists():  # the domain XML's serial log folder
            serial.parent.mkdir(parents=True)
            made.append(serial.parent)
        pm = meta.get("pmemsave_before_save") or meta["restore"][0]["pmemsave_after_restore"]
        out = tmp_path / f"{name}.{to}.img"
        rep = convert(str(src), str(out), to, verify=True)
        assert rep.verify.ok, rep.verify
        prepared.append((out, pm["sha256_masked"], alt_xml))
    d = mk.Daemons(work)
    d.start()
    try:
        for out, want, alt_xml in prepared:
            extra = ["--xml", str(alt_xml)] if alt_xml else []
            r = mk.virsh("restore", str(out), "--paused", *extra)
            assert r["rc"] == 0, f"virsh restore {out.name}: {r['stdout']} {r['stderr']}"
            try:
                assert mk.domstate(mk.DOM) == "paused"
                got = mk.pmemsave(mk.DOM, 128 << 20, tmp_path / "pm.bin", None)
                assert got["sha256_masked"] == want, out.name
            finally:
                mk.virsh("destroy", mk.DOM)
    finally:
        d.stop()
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("mode", ["scatter", "span", "pages", "mmap"])
def test_page_copier_reads_final_pages(mode: str) -> None:
    """Every way PageCopier reads a run gives the final page content our reader gives."""
    from miginspect.inspector.copier import PageCopier

    with open_capture(str(sample_path("q10-live-xbzrle"))) as cap:
        pc = PageCopier(cap, max_bytes=64 * PAGE)
        if mode == "span":  # no scatter reads: one span per run, strided view
            pc._scatter = lambda run, slot=0: None  # type: ignore[method-assign]
        elif mode == "pages":  # strided runs read page by page
            pc.MAX_SPAN_STRIDE = 1
        elif mode == "mmap":
            pc.fd = None
        pages = 0
        kinds = set()
        for b in cap.blocks:
            bm = cap.maps[b.name]
            hashes = cap.hashes(b.name)
            pages = 0
            for run in pc.runs(bm):
                kinds.add("replay" if run.data is not None else
                          "contiguous" if run.stride == PAGE else "strided")
                got = pc.read(run)
                want = hashes[run.first : run.first + run.n]
                assert [xxhash.xxh3_64_intdigest(got[k]) for k in range(run.n)] == \
                    want.tolist(), (b.name, run.first)
                pages += run.n
            assert pages == bm.count(PAGE_DATA)
        assert {"replay", "strided"} <= kinds


@pytest.mark.parametrize("name", ["q10-live-xbzrle", "q10-paused-mapped-ram"])
@pytest.mark.parametrize("path", ["mapped", "threaded", "no-copy-range", "copy-range-fails",
                                  "no-fallocate"])
def test_copy_block_writes_final_pages_every_way(name: str, path: str, tmp_path,  # noqa: ANN001
                                                 monkeypatch) -> None:  # noqa: ANN001
    """The one copy engine's write paths (pwritev from the mapping, read + writer thread,
    plain writes where copy_file_range or fallocate are unavailable) write the same file:
    every data page's final content at its place, every other page a hole of zeros, and
    a window of the block (`first`, `count`) lands at `dest`."""
    from miginspect.inspector import copier as CP

    with open_capture(str(sample_path(name))) as cap:
        pc = CP.PageCopier(cap, max_bytes=64 * PAGE)
        if path == "threaded":
            pc.mapped = False
        elif path == "no-copy-range":
            pc.copy_range = False
        elif path == "copy-range-fails":  # the kernel refuses mid-way: read and write instead
            calls = []

            def refuse(src: int, dst: int, n: int, a: int, b: int) -> int:
                calls.append(n)
                if len(calls) > 1:
                    raise OSError(18, "Invalid cross-device link")
                return os.pwrite(dst, os.pread(src, min(n, PAGE), a), b)

            monkeypatch.setattr(CP.os, "copy_file_range", refuse)
        saved = CP._fallocate.fn, CP._fallocate.tried
        if path == "no-fallocate":
            CP._fallocate.fn, CP._fallocate.tried = None, True
        try:
            bm = cap.maps["pc.ram"]
            hashes = cap.hashes("pc.ram")
            out = tmp_path / "pc.ram"
            fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                n = pc.copy_block(bm, fd, 0)
                os.ftruncate(fd, bm.block.used_length)
                first, count, dest = 1000, 3000, 5 * PAGE
                n2 = pc.copy_block(bm, fd, bm.block.used_length + dest, first, count)
                os.ftruncate(fd, bm.block.used_length + dest + count * PAGE)
            finally:
                os.close(fd)
        finally:
            CP._fallocate.fn, CP._fallocate.tried = saved
        assert n == bm.count(PAGE_DATA) * PAGE
        assert n2 == int(np.count_nonzero(bm.state[first:first + count] == PAGE_DATA)) * PAGE
        data = np.fromfile(out, np.uint8)
        whole = data[: bm.block.used_length].reshape(-1, PAGE)
        got = np.array([xxhash.xxh3_64_intdigest(p) for p in whole], np.uint64)
        assert np.array_equal(got, hashes)
        part = data[bm.block.used_length + dest:].reshape(-1, PAGE)
        got = np.array([xxhash.xxh3_64_intdigest(p) for p in part[:count]], np.uint64)
        assert np.array_equal(got, hashes[first:first + count])


def _damaged_names() -> list[str]:
    return sorted(p.name[: -len(".mig.zst")] for p in (SAMPLES / "damaged").glob("*.mig.zst"))


@pytest.mark.parametrize("name", _damaged_names() or ["(none bundled)"])
def test_damaged_input_converts_iff_qemu_loads_it(name: str, tmp_path, capsys) -> None:  # noqa: ANN001
    """QEMU's own verdict on each damaged sample decides: what QEMU loaded converts and
    verifies; what QEMU refused is refused with one line naming the offset, and nothing is
    left in the output folder."""
    z = SAMPLES / "damaged" / f"{name}.mig.zst"
    if not z.exists():
        pytest.skip("no damaged samples bundled (samples/generate.py --only damaged)")
    loaded = json.loads(z.with_name(f"{name}.json").read_text())["qemu_load"]["loaded"]
    src = unpack(z)
    out = tmp_path / "out" / "x.mig"
    out.parent.mkdir()
    for to in ("mapped-ram", "legacy"):
        rc = main(["convert", str(src), str(out), "--to", to, "--force", "--verify"])
        err = capsys.readouterr().err
        if loaded:
            assert rc == 0, err
        else:
            assert rc == 1 and err.count("\n") == 1 and "offset 0x" in err, err
            assert list(out.parent.iterdir()) == []


def test_zstd_compressed_libvirt_image(tmp_path) -> None:  # noqa: ANN001
    """A whole libvirt image inside zstd (the bundled form): the header and XML come from
    the inflated data and the output is a plain libvirt image."""
    z = SAMPLES / "libvirt" / "save-raw-paused.img.zst"
    if not z.exists():
        pytest.skip("libvirt sample save-raw-paused is not bundled")
    out = tmp_path / "out.img"
    rep = convert(str(z), str(out), "mapped-ram", verify=True)
    assert rep.verify.ok, rep.verify
    assert rep.input_container.compression == "zstd"
    raw = unpack(z)
    with open_capture(str(raw)) as a, open_capture(str(out)) as b:
        la, lb = a.source.container.libvirt, b.source.container.libvirt
        assert lb.format_name == "sparse" and lb.payload_offset == la.payload_offset
        assert _head_body(out, lb.payload_offset) == _head_body(raw, la.payload_offset)
