"""`audit` (issue 16): every saved VM state under a tree of real samples, one row each,
the same numbers as `size --json` and `check --json` give for each state, run locally
and on a real Dask cluster (a `dask scheduler` and `dask worker`s started here, on
127.0.0.1 / 127.0.0.2 / 127.0.0.3 standing in for hypervisors), with identical tables;
a worker killed mid-run loses no file."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, SAMPLES, unpack

from miginspect import cli
from miginspect.inspector.audit import FileRef, FileResult, audit_file, recognise

DASK_REASON = ("Dask is not installed (pip install -e '.[test]' installs dask[distributed]; "
               "or pip install 'dask[distributed]')")


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system
        shutil.copyfile(src, dst)


def _need(p: Path) -> Path:
    if not p.exists():
        pytest.skip(f"sample {p.name} is not bundled")
    return p


def _raw(rel: str) -> Path:
    return unpack(_need(SAMPLES / rel))


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """Two roots standing in for two hosts' folders: good, damaged, compressed, libvirt and
    qcow2 samples, files that are no saved state (one named like one), a saved state named
    like a text file, a FIFO and symlinks (out of the tree, a loop, into the tree)."""
    t = tmp_path_factory.mktemp("audit-tree")
    a, b = t / "hostA", t / "hostB"
    _place(_raw("q10-live-legacy.mig.zst"), a / "live-legacy.mig")
    _place(_raw("q10-paused-mapped-ram.mig.zst"), a / "paused-mapped-ram.mig")
    _place(_need(SAMPLES / "q10-paused-legacy.mig.zst"), a / "compressed" / "paused.mig.zst")
    _place(_raw("damaged/trunc-ram.mig.zst"), a / "damaged" / "trunc-ram.mig")
    _place(_raw("damaged/version-2.mig.zst"), a / "damaged" / "version-2.mig")
    _place(_raw("damaged/random-bytes.mig.zst"), a / "damaged" / "random-bytes.mig")
    _place(_need(SAMPLES / "damaged/mapped-ram-truncated.mig.zst"),
           a / "damaged" / "mapped-ram-truncated.mig.zst")
    _place(_need(SAMPLES / "libvirt/save-gzip.img"), a / "save" / "vm1.save")
    _place(_raw("damaged/header-only.mig.zst"), a / "notes" / "readme.txt")
    _place(_need(SAMPLES / "damaged/trunc-ram.json"), a / "notes" / "trunc-ram.json")
    (a / "notes" / "fake.mig").write_text('{"not": "a state"}\n')
    _place(_need(SAMPLES / "q10-live-legacy.pmem-pages.bin.zst"), a / "notes" / "pages.bin.zst")
    os.mkfifo(a / "notes" / "pipe.mig")
    (a / "escape").symlink_to("/etc")
    (a / "loop").symlink_to(".")
    (a / "again.mig").symlink_to(a / "live-legacy.mig")
    _place(_raw("qcow2/q10-snapshots.qcow2.zst"), b / "images" / "q10.qcow2")
    _place(_need(SAMPLES / "qcow2/q72-snapshots.qcow2.zst"), b / "images" / "q72.qcow2.zst")
    _place(_raw("libvirt/save-sparse.img.zst"), b / "save" / "sparse.save")
    _place(_raw("libvirt/part-raw-1g.img.zst"), b / "save" / "unfinished.save")
    _place(_raw("damaged/trunc-device-state.mig.zst"), b / "trunc-device.mig")
    return t


def _audit(argv: list[str], capsys) -> tuple[int, list[dict], dict]:
    rc = cli.main(["audit", *argv, "--json"])
    out = capsys.readouterr().out
    lines = [json.loads(x) for x in out.splitlines()]
    assert lines and "summary" in lines[-1], out[-500:]
    return rc, lines[:-1], lines[-1]["summary"]


@pytest.fixture(scope="module")
def local(tree) -> tuple[int, list[dict], dict]:
    """The local audit of both roots (run once; module scope, so not through capsys)."""
    out = subprocess.run([sys.executable, "-m", "miginspect", "audit", str(tree), "--json"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    return out.returncode, lines[:-1], lines[-1]["summary"]


# -- what is found, and how -------------------------------------------------------------------

def test_states_are_found_by_content_one_row_per_snapshot(tree, local) -> None:
    rc, rows, s = local
    assert rc == 1  # damaged files will not load
    got = {(str(Path(r["path"]).relative_to(tree)), r["snapshot"]): r for r in rows}
    assert set(got) == {
        ("hostA/live-legacy.mig", None), ("hostA/paused-mapped-ram.mig", None),
        ("hostA/compressed/paused.mig.zst", None), ("hostA/damaged/trunc-ram.mig", None),
        ("hostA/damaged/version-2.mig", None),
        ("hostA/damaged/mapped-ram-truncated.mig.zst", None), ("hostA/save/vm1.save", None),
        ("hostA/notes/readme.txt", None),  # a state named like a text file
        ("hostB/images/q10.qcow2", "1 s1"), ("hostB/images/q10.qcow2", "3 s2"),
        ("hostB/images/q72.qcow2.zst", "1 s1"), ("hostB/images/q72.qcow2.zst", "2 s2"),
        ("hostB/save/sparse.save", None), ("hostB/save/unfinished.save", None),
        ("hostB/trunc-device.mig", None)}
    # random bytes, JSON (one named .mig), compressed pmemsave pages: not states
    assert s["not_a_state"] == 4 and s["files"] == 17 and s["state_files"] == 13
    assert s["special_files"] == 1 and s["symlinks"] == 3  # FIFO never opened, links not followed
    assert s["states"] == 15 and s["verdicts"] == {"loadable": 9, "will_not_load": 6,
                                                   "could_not_tell": 0}
    ll = got[("hostA/live-legacy.mig", None)]
    assert (ll["kind"], ll["format"], ll["verdict"]) == ("none", "legacy", "loadable")
    assert ll["amplification"] > 1.7 and ll["reclaimable"] > 20 << 20  # re-sent pages
    assert rows[0]["path"] == ll["path"]  # most reclaimable first
    sv = got[("hostA/save/vm1.save", None)]
    assert (sv["kind"], sv["compression"], sv["domain_name"]) == ("libvirt", "gzip",
                                                                   "miginspect-lv")
    assert sv["domain_uuid"]
    q = got[("hostB/images/q72.qcow2.zst", "2 s2")]
    assert (q["kind"], q["compression"], q["machine_type"]) == ("qcow2", "zstd",
                                                                "pc-i440fx-7.2")
    bad = got[("hostA/damaged/trunc-ram.mig", None)]
    assert bad["verdict"] == "will not load" and bad["problem"]["code"] == "truncated-ram"
    assert bad["problem"]["offset"] == 0x3a9d2 and bad["ram_total"] is None
    part = got[("hostB/save/unfinished.save", None)]
    assert part["problem"]["code"] == "libvirt-partial"
    assert got[("hostA/damaged/version-2.mig", None)]["problem"]["code"] == "version-2"


def test_recognised_by_content_not_name(tree) -> None:
    def what(p: Path):  # noqa: ANN202
        fd = os.open(p, os.O_RDONLY)
        try:
            return recognise(str(p), fd, p.stat().st_size)
        finally:
            os.close(fd)

    a = tree / "hostA"
    assert what(a / "notes" / "fake.mig") is None
    assert what(a / "notes" / "pages.bin.zst") is None  # compressed, but no state inside
    r = what(a / "compressed" / "paused.mig.zst")
    assert (r.kind, r.compression) == ("none", "zstd")
    r = what(tree / "hostB" / "images" / "q72.qcow2.zst")
    assert (r.kind, r.compression, r.snapshots) == ("qcow2", "zstd", 3)  # one disk-only
    assert what(a / "save" / "vm1.save").kind == "libvirt"


def test_totals_are_the_sums_of_size_and_check(local, capsys) -> None:
    """Every row holds `size --json`'s and `check --json`'s figures for its state; the
    summary's totals are their sums."""
    _, rows, s = local
    sums = dict.fromkeys(s["totals"], 0)
    for r in rows:
        snap = ["--snapshot", r["snapshot"].split()[0]] if r["snapshot"] else []
        rc = cli.main(["check", r["path"], "--json", *snap])
        chk = json.loads(capsys.readouterr().out)
        assert r["verdict"] == chk["verdict"], r["path"]
        first = next((p for p in chk["problems"] if p["severity"] == "error"), None)
        assert r["problem"] == first, r["path"]
        rc = cli.main(["size", r["path"], "--json", *snap])
        size = json.loads(capsys.readouterr().out)
        if rc == 0:
            for k in ("file_size", "allocated_size", "ram_total", "data_bytes",
                      "amplification", "resend_amplification", "mapped_ram_bound",
                      "mapped_ram_allocated_bound"):
                assert r[k] == size[k], (r["path"], k)
            want = max(0, size["allocated_size"] - size["mapped_ram_allocated_bound"]) \
                if chk["verdict"] == "loadable" and size["format"] == "legacy" else 0
            assert r["reclaimable"] == want, r["path"]
        else:  # size refuses damage: no figures but the file's own size
            assert "error" in size and r["ram_total"] is None and r["reclaimable"] is None
            st = os.stat(r["path"])
            assert (r["file_size"], r["allocated_size"]) == (st.st_size, st.st_blocks * 512)
        for k in sums:
            sums[k] += r[k] or 0
    assert sums == s["totals"]
    assert sum(s["verdicts"].values()) == len(rows) == s["states"]


def test_text_csv_and_order(tree, local, capsys, tmp_path) -> None:
    _, rows, s = local
    rc = cli.main(["audit", str(tree), "--width", "80", "--csv", str(tmp_path / "a.csv")])
    out = capsys.readouterr().out
    assert rc == 1
    assert out.splitlines()[0] == "audit: 15 saved states, 6 will not load, " \
        f"{_iec(s['totals']['reclaimable'])} reclaimable"
    assert "…" not in out
    for r in rows:  # every path whole (broken at / . - _ where it does not fit)
        assert r["path"] in out.replace("\n", "")
    csv = (tmp_path / "a.csv").read_text().splitlines()
    assert csv[0].startswith("path,snapshot,host,kind,") and len(csv) == 1 + len(rows)
    assert [ln.split(",")[0] for ln in csv[1:]] == [r["path"] for r in rows]
    rec = [r["reclaimable"] or 0 for r in rows]
    assert rec == sorted(rec, reverse=True) and rec[0] > 0
    rc = cli.main(["audit", str(tree), "--csv", "-"])
    assert capsys.readouterr().out.splitlines() == csv


def _iec(n: int) -> str:
    from miginspect.render.fmt import size

    return size(n)


def test_time_limit_and_unreadable_paths(tree, capsys) -> None:
    rc, rows, s = _audit([str(tree / "hostA" / "live-legacy.mig"), str(tree / "missing"),
                          "--timeout", "0.01"], capsys)
    assert rc == 2 and s["unread"] == 2
    codes = {Path(r["path"]).name: r["problem"]["code"] for r in rows}
    assert codes == {"live-legacy.mig": "timeout", "missing": "unreadable"}
    assert all(r["verdict"] == "could not tell" for r in rows)


def test_a_file_replaced_by_a_fifo_is_never_opened(tree) -> None:
    p = tree / "hostA" / "notes" / "pipe.mig"
    res = audit_file(FileRef(str(p), 0, 0))
    assert res.not_a_state and not res.rows


def test_a_folder_of_mutants_is_all_rows_or_counts(tmp_path, capsys) -> None:
    """Cut, flipped and inflated copies of a real capture, and bytes that are no capture:
    one run, every file a row or counted as no state, no internal error, nothing hangs."""
    import random

    base = _raw("damaged/trunc-ram.mig.zst").read_bytes()[:60000]
    rnd = random.Random(16)
    d = tmp_path / "mutants"
    d.mkdir()
    for i in range(40):
        data = bytearray(base[:rnd.randrange(8, len(base))])
        for _ in range(rnd.randrange(0, 4)):
            at = rnd.randrange(len(data))
            data[at] ^= 1 << rnd.randrange(8)
        if i % 5 == 0 and len(data) > 40:  # a length field set huge
            data[rnd.randrange(8, 40)] = 0xFF
        (d / f"m{i:02d}.mig").write_bytes(bytes(data))
    for i, raw in enumerate([b"", b"Q", b"QEVM", b"QEVM\0\0\0\3", b"LibvirtQemudSave",
                             b"LibvirtQemudPart" + bytes(76), b"QFI\xfb" + bytes(100),
                             b"\x28\xb5\x2f\xfd", b"\x1f\x8b\x08\0", b"{}", bytes(4096)]):
        (d / f"n{i:02d}").write_bytes(raw)
    rc, rows, s = _audit([str(d), "--timeout", "60"], capsys)
    assert rc in (1, 2)
    assert s["states"] + s["not_a_state"] == s["files"] == 51
    assert not [r for r in rows if r["problem"] and r["problem"]["code"] in
                ("internal-error", "timeout", "worker-lost")]
    assert {Path(r["path"]).name for r in rows} >= {f"m{i:02d}.mig" for i in range(40)}


def test_scheduler_without_dask_says_what_to_install(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    rc = cli.main(["audit", "--scheduler", "tcp://127.0.0.1:1", "/tmp"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.splitlines()) == 1
    assert "pip install 'miginspect[dask]'" in err


def test_usage(capsys) -> None:
    assert cli.main(["audit"]) == 2
    assert "give at least one PATH" in capsys.readouterr().err
    assert cli.main(["audit", "--on-host", "w:/x", "/tmp"]) == 2
    assert "--on-host needs --scheduler" in capsys.readouterr().err


# -- on a Dask cluster ------------------------------------------------------------------------

class Cluster:
    """A `dask scheduler` and `dask worker`s on this machine, each worker on its own
    loopback address (a host of its own to the scheduler)."""

    def __init__(self, where: Path) -> None:
        self.where = where
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.file = where / "scheduler.json"
        self._start("scheduler", ["dask", "scheduler", "--host", "127.0.0.1", "--port", "0",
                                  "--no-dashboard", "--scheduler-file", str(self.file)])
        deadline = time.monotonic() + 60
        while not self.file.exists():
            if time.monotonic() > deadline or self.procs["scheduler"].poll() is not None:
                raise RuntimeError("dask scheduler did not start: "
                                   + (where / "scheduler.log").read_text()[-2000:])
            time.sleep(0.2)
        self.address = json.loads(self.file.read_text())["address"]

    def _start(self, name: str, argv: list[str]) -> None:
        log = open(self.where / f"{name}.log", "w")  # noqa: SIM115
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                            env=self.env, start_new_session=True, cwd=self.where)
        log.close()

    def worker(self, name: str, host: str, nanny: bool = True) -> None:
        self._start(name, ["dask", "worker", "--scheduler-file", str(self.file), "--host", host,
                           "--name", name, "--nthreads", "1", "--no-dashboard",
                           *([] if nanny else ["--no-nanny"])])

    def wait_for(self, client, names: set[str], timeout: float = 90) -> dict[str, str]:  # noqa: ANN001
        """name -> address, once every worker of `names` is registered."""
        deadline = time.monotonic() + timeout
        while True:
            ws = client.scheduler_info(n_workers=-1)["workers"]
            got = {w["name"]: a for a, w in ws.items()}
            if names <= set(got):
                return got
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers {names - set(got)} did not register")
            time.sleep(0.3)

    def stop(self, name: str) -> None:
        p = self.procs.pop(name)
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(timeout=30)

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    distributed = pytest.importorskip("distributed", reason=DASK_REASON)
    if shutil.which("dask") is None:
        pytest.skip("the `dask` command is not on PATH: " + DASK_REASON)
    c = Cluster(tmp_path_factory.mktemp("dask"))
    try:
        c.worker("hostA", "127.0.0.1")
        c.worker("hostB", "127.0.0.2")
        client = distributed.Client(c.address, set_as_default=False, timeout=60)
        c.client = client
        c.wait_for(client, {"hostA", "hostB"})
        yield c
        client.close()
    finally:
        c.close()


def test_dask_table_is_the_local_table(tree, local, cluster, capsys) -> None:
    """Each root read by the worker of its host; rows, totals and CSV as the local run."""
    argv = ["--scheduler", cluster.address, "--on-host", f"hostA:{tree / 'hostA'}",
            "--on-host", f"hostB:{tree / 'hostB'}"]
    rc, rows, s = _audit(argv, capsys)
    lrc, lrows, ls = local
    assert rc == lrc and rows == lrows
    for k in ("files", "bytes", "states", "state_files", "not_a_state", "symlinks",
              "special_files", "verdicts", "totals", "causes", "hosts"):
        assert s[k] == ls[k], k
    assert s["scheduler"] == cluster.address
    cli.main(["audit", *argv, "--csv", "-"])
    dask_csv = capsys.readouterr().out
    cli.main(["audit", str(tree), "--csv", "-"])
    assert dask_csv == capsys.readouterr().out


def _many(tree: Path, name: str, n: int) -> Path:
    """`n` hard links of one real saved state (and one damaged file) in a new folder."""
    d = tree.parent / name
    src = _raw("q10-paused-legacy.mig.zst")
    for i in range(n):
        _place(src, d / f"vm{i:02d}.mig")
    _place(_raw("damaged/trunc-ram.mig.zst"), d / "cut.mig")
    return d


def _dask_run(cluster, routes_, lost_after: float, on_first) -> list:  # noqa: ANN001
    """The results of a Dask run; `on_first()` is called at the first file's answer, and
    files must still be without an answer then (the kill is mid-run)."""
    from miginspect.inspector.audit_dask import routes, run_dask
    from miginspect.inspector.audit_walk import WalkCounts

    rts = routes(cluster.client, routes_, [])
    counts = WalkCounts()
    out, at = [], None
    for res in run_dask(cluster.client, rts, 120, lost_after, counts):
        out.append(res)
        if at is None and isinstance(res, FileResult) and res.rows:
            on_first()
            at = len(out)
    assert at is not None and at < counts.files, (at, counts.files)
    return out


def test_a_killed_worker_loses_no_file(tree, cluster) -> None:
    """The worker process of hostB is killed after its first answer: its nanny restarts
    it, Dask runs the lost tasks again, and every file has its full row."""
    d = _many(tree, "many-B", 16)
    addr = cluster.wait_for(cluster.client, {"hostB"})["hostB"]
    pid = cluster.client.run(os.getpid, workers=[addr])[addr]
    results = _dask_run(cluster, [("hostB", str(d))], 60,
                        lambda: os.kill(pid, signal.SIGKILL))
    rows = [r for res in results for r in res.rows]
    assert sorted(Path(r.path).name for r in rows) == sorted(p.name for p in d.iterdir())
    assert all(r.problem is None or r.problem.code == "truncated-ram" for r in rows)
    want = audit_file(FileRef(str(d / "vm00.mig"), 0, 0)).rows[0]
    for r in rows:
        if r.problem is None:
            r.path = want.path
            assert r == want  # the same figures as read here
    assert cluster.wait_for(cluster.client, {"hostB"})["hostB"] != addr  # restarted


def test_a_worker_gone_for_good_gives_worker_lost_rows(tree, cluster) -> None:
    """A worker without a nanny killed mid-run: its host has no worker left, so its files
    without an answer are `worker-lost` rows; no file is missing."""
    cluster.worker("hostC", "127.0.0.3", nanny=False)
    cluster.wait_for(cluster.client, {"hostC"})
    d = _many(tree, "many-C", 12)
    results = _dask_run(cluster, [("hostC", str(d))], 1.5, lambda: cluster.stop("hostC"))
    rows = [r for res in results for r in res.rows]
    assert sorted(Path(r.path).name for r in rows) == sorted(p.name for p in d.iterdir())
    lost = [r for r in rows if r.problem is not None and r.problem.code == "worker-lost"]
    assert lost and all(r.verdict == "could not tell" for r in lost)
    assert len(rows) - len(lost) >= 1
