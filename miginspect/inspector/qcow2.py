"""qcow2 images: header, extensions, snapshot table, and the VM state of an internal
snapshot (`savevm`, QMP `snapshot-save`, `virsh snapshot-create`) as a `Source`.

The image is opened read-only and read with bounded `pread`s: every length field
(`nb_snapshots`, `l1_size`, `extra_data_size`, ...) is checked against QEMU's own
limits (block/qcow2.h) and the file size before anything is read or allocated.

A snapshot's VM state is a QEMU migration stream of `vm_state_size` bytes at guest
offsets from `vm_state_offset` (formats.qcow2.vm_state_offset), mapped by the
snapshot's L1 table. `Qcow2Image.state_layout` maps it once into runs of
(state_offset, host_offset, length, kind) with kind data / zero / unallocated /
compressed; `state_buffer` turns the runs into the buffer the stream walker reads:
an mmap of the image when the state is one contiguous, page-aligned host run (no
copy), the image's pages stitched into one mapping when every run is page aligned,
else an unnamed sparse temporary file (zero and unallocated runs are holes, data runs
copied in the kernel, compressed clusters inflated).

This module is the reader; the container kind that makes a snapshot's state the
`Source` every command reads (which snapshot, what `info` shows, how to load it) is
`containers/qcow2.py`. `open_snapshot` gives that Source directly. Offsets in its walk
are offsets in the VM state; `Qcow2Container.image_offset` gives the image offset of a
state offset.
"""

from __future__ import annotations

import errno
import io
import mmap
import os
import struct
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import zstandard

from ..errors import (
    BadMagicError,
    FormatError,
    InconsistentError,
    MigError,
    TruncatedError,
    UnsupportedError,
    UsageError,
)
from ..formats import qcow2 as Q
from .containers.magic import is_qcow2
from .inflate import max_inflate, temp_dir
from .parsing import parse_at
from .source import Source, StoredRuns

Progress = Callable[[int, int], None]

WHERE = "qcow2"

# Kinds of state runs.
KIND_DATA = 0  # bytes in host clusters
KIND_ZERO = 1  # reads as zeros (zero flag / zero subcluster bit)
KIND_UNALLOCATED = 2  # no cluster: reads as zeros (or from a backing file)
KIND_COMPRESSED = 3  # one compressed cluster (deflate or zstd)
KIND_NAMES = ("data", "zero", "unallocated", "compressed")

#: One run of the VM state: state bytes [state_offset, +length) come from host_offset
#: (data), a compressed cluster at host_offset of csize bytes (compressed), or nowhere.
RUN_DTYPE = np.dtype([("state_offset", "<u8"), ("host_offset", "<u8"), ("length", "<u8"),
                      ("kind", "u1"), ("csize", "<u4")])

#: Stable codes of the problems this module finds (practice 14).
CODE_NOT_QCOW2 = "qcow2-bad-magic"
CODE_HEADER = "qcow2-bad-header"
CODE_FEATURE = "qcow2-unsupported-feature"
CODE_ENCRYPTED = "qcow2-encrypted"
CODE_DATA_FILE = "qcow2-external-data-file"
CODE_SNAPSHOT_TABLE = "qcow2-bad-snapshot-table"
CODE_L1 = "qcow2-bad-l1"
CODE_L2 = "qcow2-bad-l2"
CODE_PAST_EOF = "qcow2-past-eof"
CODE_STATE = "qcow2-bad-state"

_COPY_CHUNK = 8 << 20
_MAX_RUNS_FLOOR = 1 << 20


def _err(cls: type[MigError], msg: str, offset: int | None, code: str) -> MigError:
    return cls(msg, offset, WHERE, code=code)


def _text(raw: bytes) -> str:
    """A name from the image as QEMU sees it (a C string: up to the first NUL), with
    bytes that are not UTF-8 shown as \\xNN."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")


# -----------------------------------------------------------------------------------------
@dataclass
class Qcow2Header:
    """QCowHeader, with version-3 fields at their implied values for version 2."""

    version: int
    backing_file_offset: int
    backing_file_size: int
    cluster_bits: int
    size: int
    crypt_method: int
    l1_size: int
    l1_table_offset: int
    refcount_table_offset: int
    refcount_table_clusters: int
    nb_snapshots: int
    snapshots_offset: int
    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    refcount_order: int = 4
    header_length: int = Q.QCOW2_V2_HEADER_LENGTH
    compression_type: int = Q.QCOW2_COMPRESSION_TYPE_ZLIB

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def extended_l2(self) -> bool:
        return bool(self.incompatible_features & Q.QCOW2_INCOMPAT_EXTL2)

    @property
    def subclusters(self) -> int:
        return Q.QCOW_EXTL2_SUBCLUSTERS_PER_CLUSTER if self.extended_l2 else 1

    @property
    def l2_entry_size(self) -> int:
        return Q.L2E_SIZE_EXTENDED if self.extended_l2 else Q.L2E_SIZE_NORMAL

    @property
    def l1_coverage(self) -> int:
        return Q.l1_coverage(self.cluster_bits, self.extended_l2)

    @property
    def compression(self) -> str:
        return Q.QCOW2_COMPRESSION_NAMES.get(self.compression_type,
                                             f"unknown ({self.compression_type})")

    @property
    def encryption(self) -> str | None:
        if self.crypt_method == Q.QCOW_CRYPT_NONE:
            return None
        return Q.QCOW_CRYPT_NAMES.get(self.crypt_method, f"method {self.crypt_method}")


@dataclass
class HeaderExtension:
    magic: int
    name: str  # QEMU's name for the type, or "unknown"
    offset: int  # of its type field
    length: int  # of its data


@dataclass
class Qcow2Snapshot:
    """One snapshot table entry, with the values QEMU derives from it."""

    index: int  # position in the table
    id: str
    name: str
    entry_offset: int  # file offset of the table entry
    l1_table_offset: int
    l1_size: int
    date_sec: int
    date_nsec: int
    vm_clock_nsec: int
    vm_state_size: int  # the 64-bit extra-data value when present, else the 32-bit field
    vm_state_size32: int  # the 32-bit field itself
    disk_size: int  # from the extra data, else the image's current size (as QEMU does)
    disk_size_recorded: bool  # False: the entry has no disk_size, QEMU uses the current size
    icount: int | None  # None when absent or -1 (icount was off)
    extra_data_size: int
    vm_state_offset: int  # guest offset of the VM state

    @property
    def has_vm_state(self) -> bool:
        return self.vm_state_size > 0

    def label(self) -> str:
        return f"snapshot {self.name!r} (ID {self.id})"


@dataclass
class StateLayout:
    """Where a snapshot's VM state lives in the image, as runs (RUN_DTYPE)."""

    snapshot: Qcow2Snapshot
    runs: np.ndarray
    cluster_size: int
    l2_tables: int  # L2 tables the state's clusters are listed in

    @property
    def size(self) -> int:
        return self.snapshot.vm_state_size

    def bytes_of(self, kind: int) -> int:
        r = self.runs
        return int(r["length"][r["kind"] == kind].sum())

    @property
    def allocated(self) -> int:
        """Host bytes the state occupies: its data clusters (whole clusters, the last
        one included) and the compressed clusters' sectors."""
        r = self.runs
        d = r[r["kind"] == KIND_DATA]
        cs = self.cluster_size
        clusters = 0
        if len(d):  # clusters in the union of the runs (subclusters may share one)
            first = (d["host_offset"] // cs).astype(np.int64)
            last = ((d["host_offset"] + d["length"] - 1) // cs).astype(np.int64)
            o = np.argsort(first, kind="stable")
            f, la = first[o], last[o]
            before = np.concatenate(([-1], np.maximum.accumulate(la)[:-1]))
            clusters = int(np.maximum(0, la - np.maximum(f - 1, before)).sum())
        c = r[r["kind"] == KIND_COMPRESSED]
        sectors = (c["host_offset"] % Q.QCOW2_COMPRESSED_SECTOR_SIZE + c["csize"]
                   + Q.QCOW2_COMPRESSED_SECTOR_SIZE - 1) // Q.QCOW2_COMPRESSED_SECTOR_SIZE
        return clusters * cs + int(sectors.sum()) * Q.QCOW2_COMPRESSED_SECTOR_SIZE

    @property
    def contiguous(self) -> bool:
        """One data run holds the whole state."""
        r = self.runs
        return len(r) == 1 and int(r["kind"][0]) == KIND_DATA

    def image_offset(self, state_offset: int) -> int | None:
        """Image offset of a state byte (None when it is not stored: zero, unallocated,
        or inside a compressed cluster)."""
        r = self.runs
        i = int(np.searchsorted(r["state_offset"], state_offset, side="right")) - 1
        if i < 0 or state_offset >= int(r["state_offset"][i] + r["length"][i]):
            return None
        if int(r["kind"][i]) != KIND_DATA:
            return None
        return int(r["host_offset"][i]) + state_offset - int(r["state_offset"][i])

    def summary(self) -> dict[str, Any]:
        return {
            "runs": len(self.runs),
            "contiguous": self.contiguous,
            "allocated": self.allocated,
            "l2_tables": self.l2_tables,
            "bytes": {KIND_NAMES[k]: self.bytes_of(k) for k in range(len(KIND_NAMES))},
        }


#: QCowSnapshotHeader for struct (checked against the grammar by the tests).
_SNAPSHOT_HEADER = struct.Struct(">QIHHIIQII")
_WINDOW = 1 << 20


class _Window:
    """Bounded reads of a table: one pread of up to 1 MiB serves many small gets."""

    def __init__(self, img: Qcow2Image) -> None:
        self.img, self.start, self.data = img, 0, b""

    def get(self, offset: int, n: int, what: str) -> bytes:
        if not (self.start <= offset and offset + n <= self.start + len(self.data)):
            want = min(max(n, _WINDOW), max(n, self.img.file_size - offset))
            self.data = self.img.pread(offset, want, what, CODE_SNAPSHOT_TABLE)
            self.start = offset
        k = offset - self.start
        return self.data[k : k + n]


# -----------------------------------------------------------------------------------------
class Qcow2Image:
    """An opened qcow2 image: header, extensions, snapshot table. Read-only."""

    def __init__(self, path: str, fd: int | None = None) -> None:
        self.path = path
        # `fd`: an open descriptor of the image (a spooled or decompressed copy): dup'ed
        self.fd = os.dup(fd) if fd is not None else os.open(path, os.O_RDONLY)
        try:
            st = os.fstat(self.fd)
            self.file_size = st.st_size
            self.allocated_size = getattr(st, "st_blocks", 0) * 512
            self.extensions: list[HeaderExtension] = []
            self.backing_file: str | None = None
            self.backing_format: str | None = None
            self.data_file: str | None = None
            self.feature_names: dict[tuple[int, int], str] = {}
            self.header = self._read_header()
            self._read_extensions()
            self._check_features()
            self._check_tables()
            self.snapshots = self._read_snapshots()
        except BaseException:
            os.close(self.fd)
            raise

    # -- bounded reads --------------------------------------------------------------------
    def pread(self, offset: int, n: int, what: str, code: str = CODE_PAST_EOF) -> bytes:
        """Exactly `n` bytes at `offset` (callers bound `n`); TruncatedError past the end."""
        if offset < 0 or offset + n > self.file_size:
            have = max(0, self.file_size - offset)
            raise _err(TruncatedError, f"{what} (0x{n:x} bytes at 0x{offset:x}) runs past the "
                       f"end of the image (0x{self.file_size:x} bytes; {have} of them there)",
                       offset, code)
        data = os.pread(self.fd, n, offset)
        if len(data) != n:
            raise _err(TruncatedError, f"{what}: short read at 0x{offset:x}", offset, code)
        return data

    # -- header ---------------------------------------------------------------------------
    def _read_header(self) -> Qcow2Header:
        head = os.pread(self.fd, 112, 0)
        if not is_qcow2(head):
            raise _err(BadMagicError, f"not a qcow2 image (magic {head[:4]!r})", 0,
                       CODE_NOT_QCOW2)
        if len(head) < Q.QCOW2_V2_HEADER_LENGTH:
            raise _err(TruncatedError, "the image ends inside its qcow2 header", 0, CODE_HEADER)
        version = int.from_bytes(head[4:8], "big")
        if version not in (2, 3):
            raise _err(UnsupportedError, f"qcow2 version {version} is not supported (2, 3)",
                       4, CODE_HEADER)
        h, _ = parse_at(Q.QCowHeader, head, 0, "qcow2 header", code="qcow2-bad-header")
        v3 = {}
        if version >= 3:
            v3 = dict(incompatible_features=h.incompatible_features,
                      compatible_features=h.compatible_features,
                      autoclear_features=h.autoclear_features,
                      refcount_order=h.refcount_order, header_length=h.header_length,
                      compression_type=h.compression_type or 0)
        hdr = Qcow2Header(
            version=version, backing_file_offset=h.backing_file_offset,
            backing_file_size=h.backing_file_size, cluster_bits=h.cluster_bits, size=h.size,
            crypt_method=h.crypt_method, l1_size=h.l1_size, l1_table_offset=h.l1_table_offset,
            refcount_table_offset=h.refcount_table_offset,
            refcount_table_clusters=h.refcount_table_clusters, nb_snapshots=h.nb_snapshots,
            snapshots_offset=h.snapshots_offset, **v3)
        self._check_header(hdr)
        return hdr

    def _check_header(self, h: Qcow2Header) -> None:
        """QEMU's checks in qcow2_do_open, with its wording."""
        off = Q.HEADER_FIELD_OFFSETS

        def bad(msg: str, fld: str, cls: type[MigError] = FormatError) -> MigError:
            return _err(cls, msg, off[fld], CODE_HEADER)

        if not Q.MIN_CLUSTER_BITS <= h.cluster_bits <= Q.MAX_CLUSTER_BITS:
            raise bad(f"unsupported cluster size: 2^{h.cluster_bits}", "cluster_bits")
        if h.version >= 3:
            if h.header_length < Q.QCOW2_V3_MIN_HEADER_LENGTH:
                raise bad(f"qcow2 header too short ({h.header_length} bytes)", "header_length")
            if h.header_length > h.cluster_size:
                raise bad("qcow2 header exceeds cluster size", "header_length")
        if h.backing_file_offset > h.cluster_size:
            raise bad("invalid backing file offset", "backing_file_offset")
        if h.backing_file_offset and h.backing_file_size > Q.MAX_BACKING_FILE_SIZE:
            raise bad("backing file name too long", "backing_file_size")
        if h.refcount_order > Q.MAX_REFCOUNT_ORDER:
            raise bad("reference count entry width too large; may not exceed 64 bits",
                      "refcount_order")
        if h.crypt_method not in Q.QCOW_CRYPT_NAMES:
            raise bad(f"unsupported encryption method: {h.crypt_method}", "crypt_method",
                      UnsupportedError)
        if h.compression_type not in Q.QCOW2_COMPRESSION_NAMES:
            raise bad(f"unknown compression type: {h.compression_type}", "compression_type",
                      UnsupportedError)
        flag = bool(h.incompatible_features & Q.QCOW2_INCOMPAT_COMPRESSION)
        if flag != (h.compression_type != Q.QCOW2_COMPRESSION_TYPE_ZLIB):
            raise bad("compression type incompatible feature bit must " + ("not " if flag else "")
                      + "be set", "incompatible_features")
        if h.extended_l2 and h.cluster_size // Q.QCOW_EXTL2_SUBCLUSTERS_PER_CLUSTER < 512:
            raise bad(f"unsupported subcluster size: {h.cluster_size // 32}", "cluster_bits")

    def _read_extensions(self) -> None:
        h = self.header
        start = h.header_length
        end = h.backing_file_offset or h.cluster_size
        end = min(end, self.file_size, h.cluster_size)
        area = self.pread(start, max(0, end - start), "the header extension area",
                          CODE_HEADER) if end > start else b""
        pos = 0
        while pos + 8 <= len(area):
            ln = int.from_bytes(area[pos + 4 : pos + 8], "big")
            if ln > len(area) - pos - 8:
                raise _err(FormatError, "header extension too large", start + pos, CODE_HEADER)
            ext, n = parse_at(Q.Qcow2HeaderExtension, area, pos, "a header extension",
                              limit=len(area) - pos, code="qcow2-bad-header")
            self.extensions.append(HeaderExtension(
                ext.magic, Q.QCOW2_EXT_NAMES.get(ext.magic, "unknown"), start + pos, ext.len))
            if ext.magic == Q.QCOW2_EXT_MAGIC_END:
                break
            if ext.magic == Q.QCOW2_EXT_MAGIC_BACKING_FORMAT:
                self.backing_format = _text(ext.data)
            elif ext.magic == Q.QCOW2_EXT_MAGIC_DATA_FILE:
                self.data_file = _text(ext.data)
            elif ext.magic == Q.QCOW2_EXT_MAGIC_FEATURE_TABLE:
                for f in ext.data:
                    self.feature_names[(f.type, f.bit)] = _text(f.name)
            pos += n
        if h.backing_file_offset and h.backing_file_size:
            raw = self.pread(h.backing_file_offset, h.backing_file_size, "the backing file name",
                             CODE_HEADER)
            self.backing_file = _text(raw)

    def _check_features(self) -> None:
        unknown = self.header.incompatible_features & ~Q.QCOW2_INCOMPAT_MASK
        if unknown:
            names = [self.feature_names.get((Q.QCOW2_FEAT_TYPE_INCOMPATIBLE, b), f"bit {b}")
                     for b in range(64) if unknown >> b & 1]
            raise _err(UnsupportedError, "unsupported qcow2 feature(s): " + ", ".join(names),
                       Q.HEADER_FIELD_OFFSETS["incompatible_features"], CODE_FEATURE)

    def _check_tables(self) -> None:
        """The active L1 table and the snapshot table's position, as qcow2_do_open."""
        h = self.header
        off = Q.HEADER_FIELD_OFFSETS
        if h.nb_snapshots > Q.QCOW_MAX_SNAPSHOTS:
            raise _err(FormatError, f"snapshot table too large: nb_snapshots {h.nb_snapshots} "
                       f"is above QEMU's limit of {Q.QCOW_MAX_SNAPSHOTS}", off["nb_snapshots"],
                       CODE_SNAPSHOT_TABLE)
        if h.nb_snapshots and h.snapshots_offset % h.cluster_size:
            raise _err(FormatError, f"snapshot table offset invalid (0x{h.snapshots_offset:x} "
                       "is not cluster-aligned)", off["snapshots_offset"], CODE_SNAPSHOT_TABLE)
        self.check_l1(h.l1_table_offset, h.l1_size, "active L1 table", off["l1_size"],
                      off["l1_table_offset"])
        need = Q.size_to_l1(h.size, h.cluster_bits, h.extended_l2)
        if need > 0x7FFFFFFF:
            raise _err(FormatError, "image is too big", off["size"], CODE_HEADER)
        if h.l1_size < need:
            raise _err(InconsistentError, f"L1 table is too small ({h.l1_size} entries, the "
                       f"disk size needs {need})", off["l1_size"], CODE_L1)

    def check_l1(self, offset: int, entries: int, what: str, size_at: int,
                 offset_at: int) -> None:
        """qcow2_validate_table for an L1 table, plus: it lies inside the file."""
        if entries * Q.L1E_SIZE > Q.QCOW_MAX_L1_SIZE:
            raise _err(FormatError, f"{what} too large: {entries} entries (QEMU's limit is "
                       f"{Q.QCOW_MAX_L1_SIZE // Q.L1E_SIZE})", size_at, CODE_L1)
        if offset % self.header.cluster_size:
            raise _err(FormatError, f"{what} offset invalid (0x{offset:x} is not "
                       "cluster-aligned)", offset_at, CODE_L1)
        if entries and offset + entries * Q.L1E_SIZE > self.file_size:
            raise _err(TruncatedError, f"{what} at 0x{offset:x} ({entries} entries) runs past "
                       f"the end of the image (0x{self.file_size:x} bytes)", offset_at, CODE_L1)

    # -- snapshot table -------------------------------------------------------------------
    def _read_snapshots(self) -> list[Qcow2Snapshot]:
        """The snapshot table, read through a bounded window (the table may hold 65,536
        entries: the entries are unpacked with struct; tests check them against the
        QCowSnapshotEntry grammar)."""
        h = self.header
        out: list[Qcow2Snapshot] = []
        win = _Window(self)
        pos = h.snapshots_offset
        for i in range(h.nb_snapshots):
            pos = (pos + 7) // 8 * 8
            sn, pos = self._read_snapshot(win, i, pos)
            out.append(sn)
            if pos - h.snapshots_offset > Q.QCOW_MAX_SNAPSHOTS_SIZE:
                raise _err(FormatError, f"snapshot table is too big (more than "
                           f"{Q.QCOW_MAX_SNAPSHOTS_SIZE} bytes at entry {i})", sn.entry_offset,
                           CODE_SNAPSHOT_TABLE)
        return out

    def _read_snapshot(self, win: _Window, i: int, pos: int) -> tuple[Qcow2Snapshot, int]:
        h = self.header
        what = f"snapshot table entry {i}"
        (l1_off, l1_size, id_size, name_size, dsec, dnsec, clock, size32,
         extra_size) = _SNAPSHOT_HEADER.unpack(win.get(pos, Q.QCOW_SNAPSHOT_HEADER_SIZE, what))
        if extra_size > Q.QCOW_MAX_SNAPSHOT_EXTRA_DATA:
            raise _err(FormatError, f"too much extra metadata in {what} ({extra_size} bytes; "
                       f"QEMU's limit is {Q.QCOW_MAX_SNAPSHOT_EXTRA_DATA})", pos + 36,
                       CODE_SNAPSHOT_TABLE)
        n = Q.QCOW_SNAPSHOT_HEADER_SIZE + extra_size + id_size + name_size
        body = win.get(pos, n, what)
        extra = [int.from_bytes(body[40 + k : 48 + k], "big")
                 for k in range(0, min(extra_size, 24) - 7, 8)]
        size = extra[0] if len(extra) > 0 else size32
        recorded = len(extra) > 1
        disk = extra[1] if recorded else (h.size + 511) // 512 * 512
        icount = extra[2] if len(extra) > 2 and extra[2] != (1 << 64) - 1 else None
        at = 40 + extra_size
        sn = Qcow2Snapshot(
            index=i, id=_text(body[at : at + id_size]),
            name=_text(body[at + id_size : at + id_size + name_size]), entry_offset=pos,
            l1_table_offset=l1_off, l1_size=l1_size, date_sec=dsec, date_nsec=dnsec,
            vm_clock_nsec=clock, vm_state_size=size, vm_state_size32=size32, disk_size=disk,
            disk_size_recorded=recorded, icount=icount, extra_data_size=extra_size,
            vm_state_offset=Q.vm_state_offset(disk, h.cluster_bits, h.extended_l2))
        return sn, pos + n

    def find_snapshot(self, key: str) -> Qcow2Snapshot | None:
        """By ID first, then by name (QEMU's find_snapshot_by_id_or_name)."""
        for attr in ("id", "name"):
            for s in self.snapshots:
                if getattr(s, attr) == key:
                    return s
        return None

    # -- the VM state -----------------------------------------------------------------------
    def state_layout(self, sn: Qcow2Snapshot) -> StateLayout:
        """Map the VM state of `sn` into runs (once; nothing is read but L1/L2 tables)."""
        return _StateMapper(self, sn).run()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Qcow2Image:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_image(path: str, fd: int | None = None) -> Qcow2Image:
    """Open a qcow2 image read-only and read its header, extensions and snapshot table
    (`fd`: read it from this descriptor, e.g. a decompressed copy, instead of `path`)."""
    return Qcow2Image(path, fd)


# -----------------------------------------------------------------------------------------
class _StateMapper:
    """Builds the runs of one snapshot's VM state from its L1 and L2 tables: the L2
    entries of many tables are classified at once (vectorized), in batches, so a state of
    millions of small clusters costs one pass and memory grows with the runs."""

    BATCH = 1 << 16  # L2 entries classified together

    def __init__(self, img: Qcow2Image, sn: Qcow2Snapshot) -> None:
        self.img, self.sn, self.h = img, sn, img.header
        h = self.h
        self.cs = h.cluster_size
        self.nsub = h.subclusters
        self.unit = self.cs // self.nsub
        self.esz = h.l2_entry_size
        self.start = sn.vm_state_offset
        self.end = sn.vm_state_offset + sn.vm_state_size
        # QEMU writes a state as data clusters, a handful of runs; a bound on the pieces
        # keeps memory in proportion to the state's pages whatever the tables say
        self.max_runs = max(_MAX_RUNS_FLOOR, sn.vm_state_size // 4096 * 2)
        self.runs: list[np.ndarray] = []
        self.nruns = 0
        self.l2_tables = 0
        self.pending: list[tuple[bytes, int, int]] = []  # (entries, guest offset, file offset)
        self.npending = 0

    def fail(self, cls: type[MigError], msg: str, offset: int | None, code: str) -> MigError:
        return _err(cls, f"{self.sn.label()}: {msg}", offset, code)

    def run(self) -> StateLayout:
        sn, h, img = self.sn, self.h, self.img
        if not sn.has_vm_state:
            raise self.fail(UsageError, "holds no VM state", sn.entry_offset, CODE_STATE)
        if sn.vm_state_size > max_inflate():
            raise self.fail(FormatError, f"VM state of {sn.vm_state_size:,} bytes is above the "
                            f"limit of {max_inflate():,} (MIGINSPECT_MAX_INFLATE)",
                            sn.entry_offset + 32, CODE_STATE)
        img.check_l1(sn.l1_table_offset, sn.l1_size, f"the L1 table of {sn.label()}",
                     sn.entry_offset + 8, sn.entry_offset)
        cov = h.l1_coverage
        i0, i1 = self.start // cov, (self.end + cov - 1) // cov
        if i1 > sn.l1_size:
            raise self.fail(InconsistentError, f"the VM state (guest offsets 0x{self.start:x}-"
                            f"0x{self.end:x}) runs past the snapshot's L1 table ({sn.l1_size} "
                            f"entries map up to 0x{sn.l1_size * cov:x})", sn.entry_offset + 8,
                            CODE_L1)
        l1_at = sn.l1_table_offset + i0 * Q.L1E_SIZE
        l1 = np.frombuffer(img.pread(l1_at, (i1 - i0) * Q.L1E_SIZE, "the L1 table", CODE_L1),
                           ">u8").astype(np.uint64)
        self._check_l1(l1, i0, l1_at)
        for k, entry in enumerate(l1.tolist()):
            self._l1_entry(i0 + k, entry & Q.L1E_OFFSET_MASK)
        self._flush()
        runs = _merge(np.concatenate(self.runs) if self.runs else np.zeros(0, RUN_DTYPE))
        self._check_overlaps(runs)
        return StateLayout(sn, runs, self.cs, self.l2_tables)

    def _check_l1(self, l1: np.ndarray, i0: int, at: int) -> None:
        """Every L2 table the state needs is cluster-aligned, inside the file, used once."""
        l2 = l1 & np.uint64(Q.L1E_OFFSET_MASK)
        used = l2 != 0
        for bad, why in (
            (used & (l2 % np.uint64(self.cs) != 0), "unaligned"),
            (used & (l2 + np.uint64(self.cs) > np.uint64(self.img.file_size)),
             f"past the end of the image (0x{self.img.file_size:x} bytes)"),
        ):
            if bad.any():
                k = int(np.argmax(bad))
                cls = InconsistentError if why == "unaligned" else TruncatedError
                raise self.fail(cls, f"L1 entry {i0 + k} points to an L2 table at "
                                f"0x{int(l2[k]):x}, {why}", at + k * Q.L1E_SIZE,
                                CODE_L1 if why == "unaligned" else CODE_PAST_EOF)
        order = np.argsort(l2, kind="stable")
        srt = l2[order]
        dup = (srt[1:] == srt[:-1]) & (srt[1:] != 0)
        if dup.any():
            k = int(order[int(np.argmax(dup)) + 1])
            raise self.fail(InconsistentError, f"L1 entry {i0 + k} points to the L2 table at "
                            f"0x{int(l2[k]):x} a second time", at + k * Q.L1E_SIZE, CODE_L1)

    def _l1_entry(self, index: int, l2: int) -> None:
        cov = self.h.l1_coverage
        lo, hi = max(self.start, index * cov), min(self.end, (index + 1) * cov)
        if not l2:
            self._flush()
            self._add(_one_run(lo - self.start, 0, hi - lo, KIND_UNALLOCATED))
            return
        first = (lo - index * cov) // self.cs
        last = (hi - index * cov + self.cs - 1) // self.cs
        at = l2 + first * self.esz
        raw = self.img.pread(at, (last - first) * self.esz, f"the L2 table at 0x{l2:x}", CODE_L2)
        self.l2_tables += 1
        self.pending.append((raw, lo, at))
        self.npending += last - first
        if self.npending >= self.BATCH:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        counts = np.array([len(r) // self.esz for r, _, _ in self.pending], np.int64)
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        ents = np.frombuffer(b"".join(r for r, _, _ in self.pending), ">u8").astype(np.uint64)
        pos = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(starts, counts)
        guest = np.repeat(np.array([lo for _, lo, _ in self.pending], np.uint64), counts) \
            + pos.astype(np.uint64) * np.uint64(self.cs)
        self._where = (starts, [at for _, _, at in self.pending])
        self._batch_state = guest - np.uint64(self.start)
        self.pending, self.npending = [], 0
        self._add(self._classify(ents, guest))

    def entry_offset(self, i: int) -> int:
        """File offset of the i-th L2 entry of the batch being classified."""
        starts, ats = self._where
        t = int(np.searchsorted(starts, i, side="right")) - 1
        return ats[t] + (i - int(starts[t])) * self.esz

    def _classify(self, ents: np.ndarray, guest: np.ndarray) -> np.ndarray:
        """Runs of the clusters whose L2 entries are `ents` (at guest offsets `guest`)."""
        h = self.h
        word = ents[:: self.esz // 8]
        bitmap = ents[1::2] if h.extended_l2 else np.zeros(len(word), np.uint64)
        comp = (word & np.uint64(Q.QCOW_OFLAG_COMPRESSED)) != 0
        host = word & np.uint64(Q.L2E_OFFSET_MASK)
        bad = ~comp & (host % np.uint64(self.cs) != 0)
        if bad.any():
            i = int(np.argmax(bad))
            raise self.fail(InconsistentError, f"cluster allocation offset 0x{int(host[i]):x} "
                            "unaligned", self.entry_offset(i), CODE_L2)
        if h.extended_l2:
            self._check_bitmaps(host, bitmap, comp)
        kind, mixed = _cluster_kinds(word, host, bitmap, comp, h.extended_l2)
        shift, mask, omask = Q.compressed_layout(h.cluster_bits)
        coff = word & np.uint64(omask)
        csize = ((word >> np.uint64(shift)) & np.uint64(mask)) * np.uint64(512) \
            + np.uint64(512) - (coff & np.uint64(511))
        u = np.zeros(len(word), RUN_DTYPE)
        u["state_offset"] = guest - np.uint64(self.start)
        u["host_offset"] = np.where(comp, coff, host)
        u["length"] = self.cs
        u["kind"] = kind
        u["csize"] = np.where(comp, csize, 0).astype(np.uint32)
        if mixed.any():
            u = self._expand(u, bitmap, mixed)
        size = np.uint64(self.sn.vm_state_size)
        u = u[u["state_offset"] < size]
        u["length"] = np.minimum(u["length"], size - u["state_offset"])
        self._check_past_eof(u)
        return _units_to_runs(u)

    def _expand(self, u: np.ndarray, bitmap: np.ndarray, mixed: np.ndarray) -> np.ndarray:
        """Clusters whose subclusters differ become one unit per subcluster."""
        n, sc = self.nsub, self.unit
        rows = np.flatnonzero(mixed)
        sub = np.arange(n, dtype=np.uint64)
        bm = bitmap[rows][:, None]
        alloc = ((bm >> sub) & np.uint64(1)) != 0
        zero = ((bm >> (sub + np.uint64(32))) & np.uint64(1)) != 0
        e = np.zeros((len(rows), n), RUN_DTYPE)
        e["state_offset"] = u["state_offset"][rows][:, None] + sub * np.uint64(sc)
        e["host_offset"] = u["host_offset"][rows][:, None] + sub * np.uint64(sc)
        e["length"] = sc
        e["kind"] = np.where(zero, KIND_ZERO, np.where(alloc, KIND_DATA, KIND_UNALLOCATED))
        out = np.concatenate((u[~mixed], e.reshape(-1)))
        return out[np.argsort(out["state_offset"], kind="stable")]

    def _check_bitmaps(self, host: np.ndarray, bitmap: np.ndarray, comp: np.ndarray) -> None:
        """QCOW2_SUBCLUSTER_INVALID: a subcluster both allocated and zero, or allocated
        subclusters in a cluster without a host offset."""
        lo32 = np.uint64(Q.QCOW_L2_BITMAP_ALL_ALLOC)
        both = ((bitmap >> np.uint64(32)) & bitmap & lo32) != 0
        orphan = (host == 0) & ((bitmap & lo32) != 0)
        bad = ~comp & (both | orphan)
        if bad.any():
            i = int(np.argmax(bad))
            raise self.fail(InconsistentError, f"invalid subcluster bitmap 0x{int(bitmap[i]):016x}"
                            " in extended L2 entry", self.entry_offset(i), CODE_L2)

    def _check_past_eof(self, u: np.ndarray) -> None:
        """Data a state byte needs, or a compressed cluster, lies past the end of the file."""
        size = np.uint64(self.img.file_size)
        k = u["kind"]
        past = ((k == KIND_DATA) & (u["host_offset"] + u["length"] > size)) | (
            (k == KIND_COMPRESSED) & (u["host_offset"] + u["csize"] > size))
        if past.any():
            i = int(np.argmax(past))
            so = int(u["state_offset"][i])
            what = "compressed cluster" if k[i] == KIND_COMPRESSED else "cluster"
            first = int(np.searchsorted(self._batch_state, np.uint64(so // self.cs * self.cs)))
            raise self.fail(TruncatedError, f"the VM state is cut short: the {what} at "
                            f"0x{int(u['host_offset'][i]):x} holding state offset 0x{so:x} is "
                            f"past the end of the image (0x{self.img.file_size:x} bytes); "
                            f"{self.sn.vm_state_size:,} bytes of state expected",
                            self.entry_offset(first), CODE_PAST_EOF)

    def _add(self, runs: np.ndarray) -> None:
        self.nruns += len(runs)
        if self.nruns > self.max_runs:
            raise self.fail(FormatError, f"the VM state is split into more than "
                            f"{self.max_runs:,} pieces (damaged or hostile tables)",
                            self.sn.entry_offset, CODE_STATE)
        self.runs.append(runs)

    def _check_overlaps(self, runs: np.ndarray) -> None:
        """A host cluster may hold one piece of the state only (QEMU never maps two guest
        clusters of one L1 table to the same host cluster); this also bounds the copy
        work by the file size."""
        for kind in (KIND_DATA, KIND_COMPRESSED):
            r = runs[runs["kind"] == kind]
            if len(r) < 2:
                continue
            o = np.argsort(r["host_offset"], kind="stable")
            hs, ln = r["host_offset"][o], r["length"][o]
            ends = hs + (ln if kind == KIND_DATA else np.uint64(1))
            clash = hs[1:] < ends[:-1]
            if clash.any():
                i = int(np.argmax(clash)) + 1
                raise self.fail(InconsistentError, f"host offset 0x{int(hs[i]):x} holds two "
                                "pieces of the VM state", int(hs[i]), CODE_L2)


def _cluster_kinds(word: np.ndarray, host: np.ndarray, bitmap: np.ndarray, comp: np.ndarray,
                   extended: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per cluster: its kind when all its subclusters agree, and which clusters are mixed
    (extended L2 only)."""
    if not extended:  # qcow2_get_cluster_type
        zero = (word & np.uint64(Q.QCOW_OFLAG_ZERO)) != 0
        kind = np.where(zero, KIND_ZERO, np.where(host != 0, KIND_DATA, KIND_UNALLOCATED))
        mixed = np.zeros(len(word), bool)
    else:
        alloc = bitmap & np.uint64(Q.QCOW_L2_BITMAP_ALL_ALLOC)
        zero = bitmap >> np.uint64(32)
        full = np.uint64(Q.QCOW_L2_BITMAP_ALL_ALLOC)
        kind = np.where(zero == full, KIND_ZERO,
                        np.where(alloc == full, KIND_DATA, KIND_UNALLOCATED))
        mixed = ~((zero == full) | (alloc == full) | ((alloc == 0) & (zero == 0)))
    kind = np.where(comp, KIND_COMPRESSED, kind).astype(np.uint8)
    return kind, mixed & ~comp


def _one_run(state_offset: int, host: int, length: int, kind: int) -> np.ndarray:
    r = np.zeros(1, RUN_DTYPE)
    r[0] = (state_offset, host, length, kind, 0)
    return r


def _units_to_runs(u: np.ndarray) -> np.ndarray:
    """Merge consecutive units (in state order): same kind, and data contiguous on the
    host; a compressed cluster stays one run."""
    if not len(u):
        return u
    k, h, ln = u["kind"], u["host_offset"], u["length"]
    brk = np.ones(len(u), bool)
    brk[1:] = (k[1:] != k[:-1]) | (k[1:] == KIND_COMPRESSED) \
        | ((k[1:] == KIND_DATA) & (h[1:] != h[:-1] + ln[:-1]))
    starts = np.flatnonzero(brk)
    runs = u[starts].copy()
    ends = np.append(u["state_offset"][starts[1:]], u["state_offset"][-1] + ln[-1])
    runs["length"] = ends - runs["state_offset"]
    return runs


def _merge(runs: np.ndarray) -> np.ndarray:
    """Join runs from neighbouring batches that continue each other."""
    if len(runs) < 2:
        return runs
    return _units_to_runs(runs)


# -----------------------------------------------------------------------------------------
def refuse_unreadable(img: Qcow2Image) -> None:
    """Encrypted images and images with an external data file: a one-line refusal."""
    h = img.header
    if h.encryption:
        raise _err(UnsupportedError, f"{img.path} is encrypted ({h.encryption}): its VM state "
                   "cannot be read without the key (decrypt it first: qemu-img convert with "
                   "--object secret)", Q.HEADER_FIELD_OFFSETS["crypt_method"], CODE_ENCRYPTED)
    if h.incompatible_features & Q.QCOW2_INCOMPAT_DATA_FILE:
        name = f" ({img.data_file!r})" if img.data_file else ""
        raise _err(UnsupportedError, f"{img.path} keeps its clusters in an external data "
                   f"file{name}: not supported (QEMU has no internal snapshots there either)",
                   Q.HEADER_FIELD_OFFSETS["incompatible_features"], CODE_DATA_FILE)


def _listing(snaps: list[Qcow2Snapshot]) -> str:
    return ", ".join(f"{s.id} {s.name!r}" for s in snaps) or "none"


def choose_snapshot(img: Qcow2Image, key: str | None = None,
                    first: bool = False) -> Qcow2Snapshot:
    """The snapshot `key` (ID, else name, as QEMU looks it up); without `key`, the one
    snapshot that holds VM state (`first`: the first of several). UsageError when there
    is no such choice."""
    with_state = [s for s in img.snapshots if s.has_vm_state]
    if key is None:
        if len(with_state) == 1 or (first and with_state):
            return with_state[0]
        if not with_state:
            disk_only = [s for s in img.snapshots if not s.has_vm_state]
            extra = f" (disk-only snapshots: {_listing(disk_only)})" if disk_only else ""
            raise _err(UsageError, f"{img.path} has no snapshot with VM state{extra}", None,
                       CODE_STATE)
        raise _err(UsageError, f"{img.path} has {len(with_state)} snapshots with VM state; "
                   f"choose one with --snapshot ID|NAME: {_listing(with_state)}", None,
                   CODE_STATE)
    sn = img.find_snapshot(key)
    if sn is None:
        raise _err(UsageError, f"no snapshot with ID or name {key!r} in {img.path} (snapshots: "
                   f"{_listing(img.snapshots)})", None, CODE_STATE)
    if not sn.has_vm_state:
        raise _err(UsageError, f"{sn.label()} of {img.path} holds no VM state: a disk-only "
                   "snapshot, or its VM state is in another disk image of the same VM "
                   "(`miginspect snapshots IMG...` tells which)", sn.entry_offset, CODE_STATE)
    return sn


def vm_clock(ns: int) -> str:
    """Guest run time as qemu-img shows it: hours:minutes:seconds.milliseconds."""
    ms = ns // 1_000_000
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:04d}:{m:02d}:{s:02d}.{ms:03d}"


def _iso(sec: int, nsec: int) -> str:
    import datetime as _dt

    t = _dt.datetime.fromtimestamp(sec, _dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S") + f".{nsec:09d}Z"


@dataclass
class SnapshotFacts:
    """A snapshot table entry as the reports show it (`snapshots --json`, and
    `info --json` `container.snapshot`)."""

    id: str
    name: str
    date: str  # ISO 8601, UTC
    date_sec: int
    date_nsec: int
    vm_clock_ns: int
    vm_state_size: int
    disk_size: int
    disk_size_recorded: bool
    icount: int | None
    vm_state_offset: int | None  # guest offset of the VM state (None: no VM state)
    l1_table_offset: int
    l1_size: int
    entry_offset: int

    @classmethod
    def of(cls, sn: Qcow2Snapshot) -> SnapshotFacts:
        return cls(sn.id, sn.name, _iso(sn.date_sec, sn.date_nsec), sn.date_sec, sn.date_nsec,
                   sn.vm_clock_nsec, sn.vm_state_size, sn.disk_size, sn.disk_size_recorded,
                   sn.icount, sn.vm_state_offset if sn.has_vm_state else None,
                   sn.l1_table_offset, sn.l1_size, sn.entry_offset)


@dataclass
class ImageFacts:
    """The image facts of the reports."""

    path: str
    version: int
    cluster_size: int
    virtual_size: int
    extended_l2: bool
    compression_type: str
    encryption: str | None
    data_file: str | None
    backing_file: str | None
    backing_format: str | None
    file_size: int
    dirty: bool
    corrupt: bool

    @classmethod
    def of(cls, img: Qcow2Image) -> ImageFacts:
        h = img.header
        return cls(img.path, h.version, h.cluster_size, h.size, h.extended_l2, h.compression,
                   h.encryption, img.data_file, img.backing_file, img.backing_format,
                   img.file_size, bool(h.incompatible_features & Q.QCOW2_INCOMPAT_DIRTY),
                   bool(h.incompatible_features & Q.QCOW2_INCOMPAT_CORRUPT))


def snapshot_json(sn: Qcow2Snapshot) -> dict[str, Any]:
    """A snapshot table entry as the JSON reports show it."""
    return asdict(SnapshotFacts.of(sn))


def open_snapshot(path: str, snapshot: str | None = None,
                  progress: Progress | None = None) -> Source:
    """The VM state of `snapshot` (ID or name; None: the only one with VM state) of the
    qcow2 image `path`, as a Source the stream walker reads (base 0; offsets in the walk
    are state offsets). The same Source `source.open_source(path, options=
    OpenOptions(snapshot))` gives: its container is a `containers.qcow2.Qcow2Container`."""
    from .containers.qcow2 import open_state

    img = open_image(path)
    try:
        return open_state(img, snapshot, progress)
    except BaseException:
        img.close()
        raise


def state_notes(img: Qcow2Image, layout: StateLayout) -> list[str]:
    """What is unusual about where a state is: bytes not stored in the image."""
    notes = []
    holes = layout.bytes_of(KIND_UNALLOCATED) + layout.bytes_of(KIND_ZERO)
    if holes:
        notes.append(f"{holes:,} bytes of the VM state are not allocated in the image (zero or "
                     "unallocated clusters, read as zeros); QEMU writes every byte of a state, "
                     "so it is damaged or was not written by QEMU")
    if img.backing_file and layout.bytes_of(KIND_UNALLOCATED):
        notes.append(f"QEMU would read the unallocated bytes from the backing file "
                     f"{img.backing_file!r}")
    return notes


@dataclass
class StateBuffer:
    """A snapshot's VM state as a read-only buffer: the image's own pages mapped in place
    (`zero_copy`), or an unnamed sparse temporary file (`tmp`) holding a copy."""

    buf: Any
    zero_copy: bool
    tmp: Any = None  # the temporary file (its descriptor answers SEEK_HOLE)

    @property
    def fd(self) -> int | None:
        return self.tmp.fileno() if self.tmp is not None else None

    def closers(self) -> list[Any]:
        return [c for c in (self.tmp, self.buf) if c is not None]


def state_buffer(img: Qcow2Image, layout: StateLayout,
                 progress: Progress | None = None) -> StateBuffer:
    """The buffer the stream walker reads: an mmap of the image when the state is one
    contiguous, aligned host run, else the image's pages stitched into one mapping, else
    a copy (zero and unallocated runs as holes, compressed clusters inflated)."""
    size = layout.size
    host = int(layout.runs["host_offset"][0])
    mm: Any = None
    if layout.contiguous and host % mmap.ALLOCATIONGRANULARITY == 0:
        mm = mmap.mmap(img.fd, size, access=mmap.ACCESS_READ, offset=host)
    else:
        mm = _stitched(img.fd, layout)
    if mm is not None:  # the image's own pages: no copy
        _advise(mm)
        return StateBuffer(mm, True)
    tmp = _materialise(img, layout, progress)
    try:
        mm = mmap.mmap(tmp.fileno(), size, access=mmap.ACCESS_READ)
    except BaseException:
        tmp.close()
        raise
    _advise(mm)
    return StateBuffer(mm, False, tmp)


_MAP_FIXED = 0x10  # Linux, every architecture QEMU hosts
_libc: Any = None


def _stitched(fd: int, layout: StateLayout) -> mmap.mmap | None:
    """The state as one read-only mapping built from the image's own pages: an anonymous
    mapping of the state's size (zeros) with each data run mapped over its place
    (mmap MAP_FIXED). Only on Linux, and only when every data run starts on a page
    boundary in the image and in the state (clusters of 4 KiB or more) and nothing is
    compressed; None otherwise (the caller copies instead)."""
    global _libc
    g = mmap.ALLOCATIONGRANULARITY
    r = layout.runs
    if not os.uname().sysname == "Linux" or (r["kind"] == KIND_COMPRESSED).any():
        return None
    d = r[r["kind"] == KIND_DATA]
    ends_inside = d["state_offset"] + d["length"] < np.uint64(layout.size)
    if ((d["host_offset"] % np.uint64(g)).any() or (d["state_offset"] % np.uint64(g)).any()
            or ((d["length"] % np.uint64(g) != 0) & ends_inside).any()):
        return None
    try:
        import ctypes

        if _libc is None:
            lib = ctypes.CDLL(None, use_errno=True)
            lib.mmap.restype = ctypes.c_void_p
            lib.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                                 ctypes.c_int, ctypes.c_int64]
            _libc = lib
        mm = mmap.mmap(-1, layout.size, prot=mmap.PROT_READ)  # read-only, like the others
        view = np.frombuffer(mm, np.uint8)
        base = view.ctypes.data
        del view
    except (OSError, AttributeError, ValueError, TypeError):
        return None
    for so, ho, ln in zip(d["state_offset"].tolist(), d["host_offset"].tolist(),
                          d["length"].tolist(), strict=True):
        n = (ln + g - 1) // g * g
        got = _libc.mmap(base + so, n, mmap.PROT_READ, mmap.MAP_SHARED | _MAP_FIXED, fd, ho)
        if got != base + so:
            mm.close()
            return None
    return mm


def stored_runs(fd: int, layout: StateLayout) -> StoredRuns:
    """Where a state read in place is stored in the image: its data runs (the zero and
    unallocated ones read as zeros)."""
    d = layout.runs[layout.runs["kind"] == KIND_DATA]
    return StoredRuns(fd, d["state_offset"].astype(np.int64), d["host_offset"].astype(np.int64),
                      d["length"].astype(np.int64))


def _advise(mm: mmap.mmap) -> None:
    try:
        mm.madvise(mmap.MADV_SEQUENTIAL)
    except (AttributeError, OSError):
        pass


def _materialise(img: Qcow2Image, layout: StateLayout, progress: Progress | None) -> Any:
    """The state in an unnamed temporary file: data runs copied, compressed clusters
    inflated, zero and unallocated runs left as holes."""
    tmp = tempfile.TemporaryFile(prefix="miginspect-qcow2-", dir=temp_dir())
    try:
        out = tmp.fileno()
        total = layout.size
        copier = _Copier(img.fd, out)
        done = 0
        for so, ho, ln, kind, csize in layout.runs.tolist():
            if kind == KIND_DATA:
                copier.copy(ho, so, ln)
            elif kind == KIND_COMPRESSED:
                data = _inflate_cluster(img, ho, csize, so)[:ln]
                if data.count(0) != len(data):
                    copier.write(data, so)
            done += ln
            if progress is not None:
                progress(done, total)
        os.ftruncate(out, total)
    except BaseException:
        tmp.close()
        raise
    return tmp


class _Copier:
    """File-to-file copies in the kernel (copy_file_range), else through a bounded buffer."""

    def __init__(self, src: int, dst: int) -> None:
        self.src, self.dst = src, dst
        self.kernel = hasattr(os, "copy_file_range")

    def copy(self, src_off: int, dst_off: int, n: int) -> None:
        while n > 0:
            if self.kernel:
                try:
                    k = os.copy_file_range(self.src, self.dst, min(n, 1 << 30), src_off, dst_off)
                except OSError as e:
                    if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP,
                                       errno.EBADF, errno.EPERM):
                        raise
                    self.kernel = False
                    continue
            else:
                data = os.pread(self.src, min(n, _COPY_CHUNK), src_off)
                k = len(data)
                if k:
                    self.write(data, dst_off)
            if k <= 0:
                raise _err(TruncatedError, f"the image ends at 0x{src_off:x}, inside the VM "
                           "state", src_off, CODE_PAST_EOF)
            src_off, dst_off, n = src_off + k, dst_off + k, n - k

    def write(self, data: bytes, off: int) -> None:
        mv = memoryview(data)
        while len(mv):
            k = os.pwrite(self.dst, mv, off)
            mv, off = mv[k:], off + k


def _inflate_cluster(img: Qcow2Image, coff: int, csize: int, state_off: int) -> bytes:
    """One compressed cluster, decoded to exactly one cluster (as qcow2_co_decompress)."""
    h = img.header
    cs = h.cluster_size
    raw = img.pread(coff, csize, "a compressed cluster")
    try:
        if h.compression_type == Q.QCOW2_COMPRESSION_TYPE_ZSTD:
            reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw),
                                                                read_across_frames=True)
            out = b""
            while len(out) < cs:
                chunk = reader.read(cs - len(out))
                if not chunk:
                    break
                out += chunk
        else:  # raw deflate with a 4 KiB window (QEMU's zlib settings)
            out = zlib.decompressobj(-12).decompress(raw, cs)
    except (zlib.error, zstandard.ZstdError) as e:
        raise _err(FormatError, f"the {h.compression} cluster at 0x{coff:x} (state offset "
                   f"0x{state_off:x}) does not decompress: {e}", coff, CODE_STATE) from e
    if len(out) != cs:
        raise _err(FormatError, f"the {h.compression} cluster at 0x{coff:x} (state offset "
                   f"0x{state_off:x}) decompresses to {len(out)} bytes, not a cluster "
                   f"({cs})", coff, CODE_STATE)
    return out
