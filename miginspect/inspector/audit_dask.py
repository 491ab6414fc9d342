"""`audit --scheduler tcp://HOST:PORT`: the same per-file task on a Dask distributed
cluster, each file read on the host that holds it.

Workers are started on the hypervisors (`dask worker tcp://HOST:PORT`, with miginspect
installed). A *route* is a path and the host whose workers read it:

* `--on-host WORKER:PATH`: PATH (absolute, on that host) is read by the workers of the
  host WORKER names: a worker's name (`dask worker --name`), its address, or its host;
* a PATH given without `--on-host`: read on every host of the cluster (each host audits
  its own copy of that folder, e.g. `/var/lib/libvirt/qemu/save` on every hypervisor).

Tasks are pinned to the route's host (`workers=[host]`, `allow_other_workers=False`):
a worker that dies is restarted by its nanny on the same host and Dask runs its tasks
again there (or on another worker of that host). If no worker of a host is left for
`lost_after` seconds, its files that have no answer are `worker-lost` rows; a task
whose worker died `distributed.scheduler.allowed-failures` times is one too. Results
are handed on as they finish; at most a few tasks per worker thread are in flight.

The walk of each route runs on its host too (`walk_task`), as does the per-file task
(`audit_pool.audit_task`, with its hard time limit), a few files per Dask task
(`audit_batch`: a task's scheduling costs more than reading a small state). Dask is
optional: without it, `require_dask` says what to install.
"""

from __future__ import annotations

import re
import socket
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError
from .audit import (
    CODE_INTERNAL,
    CODE_WORKER_LOST,
    FileRef,
    FileResult,
    StateRow,
    failed_result,
    failed_row,
)
from .audit_pool import audit_batch
from .audit_walk import WalkCounts, walk

DASK_MISSING = ("--scheduler needs Dask's distributed scheduler: pip install "
                "'miginspect[dask]' (or pip install 'dask[distributed]')")
#: seconds between looks at which workers are left
POLL = 0.02
LOOK_EVERY = 1.0
#: tasks in flight per worker thread of a host
IN_FLIGHT = 3
#: files per task (each file still has its own time limit and its own result)
BATCH = 8


def require_dask() -> Any:
    """The `distributed` module, or a usage error saying what to install."""
    try:
        import distributed
    except ImportError:
        raise UsageError(DASK_MISSING, code="usage") from None
    return distributed


_ON_HOST = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.-]*://)?[^:/]+(?::\d+)?):(/.*)$")


def parse_on_host(text: str) -> tuple[str, str]:
    """'WORKER:PATH' -> (WORKER, PATH); WORKER may be an address (tcp://10.0.0.5:4000)."""
    m = _ON_HOST.match(text)
    if not m:
        raise UsageError(f"--on-host {text!r}: give WORKER:/absolute/path (WORKER: a worker's "
                         "name, address or host)", code="usage")
    return m.group(1), m.group(2)


@dataclass
class Route:
    path: str
    host: str  # the host of the workers that read it, as the scheduler knows it
    given: str  # what the user named (a worker, an address, a host; "*" for every host)


def _workers(client: Any) -> dict[str, dict[str, Any]]:
    try:
        info = client.scheduler_info(n_workers=-1)
    except TypeError:  # an older distributed
        info = client.scheduler_info()
    return dict(info.get("workers", {}))


def _host_of(name: str, workers: dict[str, dict[str, Any]]) -> str:
    for addr, w in workers.items():
        if name in (addr, addr.split("://", 1)[-1], str(w.get("name")), w.get("host")):
            return str(w["host"])
    known = ", ".join(sorted({f"{w.get('name')} ({w.get('host')})" for w in workers.values()}))
    raise UsageError(f"--on-host {name}: no worker of that name, address or host (workers: "
                     f"{known or 'none'})", code="usage")


def routes(client: Any, on_host: list[tuple[str, str]], paths: list[str]) -> list[Route]:
    """Where each path is read (see the module doc)."""
    workers = _workers(client)
    if not workers:
        raise UsageError("the Dask scheduler has no workers: start `dask worker SCHEDULER` on "
                         "each host", code="usage")
    out = [Route(p, _host_of(w, workers), w) for w, p in on_host]
    hosts = sorted({str(w["host"]) for w in workers.values()})
    out += [Route(p, h, "*") for p in paths for h in hosts]
    return out


def walk_task(path: str) -> tuple[list[FileRef | StateRow], WalkCounts]:
    """The walk of one route, on its host (its rows name the host)."""
    counts = WalkCounts()
    items = list(walk([path], counts))
    here = socket.gethostname()
    for x in items:
        if isinstance(x, StateRow):
            x.host = here
    return items, counts


@dataclass
class _Host:
    """A host's queue, its tasks in flight, and since when it has no worker."""

    queue: deque[FileRef] = field(default_factory=deque)
    flying: int = 0
    gone_since: float | None = None
    lost: bool = False


Work = Route | list[FileRef]  # what a task does: list a route, or read a batch of files


class DaskRun:
    """One audit on a cluster: submit, poll, hand results on."""

    def __init__(self, client: Any, rts: list[Route], timeout: float | None,
                 lost_after: float, counts: WalkCounts) -> None:
        self.d = require_dask()
        self.client = client
        self.routes = rts
        self.timeout = timeout
        self.lost_after = lost_after
        self.counts = counts
        self.hosts: dict[str, _Host] = {r.host: _Host() for r in rts}
        # results are fetched from the workers in the background as tasks finish
        self.ac = self.d.as_completed(loop=client.loop, with_results=True,
                                      raise_errors=False)
        self.pending: dict[Any, tuple[str, Work]] = {}
        self.threads: dict[str, int] = {}
        self._looked = 0.0

    def _submit(self, host: str, work: Work) -> None:
        if isinstance(work, Route):
            fut = self.client.submit(walk_task, work.path, workers=[host],
                                     allow_other_workers=False, pure=False)
        else:
            fut = self.client.submit(audit_batch, work, self.timeout, workers=[host],
                                     allow_other_workers=False, pure=False)
        self.pending[fut] = (host, work)
        self.hosts[host].flying += 1
        self.ac.add(fut)

    def _fill(self) -> Iterator[FileResult]:
        for host, h in self.hosts.items():
            while h.queue and (h.lost or h.flying < IN_FLIGHT * self.threads.get(host, 1)):
                batch = [h.queue.popleft() for _ in range(min(BATCH, len(h.queue)))]
                if h.lost:
                    yield from self._lost(batch, host, "read it")
                else:
                    self._submit(host, batch)

    @staticmethod
    def _lost(refs: list[FileRef], host: str, what: str, code: str = CODE_WORKER_LOST,
              msg: str | None = None) -> Iterator[FileResult]:
        for ref in refs:
            res = failed_result(ref, code, msg or f"no Dask worker of host {host} was left "
                                f"to {what}")
            res.host = host  # where the file is (as the scheduler names the host)
            yield res

    @staticmethod
    def _route_lost(r: Route, host: str, code: str, msg: str) -> StateRow:
        row = failed_row(FileRef(r.path, 0, 0), code, msg)
        row.file_size = row.allocated_size = None
        row.host = host
        return row

    def _look(self) -> Iterator[FileResult | StateRow]:
        """Which hosts still have workers; a host gone for `lost_after` s loses its files."""
        now = time.monotonic()
        if now - self._looked < LOOK_EVERY:
            return
        self._looked = now
        self.threads = {}
        for w in _workers(self.client).values():
            self.threads[str(w["host"])] = self.threads.get(str(w["host"]), 0) + \
                int(w.get("nthreads", 1))
        for host, h in self.hosts.items():
            if host in self.threads or h.lost:
                h.gone_since = None
                continue
            h.gone_since = h.gone_since or now
            if now - h.gone_since >= self.lost_after:
                h.lost = True
                yield from self._drop(host)

    def _drop(self, host: str) -> Iterator[FileResult | StateRow]:
        for fut, (fh, work) in list(self.pending.items()):
            if fh != host:
                continue
            del self.pending[fut]
            fut.cancel()
            if isinstance(work, Route):
                yield self._route_lost(work, host, CODE_WORKER_LOST, f"no Dask worker of host "
                                       f"{host} was left to list it")
            else:
                yield from self._lost(work, host, "read it")

    def _failed(self, host: str, work: Work, exc: BaseException
                ) -> Iterator[FileResult | StateRow]:
        killed = type(exc).__name__ == "KilledWorker"
        msg = ("the Dask workers running it died (distributed.scheduler.allowed-failures)"
               if killed else f"{type(exc).__name__}: {exc}")
        code = CODE_WORKER_LOST if killed else CODE_INTERNAL
        if isinstance(work, Route):
            yield self._route_lost(work, host, code, msg)
        else:
            yield from self._lost(work, host, "", code, msg)

    def _done(self, fut: Any, result: Any) -> Iterator[FileResult | StateRow]:
        entry = self.pending.pop(fut, None)
        if entry is None:  # cancelled: already reported
            return
        host, work = entry
        self.hosts[host].flying -= 1
        ok = fut.status == "finished"
        fut.release()
        if not ok:  # an error: (type, exception, traceback)
            yield from self._failed(host, work, result[1] if isinstance(result, tuple)
                                    else result)
        elif isinstance(work, Route):
            items, counts = result
            self.counts.add(counts)
            for x in items:
                if isinstance(x, StateRow):
                    yield x
                else:
                    self.hosts[host].queue.append(x)
        else:
            yield from result

    def run(self) -> Iterator[FileResult | StateRow]:
        yield from self._look()
        for r in self.routes:
            self._submit(r.host, r)
        while self.pending or any(h.queue for h in self.hosts.values()):
            yield from self._fill()
            batch = self.ac.next_batch(block=False) if self.ac.has_ready() else []
            for fut, result in batch:
                yield from self._done(fut, result)
            if not batch:
                time.sleep(POLL)
                yield from self._look()


def installed_version() -> str:
    """miginspect's version where this runs (asked of the scheduler and every worker)."""
    from .. import __version__

    return __version__


def preflight(client: Any, scheduler: str) -> None:
    """The scheduler and every worker run this version of miginspect (Dask unpickles the
    tasks on both: a missing or other version fails every task)."""
    from .. import __version__

    try:
        v = client.run_on_scheduler(installed_version)
    except Exception as e:  # noqa: BLE001 - the scheduler cannot load miginspect
        raise UsageError(f"the Dask scheduler at {scheduler} cannot load miginspect "
                         f"({type(e).__name__}): install miginspect {__version__} where it "
                         "runs (and on every worker)", code="usage") from None
    found = {"the scheduler": v}
    try:
        found.update(client.run(installed_version))
    except Exception as e:  # noqa: BLE001 - a worker cannot load miginspect
        raise UsageError(f"a Dask worker cannot load miginspect ({type(e).__name__}): "
                         f"install miginspect {__version__} on every worker", code="usage") \
            from None
    other = sorted(f"{k} ({x})" for k, x in found.items() if x != __version__)
    if other:
        raise UsageError(f"miginspect {__version__} here, another version on "
                         f"{', '.join(other)}: install the same version everywhere",
                         code="usage")


def connect(scheduler: str, timeout: float = 30.0) -> Any:
    """A client of the scheduler at `scheduler` (tcp://HOST:PORT), checked to run this
    version of miginspect on the scheduler and its workers."""
    d = require_dask()
    try:
        client = d.Client(scheduler, timeout=timeout, set_as_default=False)
    except OSError as e:
        raise UsageError(f"cannot reach the Dask scheduler at {scheduler}: {e}",
                         code="usage") from e
    try:
        preflight(client, scheduler)
    except BaseException:
        client.close()
        raise
    return client


def run_dask(client: Any, rts: list[Route], timeout: float | None, lost_after: float,
             counts: WalkCounts) -> Iterator[FileResult | StateRow]:
    """Audit the routes on the cluster; results as they finish (see the module doc)."""
    return DaskRun(client, rts, timeout, lost_after, counts).run()


__all__ = ["require_dask", "parse_on_host", "routes", "Route", "walk_task", "run_dask",
           "connect", "DASK_MISSING"]
