"""Opening outputs for writing, safely: the one place every command that writes a file
(`convert`, `extract`, `--export`) goes through.

Rules, decided here and tested (tests/test_outfile.py):

* Only regular files are ever created or replaced. An existing output that is
  anything else (a FIFO, a device node such as /dev/null, a socket, a folder) is
  refused, with or without `force`; it is never opened, so a FIFO cannot block.
* Never through a symlink: an output path whose last component is a symlink is
  refused, even with `force` and even when it points at a regular file. Files
  inside an output folder are created relative to the folder's descriptor with
  O_NOFOLLOW | O_EXCL, so a link planted inside it is refused too. An output
  folder that is itself a symlink is refused (folders above it may be links).
* An existing regular file is replaced only with `force`, and never truncated
  in place: a new file is written and renamed over it (its other hard links and
  any reader's mapping keep the old contents). Without `force`, the new file is
  linked into place, which fails if something appeared there meanwhile.
* The input file is never an output (`protect`).

`AtomicFile` writes one file (temporary name in the target's folder, renamed when
complete); `write_atomic` is the one-call form for small outputs such as exported
reports; `OutputDir` is a folder that several files are created in.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from typing import Any

from .errors import UsageError

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _same_file(st: os.stat_result, protect: str | os.PathLike[str] | None) -> bool:
    if protect is None:
        return False
    try:
        p = os.stat(protect)
    except OSError:
        return False
    return (p.st_dev, p.st_ino) == (st.st_dev, st.st_ino)


def refuse_existing(shown: str, st: os.stat_result | None, force: bool,
                    protect: str | os.PathLike[str] | None = None) -> None:
    """Raise UsageError unless an output whose current state is `st` (an lstat result,
    None when absent) may be created or replaced."""
    if st is None:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UsageError(f"refusing to write through the symlink {shown!r}", code="usage")
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{shown!r} exists and is {_kind(st.st_mode)}: only regular files "
                         "are written (even with --force)", code="usage")
    if _same_file(st, protect):
        raise UsageError(f"{shown!r} is the input file; the input is never modified", code="usage")
    if not force:
        raise UsageError(f"{shown!r} exists; use --force to replace it", code="usage")


def _lstat(name: str, dir_fd: int | None = None) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def check_output_file(path: str | os.PathLike[str], force: bool = False,
                      protect: str | os.PathLike[str] | None = None) -> None:
    """Refuse, before any work, an output file path that `AtomicFile` would refuse."""
    p = os.fspath(path)
    refuse_existing(p, _lstat(p), force, protect)
    parent = os.path.dirname(os.path.abspath(p))
    if not os.path.isdir(parent):
        raise UsageError(f"output folder {parent!r} does not exist", code="usage")


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


class AtomicFile:
    """A regular file written under a temporary name beside `path` and moved into
    place by `commit()` (or removed by `abort()` / leaving the `with` block on an
    error). `fd` is open for writing (and reading)."""

    def __init__(self, path: str | os.PathLike[str], force: bool = False,
                 protect: str | os.PathLike[str] | None = None, mode: int = 0o666) -> None:
        self.path = os.fspath(path)
        self.force = force
        self.protect = protect
        check_output_file(self.path, force, protect)
        parent = os.path.dirname(os.path.abspath(self.path))
        self.name = os.path.basename(self.path)
        if self.name in ("", ".", ".."):
            raise UsageError(f"{self.path!r} names a folder; give the output file's name",
                             code="usage")
        self.dir_fd = os.open(parent, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
        self.fd = -1
        self.tmp = ""
        try:
            for _ in range(16):
                self.tmp = f".{self.name[:200]}.{secrets.token_hex(4)}.part"
                try:
                    self.fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW
                                      | _CLOEXEC, 0o600, dir_fd=self.dir_fd)
                    break
                except FileExistsError:
                    continue
            else:
                raise UsageError(f"cannot create a temporary file beside {self.path!r}",
                                 code="usage")
            os.fchmod(self.fd, mode & ~_umask())
        except BaseException:
            self.abort()
            raise

    def commit(self, sync: bool = False) -> None:
        """Move the file into place: replace a regular file with `force`, else only
        if nothing is there (checked again now: the path may have changed)."""
        if sync:
            os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        d = self.dir_fd
        refuse_existing(self.path, _lstat(self.name, d), self.force, self.protect)
        if self.force:
            os.replace(self.tmp, self.name, src_dir_fd=d, dst_dir_fd=d)
        else:
            try:
                os.link(self.tmp, self.name, src_dir_fd=d, dst_dir_fd=d, follow_symlinks=False)
            except FileExistsError as e:
                raise UsageError(f"{self.path!r} exists; use --force to replace it",
                                 code="usage") from e
            except OSError as e:  # no hard links on this file system
                if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                refuse_existing(self.path, _lstat(self.name, d), False, self.protect)
                os.rename(self.tmp, self.name, src_dir_fd=d, dst_dir_fd=d)
            else:
                os.unlink(self.tmp, dir_fd=d)
        self.tmp = ""
        self._close_dir()

    def abort(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.tmp:
            try:
                os.unlink(self.tmp, dir_fd=self.dir_fd)
            except FileNotFoundError:
                pass
            self.tmp = ""
        self._close_dir()

    def _close_dir(self) -> None:
        if getattr(self, "dir_fd", -1) >= 0:
            os.close(self.dir_fd)
            self.dir_fd = -1

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        if exc_type is not None or self.tmp:
            self.abort()


def write_atomic(path: str | os.PathLike[str], data: bytes | str, force: bool = False,
                 protect: str | os.PathLike[str] | None = None) -> None:
    """Write `data` (str: UTF-8) as the regular file `path`, all or nothing."""
    raw = data.encode() if isinstance(data, str) else data
    with AtomicFile(path, force, protect) as f:
        mv = memoryview(raw)
        while len(mv):
            mv = mv[os.write(f.fd, mv):]
        f.commit()


class OutputDir:
    """The one folder files are written into; every file is created relative to it."""

    def __init__(self, path: str | os.PathLike[str], force: bool,
                 protect: str | os.PathLike[str] | None = None) -> None:
        p = os.fspath(path)
        self.force = force
        self.protect = protect
        st = _lstat(p)
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise UsageError(f"refusing to write through the symlink {p!r} (give the folder "
                             "it points to)", code="usage")
        if st is None:
            try:
                os.mkdir(p)
            except FileNotFoundError as e:
                raise UsageError(f"cannot create output folder {p!r}: its parent does not "
                                 "exist", code="usage") from e
            except FileExistsError as e:
                raise UsageError(f"{p!r} appeared while it was being created", code="usage") from e
        elif not stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{p!r} exists and is not a folder", code="usage")
        try:
            self.fd = os.open(p, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UsageError(f"refusing to write through the symlink {p!r}",
                                 code="usage") from e
            raise
        self.root = os.path.realpath(p)

    def target(self, name: str) -> str:
        """`name` checked to be a bare file name inside the folder, never a path."""
        if name in ("", ".", "..") or os.sep in name or "/" in name or "\0" in name:
            raise UsageError(f"refusing to write {name!r}: it would land outside "
                             f"{self.root!r}", code="usage")
        return name

    def check(self, names: list[str]) -> None:
        """Refuse (before anything is written) what may not be written."""
        for n in names:
            refuse_existing(os.path.join(self.root, self.target(n)), _lstat(n, self.fd),
                            self.force, self.protect)

    def open(self, name: str) -> int:
        """Create `name` afresh (O_EXCL, O_NOFOLLOW). With force an existing regular file
        is unlinked first, never truncated in place."""
        shown = os.path.join(self.root, self.target(name))
        st = _lstat(name, self.fd)
        refuse_existing(shown, st, self.force, self.protect)
        if st is not None:
            os.unlink(name, dir_fd=self.fd)
        try:
            return os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC,
                           0o644, dir_fd=self.fd)
        except FileExistsError as e:
            raise UsageError(f"{shown!r} appeared while it was being written; nothing was "
                             "replaced", code="usage") from e

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> OutputDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["AtomicFile", "OutputDir", "write_atomic", "check_output_file", "refuse_existing"]
