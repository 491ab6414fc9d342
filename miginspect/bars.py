"""The transient progress bars `ui.progress` and `ui.file_progress` show on stderr: byte
counts and speeds in IEC units, files, time left. Imported (with rich.progress) only when
a bar is shown, that is when stderr is a terminal."""

from __future__ import annotations

import math

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn
from rich.text import Text

from .render.fmt import size


class _IECDownload(ProgressColumn):
    def render(self, task: Task) -> Text:
        done = size(int(task.completed))
        return Text(f"{done} of {size(int(task.total))}" if task.total else done)


class _IECSpeed(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{size(int(speed))}/s")


class _Remaining(ProgressColumn):
    def render(self, task: Task) -> Text:
        rem = task.time_remaining
        if rem is None or not math.isfinite(rem):
            return Text("")
        m, s = divmod(int(rem), 60)
        return Text(f"{m}:{s:02d} left")


class _Files(ProgressColumn):
    def render(self, task: Task) -> Text:
        total = task.fields.get("files_total")
        done = f"{task.fields.get('files', 0):,}"
        return Text(f"{done} of {total:,} files" if total else f"{done} files")


def byte_bar(console: Console) -> Progress:
    """A transient bar of bytes: label, bar, done of total, speed, time left."""
    return Progress(TextColumn("{task.description}", markup=False), BarColumn(),
                    _IECDownload(), _IECSpeed(), _Remaining(), console=console, transient=True)


def file_bar(console: Console) -> Progress:
    """A transient bar of files and bytes: label, bar, files, bytes, speed, time left."""
    return Progress(TextColumn("{task.description}", markup=False), BarColumn(), _Files(),
                    _IECDownload(), _IECSpeed(), _Remaining(), console=console,
                    transient=True)
