"""Compressed, zero and mixed-subcluster clusters in a VM state. Real QEMU never writes
them there (savevm writes plain data clusters), so these images are hand-built edge cases:
real samples whose state clusters are rewritten in place with our own grammar (deflate or
zstd clusters, zero clusters where the data is all zeros, zero subclusters). Refcounts stay
valid, so QEMU's own tools are the oracle: `qemu-img check` finds nothing, and the state
QEMU reads from the rewritten image equals the original's."""

from __future__ import annotations

import hashlib
import shutil
import struct
import zlib
from pathlib import Path

import pytest
import zstandard
from test_qcow2_samples import COMMITTED, image_file, make_images_module, scenario

from miginspect.errors import FormatError
from miginspect.formats import qcow2 as Q
from miginspect.inspector import qcow2 as R
from miginspect.inspector.capture import Capture
from miginspect.inspector.stream import walk_stream


def _compress(data: bytes, kind: str) -> bytes:
    if kind == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(data)
    c = zlib.compressobj(6, zlib.DEFLATED, -12)  # QEMU's raw deflate, 4 KiB window
    return c.compress(data) + c.flush()


def _std_entry(ent, **descriptor) -> dict:  # noqa: ANN001
    d = dict(ent.descriptor)
    d.update(descriptor)
    return dict(copied=ent.copied, compressed=False, descriptor=d)


class Rewriter:
    """Rewrites the L2 entries (and cluster contents) of one snapshot's VM state."""

    def __init__(self, path: Path, snap: str, kind: str, keep_every: int = 3) -> None:
        self.path, self.kind, self.keep_every = path, kind, keep_every
        with R.open_image(str(path)) as img:
            self.h, self.sn = img.header, img.find_snapshot(snap)
        self.cb = self.h.cluster_bits
        self.cs = self.h.cluster_size
        self.counts = {"compressed": 0, "zero": 0, "mixed": 0, "data": 0}

    def run(self) -> dict:
        h, sn, cs = self.h, self.sn, self.cs
        cov = h.l1_coverage
        with open(self.path, "r+b") as f:
            if self.kind == "zstd" and h.compression != "zstd":
                f.seek(Q.HEADER_FIELD_OFFSETS["incompatible_features"])
                f.write(struct.pack(">Q", h.incompatible_features | Q.QCOW2_INCOMPAT_COMPRESSION))
                f.seek(Q.HEADER_FIELD_OFFSETS["compression_type"])
                f.write(bytes([Q.QCOW2_COMPRESSION_TYPE_ZSTD]))
            n = 0
            end = sn.vm_state_offset + sn.vm_state_size
            for guest in range(sn.vm_state_offset, end, cs):
                f.seek(sn.l1_table_offset + guest // cov * 8)
                l2 = Q.L1Entry.parse(f.read(8)).l2_offset
                at = l2 + (guest % cov) // cs * h.l2_entry_size
                self._cluster(f, at, n)
                n += 1
        return self.counts

    def _cluster(self, f, at: int, n: int) -> None:  # noqa: ANN001
        cs, esz = self.cs, self.h.l2_entry_size
        f.seek(at)
        raw = f.read(esz)
        ext = Q.L2EntryExtended.parse(raw, cluster_bits=self.cb) if esz == 16 else None
        ent = ext.entry if ext else Q.L2Entry.parse(raw, cluster_bits=self.cb)
        host = ent.descriptor.host_offset
        f.seek(host)
        data = f.read(cs)
        new = None
        if not any(data):
            new = self._zero(ent, ext)
            self.counts["zero"] += 1
        elif n % self.keep_every:
            comp = _compress(data, self.kind)
            nsec = -(-len(comp) // 512)
            if nsec * 512 <= cs:
                f.seek(host)
                f.write(comp)
                e = dict(copied=False, compressed=True,
                         descriptor=dict(additional_sectors=nsec - 1, host_offset=host))
                new = (Q.L2EntryExtended.build(dict(entry=e, bitmap=dict(sub_zero=0, sub_alloc=0)),
                                               cluster_bits=self.cb) if ext
                       else Q.L2Entry.build(e, cluster_bits=self.cb))
                self.counts["compressed"] += 1
        elif ext:
            new = self._mixed(ent, ext, data)
        if new is None:
            self.counts["data"] += 1
            return
        f.seek(at)
        f.write(new)

    def _zero(self, ent, ext) -> bytes:  # noqa: ANN001
        """A zero cluster that keeps its host cluster (QCOW2_CLUSTER_ZERO_ALLOC)."""
        if ext:
            return Q.L2EntryExtended.build(dict(entry=_std_entry(ent), bitmap=dict(
                sub_zero=0xFFFFFFFF, sub_alloc=0)), cluster_bits=self.cb)
        return Q.L2Entry.build(_std_entry(ent, zero=True), cluster_bits=self.cb)

    def _mixed(self, ent, ext, data: bytes) -> bytes | None:  # noqa: ANN001
        """Extended L2: the all-zero subclusters of a data cluster become zero subclusters."""
        sc = self.cs // 32
        zero = sum(1 << i for i in range(32) if not any(data[i * sc : (i + 1) * sc]))
        if not zero:
            return None
        self.counts["mixed"] += 1
        return Q.L2EntryExtended.build(dict(entry=_std_entry(ent), bitmap=dict(
            sub_zero=zero, sub_alloc=0xFFFFFFFF & ~zero)), cluster_bits=self.cb)


CASES = [("q10-snapshots", "s1", "zlib"), ("q10-snapshots", "s1", "zstd"),
         ("q10-small-clusters-zstd", "small", "zstd"), ("q10-extl2-resized", "before-resize",
                                                        "zlib")]


@pytest.fixture(scope="module")
def rewritten(tmp_path_factory):  # noqa: ANN001, ANN201
    made: dict = {}

    def get(name: str, snap: str, kind: str) -> tuple[Path, dict]:
        if name not in COMMITTED:
            pytest.skip(f"{name} is not bundled")
        key = (name, snap, kind)
        if key not in made:
            out = tmp_path_factory.mktemp("rewritten") / f"{name}-{kind}.qcow2"
            shutil.copyfile(image_file(name), out)
            made[key] = (out, Rewriter(out, snap, kind).run())
        return made[key]

    return get


@pytest.mark.parametrize("name,snap,kind", CASES)
def test_rewritten_state_reads_the_same_bytes(name, snap, kind, rewritten) -> None:  # noqa: ANN001
    path, counts = rewritten(name, snap, kind)
    man, _ = scenario(name)
    assert counts["compressed"] > 0
    with R.open_snapshot(str(path), snap) as src:
        lay = src.container.layout
        assert lay.bytes_of(R.KIND_COMPRESSED) > 0 and not src.container.zero_copy
        assert (lay.bytes_of(R.KIND_ZERO) > 0) == (counts["zero"] + counts["mixed"] > 0)
        assert hashlib.sha256(src.buf).hexdigest() == man["snapshots"][snap]["qemu_read_state"][
            "sha256"]
        walk = walk_stream(src.buf, src.base)
        assert walk.error is None
        Capture(src, walk)  # the walk's page maps build on it as on any file
        # compressed clusters take less room than the clusters they replace
        assert lay.allocated < lay.size


def test_extended_l2_mixed_clusters_are_split_by_subcluster(rewritten) -> None:  # noqa: ANN001
    path, counts = rewritten("q10-extl2-resized", "before-resize", "zlib")
    assert counts["mixed"] > 0
    with R.open_image(str(path)) as img:
        lay = img.state_layout(img.find_snapshot("before-resize"))
    r = lay.runs
    sub = img.header.cluster_size // 32
    zero = r[r["kind"] == R.KIND_ZERO]
    assert len(zero) and all(int(x) % sub == 0 for x in zero["length"])
    assert any(int(x) % img.header.cluster_size for x in zero["length"])


@pytest.mark.parametrize("name,snap,kind", CASES[1:])  # deflate: checked on the extended L2 one
def test_qemu_reads_the_rewritten_state_the_same(name, snap, kind, rewritten, tmp_path) -> None:  # noqa: ANN001
    if not shutil.which("qemu-img") or not shutil.which("qemu-io"):
        pytest.skip("qemu-img / qemu-io are not installed (Debian package qemu-utils)")
    import json
    import subprocess

    path, _ = rewritten(name, snap, kind)
    man, _ = scenario(name)
    chk = subprocess.run(["qemu-img", "check", "--output=json", str(path)], capture_output=True,
                         text=True)
    res = json.loads(chk.stdout)
    assert chk.returncode == 0 and not res.get("corruptions") and not res.get("leaks"), chk.stdout
    mk = make_images_module()
    size = man["snapshots"][snap]["qemu_read_state"]["bytes"]
    got = mk.qemu_read_state(path, snap, size, tmp_path)
    assert got["sha256"] == man["snapshots"][snap]["qemu_read_state"]["sha256"]


def test_a_compressed_cluster_that_does_not_decompress(rewritten, tmp_path) -> None:  # noqa: ANN001
    path, _ = rewritten("q10-snapshots", "s1", "zstd")
    bad = tmp_path / "bad.qcow2"
    shutil.copyfile(path, bad)
    with R.open_image(str(bad)) as img:
        lay = img.state_layout(img.find_snapshot("s1"))
    c = lay.runs[lay.runs["kind"] == R.KIND_COMPRESSED][0]
    coff = int(c["host_offset"])
    with open(bad, "r+b") as f:
        f.seek(coff)
        f.write(b"\xff" * 16)
    with pytest.raises(FormatError) as e:
        R.open_snapshot(str(bad), "s1")
    assert e.value.offset == coff and f"0x{coff:x}" in str(e.value)
    assert "zstd cluster" in str(e.value) and "\n" not in str(e.value)


def test_reordered_clusters_are_read_in_place(tmp_path) -> None:  # noqa: ANN001
    """Two data clusters of a state swapped (contents and L2 entries): five page-aligned
    runs, read in place from the image's pages (no copy), with the same bytes."""
    name = "q10-snapshots"
    if name not in COMMITTED:
        pytest.skip(f"{name} is not bundled")
    path = tmp_path / "swapped.qcow2"
    shutil.copyfile(image_file(name), path)
    with R.open_image(str(path)) as img:
        h, sn = img.header, img.find_snapshot("s1")
    cs, cov = h.cluster_size, h.l1_coverage
    with open(path, "r+b") as f:
        f.seek(sn.l1_table_offset + sn.vm_state_offset // cov * 8)
        l2 = Q.L1Entry.parse(f.read(8)).l2_offset
        k, m = 1, sn.vm_state_size // cs - 2
        ents, data = [], []
        for i in (k, m):
            f.seek(l2 + i * 8)
            ents.append(f.read(8))
            f.seek(Q.L2Entry.parse(ents[-1], cluster_bits=h.cluster_bits).descriptor.host_offset)
            data.append(f.read(cs))
        for i, e, d in ((k, ents[1], data[0]), (m, ents[0], data[1])):
            f.seek(l2 + i * 8)
            f.write(e)
            f.seek(Q.L2Entry.parse(e, cluster_bits=h.cluster_bits).descriptor.host_offset)
            f.write(d)
    man, _ = scenario(name)
    with R.open_snapshot(str(path), "s1") as src:
        assert src.container.zero_copy and src.fd is None
        assert len(src.container.layout.runs) == 5
        assert hashlib.sha256(src.buf).hexdigest() == man["snapshots"]["s1"][
            "qemu_read_state"]["sha256"]
        assert walk_stream(src.buf, src.base).error is None
    if shutil.which("qemu-img"):
        import subprocess

        chk = subprocess.run(["qemu-img", "check", str(path)], capture_output=True, text=True)
        assert chk.returncode == 0, chk.stdout + chk.stderr


def _strip_extra_data(base: Path, out: Path) -> None:
    """The image with its snapshot table rewritten as QEMU before 1.1 wrote it: no extra
    data (no 64-bit state size, no disk size, no icount), at the end of the file."""
    import os

    shutil.copyfile(base, out)
    with R.open_image(str(out)) as img:
        h = img.header
        raws = [img.pread(s.entry_offset, 40 + s.extra_data_size + len(s.id) + len(s.name), "e")
                for s in img.snapshots]
    table = b""
    for r in raws:
        e = Q.QCowSnapshotEntry.parse(r)
        e.extra_data_size = 0
        e.extra_data = dict(vm_state_size_large=None, disk_size=None, icount=None, unknown=b"")
        table += Q.QCowSnapshotEntryPadded.build(e)
    with open(out, "r+b") as f:
        at = (os.path.getsize(out) + h.cluster_size - 1) // h.cluster_size * h.cluster_size
        f.seek(at)
        f.write(table)
        f.seek(Q.HEADER_FIELD_OFFSETS["snapshots_offset"])
        f.write(struct.pack(">Q", at))


def test_entries_without_extra_data_use_the_current_disk_size(tmp_path) -> None:  # noqa: ANN001
    name = "q10-snapshots"
    if name not in COMMITTED:
        pytest.skip(f"{name} is not bundled")
    out = tmp_path / "old.qcow2"
    _strip_extra_data(image_file(name), out)
    man, _ = scenario(name)
    with R.open_image(str(out)) as img:
        for sn in img.snapshots:
            assert sn.extra_data_size == 0 and not sn.disk_size_recorded
            assert sn.disk_size == img.header.size and sn.icount is None
            assert sn.vm_state_size == sn.vm_state_size32
    with R.open_snapshot(str(out), "s2") as src:
        assert hashlib.sha256(src.buf).hexdigest() == man["snapshots"]["s2"][
            "qemu_read_state"]["sha256"]
    if shutil.which("qemu-img"):
        import json
        import subprocess

        q = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(out)],
                                      capture_output=True, text=True, check=True).stdout)
        with R.open_image(str(out)) as img:
            assert [(s.id, s.name, s.vm_state_size) for s in img.snapshots] == [
                (x["id"], x["name"], x["vm-state-size"]) for x in q["snapshots"]]


def test_without_its_disk_size_a_resized_snapshot_points_past_its_l1(tmp_path) -> None:  # noqa: ANN001
    """Why the disk size is recorded: without it QEMU takes the current (grown) size, and
    the state of a snapshot taken before the resize is looked for past its L1 table."""
    name = "q10-extl2-resized"
    if name not in COMMITTED:
        pytest.skip(f"{name} is not bundled")
    out = tmp_path / "old.qcow2"
    _strip_extra_data(image_file(name), out)
    with R.open_image(str(out)) as img:
        sn = img.find_snapshot("before-resize")
        assert sn.vm_state_offset == img.find_snapshot("after-resize").vm_state_offset
    with pytest.raises(R.InconsistentError, match="runs past the snapshot's L1 table") as e:
        R.open_snapshot(str(out), "before-resize")
    assert e.value.offset == sn.entry_offset + 8
