"""The one page-copy engine: final page contents of a capture written to an output file.

Used by `extract` (one raw file per RAMBlock, guest-physical images) and `convert`
(mapped-ram regions; page reads for legacy records). Rules:

* only data pages are written, at `dest + (page - first) * page_size`; zero and
  never-sent pages are never touched, so they stay holes (the caller sets the
  file's length);
* pages are taken in runs: consecutive data pages whose final copies lie at one
  constant stride in the input (a mapped-ram region: the page size; a batch of
  CONTINUE records: page size + 8), at most `RUN_BYTES` per run;
* a long run whose copies are contiguous in the input goes file to file with
  copy_file_range (never through this process); any other run (a batch of page
  records) is read with one scattering preadv that puts its pages side by side
  and written with one pwrite, by `WRITERS` threads at once, each with its own
  buffer (no page of the input is mapped into this process, so none has to be
  faulted in and dropped again: about 15% faster than writing from the mapping);
  the input is read through `Source.read_into` / `locate`, so a qcow2 snapshot's
  state is read from the image's clusters where they are;
* pages whose final content is a delta (XBZRLE) or compressed are rebuilt by
  `PageReader`, one page at a time;
* the destination extent of each long run of data pages is allocated up front
  (fallocate): the file system then places it in one go instead of extending
  the file write by write.

`read` (pages into this process, for building legacy records) uses pread on the
file behind the input's buffer: copying out of the mapping with numpy costs a
page fault per page (about 4x slower).
"""

from __future__ import annotations

import ctypes
import os
import queue
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import TruncatedError
from .capture import Capture
from .pagemap import PAGE_DATA, BlockMap

#: page data is moved in runs of at most this many bytes
RUN_BYTES = 1 << 20
#: runs of data pages shorter than this are not preallocated (a syscall each is not worth it)
PREALLOC_MIN = 256 << 10
#: threads reading and writing runs at once
WRITERS = 2
#: contiguous runs shorter than this are read and written, not copied file to file
KERNEL_COPY_MIN = 256 << 10


def pwrite_all(fd: int, data: Any, off: int) -> None:
    """Write all of `data` (a C-contiguous buffer) at `off`."""
    mv = memoryview(data).cast("B")
    while len(mv):
        n = os.pwrite(fd, mv, off)
        mv = mv[n:]
        off += n


class _Fallocate:
    """fallocate(2) mode 0 through libc; off for good where the file system says no
    (no emulation by writing zeros, unlike posix_fallocate)."""

    def __init__(self) -> None:
        self.fn: Any = None
        self.tried = False

    def _load(self) -> None:
        self.tried = True
        try:
            fn = ctypes.CDLL(None, use_errno=True).fallocate  # libc's, in this process
            fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
            fn.restype = ctypes.c_int
            self.fn = fn
        except (OSError, AttributeError):
            self.fn = None

    def __call__(self, fd: int, off: int, length: int) -> bool:
        if not self.tried:
            self._load()
        if self.fn is None or length <= 0:
            return False
        if self.fn(fd, 0, off, length) != 0:
            self.fn = None  # EOPNOTSUPP, ENOSYS, ...: not on this file system
            return False
        return True


_fallocate = _Fallocate()


def preallocate(fd: int, off: int, length: int) -> bool:
    """Allocate [off, off + length) of `fd` (extending it if needed); False when the file
    system cannot (then writes allocate as they go)."""
    return _fallocate(fd, off, length)


@dataclass
class PageRun:
    """`n` data pages of a block from page `first` on, whose final copies sit in the
    input at `offset`, `offset + stride`, ...; or one replayed page held in `data`."""

    first: int
    n: int
    offset: int
    stride: int
    data: bytes | None = None


def data_runs(state: np.ndarray, first: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of runs of consecutive data pages in [first, stop)."""
    d = np.concatenate(([False], state[first:stop] == PAGE_DATA, [False])).astype(np.int8)
    edges = np.diff(d)
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return starts + first, ends - starts


def write_pages(pages: np.ndarray, out_fd: int, dst: int) -> None:
    """Write an (n, page size) array of pages contiguously at `dst`."""
    if pages.flags.c_contiguous:
        pwrite_all(out_fd, pages, dst)
        return
    parts = [memoryview(pages[k]) for k in range(len(pages))]
    if os.pwritev(out_fd, parts, dst) != pages.size:
        pwrite_all(out_fd, np.ascontiguousarray(pages), dst)


class PageCopier:
    """Final page contents of one capture, a run of consecutive pages at a time."""

    #: a strided run is read as one span when its records are at most this far apart
    MAX_SPAN_STRIDE = 2

    def __init__(self, cap: Capture, max_bytes: int = RUN_BYTES) -> None:
        self.reader = cap.reader
        self.source = cap.source
        self.ps = cap.page_size
        self.per = max(1, min(max_bytes // self.ps, 1024))  # 1024: IOV_MAX of pwritev
        #: one buffer per slot (`read`): one per writing thread, the last for this one
        self.spans = [bytearray() for _ in range(WRITERS + 1)]
        self.own_slot = WRITERS
        self.copy_range = hasattr(os, "copy_file_range") and cap.source.has_file
        #: per slot: (count, stride) -> the scattering vectors and the pages they fill
        self._iovs: list[dict[tuple[int, int], tuple[list[memoryview], np.ndarray]]] = [
            {} for _ in self.spans]

    # -- runs ---------------------------------------------------------------------------
    def runs(self, bm: BlockMap, first: int = 0, stop: int | None = None) -> Iterator[PageRun]:
        """The data pages of `bm` in [first, stop), in page order, in runs."""
        stop = bm.pages if stop is None else min(stop, bm.pages)
        idx = np.flatnonzero(bm.state[first:stop] == PAGE_DATA) + first
        if not len(idx):
            return
        offs = bm.offset[idx]
        replay = np.zeros(len(idx), bool)
        replayed: Iterator[tuple[int, bytes]] = iter(())
        if bm.replay_pages is not None and len(bm.replay_pages):
            replay = np.isin(idx, bm.replay_pages)
            replayed = self._replayed(bm, idx[replay])
        # a run breaks before k when: pages not consecutive, a replayed page on either
        # side, or the stride between the input copies changes
        brk = np.ones(len(idx), bool)
        if len(idx) > 1:
            d_off = np.diff(offs)
            brk[1:] = (np.diff(idx) != 1) | replay[1:] | replay[:-1]
            brk[2:] |= d_off[1:] != d_off[:-1]
        starts = np.flatnonzero(brk).tolist() + [len(idx)]
        idx_l, offs_l = idx.tolist(), offs.tolist()
        for a, e in zip(starts[:-1], starts[1:], strict=True):
            if replay[a]:
                page, data = next(replayed)
                yield PageRun(page, 1, -1, self.ps, data)
                continue
            stride = offs_l[a + 1] - offs_l[a] if e - a > 1 else self.ps
            for c in range(a, e, self.per):
                yield PageRun(idx_l[c], min(self.per, e - c), offs_l[c], stride)

    def _replayed(self, bm: BlockMap, pages: np.ndarray) -> Iterator[tuple[int, bytes]]:
        """Replayed content of `pages` (ascending), one page at a time."""
        for p in pages.tolist():
            yield p, self.reader.page(bm, p)

    # -- reading ------------------------------------------------------------------------
    def _pread(self, off: int, length: int, slot: int = 0) -> memoryview:
        if len(self.spans[slot]) < length:
            self.spans[slot] = bytearray(length)
        mv = memoryview(self.spans[slot])[:length]
        got = self.source.read_into(off, mv)
        if got < length:
            raise TruncatedError(f"the input ends inside page data ({length - got} bytes "
                                 "missing)", off + got, "ram", code="truncated-ram")
        return mv

    def _scatter(self, run: PageRun, slot: int = 0) -> np.ndarray | None:
        """One preadv of the run's span whose vectors put the pages side by side and the
        bytes between them (record headers) into a scratch buffer. The vectors are built
        once per (count, stride)."""
        want = (run.n - 1) * run.stride + self.ps
        at = self.source.locate(run.offset, want)
        if at is None:
            return None
        key = (run.n, run.stride)
        cache = self._iovs[slot]
        hit = cache.get(key)
        if hit is None:
            ps, gap = self.ps, run.stride - self.ps
            pages = np.empty((run.n, ps), np.uint8)
            junk = memoryview(bytearray(gap))
            iov: list[memoryview] = []
            for k in range(run.n):
                if k:
                    iov.append(junk)
                iov.append(memoryview(pages[k]))
            if len(cache) >= 4:  # bounded: a few (count, stride) shapes recur
                cache.clear()
            hit = cache[key] = (iov, pages)
        if os.preadv(at[0], hit[0], at[1]) != want:
            return None
        return hit[1]

    def read(self, run: PageRun, slot: int = 0) -> np.ndarray:
        """The run's pages as an (n, page size) uint8 array, valid until the next read
        with the same `slot` (one buffer per slot: one per thread, so one can be written
        while another is filled)."""
        ps = self.ps
        if run.data is not None:
            return np.frombuffer(run.data, np.uint8).reshape(1, ps)
        if run.stride == ps or run.n == 1:
            return np.frombuffer(self._pread(run.offset, run.n * ps, slot), np.uint8).reshape(
                run.n, ps)
        if ps < run.stride <= self.MAX_SPAN_STRIDE * ps:
            got = self._scatter(run, slot)
            if got is not None:
                return got
            span = np.frombuffer(self._pread(run.offset, (run.n - 1) * run.stride + ps, slot),
                                 np.uint8)
            return np.lib.stride_tricks.as_strided(span, shape=(run.n, ps),
                                                   strides=(run.stride, 1), writeable=False)
        out = np.empty((run.n, ps), np.uint8)
        for k in range(run.n):
            out[k] = np.frombuffer(self._pread(run.offset + k * run.stride, ps, slot), np.uint8)
        return out

    # -- writing ------------------------------------------------------------------------
    def in_kernel(self, run: PageRun) -> bool:
        """Whether `copy_to` copies this run file to file without reading it: contiguous
        runs, except short ones (copy_file_range costs the better part of a millisecond
        per call on ext4 however short the range; a preadv and a pwrite cost
        microseconds)."""
        if run.data is not None or not self.copy_range:
            return False
        if not (run.stride == self.ps or run.n == 1):
            return False
        return run.n * self.ps >= KERNEL_COPY_MIN

    def copy_to(self, run: PageRun, out_fd: int, dst: int) -> None:
        """Write the run's pages contiguously at `dst` of `out_fd` (in this thread)."""
        if run.data is not None:
            pwrite_all(out_fd, run.data, dst)
            return
        if self.in_kernel(run):
            length, src, to = run.n * self.ps, run.offset, dst
            try:
                while length:
                    at = self.source.locate(src, length)
                    if at is None:  # not one range of the file (runs of a qcow2 image)
                        break
                    n = os.copy_file_range(at[0], out_fd, length, at[1], to)
                    if n <= 0:
                        raise TruncatedError("the input ends inside page data", src, "ram",
                                             code="truncated-ram")
                    length, src, to = length - n, src + n, to + n
            except OSError:  # not between these files: read and write instead
                self.copy_range = False
            if not length:
                return
            run = PageRun(run.first + (src - run.offset) // self.ps, length // self.ps,
                          src, run.stride)
            dst = to
        write_pages(self.read(run, self.own_slot), out_fd, dst)

    def preallocate(self, bm: BlockMap, out_fd: int, dest: int, first: int, stop: int) -> None:
        """Allocate the destination of every long run of data pages in [first, stop)."""
        ps = self.ps
        starts, lengths = data_runs(bm.state, first, stop)
        for s, n in zip(starts.tolist(), lengths.tolist(), strict=True):
            if n * ps >= PREALLOC_MIN and not preallocate(out_fd, dest + (s - first) * ps,
                                                          n * ps):
                return

    def copy_block(self, bm: BlockMap, out_fd: int, dest: int = 0, first: int = 0,
                   count: int | None = None,
                   progress: Callable[[int], None] | None = None) -> int:
        """Write the data pages [first, first + count) of `bm` to `out_fd`, page i at
        dest + (i - first) * page size. Returns the bytes written; `progress` gets the
        bytes of each run."""
        stop = bm.pages if count is None else min(bm.pages, first + count)
        self.preallocate(bm, out_fd, dest, first, stop)
        return self._copy_threaded(bm, out_fd, dest, first, stop, progress)

    def _copy_threaded(self, bm: BlockMap, out_fd: int, dest: int, first: int, stop: int,
                       progress: Callable[[int], None] | None) -> int:
        """Runs read (one scattering preadv each) and written by `WRITERS` threads, each
        with a buffer slot of its own."""
        ps = self.ps
        written = 0
        slots: queue.SimpleQueue[int] = queue.SimpleQueue()
        for k in range(WRITERS):
            slots.put(k)

        def move(run: PageRun, dst: int) -> None:
            slot = slots.get()
            try:
                write_pages(self.read(run, slot), out_fd, dst)
            finally:
                slots.put(slot)

        pending: deque[Future] = deque()
        with ThreadPoolExecutor(max_workers=WRITERS) as pool:
            try:
                for run in self.runs(bm, first, stop):
                    dst = dest + (run.first - first) * ps
                    if self.in_kernel(run) or run.data is not None:
                        self.copy_to(run, out_fd, dst)
                    else:
                        pending.append(pool.submit(move, run, dst))
                        while len(pending) > 2 * WRITERS:
                            pending.popleft().result()
                    written += run.n * ps
                    if progress:
                        progress(run.n * ps)
            finally:
                while pending:
                    pending.popleft().result()
        return written


__all__ = ["PageCopier", "PageRun", "pwrite_all", "write_pages", "preallocate", "data_runs",
           "RUN_BYTES"]
