"""The audit's report: its rows in order (most reclaimable first) and a summary with
totals, gathered as results arrive, whichever runner produced them.

Rows are not all kept in memory: they are sorted in chunks of `CHUNK` rows, each chunk
pickled into an unnamed temporary file, and the chunks are merged when the report is
read (`AuditReport.rows()`, as often as it is read). Totals are running sums. So the
memory an audit takes does not grow with the number of files.
"""

from __future__ import annotations

import heapq
import os
import pickle
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO

from .audit import FileResult, StateRow
from .audit_walk import WalkCounts
from .problems import VERDICT_LOADABLE, VERDICT_REFUSED

#: rows sorted in memory before a chunk goes to a temporary file
CHUNK = 4096

Progress = Callable[[int, int], None]  # (files done, bytes done)


@dataclass
class VerdictCounts:
    loadable: int = 0
    will_not_load: int = 0
    could_not_tell: int = 0


@dataclass
class AuditTotals:
    """Sums over the rows (a figure a row does not have counts as 0)."""

    file_size: int = 0
    allocated_size: int = 0
    ram_total: int = 0
    data_bytes: int = 0
    mapped_ram_bound: int = 0
    mapped_ram_allocated_bound: int = 0
    reclaimable: int = 0

    def add(self, r: StateRow) -> None:
        for k in ("file_size", "allocated_size", "ram_total", "data_bytes", "mapped_ram_bound",
                  "mapped_ram_allocated_bound", "reclaimable"):
            v = getattr(r, k)
            if v is not None:
                setattr(self, k, getattr(self, k) + v)


@dataclass
class AuditSummary:
    """The last JSON line (`{"summary": ...}`) and the report's first lines."""

    paths: list[str]
    scheduler: str | None  # the Dask scheduler that ran it (None: this machine)
    files: int = 0  # regular files looked at
    bytes: int = 0  # their apparent size
    states: int = 0  # rows: saved VM states found, and paths that could not be read
    unread: int = 0  # rows of paths nothing could be read of (kind unknown)
    state_files: int = 0  # files holding them
    not_a_state: int = 0  # files whose content is no saved state (counted, not listed)
    symlinks: int = 0  # under a folder: not followed
    special_files: int = 0  # FIFOs, sockets, devices: never opened
    verdicts: VerdictCounts = field(default_factory=VerdictCounts)
    totals: AuditTotals = field(default_factory=AuditTotals)
    #: how many rows each first problem's code stopped (the causes, most frequent first)
    causes: dict[str, int] = field(default_factory=dict)
    hosts: list[str] = field(default_factory=list)  # other machines that read files

    @property
    def exit_code(self) -> int:
        """1 when a state will not load, else 2 when one could not be judged, else 0."""
        if self.verdicts.will_not_load:
            return 1
        return 2 if self.verdicts.could_not_tell else 0

    def add_row(self, r: StateRow) -> None:
        self.states += 1
        self.unread += r.kind is None
        if r.verdict == VERDICT_LOADABLE:
            self.verdicts.loadable += 1
        elif r.verdict == VERDICT_REFUSED:
            self.verdicts.will_not_load += 1
        else:
            self.verdicts.could_not_tell += 1
        self.totals.add(r)
        if r.problem is not None:
            self.causes[r.problem.code] = self.causes.get(r.problem.code, 0) + 1
        if r.host is not None and r.host not in self.hosts:
            self.hosts.append(r.host)

    def to_json(self) -> dict[str, object]:
        from ..jsondata import fields_json

        d = fields_json(self)
        d["causes"] = dict(sorted(self.causes.items(), key=lambda kv: (-kv[1], kv[0])))
        d["hosts"] = sorted(self.hosts)
        d["exit_code"] = self.exit_code
        return d


def _tmpdir() -> str | None:
    return os.environ.get("MIGINSPECT_TMPDIR") or None


class RowSpool:
    """Rows in, rows out in `StateRow.sort_key` order; at most CHUNK of them in memory."""

    def __init__(self) -> None:
        self._mem: list[StateRow] = []
        self._chunks: list[IO[bytes]] = []

    def add(self, r: StateRow) -> None:
        self._mem.append(r)
        if len(self._mem) >= CHUNK:
            self._spill()

    def _spill(self) -> None:
        f = tempfile.TemporaryFile(dir=_tmpdir(), prefix="miginspect-audit-")
        self._mem.sort(key=StateRow.sort_key)
        p = pickle.Pickler(f, protocol=pickle.HIGHEST_PROTOCOL)
        for r in self._mem:
            p.dump(r)
            p.clear_memo()
        self._mem = []
        self._chunks.append(f)

    @staticmethod
    def _read(f: IO[bytes]) -> Iterator[StateRow]:
        f.seek(0)
        u = pickle.Unpickler(f)
        while True:
            try:
                yield u.load()
            except EOFError:
                return

    def __iter__(self) -> Iterator[StateRow]:
        self._mem.sort(key=StateRow.sort_key)
        if not self._chunks:
            return iter(list(self._mem))
        return heapq.merge(*(self._read(f) for f in self._chunks), iter(list(self._mem)),
                           key=StateRow.sort_key)

    def close(self) -> None:
        for f in self._chunks:
            f.close()
        self._chunks = []
        self._mem = []


@dataclass
class AuditReport:
    summary: AuditSummary
    spool: RowSpool

    def rows(self) -> Iterator[StateRow]:
        return iter(self.spool)

    def close(self) -> None:
        self.spool.close()


def collect(results: Iterable[FileResult | StateRow], counts: WalkCounts,
            summary: AuditSummary, progress: Progress | None = None) -> AuditReport:
    """The report of a run: every result's rows spooled, the summary summed up. Rows of a
    file read on this machine get `host` None (`FileResult.host` names where it was read);
    `counts` is read at the end (a walk fills it in as it goes)."""
    here = socket.gethostname()
    spool = RowSpool()
    done = done_bytes = 0
    try:
        for res in results:
            if isinstance(res, StateRow):  # a path the walk could not read
                if res.host == here:
                    res.host = None
                rows = [res]
            else:
                done += 1
                done_bytes += res.ref.size
                rows = res.rows
                if res.not_a_state:
                    summary.not_a_state += 1
                elif any(r.kind is not None for r in rows):
                    summary.state_files += 1
                host = None if res.host in (None, here) else res.host
                for r in rows:
                    r.host = host
            for r in rows:
                summary.add_row(r)
                spool.add(r)
            if progress is not None:
                progress(done, done_bytes)
    except BaseException:
        spool.close()
        raise
    summary.files, summary.bytes = counts.files, counts.bytes
    summary.symlinks, summary.special_files = counts.symlinks, counts.special_files
    return AuditReport(summary, spool)


__all__ = ["AuditReport", "AuditSummary", "AuditTotals", "VerdictCounts", "RowSpool",
           "collect", "CHUNK"]
