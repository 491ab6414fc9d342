"""qcow2 internal snapshots against QEMU's own figures, on every sample scenario of
samples/qcow2/make-images.py: the committed images and the variants the tests make
(real QEMU runs of a few seconds; skipped where QEMU is absent).

For every snapshot with VM state: the bytes our reader produces equal the bytes QEMU
itself reads (`qemu-io read -b` after `qemu-img snapshot -a`, sha256 in the manifest);
they walk cleanly; pc.ram per-page digests equal the pmemsave taken at save time (and
QEMU's `-loadvm` restored that same memory); the snapshot table equals `qemu-img info`.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import zstandard
from conftest import SAMPLES, unpack

from miginspect.inspector import qcow2 as R
from miginspect.inspector.capture import Capture
from miginspect.inspector.stream import walk_stream

QDIR = SAMPLES / "qcow2"
#: Scenarios the tests make with QEMU (not committed: quick to produce).
RUNTIME = ["q10-two-disks", "q72-extl2-resized", "q10-compat-0.10"]
PAGE = 4096
MASK = range(0xA0000 // PAGE, 0xFFFFF // PAGE + 1)  # pmemsave differs from pc.ram there


def committed() -> list[str]:
    out = []
    for p in sorted(QDIR.glob("*.json")):
        man = json.loads(p.read_text())
        if "images" in man and all((QDIR / i["file"]).exists() for i in man["images"]):
            out.append(man["name"])
    return out


COMMITTED = committed()
ALL = COMMITTED + [n for n in RUNTIME if n not in COMMITTED]

_mk = None
_made: dict[str, tuple[dict, Path]] = {}


def make_images_module():  # noqa: ANN201
    global _mk
    if _mk is None:
        spec = importlib.util.spec_from_file_location("miginspect_qcow2_make_images",
                                                      QDIR / "make-images.py")
        _mk = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_mk)
    return _mk


def _need_lab(name: str) -> None:
    if not shutil.which("qemu-system-x86_64") or not shutil.which("qemu-img"):
        pytest.skip("QEMU 10 and qemu-img are not installed (bash samples/install-lab.sh)")
    if not shutil.which("qemu-io"):
        pytest.skip("qemu-io is not installed (Debian package qemu-utils)")
    mk = make_images_module()
    if not mk.gen.KERNEL.exists():
        pytest.skip(f"the sample guest kernel {mk.gen.KERNEL} is not built "
                    "(samples/guest/build-kernel.sh)")
    if name.startswith("q72") and not Path(mk.gen.QEMU72["binary"]).exists():
        pytest.skip("QEMU 7.2 is not unpacked in the lab (bash samples/install-lab.sh)")


def scenario(name: str) -> tuple[dict, Path]:
    """(manifest, folder of its files): committed, or made now with real QEMU."""
    if name not in RUNTIME and (QDIR / f"{name}.json").exists():
        return json.loads((QDIR / f"{name}.json").read_text()), QDIR
    if name not in _made:
        _need_lab(name)
        out = Path(tempfile.mkdtemp(prefix="miginspect-qcow2-"))
        atexit.register(shutil.rmtree, out, True)
        work = out / "work"
        work.mkdir()
        man = make_images_module().make_scenario(name, out, work, compress=False)
        _made[name] = (man, out)
    return _made[name]


def image_file(name: str, index: int = 0) -> Path:
    man, d = scenario(name)
    f = d / man["images"][index]["file"]
    return unpack(f) if f.name.endswith(".zst") else f


def state_image(name: str, snap: str) -> Path:
    man, _ = scenario(name)
    files = [i["file"] for i in man["images"]]
    want = man["snapshots"][snap]["image"]
    return image_file(name, next(i for i, f in enumerate(files) if f.startswith(want)))


def pmem_pages(name: str, snap: str) -> bytes:
    man, d = scenario(name)
    pf = man["snapshots"][snap]["save_time"]["pmemsave"]["pages_file"]
    return zstandard.ZstdDecompressor().decompress((d / pf).read_bytes())


def snapshot_cases() -> list[tuple[str, str]]:
    out = []
    for n in ALL:
        if n in COMMITTED:
            man = json.loads((QDIR / f"{n}.json").read_text())
            out += [(n, s) for s in man["snapshots"]]
        else:  # made at test time: its snapshots are known from the scenario
            snaps = {"q10-two-disks": ["both"], "q10-compat-0.10": ["v2"],
                     "q72-extl2-resized": ["before-resize", "after-resize"]}[n]
            out += [(n, s) for s in snaps]
    return out


CASES = snapshot_cases()


def open_state(name: str, snap: str) -> Capture:
    src = R.open_snapshot(str(state_image(name, snap)), snap)
    try:
        return Capture(src, walk_stream(src.buf, src.base, None, None, src.release))
    except BaseException:
        src.close()
        raise


def page_digests(cap: Capture, block: str = "pc.ram") -> list[bytes]:
    bm = cap.maps[block]
    return [hashlib.blake2b(cap.page(block, i), digest_size=8).digest()
            for i in range(bm.pages)]


# -- the snapshot table ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_snapshot_table_equals_qemu_img_info(name: str) -> None:
    man, _ = scenario(name)
    for i, rec in enumerate(man["images"]):
        q = rec["qemu-img info"]
        with R.open_image(str(image_file(name, i))) as img:
            h = img.header
            assert h.size == q["virtual-size"]
            assert h.cluster_size == q["cluster-size"]
            spec = q["format-specific"]["data"]
            assert {"1.1": 3, "0.10": 2}[spec["compat"]] == h.version
            assert h.extended_l2 == spec.get("extended-l2", False)
            assert h.compression == spec.get("compression-type", "zlib")
            ours = img.snapshots
        theirs = q.get("snapshots", [])
        assert [s.id for s in ours] == [s["id"] for s in theirs]
        for s, t in zip(ours, theirs, strict=True):
            assert s.name == t["name"]
            assert (s.date_sec, s.date_nsec) == (t["date-sec"], t["date-nsec"])
            assert s.vm_clock_nsec == t["vm-clock-sec"] * 10**9 + t["vm-clock-nsec"]
            assert s.vm_state_size == t["vm-state-size"]
            assert s.icount == t.get("icount")


@pytest.mark.parametrize("name", ALL)
def test_snapshot_table_equals_qemu_img_snapshot_list(name: str) -> None:
    """IDs, tags and the VM clock text of `qemu-img snapshot -l`."""
    from miginspect.render.snapshots import vm_clock

    man, _ = scenario(name)
    for i, rec in enumerate(man["images"]):
        rows = [ln.split() for ln in rec["qemu-img snapshot -l"].splitlines()[2:] if ln.strip()]
        with R.open_image(str(image_file(name, i))) as img:
            assert [(s.id, s.name, vm_clock(s.vm_clock_nsec)) for s in img.snapshots] == \
                [(r[0], r[1], r[-2]) for r in rows]


# -- the VM state -----------------------------------------------------------------------------
def _maps_in_place(lay: R.StateLayout) -> bool:
    """The rule for reading a state in place: data runs page-aligned in the image and in
    the state (each but the last a whole number of pages), nothing compressed."""
    r = lay.runs
    d = r[r["kind"] == R.KIND_DATA]
    inner = d[d["state_offset"] + d["length"] < lay.size]
    return not (r["kind"] == R.KIND_COMPRESSED).any() and not (
        (d["host_offset"] % 4096).any() or (d["state_offset"] % 4096).any()
        or (inner["length"] % 4096).any())


@pytest.mark.parametrize("copy", [False, True], ids=["auto", "copied"])
@pytest.mark.parametrize("name,snap", CASES)
def test_state_bytes_equal_what_qemu_reads(name: str, snap: str, copy: bool,
                                           monkeypatch) -> None:  # noqa: ANN001
    """Both ways of producing the buffer (in place from the image's pages, or copied into
    a sparse temporary file) give the bytes QEMU reads."""
    if copy:
        monkeypatch.setattr(R, "_stitched", lambda fd, layout: None)
    man, _ = scenario(name)
    want = man["snapshots"][snap]["qemu_read_state"]
    src = R.open_snapshot(str(state_image(name, snap)), snap)
    with src:
        assert len(src.buf) == want["bytes"]
        assert hashlib.sha256(src.buf).hexdigest() == want["sha256"]
        c = src.container
        assert c.kind == "qcow2" and c.snapshot.name == snap
        in_place = c.layout.contiguous and int(c.layout.runs["host_offset"][0]) % 4096 == 0
        if not copy:
            in_place = in_place or _maps_in_place(c.layout)
        assert c.zero_copy == in_place
        assert (src.fd is None) == c.zero_copy
        # read from the file (the image's runs, or the copy), in pieces that straddle the
        # runs' ends (100,000 is no multiple of a cluster): the same bytes, zeros between
        assert src.has_file and (src.stored is not None) == c.zero_copy
        h = hashlib.sha256()
        piece = memoryview(bytearray(100_000))
        for p in range(0, len(src.buf), len(piece)):
            n = src.read_into(p, piece)
            assert n == min(len(piece), len(src.buf) - p)
            h.update(piece[:n])
        assert h.hexdigest() == want["sha256"]
        if c.zero_copy:  # each data run is where the layout says, in the image
            d = c.layout.runs[c.layout.runs["kind"] == R.KIND_DATA]
            for so, ho, ln in zip(d["state_offset"].tolist(), d["host_offset"].tolist(),
                                  d["length"].tolist(), strict=True):
                ln = min(ln, len(src.buf) - so)
                fd, at = src.locate(so, ln)
                assert at == ho and os.pread(fd, min(ln, 4096), at) == src.buf[so : so + min(
                    ln, 4096)]
                assert src.locate(so, ln + 1) is None or so + ln >= len(src.buf)


@pytest.mark.parametrize("name,snap", CASES)
def test_state_walks_and_pc_ram_equals_pmemsave(name: str, snap: str) -> None:
    man, _ = scenario(name)
    fig = man["snapshots"][snap]
    load = fig["loadvm"]
    assert load["pmemsave_masked_equals_save_time"], "QEMU's loadvm restored other memory"
    with open_state(name, snap) as cap:
        assert cap.walk.error is None, cap.walk.error
        assert not [n for n in cap.walk.notices if n.severity != "info"], cap.walk.notices
        blocks = {b.name: b.used_length for b in cap.blocks}
        assert blocks == {b["name"]: b["used_length"]
                          for b in fig["save_time"]["info_ramblock"]["parsed"]}
        ours = page_digests(cap)
    ref = pmem_pages(name, snap)
    bad = [i for i in range(len(ours)) if i not in MASK and ours[i] != ref[i * 8 : i * 8 + 8]]
    assert not bad, f"{name} {snap}: pc.ram pages differ from pmemsave: {bad[:10]}"


@pytest.mark.parametrize("name", [n for n in ALL if n.endswith("-snapshots")])
def test_two_snapshots_differ_exactly_where_pmemsaves_differ(name: str) -> None:
    a, b = pmem_pages(name, "s1"), pmem_pages(name, "s2")
    want = {i for i in range(len(a) // 8) if i not in MASK and a[i * 8 : i * 8 + 8]
            != b[i * 8 : i * 8 + 8]}
    with open_state(name, "s1") as c1, open_state(name, "s2") as c2:
        d1, d2 = page_digests(c1), page_digests(c2)
    got = {i for i in range(len(d1)) if i not in MASK and d1[i] != d2[i]}
    assert want, "the guest's working set should have changed memory between s1 and s2"
    assert got == want


# -- layouts the scenarios were made for ----------------------------------------------------
def test_small_clusters_state_is_materialised_and_offset_follows_disk_size() -> None:
    name = "q10-small-clusters-zstd"
    if name not in COMMITTED:
        pytest.skip(f"{name} is not bundled")
    with R.open_image(str(image_file(name))) as img:
        h = img.header
        assert h.cluster_size == 512 and h.compression == "zstd"
        cov = h.l1_coverage
        assert cov == 32768 and h.size % cov
        sn = img.snapshots[0]
        assert sn.vm_state_offset == (h.size // cov + 1) * cov
        lay = img.state_layout(sn)
        assert len(lay.runs) > 1 and not lay.contiguous  # L2 tables sit between the data
        assert lay.bytes_of(R.KIND_DATA) == sn.vm_state_size
        assert lay.l2_tables == -(-(sn.vm_state_size) // cov)


@pytest.mark.parametrize("name", ["q10-extl2-resized", "q72-extl2-resized"])
def test_resized_disk_keeps_each_state_at_its_own_offset(name: str) -> None:
    man, _ = scenario(name)
    with R.open_image(str(image_file(name))) as img:
        h = img.header
        assert h.extended_l2 and h.subclusters == 32
        before, after = (img.find_snapshot(n) for n in ("before-resize", "after-resize"))
        assert before.disk_size < after.disk_size == h.size
        cov = h.l1_coverage
        for sn in (before, after):
            assert sn.vm_state_offset == -(-sn.disk_size // cov) * cov
        assert before.vm_state_offset < after.vm_state_offset


def test_two_disks_state_in_first_disk_and_same_name_on_second() -> None:
    from miginspect.inspector.snapshots import list_snapshots

    name = "q10-two-disks"
    a, b = str(image_file(name, 0)), str(image_file(name, 1))
    rep = list_snapshots([a, b])
    ra, rb = (im.snapshots[0] for im in rep.images)
    assert ra.snapshot.name == rb.snapshot.name == "both"
    assert ra.snapshot.vm_state_size > 0 and rb.snapshot.vm_state_size == 0
    assert ra.vm_state_in == a and rb.vm_state_in == a
    assert [(g.name, g.images, g.vm_state_images) for g in rep.groups] == [("both", [a, b], [a])]
    with pytest.raises(R.UsageError, match="another disk image"):
        R.open_snapshot(b, "both")


def test_disk_only_snapshot_is_refused_by_name_and_skipped_by_default() -> None:
    name = "q10-snapshots"
    if name not in COMMITTED:
        pytest.skip(f"{name} is not bundled")
    path = str(image_file(name))
    with pytest.raises(R.UsageError, match="disk-only") as e:
        R.open_snapshot(path, "disk-only")
    assert "'disk-only'" in str(e.value)
    with pytest.raises(R.UsageError, match="2 snapshots with VM state") as e:
        R.open_snapshot(path)
    assert "1 's1'" in str(e.value) and "3 's2'" in str(e.value)
    with R.open_snapshot(path, "3") as src:  # by ID
        assert src.container.snapshot.name == "s2"


# -- the state volume (Proxmox-style) -------------------------------------------------------
def test_state_volume_reads_with_its_zero_padding_reported() -> None:
    """A raw volume: a savevm stream, then zeros up to a round size. The walker skips the
    zeros before its backward trailer search (so the page size and the device sizes come
    from the vmdescription, as for the stream alone) and reports them as padding (info),
    not as bytes after the trailer; check calls it loadable."""
    from miginspect.inspector.capture import open_capture
    from miginspect.inspector.check import check_file

    meta_p = QDIR / "q10-state-volume.json"
    if not meta_p.exists():
        pytest.skip("q10-state-volume is not bundled")
    meta = json.loads(meta_p.read_text())
    path = unpack(QDIR / meta["file"])
    assert os.path.getsize(path) == meta["volume_bytes"]
    with open_capture(str(path)) as cap:
        w = cap.walk
        assert w.error is None
        assert [(n.severity, n.code, n.offset) for n in w.notices] == [
            ("info", "zero-padding", meta["stream_bytes"])]
        assert f"{meta['padding_bytes']} zero bytes" in w.notices[0].message
        assert w.page_size_source == "vmdescription"
        assert w.trailer.offset + 5 + w.trailer.length == meta["stream_bytes"]
        assert "footer-search" not in {s.sized_by for s in w.sections}
        alone = walk_stream(bytes(cap.source.buf[: meta["stream_bytes"]]))
        assert [(s.kind, s.offset, s.end, s.sized_by) for s in w.sections] == [
            (s.kind, s.offset, s.end, s.sized_by) for s in alone.sections]
        assert alone.notices == [] and alone.page_size == w.page_size
        ours = page_digests(cap)
    rep = check_file(str(path))
    assert rep.verdict == "loadable" and rep.exit_code == 0
    assert [p.code for p in rep.problems if p.severity != "info"] == []
    ref = zstandard.ZstdDecompressor().decompress((QDIR / meta["pmem_pages_file"]).read_bytes())
    assert [i for i in range(len(ours)) if i not in MASK and ours[i] != ref[i * 8 : i * 8 + 8]
            ] == []


# -- the reader's struct unpacking against the grammar ---------------------------------------
def _entries_by_grammar(path: Path) -> list:
    from miginspect.formats import qcow2 as Q

    raw = path.read_bytes()
    h = Q.QCowHeader.parse(raw[:112])
    out, pos = [], h.snapshots_offset
    for _ in range(h.nb_snapshots):
        pos = (pos + 7) // 8 * 8
        e = Q.QCowSnapshotEntry.parse(raw[pos:])
        out.append((pos, e))
        pos += 40 + e.extra_data_size + e.id_str_size + e.name_size
    return out


def _check_entries(path: Path) -> None:
    with R.open_image(str(path)) as img:
        ours = img.snapshots
        size = img.header.size
    theirs = _entries_by_grammar(path)
    assert len(ours) == len(theirs)
    for s, (pos, e) in zip(ours, theirs, strict=True):
        x = e.extra_data
        assert s.entry_offset == pos
        assert (s.id, s.name) == (e.id_str.decode(), e.name.decode())
        assert (s.l1_table_offset, s.l1_size, s.date_sec, s.date_nsec, s.vm_clock_nsec,
                s.vm_state_size32, s.extra_data_size) == (
            e.l1_table_offset, e.l1_size, e.date_sec, e.date_nsec, e.vm_clock_nsec,
            e.vm_state_size, e.extra_data_size)
        assert s.vm_state_size == (x.vm_state_size_large if x.vm_state_size_large is not None
                                   else e.vm_state_size)
        assert s.disk_size == (x.disk_size if x.disk_size is not None else size)
        assert s.icount == (None if x.icount in (None, (1 << 64) - 1) else x.icount)


@pytest.mark.parametrize("name", ALL)
def test_snapshot_entries_equal_the_grammar(name: str) -> None:
    man, _ = scenario(name)
    for i in range(len(man["images"])):
        _check_entries(image_file(name, i))


@pytest.mark.parametrize("extra", [0, 8, 12, 16, 20, 24, 36, 1024])
def test_snapshot_entries_with_any_extra_data_size_equal_the_grammar(extra, tmp_path) -> None:  # noqa: ANN001
    """Entries built by the grammar with every extra-data length QEMU accepts (partial
    fields, unknown trailing bytes), two per table, the last unpadded at the end."""
    import struct

    from miginspect.formats import qcow2 as Q

    name = "q10-snapshots"
    if name not in COMMITTED:
        pytest.skip(f"{name} is not bundled")
    base = image_file(name).read_bytes()
    words = (123_456_789_012, 1 << 33, 42, 7)
    fields = dict(zip(("vm_state_size_large", "disk_size", "icount"), words, strict=False))
    x = {k: (v if extra >= 8 * (i + 1) else None) for i, (k, v) in enumerate(fields.items())}
    x["unknown"] = b"\x5a" * max(0, extra - 24) + (b"\x33" * (extra % 8) if extra < 24 else b"")
    entries = [dict(l1_table_offset=0x70000 * (i + 1), l1_size=3 + i, date_sec=1_700_000_000 + i,
                    date_nsec=999_999_999, vm_clock_nsec=(1 << 40) + i, vm_state_size=4096 * i,
                    extra_data_size=extra, extra_data=x, id_str=str(10 + i).encode(),
                    name=("snap/" * (i + 1)).encode()) for i in range(2)]
    table = Q.QCowSnapshotEntryPadded.build(entries[0]) + Q.QCowSnapshotEntry.build(entries[1])
    at = (len(base) + 0xFFFF) // 0x10000 * 0x10000
    img = bytearray(base) + bytes(at - len(base)) + table
    img[60:72] = struct.pack(">IQ", 2, at)
    p = tmp_path / "t.qcow2"
    p.write_bytes(bytes(img))
    _check_entries(p)
