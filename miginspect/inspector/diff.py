"""Diff two captures: RAM page by page, and device state field by field.

Definitions (documented in `miginspect diff --help` too):

* A page's *content* is its final content (pagemap rules: last record wins in
  legacy streams, the bitmap wins in mapped-ram files). A page never sent, a
  zero page, a page past the end of a shorter block and a page of a block the
  other file lacks all have zero content.
* Pages are compared by content (xxh3-64 of the final 4 KiB): **equal** when
  the hashes match; otherwise **only_a** when B's content is zero (data only
  in A), **only_b** when A's content is zero, else **changed**. The four
  counts add up to the block's page count (the longer side's).
* State transitions are counted separately from content: how a page's
  recorded state (never sent / zero / data) differs between the files, e.g.
  `zero->data`. Across layouts a legacy "never sent" page and a mapped-ram
  clear bit are different states with equal content.
* RAM is identical when every block exists on both sides with the same
  used_length and every page is equal. Devices are identical when the same
  FULL sections exist and every decoded field has the same value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xxhash

from ..errors import MigError, UnsupportedError, UsageError
from .capture import Capture, open_capture
from .content import zero_hash
from .devices import DeviceState, decode_devices
from .pagemap import PAGE_DATA, PAGE_NEVER_SENT, PAGE_ZERO, STATE_WORDS
from .physical import DEFAULT_RAM_BLOCK, FOUR_GIB, below_4g_size
from .report import (
    NOTE_BITMAP_UNTRUSTED,
    NOTE_DEVICES_NOT_COMPARED,
    NOTE_MACHINE_TYPES_DIFFER,
    NOTE_STOPPED,
    SEVERITY_WARNING,
    Note,
    Stop,
    note,
    stop_of,
)

# Per-page difference codes (BlockDiff.kind).
EQUAL = 0
CHANGED = 1
ONLY_A = 2
ONLY_B = 3
KIND_NAMES = {EQUAL: "equal", CHANGED: "changed", ONLY_A: "only_a", ONLY_B: "only_b"}

# Page states beside pagemap's: the block does not exist / the page lies past its end.
STATE_MISSING = 9
_STATE_LABELS = {**STATE_WORDS, STATE_MISSING: "missing"}

Progress = Callable[[int, int], None]


# -- guest-physical addresses -----------------------------------------------------

def pc_ram_lowmem(machine_type: str | None, ram_size: int) -> int | None:
    """Bytes of the main RAM block mapped below 4 GiB on x86 pc (i440fx) / q35 (the
    rule lives in `physical`), None for other machines."""
    try:
        return below_4g_size(machine_type or "", ram_size)[0]
    except MigError:
        return None


def block_gpa(machine_type: str | None, block: str, ram_size: int, offset: int) -> int | None:
    """Guest-physical address of byte `offset` of `block`; only the main RAM block of
    pc/q35 machines has a fixed one (ROMs and VRAM move with BARs)."""
    if block != DEFAULT_RAM_BLOCK:
        return None
    low = pc_ram_lowmem(machine_type, ram_size)
    if low is None:
        return None
    return offset if offset < low else FOUR_GIB + (offset - low)


# -- results ---------------------------------------------------------------------------

@dataclass
class PageRange:
    """A run of consecutive differing pages of one block."""

    first_page: int
    pages: int
    offset: int  # block offset in bytes
    length: int
    gpa: int | None
    changed: int
    only_a: int
    only_b: int

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class StateTransition:
    """Pages whose recorded state is `a` in A and `b` in B (never sent, zero, data,
    missing)."""

    a: str
    b: str
    pages: int


@dataclass
class ChangedPage:
    """One differing page (`--pages`), with both hashes and states."""

    page: int
    offset: int  # block offset
    gpa: int | None
    kind: str  # KIND_NAMES
    hash_a: str  # xxh3-64, hex
    hash_b: str
    state_a: str
    state_b: str


@dataclass
class BlockDiff:
    name: str
    pages: int
    equal: int
    changed: int
    only_a: int
    only_b: int
    used_length_a: int | None
    used_length_b: int | None
    zero_to_data: int  # zero or never sent in A, data in B
    data_to_zero: int
    transitions: list[StateTransition]
    ranges: list[PageRange]
    # per page, not in JSON unless asked: difference code, hashes, states
    kind: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.uint8))
    hash_a: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.uint64))
    hash_b: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.uint64))
    state_a: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.uint8))
    state_b: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, np.uint8))
    page_size: int = 4096
    gpa_low: int | None = None  # pc.ram bytes below 4 GiB (guest-physical mapping)

    @property
    def missing(self) -> str | None:
        if self.used_length_a is None:
            return "a"
        if self.used_length_b is None:
            return "b"
        return None

    @property
    def identical(self) -> bool:
        return self.equal == self.pages and self.used_length_a == self.used_length_b

    @property
    def differing(self) -> int:
        return self.pages - self.equal

    def page_gpa(self, page: int) -> int | None:
        if self.gpa_low is None:
            return None
        off = page * self.page_size
        return off if off < self.gpa_low else FOUR_GIB + (off - self.gpa_low)

    def changed_pages(self) -> list[ChangedPage]:
        """Every differing page with both hashes and states (for --pages)."""
        return [ChangedPage(i, i * self.page_size, self.page_gpa(i),
                            KIND_NAMES[int(self.kind[i])], f"{int(self.hash_a[i]):016x}",
                            f"{int(self.hash_b[i]):016x}", _STATE_LABELS[int(self.state_a[i])],
                            _STATE_LABELS[int(self.state_b[i])])
                for i in np.flatnonzero(self.kind != EQUAL).tolist()]

    def picture(self, cells: int) -> list[int]:
        """The block cut into `cells` equal spans; each cell is the strongest
        difference in it (EQUAL < ONLY_A/ONLY_B < CHANGED), -1 for cells past the end."""
        n = self.pages
        if n == 0:
            return []
        cells = min(cells, n)
        edges = (np.arange(cells + 1, dtype=np.int64) * n) // cells
        rank = np.array([0, 3, 1, 2], np.uint8)[self.kind]  # changed strongest
        best = np.maximum.reduceat(rank, edges[:-1]) if len(rank) else np.zeros(cells, np.uint8)
        back = np.array([EQUAL, ONLY_A, ONLY_B, CHANGED], np.int64)
        return back[best].tolist()

    def to_json(self, pages: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "pages": self.pages,
            "equal": self.equal,
            "changed": self.changed,
            "only_a": self.only_a,
            "only_b": self.only_b,
            "used_length_a": self.used_length_a,
            "used_length_b": self.used_length_b,
            "missing": self.missing,
            "zero_to_data": self.zero_to_data,
            "data_to_zero": self.data_to_zero,
            "transitions": {f"{t.a}->{t.b}": t.pages for t in self.transitions},
            "ranges": [r.to_json() for r in self.ranges],
        }
        if pages:
            d["changed_pages"] = self.changed_pages()
        return d


@dataclass
class FieldDiff:
    path: str
    type: str | None
    a: Any
    b: Any
    offset_a: int | None
    offset_b: int | None


@dataclass
class DeviceDiff:
    key: str  # idstr, with #instance when not 0
    vmsd_name: str | None
    status: str  # "changed", "only_a", "only_b"
    version_a: int | None
    version_b: int | None
    fields: list[FieldDiff] = field(default_factory=list)
    error: str | None = None


@dataclass
class DevicesDiff:
    compared: int
    identical: bool
    devices: list[DeviceDiff]  # only those that differ

    def to_json(self) -> dict[str, Any]:
        return {
            "compared": self.compared,
            "identical": self.identical,
            "devices": [
                {**{k: v for k, v in d.__dict__.items() if k != "fields"},
                 "fields": [dict(f.__dict__) for f in d.fields]}
                for d in self.devices
            ],
        }


@dataclass
class DiffReport:
    path_a: str
    path_b: str
    format_a: str
    format_b: str
    machine_a: str | None
    machine_b: str | None
    page_size: int
    blocks: list[BlockDiff]
    devices: DevicesDiff | None
    notices: list[Note] = field(default_factory=list)
    bitmap_layout_a: str | None = None  # mapped-ram sides: the layout the bitmaps were read with
    bitmap_layout_b: str | None = None
    bitmap_untrusted_a: dict[str, str] = field(default_factory=dict)  # block -> why
    bitmap_untrusted_b: dict[str, str] = field(default_factory=dict)
    snapshot_a: str | None = None  # a disk image's internal snapshot ("ID NAME")
    snapshot_b: str | None = None
    stopped_a: Stop | None = None  # the walk of A stopped early (--partial)
    stopped_b: Stop | None = None

    @property
    def ram_identical(self) -> bool:
        return all(b.identical for b in self.blocks)

    @property
    def devices_identical(self) -> bool | None:
        return None if self.devices is None else self.devices.identical

    @property
    def identical(self) -> bool:
        return self.ram_identical and self.devices_identical is not False

    def totals(self) -> dict[str, int]:
        keys = ("pages", "equal", "changed", "only_a", "only_b", "zero_to_data", "data_to_zero")
        return {k: sum(getattr(b, k) for b in self.blocks) for k in keys}

    def to_json(self, pages: bool = False) -> dict[str, Any]:
        sides = [{"path": self.path_a, "format": self.format_a, "machine_type": self.machine_a,
                  "bitmap_layout": self.bitmap_layout_a,
                  "bitmap_untrusted": dict(self.bitmap_untrusted_a), "stopped": self.stopped_a},
                 {"path": self.path_b, "format": self.format_b, "machine_type": self.machine_b,
                  "bitmap_layout": self.bitmap_layout_b,
                  "bitmap_untrusted": dict(self.bitmap_untrusted_b), "stopped": self.stopped_b}]
        for side, snap in zip(sides, (self.snapshot_a, self.snapshot_b), strict=True):
            if snap is not None:  # a qcow2 image's internal snapshot
                side["snapshot"] = snap
        return {
            "a": sides[0],
            "b": sides[1],
            "identical": self.identical,
            "ram_identical": self.ram_identical,
            "devices_identical": self.devices_identical,
            "page_size": self.page_size,
            "totals": self.totals(),
            "blocks": [b.to_json(pages) for b in self.blocks],
            "devices": None if self.devices is None else self.devices.to_json(),
            "notices": list(self.notices),
        }


# -- one side: what a diff needs of a capture (picklable, so a worker can build it) -----

@dataclass
class SideBlock:
    name: str
    used_length: int
    state: np.ndarray  # uint8 PAGE_*
    hashes: np.ndarray  # uint64 xxh3-64 of each page's final content

    @property
    def pages(self) -> int:
        return len(self.state)


@dataclass
class Side:
    path: str
    format: str
    machine_type: str | None
    page_size: int
    blocks: list[SideBlock]
    walk_error: Stop | None = None
    devices: list[DeviceState] | None = None
    devices_error: str | None = None
    bitmap_layout: str | None = None  # mapped-ram: the layout its bitmaps were read with
    bitmap_untrusted: dict[str, str] = field(default_factory=dict)  # block -> why
    snapshot: str | None = None  # "ID NAME" of a disk image's internal snapshot

    def block(self, name: str) -> SideBlock | None:
        return next((b for b in self.blocks if b.name == name), None)


def summarize(cap: Capture, progress: Progress | None = None, devices: bool = True) -> Side:
    """Hash every page of `cap` (and decode its devices) for `diff_sides`."""
    total = sum(m.pages for m in cap.maps.values()) or 1
    done = [0]

    def tick(n: int) -> None:
        if progress:
            progress((done[0] + n) * cap.page_size, total * cap.page_size)

    blocks = []
    for b in cap.blocks:
        bm = cap.maps[b.name]
        blocks.append(SideBlock(b.name, b.used_length, bm.state, cap.hashes(b.name, tick)))
        done[0] += bm.pages
        tick(0)
    trust = cap.bitmap_trust
    side = Side(cap.path, cap.format, cap.walk.machine_type, cap.page_size, blocks,
                stop_of(cap.walk.error),
                bitmap_layout=cap.bitmap_layout,
                bitmap_untrusted={n: c.untrusted for n, c in trust.blocks.items()
                                  if c.untrusted},
                snapshot=cap.source.container.brief().snapshot)
    if devices:
        try:
            side.devices = decode_devices(cap).devices
        except MigError as e:
            side.devices_error = e.message
    return side


def summarize_path(path: str, strict: bool = True, page_size: int | None = None,
                   devices: bool = True, snapshot: str | None = None
                   ) -> Side | tuple[str, str, int | None, str]:
    """`summarize` of the file at `path` (`snapshot`: of a disk image), for a worker
    process: a MigError comes back as (class name, message, offset, where) so that it
    crosses the process boundary whole."""
    try:
        with open_capture(path, strict=strict, page_size=page_size, snapshot=snapshot) as cap:
            return summarize(cap, devices=devices)
    except MigError as e:
        return (type(e).__name__, e.message, e.offset, e.where)


def raise_worker_error(res: tuple[str, str, int | None, str]) -> None:
    import miginspect.errors as errors

    cls = getattr(errors, res[0], MigError)
    raise cls(res[1], res[2], res[3])


# -- RAM ------------------------------------------------------------------------------

def _padded(side: Side, name: str, n: int) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(hashes, states, used_length) of block `name` padded with zero pages to `n`."""
    sb = side.block(name)
    if sb is not None and sb.pages == n:  # the common case: no padding, no copies
        return sb.hashes, sb.state, sb.used_length
    hashes = np.full(n, np.uint64(zero_hash(side.page_size)), np.uint64)
    states = np.full(n, STATE_MISSING, np.uint8)
    if sb is None:
        return hashes, states, None
    hashes[: sb.pages] = sb.hashes
    states[: sb.pages] = sb.state
    return hashes, states, sb.used_length


def _ranges(kind: np.ndarray, page_size: int, gpa_low: int | None,
            gpa: Callable[[int], int | None]) -> list[PageRange]:
    diff = kind != EQUAL
    if not diff.any():
        return []
    d = np.concatenate(([False], diff, [False])).astype(np.int8)
    starts = np.flatnonzero(np.diff(d) == 1)
    ends = np.flatnonzero(np.diff(d) == -1)
    if gpa_low is not None and gpa_low % page_size == 0:
        # a run that crosses the start of the above-4G part is two guest-physical runs
        cut = gpa_low // page_size
        split = (starts < cut) & (ends > cut)
        if split.any():
            starts = np.sort(np.concatenate((starts, np.full(int(split.sum()), cut))))
            ends = np.sort(np.concatenate((ends, np.full(int(split.sum()), cut))))
    csum = {k: np.concatenate(([0], np.cumsum(kind == k))) for k in (CHANGED, ONLY_A, ONLY_B)}
    out = []
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        out.append(PageRange(s, e - s, s * page_size, (e - s) * page_size, gpa(s),
                             int(csum[CHANGED][e] - csum[CHANGED][s]),
                             int(csum[ONLY_A][e] - csum[ONLY_A][s]),
                             int(csum[ONLY_B][e] - csum[ONLY_B][s])))
    return out


def diff_block(a: Side, b: Side, name: str) -> BlockDiff:
    xa, xb = a.block(name), b.block(name)
    n = max(xa.pages if xa else 0, xb.pages if xb else 0)
    ha, sa, la = _padded(a, name, n)
    hb, sb, lb = _padded(b, name, n)
    zh = np.uint64(zero_hash(a.page_size))
    same = ha == hb
    kind = np.full(n, CHANGED, np.uint8)
    kind[same] = EQUAL
    kind[~same & (hb == zh)] = ONLY_A
    kind[~same & (ha == zh)] = ONLY_B
    counts = np.bincount(kind, minlength=4)
    za = (sa == PAGE_ZERO) | (sa == PAGE_NEVER_SENT) | (sa == STATE_MISSING)
    zb = (sb == PAGE_ZERO) | (sb == PAGE_NEVER_SENT) | (sb == STATE_MISSING)
    trans: list[StateTransition] = []
    moved = sa != sb
    if moved.any():
        pairs = sa[moved].astype(np.int64) * 16 + sb[moved]
        vals, cnt = np.unique(pairs, return_counts=True)
        for v, c in zip(vals.tolist(), cnt.tolist(), strict=True):
            trans.append(StateTransition(_STATE_LABELS[v // 16], _STATE_LABELS[v % 16], int(c)))
    machine = a.machine_type or b.machine_type
    ram_size = (la if la is not None else lb) or 0
    low = pc_ram_lowmem(machine, ram_size) if name == DEFAULT_RAM_BLOCK else None
    bd = BlockDiff(
        name, n, int(counts[EQUAL]), int(counts[CHANGED]), int(counts[ONLY_A]),
        int(counts[ONLY_B]), la, lb,
        zero_to_data=int(np.count_nonzero(za & (sb == PAGE_DATA))),
        data_to_zero=int(np.count_nonzero((sa == PAGE_DATA) & zb)),
        transitions=trans, ranges=[], kind=kind, hash_a=ha, hash_b=hb, state_a=sa,
        state_b=sb, page_size=a.page_size, gpa_low=low)
    bd.ranges = _ranges(kind, a.page_size, low, bd.page_gpa)
    return bd


def diff_ram(a: Side, b: Side) -> list[BlockDiff]:
    if a.page_size != b.page_size:
        raise UnsupportedError(
            f"the files use different target page sizes ({a.page_size} and {b.page_size}); "
            "they come from different guest architectures", code="page-size-differs")
    names = [blk.name for blk in a.blocks]
    names += [blk.name for blk in b.blocks if blk.name not in names]
    return [diff_block(a, b, name) for name in names]


# -- devices ----------------------------------------------------------------------------

def _keyed(devs: list[DeviceState]) -> dict[str, DeviceState]:
    out: dict[str, DeviceState] = {}
    for d in devs:
        k = d.key
        i = 2
        while k in out:  # the same idstr/instance twice: keep both, in order
            k = f"{d.key}~{i}"
            i += 1
        out[k] = d
    return out


def diff_device_states(da: list[DeviceState], db: list[DeviceState]) -> DevicesDiff:
    ka, kb = _keyed(da), _keyed(db)
    out: list[DeviceDiff] = []
    for k in list(ka) + [k for k in kb if k not in ka]:
        x, y = ka.get(k), kb.get(k)
        if x is None or y is None:
            d = x or y
            assert d is not None
            out.append(DeviceDiff(k, d.vmsd_name, "only_a" if y is None else "only_b",
                                  x.version_id if x else None, y.version_id if y else None))
            continue
        la, lb = dict(x.leaves()), dict(y.leaves())
        fields = []
        for path in list(la) + [p for p in lb if p not in la]:
            na, nb = la.get(path), lb.get(path)
            va = na.value if na is not None else None
            vb = nb.value if nb is not None else None
            if na is None or nb is None or va == vb:
                if na is None or nb is None:
                    fields.append(FieldDiff(path, (na or nb).type if (na or nb) else None, va,
                                            vb, na.offset if na else None,
                                            nb.offset if nb else None))
                continue
            if isinstance(va, list) and isinstance(vb, list) and len(va) == len(vb):
                # arrays of numbers: name the elements that differ
                sa, sb = na.size // max(len(va), 1), nb.size // max(len(vb), 1)
                base = na.type.split("[")[0]
                for i, (ea, eb) in enumerate(zip(va, vb, strict=True)):
                    if ea != eb:
                        fields.append(FieldDiff(f"{path}[{i}]", base, ea, eb,
                                                na.offset + i * sa, nb.offset + i * sb))
                continue
            fields.append(FieldDiff(path, na.type, va, vb, na.offset, nb.offset))
        err = x.error or y.error
        if fields or x.version_id != y.version_id or err:
            out.append(DeviceDiff(k, x.vmsd_name, "changed", x.version_id, y.version_id,
                                  fields, err))
    compared = len(set(ka) & set(kb))
    return DevicesDiff(compared, not out, out)


def diff_devices(a: Capture, b: Capture) -> DevicesDiff:
    return diff_device_states(decode_devices(a).devices, decode_devices(b).devices)


# -- whole files -------------------------------------------------------------------------

def diff_sides(a: Side, b: Side, devices: bool = True) -> DiffReport:
    notices: list[Note] = []
    for tag, s in (("A", a), ("B", b)):
        if s.walk_error is not None:
            notices.append(note(NOTE_STOPPED, f"{tag}: the walk stopped early; pages after "
                                "that point count as never sent", tag, s.walk_error.offset,
                                SEVERITY_WARNING))
        for block, why in s.bitmap_untrusted.items():
            notices.append(note(NOTE_BITMAP_UNTRUSTED, f"{tag}: {block}: bitmap untrusted "
                                f"({why}); pages were taken from the {s.bitmap_layout} "
                                "reading", tag, severity=SEVERITY_WARNING))
    blocks = diff_ram(a, b)
    dd = None
    if devices:
        why = a.devices_error or b.devices_error
        if a.devices is not None and b.devices is not None:
            dd = diff_device_states(a.devices, b.devices)
        elif why:
            notices.append(note(NOTE_DEVICES_NOT_COMPARED,
                                f"device state not compared: {why}"))
    if a.machine_type != b.machine_type:
        notices.append(note(NOTE_MACHINE_TYPES_DIFFER, f"machine types differ: "
                            f"{a.machine_type} vs {b.machine_type}"))
    return DiffReport(a.path, b.path, a.format, b.format, a.machine_type, b.machine_type,
                      a.page_size, blocks, dd, notices, a.bitmap_layout, b.bitmap_layout,
                      a.bitmap_untrusted, b.bitmap_untrusted, a.snapshot, b.snapshot,
                      a.walk_error, b.walk_error)


def diff_captures(a: Capture, b: Capture, progress: Progress | None = None,
                  devices: bool = True) -> DiffReport:
    return diff_sides(summarize(a, progress, devices), summarize(b, progress, devices),
                      devices)


# -- one page --------------------------------------------------------------------------------

@dataclass
class HexRow:
    offset: int  # within the page
    a: bytes
    b: bytes

    @property
    def differs(self) -> bool:
        return self.a != self.b


@dataclass
class PageHexDiff:
    block: str
    page: int
    offset: int  # block offset of the page
    gpa: int | None
    state_a: str
    state_b: str
    hash_a: str
    hash_b: str
    differing_bytes: int
    rows: list[HexRow]  # 16-byte rows that differ (all rows with `context`)

    def to_json(self) -> dict[str, Any]:
        return {
            "block": self.block, "page": self.page, "offset": self.offset, "gpa": self.gpa,
            "state_a": self.state_a, "state_b": self.state_b, "hash_a": self.hash_a,
            "hash_b": self.hash_b, "differing_bytes": self.differing_bytes,
            "rows": [{"offset": r.offset, "a": r.a.hex(), "b": r.b.hex()} for r in self.rows],
        }


def parse_page_spec(spec: str) -> tuple[str, int]:
    """"BLOCK:OFFSET" (block names may contain ':'; OFFSET decimal or 0x hex) ->
    (block, byte offset)."""
    block, sep, off = spec.rpartition(":")
    if not sep or not block:
        raise UsageError(f"--page wants BLOCK:OFFSET (e.g. pc.ram:0x1000), got {spec!r}",
                         code="usage")
    try:
        value = int(off, 0)
    except ValueError as e:
        raise UsageError(f"--page offset {off!r} is not a number", code="usage") from e
    if value < 0:
        raise UsageError(f"--page offset {off!r} is negative", code="usage")
    return block, value


def page_hexdiff(a: Capture, b: Capture, block: str, offset: int) -> PageHexDiff:
    ps = a.page_size
    ma, mb = a.maps.get(block), b.maps.get(block)
    if ma is None and mb is None:
        names = sorted({x.name for x in a.blocks} | {x.name for x in b.blocks})
        raise UsageError(f"no RAMBlock named {block!r} in either file (blocks: "
                         f"{', '.join(names)})", code="usage")
    page = offset // ps
    n = max(ma.pages if ma else 0, mb.pages if mb else 0)
    if page >= n:
        raise UsageError(f"offset 0x{offset:x} is past the end of {block!r} ({n} pages)",
                         code="usage")

    def content(c: Capture, m: Any) -> tuple[bytes, str]:
        if m is None:
            return bytes(ps), "missing"
        if page >= m.pages:
            return bytes(ps), "past the end"
        return c.page(block, page), _STATE_LABELS[int(m.state[page])]

    pa, sta = content(a, ma)
    pb, stb = content(b, mb)
    va = np.frombuffer(pa, np.uint8)
    vb = np.frombuffer(pb, np.uint8)
    nd = int(np.count_nonzero(va != vb))
    rows = [HexRow(o, pa[o : o + 16], pb[o : o + 16]) for o in range(0, ps, 16)
            if pa[o : o + 16] != pb[o : o + 16]]
    used = (ma or mb).block.used_length  # type: ignore[union-attr]
    gpa = block_gpa(a.walk.machine_type or b.walk.machine_type, block, used, page * ps)
    return PageHexDiff(block, page, page * ps, gpa, sta, stb,
                       xxhash.xxh3_64_hexdigest(pa), xxhash.xxh3_64_hexdigest(pb), nd, rows)


__all__ = ["diff_captures", "diff_sides", "summarize", "summarize_path", "Side", "SideBlock",
           "raise_worker_error", "diff_ram", "diff_devices", "diff_device_states", "page_hexdiff",
           "parse_page_spec", "DiffReport", "BlockDiff", "PageRange", "StateTransition",
           "ChangedPage", "DevicesDiff",
           "DeviceDiff", "FieldDiff", "PageHexDiff", "block_gpa", "pc_ram_lowmem"]
