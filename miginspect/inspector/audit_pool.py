"""Reading files for `audit` in child processes, each file under a hard time limit.

`ChildPool.run(ref, timeout)` hands one file to an idle child process (a fresh Python
running `audit.audit_file`, started on demand, retired after `MAX_TASKS` files so
that no memory builds up) and waits for its rows. A child that does not answer within
the limit is killed with everything it started (its process group: an `lzop` it runs
too) and the file is a `timeout` row; a child that dies is a `worker-lost` row. The
children are plain subprocesses talking over a pair of pipes, so the pool works the
same in the command's own process and inside a Dask worker (which may be a daemonic
process, where `multiprocessing` refuses children).

`run_local` is the default runner: a thread per core, each waiting on a child, and
results yielded as they finish. `audit_task` is the same task for a Dask worker
(`audit_dask`): one pool per worker process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from multiprocessing.connection import Connection

from .audit import (
    CODE_TIMEOUT,
    CODE_WORKER_LOST,
    FileRef,
    FileResult,
    StateRow,
    audit_file,
    failed_result,
)
from .choices import DEFAULT_TIMEOUT

#: files a child reads before it is replaced by a fresh one
MAX_TASKS = 200
#: seconds a child may take to start (import the package) and say it is ready
START_LIMIT = 120.0
READY = "ready"


def _package_root() -> str:
    import miginspect

    return os.path.dirname(os.path.dirname(os.path.abspath(miginspect.__file__)))


class Child:
    """One child process reading files, over two pipes."""

    def __init__(self) -> None:
        r_task, w_task = os.pipe()
        r_res, w_res = os.pipe()
        env = dict(os.environ)
        # a Dask nanny sets this for its worker (glibc then trims the heap after every
        # free: many syscalls for numpy's large temporary arrays); the children are ours
        env.pop("MALLOC_TRIM_THRESHOLD_", None)
        env["PYTHONPATH"] = os.pathsep.join(
            [_package_root()] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        code = ("from miginspect.inspector.audit_pool import child_main; "
                f"child_main({r_task}, {w_res})")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code], pass_fds=(r_task, w_res), env=env,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=None if os.environ.get("MIGINSPECT_AUDIT_DEBUG") else subprocess.DEVNULL,
                start_new_session=True)
        finally:
            os.close(r_task)
            os.close(w_res)
        self.tasks = Connection(w_task, readable=False)
        self.results = Connection(r_res, writable=False)
        self.done = 0

    def ready(self) -> bool:
        """Wait for the child to have started (its imports do not count against a file's
        time limit)."""
        try:
            return self.results.poll(START_LIMIT) and self.results.recv() == READY
        except (EOFError, OSError):
            return False

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.close()

    def close(self) -> None:
        for c in (self.tasks, self.results):
            try:
                c.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def retire(self) -> None:
        try:
            self.tasks.send(None)
        except OSError:
            pass
        self.close()


def child_main(task_fd: int, result_fd: int) -> None:
    """The child's loop: read a FileRef, send back its FileResult, until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent ends the run
    tasks = Connection(task_fd, writable=False)
    results = Connection(result_fd, readable=False)
    results.send(READY)
    while True:
        try:
            ref = tasks.recv()
        except (EOFError, OSError):
            return
        if ref is None:
            return
        results.send(audit_file(ref))


class ChildPool:
    """Child processes started on demand, each reading one file at a time."""

    def __init__(self) -> None:
        self._idle: list[Child] = []
        self._all: set[Child] = set()
        self._lock = threading.Lock()
        self._closed = False

    def _acquire(self) -> Child:
        with self._lock:
            if self._closed:
                raise RuntimeError("the pool is closed")
            if self._idle:
                return self._idle.pop()
        c = Child()
        with self._lock:
            self._all.add(c)
        if not c.ready():
            status = c.proc.poll()
            self._release(c, False)
            raise RuntimeError(f"an audit process did not start (exit status {status}): "
                               "run with MIGINSPECT_AUDIT_DEBUG=1 to see why")
        return c

    def _release(self, c: Child, keep: bool) -> None:
        with self._lock:
            if keep and not self._closed and c.done < MAX_TASKS:
                self._idle.append(c)
                return
            self._all.discard(c)
        if keep:
            c.retire()
        else:
            c.kill()

    def run(self, ref: FileRef, timeout: float | None = DEFAULT_TIMEOUT) -> FileResult:
        """`audit_file(ref)` in a child, within `timeout` seconds (None: no limit)."""
        c = self._acquire()
        ok = False
        try:
            c.tasks.send(ref)
            if not c.results.poll(timeout):
                return failed_result(ref, CODE_TIMEOUT, f"no answer within {timeout:g} s "
                                     "(--timeout): the file was not judged")
            res = c.results.recv()
            c.done += 1
            ok = True
            return res
        except (EOFError, OSError):
            status = c.proc.poll()
            how = f" (exit status {status})" if status is not None else ""
            return failed_result(ref, CODE_WORKER_LOST, "the process reading it ended "
                                 f"without an answer{how}: killed, or out of memory")
        finally:
            self._release(c, ok)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            rest = self._all - set(idle)
            self._all = set()
        for c in idle:
            c.retire()
        for c in rest:  # still reading (an interrupted run)
            c.kill()


def run_local(items: Iterable[FileRef | StateRow], jobs: int,
              timeout: float | None) -> Iterator[FileResult | StateRow]:
    """Audit the walk's files on `jobs` child processes at once; results as they finish
    (a walk's own rows pass straight through)."""
    pool = ChildPool()
    ex = ThreadPoolExecutor(jobs, thread_name_prefix="audit")
    try:
        pending: set[Future[FileResult]] = set()
        it = iter(items)
        more = True
        while True:
            while more and len(pending) < 2 * jobs:
                x = next(it, None)
                if x is None:
                    more = False
                elif isinstance(x, StateRow):
                    yield x
                else:
                    pending.add(ex.submit(pool.run, x, timeout))
            if not pending:
                return
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                yield f.result()
    finally:
        pool.close()  # first: a thread waiting on a child it kills returns at once
        ex.shutdown(wait=True, cancel_futures=True)


# -- the same task on a Dask worker ---------------------------------------------------------
_POOL: ChildPool | None = None
_POOL_LOCK = threading.Lock()


def audit_task(ref: FileRef, timeout: float | None) -> FileResult:
    """One file on a Dask worker: the local task, in a child of the worker's own pool."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ChildPool()
    return _POOL.run(ref, timeout)


def audit_batch(refs: list[FileRef], timeout: float | None) -> list[FileResult]:
    """`audit_task` on each file of a batch, one after the other."""
    return [audit_task(r, timeout) for r in refs]


__all__ = ["ChildPool", "run_local", "audit_task", "audit_batch", "child_main",
           "DEFAULT_TIMEOUT"]
