"""`size`: byte accounting, rounds, bounds and XBZRLE checked against QEMU's own figures.

Real-sample tests compare with what QEMU recorded beside each capture (query-migrate,
pmemsave digests, the raw file's size); hand-built inputs cover the edge cases.
"""

from __future__ import annotations

import hashlib
import io
import json
from contextlib import redirect_stdout

import numpy as np
import pytest
from conftest import sample_meta, sample_names, sample_path

from miginspect.cli import main
from miginspect.errors import FormatError
from miginspect.formats import ram as R
from miginspect.inspector.capture import open_capture
from miginspect.inspector.ramscan import RecordTable
from miginspect.inspector.rounds import (
    ROUND_BULK,
    ROUND_ITERATION,
    ROUND_STOP_AND_COPY,
    find_rounds,
)
from miginspect.inspector.size import size_report
from miginspect.inspector.xbzrle import xbzrle_apply
from miginspect.render.size import verdict_answer, verdict_rows

MASK_LO, MASK_HI = 0xA0000, 0x100000  # pmemsave's sha256_masked zeroes [MASK_LO, MASK_HI)
JSON_KEYS = ("file_size", "allocated_size", "ram_total", "data_bytes", "ram_bytes_written",
             "amplification", "send_histogram", "rounds", "mapped_ram_bound", "legacy_minimum")


# ----------------------------------------------------------------------------------------
# sample selection (decided from QEMU's manifest, not from our parser)


def _caps(meta: dict) -> dict[str, bool]:
    return {c["capability"]: c["state"]
            for c in meta["migration"]["query-migrate-capabilities"]}


def _major(meta: dict) -> int:
    return meta["qemu"]["query-version"]["qemu"]["major"]


def _select(pred, why: str) -> list:
    names = [n for n in sample_names() if pred(sample_meta(n))]
    return names or [pytest.param(None, marks=pytest.mark.skip(
        reason=f"no bundled sample {why} (regenerate with samples/generate.py)"))]


LEGACY = _select(lambda m: not _caps(m).get("mapped-ram"), "with a legacy stream")
LIVE_LEGACY = _select(lambda m: not _caps(m).get("mapped-ram") and m["migration"]["live"],
                      "of a live legacy migration")
MAPPED = _select(lambda m: _caps(m).get("mapped-ram"), "in mapped-ram layout")
XBZRLE = _select(lambda m: _caps(m).get("xbzrle"), "with the xbzrle capability")

_REPORTS: dict[str, object] = {}


def report(name: str):  # noqa: ANN201
    if name not in _REPORTS:
        with open_capture(str(sample_path(name))) as cap:
            _REPORTS[name] = size_report(cap)
    return _REPORTS[name]


def _ram(meta: dict) -> dict:
    return meta["query-migrate"]["ram"]


# ----------------------------------------------------------------------------------------
# legacy streams against query-migrate


@pytest.mark.parametrize("name", LEGACY)
def test_page_counts_match_query_migrate(name: str) -> None:
    r, q = report(name), _ram(sample_meta(name))
    assert r.page_records == q["normal"], "PAGE records vs ram.normal"
    assert r.zero_records == q["duplicate"], "ZERO records vs ram.duplicate"
    assert r.page_payload_bytes == q["normal-bytes"], "PAGE payload bytes vs ram.normal-bytes"
    assert r.ram_total == q["total"]
    assert sum(b.times * b.pages for b in r.send_histogram.buckets) == \
        r.page_records + r.zero_records + r.xbzrle_records + r.compress_records


@pytest.mark.parametrize("name", LEGACY)
def test_every_byte_is_accounted_for(name: str) -> None:
    meta = sample_meta(name)
    r = report(name)
    assert r.stream_bytes == meta["capture"]["raw_size"]
    assert r.overhead.unwalked_or_trailing == 0
    assert r.ram_bytes_written + r.device_state_bytes + r.vmdescription_bytes + \
        r.overhead.total == meta["capture"]["raw_size"]
    assert r.other_overhead == r.overhead.total
    assert r.vmdescription_bytes == meta["capture"]["raw_size"] - \
        meta["capture"]["vmdescription_offset"]


@pytest.mark.parametrize("name", LEGACY)
def test_transferred_relation(name: str) -> None:
    """QEMU 10: transferred is the file size. QEMU 7.2: transferred counts only RAM
    records plus the EOS of each ram PART section (ram_transferred_add in
    ram_save_iterate); it leaves out the file header and configuration, section
    headers and footers, the MEM_SIZE list, the START and END sections' EOS, device
    state, EOF and the vmdescription (~118 KB on these guests)."""
    meta = sample_meta(name)
    r, q = report(name), _ram(meta)
    size = meta["capture"]["raw_size"]
    parts_eos = 8 * r.ram_sections.part
    if _major(meta) >= 10:
        assert q["transferred"] == size
    else:
        assert q["transferred"] == r.ram_bytes_written + parts_eos
        left_out = (r.device_state_bytes + r.vmdescription_bytes + r.other_overhead
                    - parts_eos)
        assert size - q["transferred"] == left_out
    # both versions: precopy + downtime bytes = RAM records + PART EOS
    assert q["precopy-bytes"] + q["downtime-bytes"] == r.ram_bytes_written + parts_eos


@pytest.mark.parametrize("name", LEGACY)
def test_rounds_follow_dirty_sync_count(name: str) -> None:
    """rounds == dirty-sync-count - 1 (see miginspect/inspector/rounds.py). QEMU counts
    bytes sent while the VM runs as precopy-bytes and the rest as downtime-bytes: for a
    live migration the stop-and-copy round is exactly downtime-bytes, and the earlier
    rounds plus the PART sections' EOS are precopy-bytes; a paused VM sends everything
    as downtime (its bulk pass goes on into the END section)."""
    meta = sample_meta(name)
    r, q = report(name), _ram(meta)
    assert len(r.rounds) == q["dirty-sync-count"] - 1
    assert r.rounds[0].kind == ROUND_BULK
    assert r.rounds[-1].kind == ROUND_STOP_AND_COPY
    assert all(x.kind == ROUND_ITERATION for x in r.rounds[1:-1])
    assert sum(x.pages for x in r.rounds) == r.page_records + r.zero_records + \
        r.xbzrle_records + r.compress_records
    if meta["migration"]["live"]:
        assert r.rounds[-1].bytes == q["downtime-bytes"]
        assert sum(x.bytes for x in r.rounds[:-1]) + 8 * r.ram_sections.part == \
            q["precopy-bytes"]
        # the bulk pass sends every page once before the first iteration
        assert r.rounds[0].pages == q["total"] // q["page-size"]
    else:
        assert len(r.rounds) == 2 and q["precopy-bytes"] == 0
        assert r.rounds[0].pages + r.rounds[1].pages == q["total"] // q["page-size"]


@pytest.mark.parametrize("name", LIVE_LEGACY)
def test_live_amplification_and_hot_ranges(name: str) -> None:
    meta = sample_meta(name)
    r = report(name)
    ws_pages = meta["guest"]["ws_mib"] << 20 >> 12
    assert r.amplification > 1.05
    # the re-dirtied working set is (at least) the guest's working set, in pc.ram
    assert r.resent_pages >= ws_pages
    assert sum(b.pages for b in r.send_histogram.buckets if b.times > 1) == r.resent_pages
    assert r.hot_ranges and r.hot_ranges[0].block == "pc.ram"
    assert r.ram_bytes_written == pytest.approx(r.amplification * r.data_bytes)
    assert r.legacy_minimum < r.file_size < r.legacy_minimum + r.ram_bytes_written
    assert "pc.ram pages sent" in _why(r) and "amplification" in verdict_answer(r)
    # the vectorised hot ranges equal a plain per-record loop over the same records
    assert r.hot_ranges == _all_hot(name)[:len(r.hot_ranges)]


def _why(r) -> str:  # noqa: ANN001
    return "\n".join(text for _, text in verdict_rows(r))


def _all_hot(name: str):  # noqa: ANN202
    from miginspect.inspector.size import hot_ranges, record_sizes

    with open_capture(str(sample_path(name))) as cap:
        rt = cap.walk.records
        tot = record_sizes(cap.source.buf, rt, cap.page_size).total
        per: dict[str, np.ndarray] = {}
        for b in cap.blocks:
            extra = np.zeros(b.pages, np.int64)
            sel = np.flatnonzero(rt.block == b.index)
            pages = rt.page[sel].astype(np.int64)
            first_seen = np.zeros(b.pages, bool)
            for i, p in zip(sel.tolist(), pages.tolist(), strict=True):
                if first_seen[p]:
                    extra[p] += tot[i]
                first_seen[p] = True
            per[b.name] = extra
        return hot_ranges(cap.maps, per, cap.page_size, top=0)


# ----------------------------------------------------------------------------------------
# XBZRLE


@pytest.mark.parametrize("name", XBZRLE)
def test_xbzrle_final_content_matches_pmemsave(name: str) -> None:
    meta = sample_meta(name)
    with open_capture(str(sample_path(name))) as cap:
        bm = cap.maps["pc.ram"]
        assert np.count_nonzero(bm.final_kind == R.RAM_SAVE_FLAG_XBZRLE) > 0
        ps = cap.page_size
        img = bytearray(bm.block.used_length)
        for i, data in cap.reader.iter_data_pages(bm):
            img[i * ps:(i + 1) * ps] = data
    assert len(img) == meta["pmemsave"]["size"]
    lo, hi = meta["pmemsave"]["masked_range"]
    assert (lo, hi + 1) == (MASK_LO, MASK_HI)
    img[MASK_LO:MASK_HI] = bytes(MASK_HI - MASK_LO)
    assert hashlib.sha256(img).hexdigest() == meta["pmemsave"]["sha256_masked"]


@pytest.mark.parametrize("name", XBZRLE)
def test_xbzrle_bytes_match_cache_counters(name: str) -> None:
    r = report(name)
    xc = sample_meta(name)["query-migrate"]["xbzrle-cache"]
    assert r.xbzrle is not None
    assert r.xbzrle.cache_bytes == xc["bytes"]
    # cache hits include unchanged pages that produce no record
    assert r.xbzrle.records <= xc["pages"]
    assert r.xbzrle.saved_bytes == r.xbzrle.records * r.page_size - r.xbzrle.encoded_bytes
    assert 0 < r.xbzrle.saved_bytes


def test_xbzrle_decoder_rules() -> None:
    page = bytearray(b"A" * 200)
    # zrun 2, nzrun 3 "xyz", zrun 130 (two-byte uleb 0x82 0x01), nzrun 1 "!"
    xbzrle_apply(page, bytes([2, 3]) + b"xyz" + bytes([0x82, 0x01, 1]) + b"!")
    assert page[:5] == b"AAxyz" and page[135:137] == b"!A" and page.count(b"A") == 196
    page = bytearray(8)
    xbzrle_apply(page, bytes([0, 2]) + b"hi")  # a zero zrun is allowed first
    assert page == bytearray(b"hi" + bytes(6))
    xbzrle_apply(page, b"")  # empty delta: unchanged (QEMU's loader accepts it)
    bad = {
        "zero-length unchanged run after the first pair": bytes([0, 1]) + b"a" + bytes([0, 1])
        + b"b",
        "zero-length changed run": bytes([1, 0, 0]),
        "longer than two bytes": bytes([0x81, 0x81, 0x01, 1]) + b"a",
        "past the end of the page": bytes([9, 1]) + b"a",
        "run past the end": bytes([1, 5]) + b"ab",
        "a changed run with no bytes": bytes([1, 1]),
    }
    for why, delta in bad.items():
        with pytest.raises(FormatError, match=why):
            xbzrle_apply(bytearray(8), delta, 0x1234)
    with pytest.raises(FormatError) as e:
        xbzrle_apply(bytearray(8), bytes([1, 0, 0]), 0x1234)
    assert "0x1234" in e.value.oneline()


# ----------------------------------------------------------------------------------------
# mapped-ram


@pytest.mark.parametrize("name", MAPPED)
def test_mapped_ram_bound_is_the_file_size(name: str) -> None:
    """Each block's bitmap and pages offsets recomputed from QEMU's rules (entry, 28-byte
    header, bitmap, round up to 1 MiB, used_length) equal the file's headers, and the
    bound (that layout plus the rest of the stream) is the real file size."""
    meta = sample_meta(name)
    r = report(name)
    c = r.mapped_ram_check
    assert c.layout_matches_headers, c.mismatched_blocks
    assert r.mapped_ram_bound == meta["capture"]["raw_size"]
    assert c.difference == 0
    for lay in r.mapped_ram_layout:
        assert lay.pages_offset % (1 << 20) == 0
        assert lay.bitmap_offset == lay.header_offset + 28
    # the pages QEMU left as zero are exactly the clear bits; every set bit was written
    q = _ram(meta)
    assert r.zero_pages == q["duplicate"]
    assert r.data_pages <= q["normal"]
    if not meta["migration"]["live"]:
        assert r.data_pages == q["normal"]
    # QEMU's file allocates the data pages and metadata; the filesystem may add an
    # extent-tree block or so
    assert r.mapped_ram_allocated_bound <= meta["capture"]["raw_allocated_bytes"] <= \
        r.mapped_ram_allocated_bound + 2 * 4096


def test_legacy_bound_predicts_mapped_ram_of_the_same_state() -> None:
    """State A saved as legacy and, reloaded, as mapped-ram: the bound computed from the
    legacy file puts every block at the same offsets as QEMU did, and the sizes differ
    only by the vmdescription (10.0 describes the capabilities subsection in its JSON)
    and by a different number of ram PART sections."""
    legacy, mapped = "q10-state-A-legacy", "q10-state-A-mapped-ram"
    if legacy not in sample_names() or mapped not in sample_names():
        pytest.skip("state-A samples are not bundled (samples/generate.py --only state-A)")
    rl, rm = report(legacy), report(mapped)
    for a, b in zip(rl.mapped_ram_layout, rm.mapped_ram_layout, strict=True):
        assert (a.name, a.bitmap_offset, a.pages_offset) == \
            (b.name, b.actual_bitmap_offset, b.actual_pages_offset)
    eos_section = 1 + 4 + 8 + 5
    parts = (rm.ram_sections.part - rl.ram_sections.part) * eos_section
    assert sample_meta(mapped)["capture"]["raw_size"] - rl.mapped_ram_bound == \
        (rm.vmdescription_bytes - rl.vmdescription_bytes) + parts + \
        (rm.device_state_bytes - rl.device_state_bytes) + \
        (rm.overhead.commands - rl.overhead.commands)
    assert rl.mapped_ram_allocated_bound == rm.mapped_ram_allocated_bound


# ----------------------------------------------------------------------------------------
# rounds on hand-built record orders


def _table(positions: list[tuple[int, int]], offsets: list[int] | None = None) -> RecordTable:
    n = len(positions)
    off = np.asarray(offsets if offsets is not None else [100 + 10 * i for i in range(n)],
                     np.int64)
    return RecordTable(off, off + 8, np.asarray([b for b, _ in positions], np.int16),
                       np.asarray([p for _, p in positions], np.uint32),
                       np.full(n, R.RAM_SAVE_FLAG_PAGE, np.uint16))


def test_rounds_from_record_order() -> None:
    # bulk pass over two blocks, a wrap (iteration), a wrap, then END at offset 175
    pos = [(0, 0), (0, 1), (0, 2), (1, 0), (0, 1), (0, 2), (0, 1), (0, 2), (0, 0), (0, 1)]
    sp = find_rounds(_table(pos), end_section_offset=175)
    assert sp.start.tolist() == [0, 4, 6, 8]
    assert sp.stop.tolist() == [4, 6, 8, 10]
    assert sp.kind == [ROUND_BULK, ROUND_ITERATION, ROUND_ITERATION, ROUND_STOP_AND_COPY]
    # a wrap inside the END section is not a new round
    pos = [(0, 0), (0, 1), (0, 2), (0, 2), (0, 0)]
    sp = find_rounds(_table(pos), end_section_offset=125)
    assert sp.kind == [ROUND_BULK, ROUND_STOP_AND_COPY] and sp.wraps_in_final == 1
    # the same page twice in a row is a new round (position did not advance)
    sp = find_rounds(_table([(0, 5), (0, 5)]), end_section_offset=None)
    assert sp.kind == [ROUND_BULK, ROUND_ITERATION]
    # a paused save: the END section holds nothing -> an empty stop-and-copy round
    sp = find_rounds(_table([(0, 0), (0, 1)]), end_section_offset=500)
    assert sp.kind == [ROUND_BULK, ROUND_STOP_AND_COPY] and sp.stop[-1] - sp.start[-1] == 0


# ----------------------------------------------------------------------------------------
# the command


def _cli_json(path: str) -> dict:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["size", "--json", path]) == 0
    return json.loads(out.getvalue())


def test_cli_json_and_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    names = [n for n in ("q10-live-legacy", "q10-live-xbzrle") if n in sample_names()]
    if not names:
        pytest.skip("no live legacy sample bundled")
    path = str(sample_path(names[0]))
    d = _cli_json(path)
    for k in JSON_KEYS:
        assert k in d, k
    assert all(set(x) >= {"pages", "bytes"} for x in d["rounds"])
    r = report(names[0])  # the JSON is the report's dataclass, number for number
    assert d["ram_bytes_written"] == r.ram_bytes_written and d["verdict"] == verdict_answer(r)
    assert [(x["pages"], x["bytes"]) for x in d["rounds"]] == [(x.pages, x.bytes)
                                                               for x in r.rounds]
    assert all(k.isdigit() for k in d["send_histogram"])
    assert main(["size", path]) == 0
    out = capsys.readouterr().out
    for text in ("Where the bytes go", "Precopy rounds", "Pages by times sent",
                 "Hottest ranges"):
        assert text in out
    # the short answer comes first, whole, then why
    assert out.splitlines()[0] == "size: " + verdict_answer(r)
    assert out.splitlines()[1].startswith("re-sent ")


def test_cli_bad_input_is_one_line(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    names = LEGACY if isinstance(LEGACY[0], str) else []
    if not names:
        pytest.skip("no legacy sample bundled")
    src = sample_path(names[0])
    cut = tmp_path / "cut.mig"
    with open(src, "rb") as f:
        cut.write_bytes(f.read(3_000_000))
    assert main(["size", str(cut)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "offset 0x" in err and "Traceback" not in err
    junk = tmp_path / "junk.mig"
    junk.write_bytes(b"QEVM\x00\x00\x00\x03" + b"\x09" * 64)
    assert main(["size", str(junk)]) == 1
    assert "offset 0x8" in capsys.readouterr().err


def test_libvirt_wrapper_is_container_overhead(tmp_path) -> None:
    """A legacy sample inside a hand-built libvirt raw save image: the libvirt header, XML
    and padding count as container overhead, every other figure is unchanged, and the
    mapped-ram bound too (libvirt's sparse format starts the QEMU stream after its
    header, and the header fits in the space the 1 MiB alignment leaves anyway)."""
    from miginspect.formats import libvirt as lv

    names = [n for n in LEGACY if isinstance(n, str)]
    if not names:
        pytest.skip("no legacy sample bundled")
    src = sample_path(names[0])
    xml = b"<domain type='kvm'><name>t</name></domain>\0"
    data_len = len(xml) + 65536
    head = lv.virQEMUSaveHeader_le.build(dict(
        magic=lv.QEMU_SAVE_MAGIC, version=2, data_len=data_len, was_running=1,
        format=lv.QEMU_SAVE_FORMAT_RAW, cookieOffset=0))
    img = tmp_path / "saved.img"
    with open(img, "wb") as f, open(src, "rb") as s:
        f.write(head + xml + bytes(data_len - len(xml)))
        while chunk := s.read(1 << 24):
            f.write(chunk)
    plain = report(names[0])
    with open_capture(str(img)) as cap:
        r = size_report(cap)
    base = lv.QEMU_SAVE_HEADER_SIZE + data_len
    assert r.stream_offset == base and r.overhead.container == base
    assert r.file_size == plain.file_size + base
    for k in ("ram_bytes_written", "device_state_bytes", "vmdescription_bytes",
              "page_records", "zero_records", "data_bytes", "send_histogram"):
        assert getattr(r, k) == getattr(plain, k), k
    assert [x.bytes for x in r.rounds] == [x.bytes for x in plain.rounds]
    assert r.legacy_minimum == plain.legacy_minimum + base
    assert r.mapped_ram_bound == plain.mapped_ram_bound


def _damaged() -> list:
    from conftest import SAMPLES

    found = sorted(p.name[:-len(".mig.zst")] for p in (SAMPLES / "damaged").glob("*.mig.zst"))
    return found or [pytest.param(None, marks=pytest.mark.skip(
        reason="no damaged samples bundled (samples/generate.py --only damaged)"))]


@pytest.mark.parametrize("name", _damaged())
def test_damaged_samples_give_one_line(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every damaged sample: either a report or one line naming the offset, never an
    internal error or a traceback."""
    from conftest import SAMPLES, unpack

    path = str(unpack(SAMPLES / "damaged" / f"{name}.mig.zst"))
    code = main(["size", "--json", path])
    err = capsys.readouterr().err.strip()
    assert code in (0, 1), err
    if code == 1:
        assert err.count("\n") == 0 and "internal error" not in err and "offset 0x" in err
        # --partial sizes what can be read; every read byte still lands in one bucket
        out = io.StringIO()
        with redirect_stdout(out):
            code = main(["size", "--partial", "--json", path])
        err = capsys.readouterr().err.strip()
        assert code in (0, 1), err
        if code == 0:
            d = json.loads(out.getvalue())
            assert d["stopped"]["offset"] is not None and "cut short" in d["verdict"]
            parts = [v for v in d["overhead"].values() if v is not None]
            assert d["ram_bytes_written"] + d["device_state_bytes"] + \
                d["vmdescription_bytes"] + sum(parts) == d["stream_bytes"] + d["stream_offset"]
            assert min(parts) >= 0 and d["mapped_ram_allocated_bound"] >= 0
        else:
            assert err.count("\n") == 0 and "offset 0x" in err


# ----------------------------------------------------------------------------------------
# libvirt save images (samples/libvirt/make-images.py) against libvirt's job statistics


def _libvirt_images() -> list:
    from conftest import SAMPLES

    d = SAMPLES / "libvirt"
    out = []
    for meta in sorted(d.glob("*.json")):
        m = json.loads(meta.read_text())
        stats = (m.get("job_completed_event") or {}).get("stats") or {}
        img = d / f"{meta.stem}.img"
        img = img if img.exists() else d / f"{meta.stem}.img.zst"
        if stats.get("memory_iteration") and img.exists():
            out.append(meta.stem)
    return out or [pytest.param(None, marks=pytest.mark.skip(
        reason="no libvirt images bundled (samples/libvirt/make-images.py)"))]


@pytest.mark.parametrize("name", _libvirt_images())
def test_libvirt_images_against_job_stats(name: str) -> None:
    """libvirt's job statistics are QEMU's query-migrate figures: memory_normal and
    memory_constant = PAGE / ZERO records (mapped-ram: set / clear bits of a paused
    save), data_processed = transferred = the QEMU stream (legacy, QEMU 10), and
    memory_iteration = dirty-sync-count: rounds = memory_iteration - 1, or equal when
    QEMU completed before its first bandwidth measurement (only possible with the bulk
    pass and the END section alone; see miginspect/inspector/rounds.py). For the sparse
    format the mapped-ram bound, with offsets absolute in the image, is the image size."""
    from conftest import SAMPLES, unpack

    d = SAMPLES / "libvirt"
    meta = json.loads((d / f"{name}.json").read_text())
    s = meta["job_completed_event"]["stats"]
    img = d / f"{name}.img"
    path = str(img) if img.exists() else str(unpack(d / f"{name}.img.zst"))
    with open_capture(path) as cap:
        r = size_report(cap)
    assert r.stream_offset == meta["header_read"]["qemu_data_offset"] or r.compression
    if r.format == "legacy":
        assert r.page_records == s["memory_normal"]
        assert r.zero_records == s["memory_constant"]
        assert r.page_payload_bytes == s["memory_normal_bytes"]
        assert r.stream_bytes == s["data_processed"]
        n, it = len(r.rounds), s["memory_iteration"]
        assert n == it - 1 or (n == it and n == 2 and r.rounds[-1].pages == 0), (n, it)
    else:
        assert r.zero_pages == s["memory_constant"]
        assert r.data_pages == s["memory_normal"]
        c = r.mapped_ram_check
        assert c.layout_matches_headers and c.difference == 0
        assert r.mapped_ram_bound == meta["image"]["apparent_size"]
        assert r.mapped_ram_allocated_bound <= meta["image"]["allocated_size"] <= \
            r.mapped_ram_allocated_bound + 2 * 4096


def test_a_sync_does_not_restart_the_scan() -> None:
    """The round model rests on QEMU's scan going on from where it stopped after a
    dirty-bitmap sync (it only wraps at the end of the block list). Were a sync to restart
    the scan, the END section (right after the completion sync) would always begin with
    the position going back; in the live captures it does not, and the stop-and-copy
    round wraps inside the section instead."""
    from miginspect.inspector.rounds import wrap_indexes

    names = [n for n in LIVE_LEGACY if isinstance(n, str)]
    if not names:
        pytest.skip("no live legacy sample bundled")
    seen = []
    for name in names:
        with open_capture(str(sample_path(name))) as cap:
            rt = cap.walk.records
            end = next(s for s in cap.walk.sections if s.idstr == "ram" and s.kind == "END")
            first = int(np.searchsorted(rt.rec_off, end.offset))
            wraps = set(wrap_indexes(rt).tolist())
            seen.append((first in wraps, any(w > first for w in wraps)))
    assert any(not starts and inside for starts, inside in seen), seen


# ----------------------------------------------------------------------------------------
# the verdict: like with like, re-sends apart from framing (issue 11)


@pytest.mark.parametrize("name", LEGACY)
def test_framing_is_not_amplification(name: str) -> None:
    from miginspect.inspector.size import A_PAUSE

    r = report(name)
    assert r.record_framing_bytes == r.record_header_bytes + r.zero_records + \
        3 * r.xbzrle_records + 4 * r.compress_records
    extra = _all_hot_bytes(name)  # every record of a page after its first, by a plain loop
    assert r.resent_bytes == extra == sum(b.resent_bytes for b in r.blocks)
    once = r.ram_bytes_written - r.resent_bytes
    assert r.resend_amplification == pytest.approx(r.ram_bytes_written / once)
    v = r.verdict_basis
    if r.resent_pages:
        assert r.resend_amplification > 1
        assert f"{r.resend_amplification:.2f}x redirty amplification" in verdict_answer(r)
        assert A_PAUSE in v.advice
    else:
        # a paused VM: framing makes `amplification` > 1, but nothing was re-sent
        assert r.resend_amplification == 1.0 and r.amplification > 1
        assert "no redirty amplification" in verdict_answer(r) and A_PAUSE not in v.advice


def _all_hot_bytes(name: str) -> int:
    from miginspect.inspector.size import record_sizes

    with open_capture(str(sample_path(name))) as cap:
        rt = cap.walk.records
        tot = record_sizes(cap.source.buf, rt, cap.page_size).total
        seen: set[tuple[int, int]] = set()
        extra = 0
        for i, (b, p) in enumerate(zip(rt.block.tolist(), rt.page.tolist(), strict=True)):
            if (b, p) in seen:
                extra += int(tot[i])
            seen.add((b, p))
        return extra


def _verdict_inputs() -> list:
    from conftest import SAMPLES

    files = [SAMPLES / f"{n}.mig.zst" for n in sample_names()]  # compressed as bundled
    lv = SAMPLES / "libvirt"
    files += sorted(p for p in lv.iterdir() if p.suffix == ".img" or p.name.endswith(".img.zst"))
    return [pytest.param(str(f), id=f.name) for f in files] or [pytest.param(
        None, marks=pytest.mark.skip(reason="no samples bundled"))]


@pytest.mark.parametrize("path", _verdict_inputs())
def test_verdict_never_contradicts_its_tables(path: str) -> None:
    """The verdict's comparisons are the table's: apparent with apparent (the bounds
    table's `vs this file` ratio), on disk with on disk (a compressed file's own size on
    disk against a sparse mapped-ram file's); it advises mapped-ram only where that takes
    less disk, and calls only re-sends amplification."""
    from miginspect.inspector.size import A_SAVE_MAPPED_RAM

    out = io.StringIO()
    with redirect_stdout(out):
        rc = main(["size", "--json", path])
    if rc != 0:
        pytest.skip("the file does not size without --partial")
    d = json.loads(out.getvalue())
    out = io.StringIO()
    with redirect_stdout(out):  # the verdict and its reasons: the lines before the summary
        assert main(["size", path, "--width", "1000"]) == 0
    text = out.getvalue().split("\n\n")[0]
    v = d["verdict_basis"]
    assert text.splitlines()[0] == "size: " + d["verdict"]
    whole = d["stream_bytes"] + d["stream_offset"]
    if d["format"] == "legacy" and d["mapped_ram_bound"]:
        assert v["apparent_size"] == whole and v["mapped_ram_bound"] == d["mapped_ram_bound"]
        assert f"{whole / d['mapped_ram_bound']:.2f}x" in text  # the table's ratio
        assert f"{d['allocated_size'] / d['mapped_ram_allocated_bound']:.2f}x" in text
        assert f"{d['allocated_size']:,} B" in text
    saves = ("save as mapped-ram" in text)
    assert saves == (A_SAVE_MAPPED_RAM in v["advice"])
    if saves:
        assert d["mapped_ram_allocated_bound"] < d["allocated_size"]
    if d["compression"]:
        assert not saves or d["allocated_size"] > d["mapped_ram_allocated_bound"]
    if "no redirty amplification" in text:
        assert d["resent_pages"] == 0
    if "x redirty amplification" in text:
        assert d["resent_pages"] > 0 and d["resent_bytes"] > 0


def test_small_compressed_file_is_not_told_to_save_as_mapped_ram() -> None:
    """issue 11: a 1.5 MB zstd capture of a live VM was told to "save as mapped-ram"
    (35 MB on disk)."""
    from conftest import SAMPLES

    from miginspect.inspector.size import A_PAUSE, A_SAVE_MAPPED_RAM

    p = SAMPLES / "q10-live-legacy.mig.zst"
    if not p.exists():
        pytest.skip("q10-live-legacy is not bundled")
    d = _cli_json(str(p))
    v = d["verdict_basis"]
    assert d["compression"] == "zstd" and v["compressed"]
    assert d["allocated_size"] < d["mapped_ram_allocated_bound"]
    assert A_SAVE_MAPPED_RAM not in v["advice"] and "save as mapped-ram" not in d["verdict"]
    assert A_PAUSE in v["advice"]
