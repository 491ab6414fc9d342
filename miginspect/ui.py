"""Terminal plumbing shared by the commands: consoles and their width, throttled
progress (the bars themselves are in `bars`, imported only when one is shown), and JSON
output (the one serializer is `jsondata.jsonable`, re-exported here).

Width: `--width N` wins; on a terminal, COLUMNS if set, else the terminal's width; in a
pipe, COLUMNS if set, else no limit (`natural`: every table row on one line, messages
never wrapped). NO_COLOR, FORCE_COLOR and TERM=dumb are honoured by rich itself.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

from rich.console import Console

from .jsondata import JsonLines, dumps, jsonable

#: console width when there is no limit (a pipe without COLUMNS): wide enough that no
#: table row or message is ever folded; renderers size pictures on their own
NATURAL_WIDTH = 1000
#: a forced width below this is raised to it
MIN_WIDTH = 20


class ReportConsole(Console):
    """A rich Console that knows whether its width is a real limit."""

    natural: bool = False


def _env_columns() -> int | None:
    c = os.environ.get("COLUMNS", "")
    return int(c) if c.isdigit() and int(c) > 0 else None


def output_width(stream: IO[str] | None = None, forced: int | None = None) -> int | None:
    """The width to lay reports out in; None = no limit (see the module doc)."""
    if forced:
        return max(MIN_WIDTH, forced)
    stream = stream or sys.stdout
    cols = _env_columns()
    if cols:
        return max(MIN_WIDTH, cols)
    try:
        if stream.isatty():
            return max(MIN_WIDTH, os.get_terminal_size(stream.fileno()).columns)
    except (AttributeError, ValueError, OSError):
        pass
    return None


def console(width: int | None = None, file: IO[str] | None = None, record: bool = False,
            force_terminal: bool | None = None, no_color: bool | None = None) -> ReportConsole:
    """The console reports print to (stdout unless `file`); `width` forces a width."""
    w = output_width(file, width)
    c = ReportConsole(file=file, width=w or NATURAL_WIDTH, highlight=False, soft_wrap=False,
                      record=record, force_terminal=force_terminal, no_color=no_color,
                      emoji=False, markup=True)
    c.natural = w is None
    return c


def err_console() -> Console:
    return Console(stderr=True, highlight=False, emoji=False)


@contextmanager
def progress(label: str, enabled: bool = True) -> Iterator[Callable[[int, int], None]]:
    """A transient byte-progress bar on stderr (only on a terminal), updated at most
    ten times a second, in IEC units. Yields the callback (done, total)."""
    if not enabled or not sys.stderr.isatty():
        yield lambda done, total: None
        return
    from .bars import byte_bar  # rich.progress: only when a bar is shown

    bar = byte_bar(err_console())
    task = bar.add_task(label, total=None)
    last = [0.0]

    def cb(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.1:
            last[0] = now
            bar.update(task, completed=done, total=total or None)

    with bar:
        yield cb


@contextmanager
def file_progress(label: str, enabled: bool = True
                  ) -> Iterator[Callable[[int, int, int | None, int | None], None]]:
    """A transient progress bar of files and bytes on stderr (only on a terminal), updated
    at most ten times a second. Yields the callback (files done, bytes done, files in
    all, bytes in all; the totals None while unknown)."""
    if not enabled or not sys.stderr.isatty():
        yield lambda files, done, files_total, total: None
        return
    from .bars import file_bar  # rich.progress: only when a bar is shown

    bar = file_bar(err_console())
    task = bar.add_task(label, total=None, files=0, files_total=None)
    last = [0.0]

    def cb(files: int, done: int, files_total: int | None, total: int | None) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.1:
            last[0] = now
            bar.update(task, completed=done, total=total or None, files=files,
                       files_total=files_total)

    with bar:
        yield cb


# -- JSON ----------------------------------------------------------------------------------

def print_json(data: Any, file: IO[str] | None = None) -> None:
    out = file or sys.stdout
    if isinstance(data, JsonLines):
        for ln in data.lines():
            out.write(ln)
            out.write("\n")
        return
    out.write(dumps(data))
    out.write("\n")


__all__ = ["console", "err_console", "output_width", "progress", "file_progress",
           "print_json", "dumps", "jsonable", "JsonLines", "ReportConsole", "NATURAL_WIDTH"]
