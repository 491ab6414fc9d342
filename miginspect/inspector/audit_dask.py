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
(`audit_pool.audit_task`, with its hard time limit). Dask is optional: without it,
`require_dask` says what to install.
"""

from __future__ import annotations

import re
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
from .audit_pool import audit_task
from .audit_walk import WalkCounts, walk

DASK_MISSING = ("--scheduler needs Dask's distributed scheduler: pip install "
                "'miginspect[dask]' (or pip install 'dask[distributed]')")
#: seconds between looks at which workers are left
POLL = 0.05
LOOK_EVERY = 1.0
#: tasks in flight per worker thread of a host
IN_FLIGHT = 3


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
    """The walk of one route, on its host."""
    counts = WalkCounts()
    return list(walk([path], counts)), counts


@dataclass
class _Host:
    """A host's queue, its tasks in flight, and since when it has no worker."""

    queue: deque[FileRef] = field(default_factory=deque)
    flying: int = 0
    gone_since: float | None = None
    lost: bool = False


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
        self.ac = self.d.as_completed(loop=client.loop)
        self.pending: dict[Any, tuple[str, FileRef | Route]] = {}
        self.threads: dict[str, int] = {}
        self._looked = 0.0

    def _submit(self, host: str, fn: Any, arg: Any, what: FileRef | Route) -> None:
        fut = self.client.submit(fn, arg, *(() if fn is walk_task else (self.timeout,)),
                                 workers=[host], allow_other_workers=False, pure=False)
        self.pending[fut] = (host, what)
        self.hosts[host].flying += 1
        self.ac.add(fut)

    def _fill(self) -> Iterator[FileResult]:
        for host, h in self.hosts.items():
            while h.queue and (h.lost or h.flying < IN_FLIGHT * self.threads.get(host, 1)):
                ref = h.queue.popleft()
                if h.lost:
                    yield self._lost(ref, host)
                else:
                    self._submit(host, audit_task, ref, ref)

    def _lost(self, ref: FileRef, host: str) -> FileResult:
        return failed_result(ref, CODE_WORKER_LOST, f"no Dask worker of host {host} was left "
                             "to read it")

    def _look(self) -> Iterator[FileResult | StateRow]:
        """Which hosts still have workers; a host gone for `lost_after` s loses its files."""
        now = time.monotonic()
        if now - self._looked < LOOK_EVERY:
            return
        self._looked = now
        workers = _workers(self.client)
        self.threads = {}
        for w in workers.values():
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
        for fut, (fh, what) in list(self.pending.items()):
            if fh != host:
                continue
            del self.pending[fut]
            fut.cancel()
            if isinstance(what, Route):
                yield failed_row(FileRef(what.path, 0, 0), CODE_WORKER_LOST,
                                 f"no Dask worker of host {host} was left to list it")
            else:
                yield self._lost(what, host)

    def _done(self, fut: Any) -> Iterator[FileResult | StateRow]:
        entry = self.pending.pop(fut, None)
        if entry is None:  # cancelled: already reported
            return
        host, what = entry
        self.hosts[host].flying -= 1
        ref = FileRef(what.path, 0, 0) if isinstance(what, Route) else what
        if fut.status == "finished":
            res = fut.result()
        else:
            exc = fut.exception()
            killed = type(exc).__name__ == "KilledWorker"
            msg = ("the Dask workers running it died (distributed.scheduler.allowed-failures)"
                   if killed else f"{type(exc).__name__}: {exc}")
            code = CODE_WORKER_LOST if killed else CODE_INTERNAL
            res = failed_row(ref, code, msg) if isinstance(what, Route) else \
                failed_result(ref, code, msg)
        fut.release()
        if isinstance(what, Route) and isinstance(res, tuple):
            items, counts = res
            self.counts.add(counts)
            for x in items:
                if isinstance(x, StateRow):
                    yield x
                else:
                    self.hosts[host].queue.append(x)
        else:
            yield res

    def run(self) -> Iterator[FileResult | StateRow]:
        yield from self._look()
        for r in self.routes:
            self._submit(r.host, walk_task, r.path, r)
        while self.pending or any(h.queue for h in self.hosts.values()):
            yield from self._fill()
            batch = self.ac.next_batch(block=False) if self.ac.has_ready() else []
            for fut in batch:
                yield from self._done(fut)
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
