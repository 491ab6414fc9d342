"""Opening an input file: read-only, mmapped, with its container found.

A `Source` exposes `buf` (a read-only buffer of the QEMU-level bytes) and `base`, the
offset in `buf` where the QEMU stream starts, and `container`, what wraps the stream.
Offsets reported by the readers are offsets in `buf`: for plain and libvirt raw/sparse
files they are file offsets; for compressed files (and libvirt gzip/bzip2/xz/lzop/zstd
images), offsets in the decompressed data; for a qcow2 internal snapshot, offsets in
its VM state. `Source.explain` words a walk's error with what the container adds
(`container.explain`).

Which container an input is in is decided by the container kinds of
`inspector/containers/` (one module per kind, `containers.registry.KINDS`): this module
only holds the Source and the mmap plumbing they share.
"""

from __future__ import annotations

import bisect
import mmap
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import MigError
from .containers.base import Container, Input, OpenOptions
from .inflate import Progress
from .spool import is_stream_input, open_stream_input


@dataclass
class Source:
    path: str
    buf: Any  # mmap.mmap or bytes
    base: int  # where the QEMU stream starts in buf
    file_size: int  # apparent size of the input file
    allocated_size: int  # bytes allocated on disk for the input file
    container: Container = field(default_factory=Container)
    decompressed: bool = False
    #: descriptor of the file behind `buf` (the input, or the temporary file a
    #: compressed input was inflated into), for SEEK_DATA/SEEK_HOLE queries
    fd: int | None = None
    #: where buf's bytes are stored when that is not `fd` from offset 0 (a qcow2
    #: snapshot's state: runs of the image's clusters)
    stored: StoredRuns | None = None
    _closers: list[Any] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return len(self.buf)

    def release(self, start: int, end: int) -> None:
        """Drop the mapping's pages in [start, end) from this process's resident set
        (the data stays in the page cache), so RSS follows the work, not the file."""
        buf = self.buf
        if not isinstance(buf, mmap.mmap) or end <= start:
            return
        g = mmap.PAGESIZE
        s = start // g * g
        e = min(end, len(buf)) // g * g
        if e > s:
            try:
                buf.madvise(mmap.MADV_DONTNEED, s, e - s)
            except (AttributeError, OSError, ValueError):
                pass

    def locate(self, offset: int, length: int) -> tuple[int, int] | None:
        """(descriptor, file offset) of buf[offset : offset + length] when those bytes are
        one range of one file, else None."""
        if self.stored is not None:
            return self.stored.locate(offset, length)
        return (self.fd, offset) if self.fd is not None else None

    @property
    def has_file(self) -> bool:
        """Whether buf's bytes can be read from a file (`read_into`, `locate`)."""
        return self.stored is not None or self.fd is not None

    def read_into(self, offset: int, out: memoryview) -> int:
        """Copy buf[offset : offset + len(out)] into `out`; returns the bytes copied
        (fewer at the end of buf). With pread from the file where there is one (no page of
        it mapped into this process: as fast as `cat`), else from the buffer."""
        n = max(0, min(len(out), len(self.buf) - offset))
        if self.stored is not None:
            return self.stored.read_into(offset, out[:n])
        if self.fd is None:
            out[:n] = memoryview(self.buf)[offset : offset + n]
            return n
        return pread_into(self.fd, offset, out[:n])

    def explain(self, err: MigError) -> MigError:
        """`err` (where a walk of this source stopped) with what the container adds:
        compressed data cut or damaged, an incomplete libvirt save, the image offset of a
        snapshot's state."""
        return self.container.explain(self, err)

    def close(self) -> None:
        for c in reversed(self._closers):
            try:
                c.close()
            except (OSError, ValueError, BufferError):
                pass
        self._closers.clear()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pread_into(fd: int, offset: int, out: memoryview) -> int:
    """Fill `out` from `fd` at `offset`; returns the bytes read (fewer at its end)."""
    got = os.preadv(fd, [out], offset)
    n = len(out)
    while 0 < got < n:
        k = os.preadv(fd, [out[got:]], offset + got)
        if k <= 0:
            break
        got += k
    return max(got, 0)


class StoredRuns:
    """Where the bytes of a buffer are stored in one file: ascending, disjoint runs of
    (buffer offset, file offset, length); bytes outside every run read as zeros."""

    def __init__(self, fd: int, starts: np.ndarray, file_offsets: np.ndarray,
                 lengths: np.ndarray) -> None:
        self.fd = fd
        self.starts: list[int] = np.asarray(starts, np.int64).tolist()
        self.file_offsets: list[int] = np.asarray(file_offsets, np.int64).tolist()
        self.ends: list[int] = (np.asarray(starts, np.int64)
                                + np.asarray(lengths, np.int64)).tolist()

    def _run(self, offset: int) -> int:
        """Index of the last run starting at or before `offset` (-1 if none)."""
        return bisect.bisect_right(self.starts, offset) - 1

    def locate(self, offset: int, length: int) -> tuple[int, int] | None:
        i = self._run(offset)
        if i < 0 or offset + length > self.ends[i]:
            return None
        return self.fd, self.file_offsets[i] + offset - self.starts[i]

    def read_into(self, offset: int, out: memoryview) -> int:
        """Fill `out` with the buffer's bytes from `offset` (zeros between runs)."""
        n, done = len(out), 0
        starts, ends = self.starts, self.ends
        i = max(0, self._run(offset))
        if i < len(starts) and starts[i] <= offset and offset + n <= ends[i]:  # one run
            return pread_into(self.fd, self.file_offsets[i] + offset - starts[i], out)
        while done < n:
            pos = offset + done
            if i >= len(starts) or pos < starts[i]:
                stop = n if i >= len(starts) else min(n, starts[i] - offset)
                out[done:stop] = bytes(stop - done)
                done = stop
                continue
            if pos >= ends[i]:
                i += 1
                continue
            k = min(n, ends[i] - offset) - done
            got = pread_into(self.fd, self.file_offsets[i] + pos - starts[i],
                             out[done : done + k])
            done += got
            if got < k:
                break
        return done


def mmap_fd(fd: int, size: int) -> Any:
    """A read-only mapping of `size` bytes of `fd` (b"" when empty), read sequentially."""
    if size == 0:
        return b""
    mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    try:
        mm.madvise(mmap.MADV_SEQUENTIAL)
    except (AttributeError, OSError):
        pass
    return mm


def mmap_input(inp: Input) -> Source:
    """The input itself as the Source's buffer (the container kind sets `container`)."""
    mm = mmap_fd(inp.fd, inp.size)
    src = Source(inp.path, mm, 0, inp.size, inp.allocated, fd=inp.fd)
    src._closers.append(inp.file)
    if mm:
        src._closers.append(mm)
    return src


def open_source(path: str, progress: Progress | None = None,
                options: OpenOptions | None = None) -> Source:
    """Open `path` read-only and find the QEMU stream in it (`options`: which internal
    snapshot of a disk image)."""
    from .containers.registry import open_input

    # stdin (`-`), FIFOs and devices are spooled into a temporary file first
    f = open_stream_input(path, progress) if is_stream_input(path) else open(path, "rb")  # noqa: SIM115
    try:
        st = os.fstat(f.fileno())
        head = os.pread(f.fileno(), 64, 0)
        inp = Input(path, f, st.st_size, getattr(st, "st_blocks", 0) * 512, head)
        return open_input(inp, options or OpenOptions(), progress)
    except BaseException:
        f.close()
        raise


def __getattr__(name: str) -> Any:
    """Names this module had before the container kinds moved to `containers/`."""
    if name.startswith("__"):
        raise AttributeError(name)
    from .containers import compressed, libvirt

    for mod in (compressed, libvirt):
        if hasattr(mod, name) and name in mod.__all__:
            return getattr(mod, name)
    raise AttributeError(name)
