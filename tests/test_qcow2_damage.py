"""Damaged and hostile qcow2 images: each is a real sample patched with our own grammar.
Every one gives a one-line MigError naming the image offset (never a traceback, a hang
or an allocation sized by a length field), through the reader and through the CLI."""

from __future__ import annotations

import json
import random
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest
from test_qcow2_samples import COMMITTED, image_file

from miginspect.cli import main
from miginspect.errors import (
    FormatError,
    InconsistentError,
    MigError,
    TruncatedError,
    UnsupportedError,
)
from miginspect.formats import qcow2 as Q
from miginspect.inspector import qcow2 as R
from miginspect.inspector.snapshots import list_snapshots

F = Q.HEADER_FIELD_OFFSETS
BASE = "q10-snapshots"

pytestmark = pytest.mark.skipif(BASE not in COMMITTED, reason=f"{BASE} is not bundled")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:  # noqa: ANN001
    return image_file(BASE)


@pytest.fixture(scope="module")
def facts(base: Path) -> dict:
    """Where things are in the base image (found with the reader, checked below)."""
    with R.open_image(str(base)) as img:
        h = img.header
        s1 = img.find_snapshot("s1")
        lay = img.state_layout(s1)
        idx = s1.vm_state_offset // h.l1_coverage
        l1e_at = s1.l1_table_offset + idx * 8
        l1e = struct.unpack(">Q", img.pread(l1e_at, 8, "l1"))[0]
        l2 = l1e & Q.L1E_OFFSET_MASK
        last = (s1.vm_state_size - 1) // h.cluster_size
        return {"h": h, "s1": s1, "runs": lay.runs, "l1e_at": l1e_at, "l2": l2,
                "last_l2e_at": l2 + last * 8, "clusters": last + 1, "size": img.file_size}


def patched(base: Path, tmp: Path, edits: list[tuple[int, bytes]], name: str = "bad.qcow2",
            truncate: int | None = None) -> str:
    out = tmp / name
    shutil.copyfile(base, out)
    with open(out, "r+b") as f:
        for off, data in edits:
            f.seek(off)
            f.write(data)
        if truncate is not None:
            f.truncate(truncate)
    return str(out)


def u32(v: int) -> bytes:
    return struct.pack(">I", v)


def u64(v: int) -> bytes:
    return struct.pack(">Q", v)


def l2_entry(host: int) -> bytes:
    return Q.L2Entry.build(dict(copied=True, compressed=False, descriptor=dict(
        reserved_hi=0, host_offset=host, reserved_lo=0, zero=False)), cluster_bits=16)


def one_line(e: MigError, offset: int | None) -> None:
    assert e.offset == offset, (e.offset, str(e))
    text = str(e)
    assert "\n" not in text and text.startswith(e.kind)
    if offset is not None:
        assert f"0x{offset:x}" in text


def cli(capsys, *args: str) -> tuple[int, str, str]:  # noqa: ANN001
    rc = main(["snapshots", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_base_facts_are_what_the_grammar_says(facts: dict) -> None:
    """The positions the patches below rely on, read with the grammar instead."""
    h, s1 = facts["h"], facts["s1"]
    assert len(facts["runs"]) == 1 and facts["l2"] < int(facts["runs"]["host_offset"][0])
    raw = Path(image_file(BASE)).read_bytes()
    hdr = Q.QCowHeader.parse(raw[:112])
    assert (hdr.nb_snapshots, hdr.snapshots_offset) == (h.nb_snapshots, h.snapshots_offset)
    e = Q.QCowSnapshotEntryPadded.parse(raw[s1.entry_offset:])
    assert (e.name, e.l1_table_offset, e.extra_data.vm_state_size_large) == (
        b"s1", s1.l1_table_offset, s1.vm_state_size)
    l1 = Q.L1Entry.parse(raw[facts["l1e_at"]:facts["l1e_at"] + 8])
    assert l1.l2_offset == facts["l2"]
    last = Q.L2Entry.parse(raw[facts["last_l2e_at"]:facts["last_l2e_at"] + 8], cluster_bits=16)
    assert last.descriptor.host_offset == int(facts["runs"]["host_offset"][0]) \
        + (facts["clusters"] - 1) * h.cluster_size


# -- damage inside one snapshot's VM state ---------------------------------------------------
def _state_cases(f: dict) -> dict:
    s1, h = f["s1"], f["h"]
    beyond = (f["size"] + h.cluster_size - 1) // h.cluster_size * h.cluster_size + (64 << 16)
    host0 = int(f["runs"]["host_offset"][0])
    return {
        # (edits, error class, offset, words in the message)
        "l2-entry-past-eof": ([(f["last_l2e_at"], l2_entry(beyond))], TruncatedError,
                              f["last_l2e_at"], "cut short"),
        "l1-entry-past-eof": ([(f["l1e_at"], u64(beyond | Q.QCOW_OFLAG_COPIED))],
                              TruncatedError, f["l1e_at"], "past the end"),
        "l1-entry-unaligned": ([(f["l1e_at"], u64(f["l2"] + 512))], InconsistentError,
                               f["l1e_at"], "unaligned"),
        "data-cluster-unaligned": ([(f["last_l2e_at"], l2_entry(host0 + 512))],
                                   InconsistentError, f["last_l2e_at"], "unaligned"),
        "cluster-used-twice": ([(f["last_l2e_at"], l2_entry(host0))], InconsistentError,
                               host0, "two pieces"),
        "snapshot-l1-too-large": ([(s1.entry_offset + 8, u32(0x7FFFFFFF))], FormatError,
                                  s1.entry_offset + 8, "too large"),
        "snapshot-l1-past-eof": ([(s1.entry_offset, u64(beyond))], TruncatedError,
                                 s1.entry_offset, "past"),
        "snapshot-l1-unaligned": ([(s1.entry_offset, u64(s1.l1_table_offset + 8))],
                                  FormatError, s1.entry_offset, "not cluster-aligned"),
        "state-past-its-l1": ([(s1.entry_offset + 40, u64(s1.l1_size * h.l1_coverage))],
                              InconsistentError, s1.entry_offset + 8, "runs past"),
    }


STATE_CASES = ["l2-entry-past-eof", "l1-entry-past-eof", "l1-entry-unaligned",
               "data-cluster-unaligned", "cluster-used-twice", "snapshot-l1-too-large",
               "snapshot-l1-past-eof", "snapshot-l1-unaligned", "state-past-its-l1"]


@pytest.mark.parametrize("case", STATE_CASES)
def test_state_damage_is_one_line_with_the_image_offset(case, base, facts, tmp_path, capsys):  # noqa: ANN001
    edits, cls, offset, words = _state_cases(facts)[case]
    bad = patched(base, tmp_path, edits)
    with pytest.raises(MigError) as e:
        R.open_snapshot(bad, "s1")
    assert type(e.value) is cls, str(e.value)
    one_line(e.value, offset)
    assert words in str(e.value) and "'s1'" in str(e.value)
    # the listing still shows every snapshot, flags the damaged one and exits 1
    rep = list_snapshots([bad])
    rows = {r.snapshot.name: r for r in rep.images[0].snapshots}
    assert rows["s1"].problem and rows["s1"].problem_offset == offset
    assert rows["s2"].problem is None and rows["s2"].vm_state_allocated
    rc, out, err = cli(capsys, bad)
    assert rc == 1 and err == "" and f"0x{offset:x}" in out and "Traceback" not in out
    rc, out, _ = cli(capsys, "--json", bad)
    assert rc == 1 and f'"problem_offset": {offset}' in out


def test_unallocated_state_bytes_read_as_zeros_and_are_noted(base, facts, tmp_path) -> None:  # noqa: ANN001
    """A state longer than what QEMU wrote: the extra clusters are unallocated; QEMU reads
    zeros there and so do we, and the container says so."""
    s1, cs = facts["s1"], facts["h"].cluster_size
    grow = 3 * cs
    bad = patched(base, tmp_path, [(s1.entry_offset + 40, u64(s1.vm_state_size + grow))])
    with R.open_snapshot(bad, "s1") as src:
        lay = src.container.layout
        assert lay.bytes_of(R.KIND_UNALLOCATED) == grow - (facts["clusters"] * cs
                                                            - s1.vm_state_size)
        assert src.buf[s1.vm_state_size:] == bytes(grow)
        assert any("not allocated" in n for n in src.container.notes)


# -- damage in the header and the snapshot table ----------------------------------------------
def _image_cases(f: dict) -> dict:
    s1, h = f["s1"], f["h"]
    return {
        "nb-snapshots-huge": ([(F["nb_snapshots"], u32(0xFFFFFFFF))], FormatError,
                              F["nb_snapshots"], "snapshot table too large",
                              "Snapshot table too large"),
        "snapshots-offset-unaligned": ([(F["snapshots_offset"], u64(h.snapshots_offset + 8))],
                                       FormatError, F["snapshots_offset"], "offset invalid",
                                       "Snapshot table offset invalid"),
        "snapshots-offset-past-eof": ([(F["snapshots_offset"], u64(1 << 40))], TruncatedError,
                                      1 << 40, "past the end", None),
        "extra-data-huge": ([(s1.entry_offset + 36, u32(0xFFFFFFFF))], FormatError,
                            s1.entry_offset + 36, "extra metadata", "Too much extra metadata"),
        "version-4": ([(F["version"], u32(4))], UnsupportedError, F["version"], "version 4",
                      "Unsupported qcow2 version 4"),
        "cluster-bits-30": ([(F["cluster_bits"], u32(30))], FormatError, F["cluster_bits"],
                            "cluster size", "Unsupported cluster size"),
        "header-length-short": ([(F["header_length"], u32(96))], FormatError,
                                F["header_length"], "too short", "qcow2 header too short"),
        "unknown-incompatible-feature": (
            [(F["incompatible_features"], u64(1 << 20))], UnsupportedError,
            F["incompatible_features"], "bit 20", "Unsupported qcow2 feature"),
        "active-l1-too-large": ([(F["l1_size"], u32(0x7FFFFFFF))], FormatError, F["l1_size"],
                                "too large", "Active L1 table too large"),
        "active-l1-too-small": ([(F["l1_size"], u32(1))], InconsistentError, F["l1_size"],
                                "too small", "L1 table is too small"),
        "refcount-order-7": ([(F["refcount_order"], u32(7))], FormatError, F["refcount_order"],
                             "64 bits", "Reference count entry width too large"),
        "compression-bit-without-type": (
            [(F["incompatible_features"], u64(Q.QCOW2_INCOMPAT_COMPRESSION))], FormatError,
            F["incompatible_features"], "must not be set", "must not be set"),
    }


IMAGE_CASES = ["nb-snapshots-huge", "snapshots-offset-unaligned", "snapshots-offset-past-eof",
               "extra-data-huge", "version-4", "cluster-bits-30", "header-length-short",
               "unknown-incompatible-feature", "active-l1-too-large", "active-l1-too-small",
               "refcount-order-7", "compression-bit-without-type"]


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_image_damage_is_one_line_and_qemu_refuses_it_too(case, base, facts, tmp_path, capsys):  # noqa: ANN001
    edits, cls, offset, words, qemu_says = _image_cases(facts)[case]
    bad = patched(base, tmp_path, edits)
    for call in (lambda: R.open_image(bad), lambda: R.open_snapshot(bad, "s1")):
        with pytest.raises(MigError) as e:
            call()
        assert type(e.value) is cls
        one_line(e.value, offset)
        assert words.lower() in str(e.value).lower()
    rc, out, err = cli(capsys, bad)
    assert rc == 1 and out == ""
    assert err.startswith("miginspect: ") and err.count("\n") == 1 and "Traceback" not in err
    if qemu_says and shutil.which("qemu-img"):
        p = subprocess.run(["qemu-img", "info", bad], capture_output=True, text=True)
        assert p.returncode != 0 and qemu_says.lower() in p.stderr.lower(), p.stderr


def test_truncated_image_loses_its_snapshot_table(base, facts, tmp_path) -> None:  # noqa: ANN001
    """An image cut in the middle of the state (what a full disk during savevm leaves):
    the snapshot table, written last, is past the end."""
    cut = int(facts["runs"]["host_offset"][0]) + facts["s1"].vm_state_size // 2
    bad = patched(base, tmp_path, [], truncate=cut)
    with pytest.raises(TruncatedError) as e:
        R.open_image(bad)
    one_line(e.value, facts["h"].snapshots_offset)
    assert "snapshot table entry 0" in str(e.value)


def test_header_only_and_not_qcow2(tmp_path, capsys) -> None:  # noqa: ANN001
    p = tmp_path / "short.qcow2"
    p.write_bytes(Q.QCOW_MAGIC + u32(3) + bytes(30))
    with pytest.raises(TruncatedError) as e:
        R.open_image(str(p))
    one_line(e.value, 0)
    q = tmp_path / "x.bin"
    q.write_bytes(b"\x01\x02" * 100)
    rc, _, err = cli(capsys, str(q))
    assert rc == 1 and "not a qcow2 image" in err and err.count("\n") == 1
    m = tmp_path / "x.mig"
    m.write_bytes(b"QEVM\0\0\0\3" + bytes(100))
    rc, out, err = cli(capsys, "--json", str(m))
    assert rc == 0 and json.loads(out)["images"] == [
        {"path": str(m), "format": "QEMU migration stream", "snapshots": []}]
    rc, out, err = cli(capsys, str(m))
    assert rc == 0 and "not a qcow2 image: a QEMU migration stream" in out


def test_encrypted_image_lists_but_its_state_is_refused(base, tmp_path, capsys) -> None:  # noqa: ANN001
    bad = patched(base, tmp_path, [(F["crypt_method"], u32(Q.QCOW_CRYPT_LUKS))])
    with pytest.raises(UnsupportedError) as e:
        R.open_snapshot(bad, "s1")
    one_line(e.value, F["crypt_method"])
    assert "encrypted (LUKS)" in str(e.value)
    rc, out, _ = cli(capsys, bad)
    assert rc == 0 and "encrypted (LUKS)" in out


def test_external_data_file_is_refused(base, tmp_path) -> None:  # noqa: ANN001
    ext = Q.Qcow2HeaderExtension.build(dict(magic=Q.QCOW2_EXT_MAGIC_DATA_FILE, len=8,
                                            data=b"data.raw"))
    end = Q.Qcow2HeaderExtension.build(dict(magic=0, len=0, data=b""))
    bad = patched(base, tmp_path, [(F["incompatible_features"], u64(Q.QCOW2_INCOMPAT_DATA_FILE)),
                                   (112, ext + end)])
    with R.open_image(bad) as img:
        assert img.data_file == "data.raw"
        assert [x.name for x in img.extensions] == ["external data file name", "end"]
    with pytest.raises(UnsupportedError) as e:
        R.open_snapshot(bad, "s1")
    one_line(e.value, F["incompatible_features"])
    assert "'data.raw'" in str(e.value)


def test_nb_snapshots_at_qemus_limit_over_garbage_ends_quickly(base, facts, tmp_path) -> None:  # noqa: ANN001
    """65536 entries claimed, 3 there: the reader walks on into whatever follows and stops
    at the end of the file, in bounded time and memory."""
    bad = patched(base, tmp_path, [(F["nb_snapshots"], u32(Q.QCOW_MAX_SNAPSHOTS))])
    t0 = time.process_time()
    with pytest.raises(MigError) as e:
        R.open_image(bad)
    assert time.process_time() - t0 < 2.0
    assert e.value.offset is not None and "\n" not in str(e.value)


def test_random_mutations_of_metadata_give_migerrors_only(base, facts, tmp_path) -> None:  # noqa: ANN001
    """Bit flips and random words in the header, the snapshot table, the L1 tables and the
    state's L2 table: opening and mapping either works or raises a MigError, fast."""
    s1, h = facts["s1"], facts["h"]
    regions = [(0, 112), (h.snapshots_offset, facts["size"] - 8 - h.snapshots_offset),
               (s1.l1_table_offset, s1.l1_size * 8),
               (h.l1_table_offset, h.l1_size * 8), (facts["l2"], 64)]
    out = tmp_path / "fuzz.qcow2"
    shutil.copyfile(base, out)
    rnd = random.Random(13)
    with open(out, "r+b") as f:
        for _ in range(300):
            start, n = rnd.choice(regions)
            off = start + rnd.randrange(n)
            f.seek(off)
            old = f.read(8)
            f.seek(off)
            if rnd.random() < 0.5:
                b = bytearray(old)
                b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
                f.write(bytes(b))
            else:
                f.write(rnd.randbytes(len(old)))
            f.flush()
            t0 = time.process_time()
            try:
                rep = list_snapshots([str(out)])
                for r in rep.images[0].snapshots:
                    if r.snapshot.has_vm_state and not r.problem:
                        R.open_snapshot(str(out), r.snapshot.id).close()
            except MigError as e:
                assert "\n" not in str(e)
            assert time.process_time() - t0 < 2.0
            f.seek(off)
            f.write(old)
