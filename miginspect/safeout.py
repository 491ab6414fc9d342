"""Writing one output file safely: only ever a regular file, atomically, never over an
existing file without `force`, never through a symlink.

The data goes to a temporary file in the destination's own folder, which is then renamed
over the destination: a reader never sees half a file, and a rename replaces a name, never
the file a symlink points to. An existing destination that is not a regular file (a
symlink, a FIFO, a device node, a folder) is refused even with `force`.

(A stop-gap for `--export`, to be merged with the output module the extract/convert side
is writing.)
"""

from __future__ import annotations

import os
import stat
import tempfile

from .errors import UsageError


def check_output_path(path: str, force: bool) -> None:
    """Refuse `path` unless it is free, or (with `force`) an existing regular file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise UsageError(f"{path}: its folder does not exist") from None
        return
    if stat.S_ISLNK(st.st_mode):
        raise UsageError(f"{path} is a symlink; refusing to write through it")
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{path} exists and is not a regular file; refusing to replace it")
    if not force:
        raise UsageError(f"{path} exists (--force replaces it)")


def write_file_atomic(path: str, data: bytes, force: bool = False) -> None:
    """Write `data` to `path` as a new regular file (see the module doc)."""
    check_output_path(path, force)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o644 & ~_umask())
        check_output_path(path, force)  # again, just before the rename
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m
