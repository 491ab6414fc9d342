"""The files `audit` looks at: the paths given and, for folders, every regular file
under them.

Nothing but regular files is ever opened: FIFOs, sockets and device nodes under a folder
are counted (`special_files`), never read, so a FIFO cannot block the walk. Symlinks
under a folder are not followed (`symlinks`): a link out of the tree is never read, and
a link inside it would list its target twice. A path given on the command line is taken
as it is, through a symlink too. A path or folder that cannot be read is a row
(`unreadable`), and the walk goes on.

The walk is a generator (folders are listed one at a time, in name order): memory
does not grow with the number of files.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .audit import CODE_UNREADABLE, FileRef, StateRow, failed_row


@dataclass
class WalkCounts:
    """What the walk met besides the files it hands on."""

    files: int = 0  # regular files handed on
    bytes: int = 0  # their apparent size
    symlinks: int = 0  # not followed
    special_files: int = 0  # FIFOs, sockets, device nodes: never opened

    def add(self, other: WalkCounts) -> None:
        self.files += other.files
        self.bytes += other.bytes
        self.symlinks += other.symlinks
        self.special_files += other.special_files


def _ref(path: str, st: os.stat_result) -> FileRef:
    return FileRef(path, st.st_size, getattr(st, "st_blocks", 0) * 512)


def _unreadable(path: str, e: OSError) -> StateRow:
    row = failed_row(FileRef(path, 0, 0), CODE_UNREADABLE, f"{path}: {e.strerror or e}")
    row.file_size = row.allocated_size = None  # nothing is known of it
    return row


def _folder(root: str, counts: WalkCounts) -> Iterator[FileRef | StateRow]:
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            yield _unreadable(d, e)
            continue
        subdirs = []
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError as err:
                yield _unreadable(e.path, err)
                continue
            if stat.S_ISLNK(st.st_mode):
                counts.symlinks += 1
            elif stat.S_ISDIR(st.st_mode):
                subdirs.append(e.path)
            elif stat.S_ISREG(st.st_mode):
                counts.files += 1
                counts.bytes += st.st_size
                yield _ref(e.path, st)
            else:
                counts.special_files += 1
        stack.extend(reversed(subdirs))


def walk(paths: Iterable[str], counts: WalkCounts) -> Iterator[FileRef | StateRow]:
    """The regular files under `paths` (a FileRef each), and a row for each path that
    cannot be read; `counts` is filled in as the walk goes."""
    for p in paths:
        try:
            st = os.stat(p)  # a path given is taken through a symlink
        except OSError as e:
            yield _unreadable(p, e)
            continue
        if stat.S_ISDIR(st.st_mode):
            yield from _folder(p, counts)
        elif stat.S_ISREG(st.st_mode):
            counts.files += 1
            counts.bytes += st.st_size
            yield _ref(p, st)
        else:
            counts.special_files += 1


def count(paths: Iterable[str]) -> WalkCounts:
    """Files and bytes under `paths` (for a progress bar's totals), without reading any."""
    c = WalkCounts()
    for _ in walk(paths, c):
        pass
    return c


__all__ = ["WalkCounts", "walk", "count"]
