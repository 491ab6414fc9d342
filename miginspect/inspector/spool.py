"""Inputs that are not regular files: `-` (stdin), FIFOs, character and block devices.

They cannot be mmapped or read twice, so they are spooled, in bounded steps, into the same
kind of unnamed, sparse temporary file compressed inputs inflate into (`inflate.temp_dir`,
`inflate.HoleWriter`, the `MIGINSPECT_MAX_INFLATE` limit); the result is then opened like
any file (a compressed stream inside is inflated as usual).

Nothing here can hang: a FIFO or device is opened with O_NONBLOCK (opening a FIFO blocks
until a writer appears) and waited on for at most `MIGINSPECT_INPUT_WAIT` seconds
(default 10); a terminal is refused; and input that does not start like a QEMU stream, a
libvirt save image or compressed data is refused after its first bytes, before anything is
spooled (so `/dev/zero` or `/dev/urandom` fail at once).
"""

from __future__ import annotations

import fcntl
import os
import select
import stat
import sys
from typing import IO

from ..errors import BadMagicError, UsageError
from .inflate import HoleWriter, Progress, max_inflate, temp_dir

#: the name that means standard input
STDIN = "-"
#: bytes read per step
CHUNK = 1 << 20
#: what a spooled input must start with (before the compressors, checked separately)
QEMU_MAGIC = b"QEVM"
DEFAULT_WAIT = 10.0
_HEAD = 16


def is_stream_input(path: str) -> bool:
    """`-`, or a path naming a FIFO, a character device or a block device."""
    if path == STDIN:
        return True
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False  # the ordinary open reports it
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def _wait() -> float:
    try:
        return max(0.0, float(os.environ.get("MIGINSPECT_INPUT_WAIT", DEFAULT_WAIT)))
    except ValueError:
        return DEFAULT_WAIT


def _open(path: str) -> int:
    if path == STDIN:
        fd = os.dup(sys.stdin.fileno())
        if os.isatty(fd):
            os.close(fd)
            raise UsageError("standard input is a terminal: pipe a stream into `-` (e.g. "
                             "zstd -dc save.mig.zst | miginspect info -)", code="usage")
        return fd
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if os.isatty(fd):
            raise UsageError(f"{path} is a terminal, not a migration stream", code="usage")
        p = select.poll()
        p.register(fd, select.POLLIN | select.POLLHUP)
        wait = _wait()
        if not p.poll(int(wait * 1000)):
            raise UsageError(f"{path}: no data within {wait:g} s (a FIFO with no writer?); "
                             "MIGINSPECT_INPUT_WAIT sets the wait", code="usage")
        fl = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, fl & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read_head(fd: int) -> bytes:
    head = b""
    while len(head) < _HEAD:
        got = os.read(fd, _HEAD - len(head))
        if not got:
            break
        head += got
    return head


def _known(head: bytes) -> bool:
    """A QEMU stream or a container some kind recognises (the container kinds say)."""
    from .containers.registry import known

    return not head or known(head)


def open_stream_input(path: str, progress: Progress | None = None) -> IO[bytes]:
    """Spool `path` (see `is_stream_input`) into an unnamed temporary file and return
    it open for reading at offset 0. The caller closes it."""
    import tempfile  # only here: a regular file is never spooled

    fd = _open(path)
    tmp = None
    try:
        head = _read_head(fd)
        if not _known(head):
            name = "standard input" if path == STDIN else path
            raise BadMagicError(f"{name} does not start like a QEMU migration stream, a "
                                f"libvirt save image, qcow2 image or compressed data (first "
                                f"bytes "
                                f"{head[:8].hex()})", 0, "header", code="bad-magic")
        tmp = tempfile.TemporaryFile(prefix="miginspect-input-", dir=temp_dir())
        w = HoleWriter(tmp.fileno(), max_inflate())
        w.write(head)
        done = len(head)
        while True:
            chunk = os.read(fd, CHUNK)
            if not chunk:
                break
            w.write(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, 0)
        w.close()
        tmp.seek(0)
        return tmp
    except BaseException:
        if tmp is not None:
            tmp.close()
        raise
    finally:
        os.close(fd)
