"""Hostile input: mutated real captures through every command, in-process.

For each mutated input and command: no exception escapes (exit status 0, 1 or
2 only; 3 is the CLI's "internal error"), no traceback, each run under 2 s,
Python heap peak (tracemalloc, which numpy reports to) within a bound set by
the input's size whatever its length fields say, the input untouched
(read-only, same bytes) and nothing written outside the output folder.

The count: MIGINSPECT_FUZZ_RUNS, default 10,000 under CI=true, 600 otherwise;
MIGINSPECT_FUZZ_SEED picks another sequence. A failing input is kept in the
pytest tmp folder and named in the failure message.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import random
import stat
import time
import tracemalloc
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from conftest import SAMPLES, sample_meta, sample_names, sample_path, unpack
from fuzzing import (
    Base,
    compress_base,
    mutate,
    mutate_structure,
    shrink_legacy,
    shrink_mapped_ram,
    structure,
    wrap_libvirt,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from miginspect import cli

RUNS = int(os.environ.get("MIGINSPECT_FUZZ_RUNS",
                          10_000 if os.environ.get("CI", "").lower() == "true" else 600))
SEED = int(os.environ.get("MIGINSPECT_FUZZ_SEED", "20261125"))
#: CPU seconds per input (CPU, not wall time: shared CI machines are loaded), and a
#: wall-clock bound that still catches a hang or a sleep
TIME_LIMIT = 2.0
WALL_LIMIT = 10.0
#: heap allowed beyond a multiple of the input size (record columns are ~24 bytes per
#: record of >= 9 bytes); a length field claiming GiBs must not reach it
HEAP_OVERHEAD = 64 << 20
HEAP_PER_BYTE = 4
MAX_DAMAGED_BASE = 1 << 20
#: Issue 17's mutations (idstrs, their length bytes, section and instance ids, bytes
#: inserted into device state, command lengths): MIGINSPECT_FUZZ_STRUCTURE_RUNS, default
#: a quarter of RUNS.
STRUCTURE_RUNS = int(os.environ.get("MIGINSPECT_FUZZ_STRUCTURE_RUNS", max(1, RUNS // 4)))


def _smallest(caps_has_mapped_ram: bool) -> str | None:
    best = None
    for n in sample_names():
        meta = sample_meta(n)
        caps = meta.get("capture", {}).get("header", {}).get("capabilities", [])
        if ("mapped-ram" in caps) != caps_has_mapped_ram:
            continue
        size = meta.get("capture", {}).get("raw_size") or (SAMPLES / f"{n}.mig.zst").stat().st_size
        if best is None or size < best[0]:
            best = (size, n)
    return best[1] if best else None


@pytest.fixture(scope="module")
def bases() -> list[Base]:
    return make_bases()


def make_bases() -> list[Base]:
    """The fuzz bases: small real captures (legacy, bare, libvirt-wrapped, zstd, mapped-ram)
    and the small damaged samples."""
    out: list[Base] = []
    leg = _smallest(False)
    if leg is not None:
        raw = Path(sample_path(leg)).read_bytes()
        small = shrink_legacy(raw)
        bare = shrink_legacy(raw, keep_trailer=False)
        out += [small, bare, wrap_libvirt(bare), compress_base(bare)]
    mr = _smallest(True)
    if mr is not None:
        out.append(shrink_mapped_ram(Path(sample_path(mr)).read_bytes()))
    for z in sorted((SAMPLES / "damaged").glob("*.mig.zst")):
        p = unpack(z)
        if p.stat().st_size <= MAX_DAMAGED_BASE:
            out.append(Base("damaged-" + z.name[:-8], p.read_bytes(), {}, [0]))
    if not out:
        pytest.skip("no bundled samples to cut fuzz bases from (samples/generate.py)")
    return out


#: commands not run once per mutated file: `audit` reads each file with `check` and `size`
#: (fuzzed here) in child processes; tests/test_audit.py runs it over a folder of mutants
NOT_PER_FILE = {"audit"}


def _commands() -> list[str]:
    p = cli.build_parser()
    sub = next(a for a in p._actions if a.__class__.__name__ == "_SubParsersAction")
    return [c for c in cli.COMMANDS if c in sub.choices and c not in NOT_PER_FILE]


def _argv(cmd: str, path: str, base_path: str, outdir: Path, rnd: random.Random) -> list[str]:
    js = ["--json"] if rnd.random() < 0.6 else []
    if cmd == "diff":
        a, b = (base_path, path) if rnd.random() < 0.5 else (path, base_path)
        return ["diff", a, b, *(["--partial"] if rnd.random() < 0.5 else []), *js]
    if cmd == "convert":
        return ["convert", path, str(outdir / "out.mig"), "--to",
                rnd.choice(["legacy", "mapped-ram"]), "--force", *js]
    partial = ["--partial"] if rnd.random() < 0.3 else []
    if cmd == "extract":
        return ["extract", path, "-o", str(outdir / "x"), *partial]
    if cmd in ("map", "devices", "size"):
        return [cmd, path, *partial, *js]
    if cmd in ("xml",):
        return [cmd, path]
    if cmd == "check":
        r = rnd.random()
        if r < 0.2:  # the mutated file as the target snapshot
            return ["check", base_path, "--target", path, *js]
        if r < 0.4:
            return ["check", path, "--target", base_path, *js]
    return [cmd, path, *js]


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _can_reset_peak() -> bool:
    """Linux lets a process reset its peak RSS (VmHWM) by writing 5 to clear_refs:
    a per-run peak without tracemalloc's 4-5x slowdown."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _status("VmHWM:")
        return True
    except OSError:
        return False
    except KeyError:
        return False


RSS_PEAK = _can_reset_peak()


def _run(argv: list[str]) -> tuple[int, str, str, float, int]:
    """Run the CLI in-process; returns (exit, stdout, stderr, seconds, peak bytes): seconds
    is CPU time, or WALL_LIMIT + wall time when the wall clock ran past WALL_LIMIT; peak is
    the resident-set growth where Linux can reset VmHWM, else the tracemalloc heap peak."""
    out, err = io.StringIO(), io.StringIO()
    if RSS_PEAK:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _status("VmRSS:")
    else:
        tracemalloc.start()
    t0 = time.perf_counter()
    c0 = time.process_time()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = cli.main(argv)
            except SystemExit as e:  # argparse
                rc = e.code if isinstance(e.code, int) else 2
    finally:
        wall = time.perf_counter() - t0
        dt = time.process_time() - c0 if wall < WALL_LIMIT else WALL_LIMIT + wall
        if RSS_PEAK:
            peak = max(0, _status("VmHWM:") - before)
        else:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    return rc, out.getvalue(), err.getvalue(), dt, peak


def _listing(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*")}


Case = tuple[Base, bytes, str, str]  # base, mutated bytes, what was done, command


def _mutated_cases(bases: list[Base], runs: int, rnd: random.Random) -> Iterator[Case]:
    cmds = _commands()
    for i in range(runs):
        b = bases[i % len(bases)]
        data, ops = mutate(b, rnd)
        yield b, data, ops, cmds[(i // len(bases)) % len(cmds)]


#: values written into every length / offset / id field of the bases
INFLATED = [0xFFFFFFFFFFFFFFFF, 1 << 63, 1 << 40, 0xFFFFFFFF, 0x80000000, 0]


def _inflated_cases(bases: list[Base]) -> Iterator[Case]:
    """Every length/offset field of every base set to huge values (MEM_SIZE totals,
    used_length, vmdescription length, mapped-ram offsets, libvirt data_len, ...), and
    to twice the file size; commands in rotation."""
    cmds = _commands()
    k = 0
    for b in bases:
        for off, width in sorted(b.fields.items()):
            for v in [*INFLATED, 2 * len(b.data)]:
                data = bytearray(b.data)
                w = abs(width)
                if off + w > len(data):
                    continue
                data[off: off + w] = (v & ((1 << (8 * w)) - 1)).to_bytes(
                    w, "little" if width < 0 else "big")
                yield b, bytes(data), f"field@{off}/{width}={v:#x}", cmds[k % len(cmds)]
                k += 1


def _check_codes(argv: list[str], rc: int, out: str) -> str | None:
    """`check --json` names every problem with a code of the table."""
    from miginspect.inspector.problems import PROBLEMS

    if argv[0] != "check" or "--json" not in argv or rc not in (0, 1, 2) or not out:
        return None
    try:
        rep = json.loads(out)
    except ValueError:
        return "check --json printed no JSON"
    bad = [p["code"] for p in rep.get("problems", []) if p.get("code") not in PROBLEMS]
    return f"codes not in the table: {bad}" if bad else None


def _fuzz(bases: list[Base], cases: Iterable[Case], work: Path, rnd: random.Random,
          stats: dict | None = None) -> list[str]:
    """Runs the cases; `stats` (when given) gathers the campaign's figures: runs, exit
    statuses, slowest run (CPU s) and largest peak growth (bytes), per command."""
    indir = work / "in"
    indir.mkdir()
    scratch = work / "cwd"
    scratch.mkdir()
    base_paths = {}
    for b in bases:
        p = indir / f"base-{b.name}"
        p.write_bytes(b.data)
        p.chmod(0o444)
        base_paths[b.name] = p
    before_in = _listing(indir)
    failures: list[str] = []
    old_cwd = os.getcwd()
    os.chdir(scratch)
    try:
        for i, (b, data, ops, cmd) in enumerate(cases):
            inp = indir / "input.mig"
            if inp.exists():
                inp.chmod(0o644)
            inp.write_bytes(data)
            inp.chmod(0o444)
            digest = hashlib.sha256(data).digest()
            outdir = work / "out"
            outdir.mkdir(exist_ok=True)
            argv = _argv(cmd, str(inp), str(base_paths[b.name]), outdir, rnd)
            rc, out, err, dt, peak = _run(argv)
            if stats is not None:
                _count(stats, argv, rc, dt, peak)
            bad = []
            why = _check_codes(argv, rc, out)
            if why:
                bad.append(why)
            if rc not in (0, 1, 2):
                bad.append(f"exit {rc}: {err.strip()[-300:]}")
            if "Traceback" in err:
                bad.append("traceback on stderr")
            if dt > TIME_LIMIT:
                bad.append(f"took {dt:.2f} s (CPU; > {WALL_LIMIT:.0f}: wall)")
            limit = HEAP_PER_BYTE * len(data) + HEAP_OVERHEAD
            if peak > limit:
                bad.append(f"heap peak {peak:,} B > {limit:,} B")
            if hashlib.sha256(inp.read_bytes()).digest() != digest or \
                    stat.S_IMODE(inp.stat().st_mode) != 0o444:
                bad.append("input modified")
            if _listing(indir) != before_in | {"input.mig"}:
                bad.append(f"wrote next to the input: {_listing(indir) - before_in}")
            if any(scratch.iterdir()):
                bad.append(f"wrote into the working directory: {_listing(scratch)}")
            if bad:
                keep = work / f"fail-{len(failures)}-{b.name}.mig"
                keep.write_bytes(data)
                failures.append(f"run {i} `{' '.join(argv[:1])}` on {b.name} [{ops}] "
                                f"(kept as {keep}): {'; '.join(bad)}")
                if len(failures) >= 20:
                    break
            for p in outdir.rglob("*"):
                if p.is_file():
                    p.chmod(0o644)
                    p.unlink()
    finally:
        os.chdir(old_cwd)
    return failures


def _count(stats: dict, argv: list[str], rc: int, dt: float, peak: int) -> None:
    key = argv[0] + (" --partial" if "--partial" in argv else "")
    c = stats.setdefault(key, {"runs": 0, "exits": {}, "slowest_s": 0.0, "peak_bytes": 0})
    c["runs"] += 1
    c["exits"][str(rc)] = c["exits"].get(str(rc), 0) + 1
    c["slowest_s"] = max(c["slowest_s"], round(dt, 3))
    c["peak_bytes"] = max(c["peak_bytes"], peak)


def test_bases_are_clean(bases: list[Base], tmp_path: Path) -> None:
    """The unmutated bases are valid captures: `check` finds nothing QEMU would refuse."""
    for b in bases:
        if b.name.startswith("damaged-"):
            continue
        p = tmp_path / b.name
        p.write_bytes(b.data)
        rc, out, err, _, _ = _run(["check", str(p), "--json"])
        assert rc == 0, f"{b.name}: {out[-2000:]} {err}"


def _structure_cases(bases: list[Base], runs: int, rnd: random.Random) -> Iterator[Case]:
    """Issue 17's mutations of the fields QEMU looks sections up by, on the uncompressed
    bases; commands in rotation."""
    cmds = _commands()
    pairs = [(b, structure(b)) for b in bases if not b.name.startswith(("zstd", "damaged"))]
    pairs = [(b, st) for b, st in pairs if st]
    if not pairs:
        return
    for i in range(runs):
        b, st = pairs[i % len(pairs)]
        data, ops = mutate_structure(b, st, rnd)
        yield b, data, ops, cmds[(i // len(pairs)) % len(cmds)]


_CASES = {"mutate": _mutated_cases, "structure": _structure_cases}


def _worker(args: tuple[list[Base], int, int, str, str]) -> list[str]:
    bases, runs, seed, work, kind = args
    Path(work).mkdir(parents=True, exist_ok=True)
    rnd = random.Random(seed)
    return _fuzz(bases, _CASES[kind](bases, runs, rnd), Path(work), rnd)


def test_inflated_length_fields(bases: list[Base], tmp_path: Path) -> None:
    """Whatever a length field says: no big allocation, no slow run, no traceback."""
    failures = _fuzz(bases, _inflated_cases(bases), tmp_path, random.Random(SEED))
    assert not failures, f"{len(failures)} failing input(s):\n" + "\n".join(failures)


def _worker_to_file(args: tuple[list[Base], int, int, str, str], result: str) -> None:
    Path(result).write_text(json.dumps(_worker(args)))


def test_fuzz_commands(bases: list[Base], tmp_path: Path) -> None:
    """RUNS mutated inputs, split over the CPUs (forked, non-daemonic workers: commands may
    start processes of their own), each with its own seed."""
    failures = _parallel(bases, RUNS, SEED, "mutate", tmp_path)
    assert not failures, f"{len(failures)} failing input(s) of {RUNS}:\n" + "\n".join(failures)


def test_fuzz_structure_fields(bases: list[Base], tmp_path: Path) -> None:
    """Issue 17's campaign: STRUCTURE_RUNS inputs with an idstr byte or length byte, a
    section or instance id, a command length changed or bytes inserted inside a device
    section; the same budget as above, and every problem `check` names has a table code."""
    failures = _parallel(bases, STRUCTURE_RUNS, SEED + 17, "structure", tmp_path)
    assert not failures, (f"{len(failures)} failing input(s) of {STRUCTURE_RUNS}:\n"
                          + "\n".join(failures))


def _parallel(bases: list[Base], runs: int, seed: int, kind: str, tmp_path: Path
              ) -> list[str]:
    nproc = max(1, min(os.cpu_count() or 1, 4, runs // 200 or 1))
    share = [runs // nproc + (1 if i < runs % nproc else 0) for i in range(nproc)]
    jobs = [(bases, share[i], seed + i, str(tmp_path / f"w{i}"), kind) for i in range(nproc)]
    if nproc == 1:
        failures = _worker(jobs[0])
    else:
        ctx = multiprocessing.get_context("fork")
        procs = []
        for i, job in enumerate(jobs):
            pr = ctx.Process(target=_worker_to_file, args=(job, str(tmp_path / f"r{i}.json")))
            pr.start()
            procs.append(pr)
        failures = []
        for i, pr in enumerate(procs):
            pr.join()
            res = tmp_path / f"r{i}.json"
            if pr.exitcode != 0 or not res.exists():
                failures.append(f"worker {i} died (exit code {pr.exitcode})")
            else:
                failures += json.loads(res.read_text())
    return failures


# -- hypothesis: arbitrary edits anywhere, shrunk to a minimal failing edit ------------
HYP_EXAMPLES = int(os.environ.get("MIGINSPECT_FUZZ_HYPOTHESIS", "150"))


@pytest.fixture(scope="module")
def hyp_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hyp")


edits = st.lists(
    st.tuples(st.sampled_from(["set", "cut", "ins"]), st.floats(0, 1),
              st.binary(min_size=1, max_size=9)),
    min_size=1, max_size=4)


@settings(max_examples=HYP_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(which=st.integers(0, 1000), ed=edits, cmd=st.integers(0, 100))
def test_hypothesis_edits(bases: list[Base], hyp_dir: Path, which: int, ed: list, cmd: int
                          ) -> None:
    b = bases[which % len(bases)]
    data = bytearray(b.data)
    for op, where, blob in ed:
        pos = int(where * len(data))
        if op == "set":
            data[pos: pos + len(blob)] = blob
        elif op == "cut":
            del data[pos:]
        else:
            data[pos:pos] = blob
    p = hyp_dir / "h.mig"
    if p.exists():
        p.chmod(0o644)
    p.write_bytes(bytes(data))
    p.chmod(0o444)
    cmds = _commands()
    c = cmds[cmd % len(cmds)]
    argv = _argv(c, str(p), str(p), hyp_dir / "out", random.Random(cmd))
    rc, _out, err, dt, peak = _run(argv)
    assert rc in (0, 1, 2), err
    assert "Traceback" not in err
    assert dt < TIME_LIMIT
    assert peak < HEAP_PER_BYTE * len(data) + HEAP_OVERHEAD


def test_bytes_from_nothing(tmp_path: Path) -> None:
    """Inputs that are not captures at all: empty, tiny, text, a bare magic."""
    cases = [b"", b"Q", b"QEVM", b"QEVM\0\0\0\3", b"QEVM\0\0\0\3\x07", b"LibvirtQemudSave",
             b"LibvirtQemudPart" + bytes(76), b"\x28\xb5\x2f\xfd", b"\x1f\x8b\x08\0", b"BZh9",
             b"\xfd7zXZ\0", b"{}", b"\0" * 4096]
    for i, data in enumerate(cases):
        p = tmp_path / f"c{i}"
        p.write_bytes(data)
        for c in _commands():
            argv = _argv(c, str(p), str(p), tmp_path / "out", random.Random(i))
            rc, _out, err, dt, _ = _run(argv)
            assert rc in (0, 1, 2), (data, c, err)
            assert "Traceback" not in err


# -- --target descriptions: anything a user may hand in --------------------------------
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["name", "used_length", "max_length", "page_size", "idstr",
                         "instance_id", "version_id", "x"]), inner, max_size=4),
    max_leaves=12)
_targets = st.one_of(
    st.fixed_dictionaries({}, optional={
        "machine_type": _json_values, "target_page_size": _json_values,
        "ramblocks": _json_values | st.lists(_json_values, max_size=3),
        "sections": _json_values | st.lists(_json_values, max_size=3)}).map(json.dumps),
    st.text(max_size=300).map(lambda t: "Block Name PSize\n" + t),
    st.text(max_size=200))


@settings(max_examples=HYP_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=_targets)
def test_hypothesis_target_descriptions(bases: list[Base], hyp_dir: Path, text: str) -> None:
    """A --target description is parsed or refused with a usage error (exit 2); the
    comparison never raises."""
    from miginspect.errors import MigError
    from miginspect.inspector.stream import walk_stream
    from miginspect.inspector.target import compare, load_target

    t = hyp_dir / "target.txt"
    t.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        desc = load_target(str(t))
    except MigError:
        return
    for b in bases[:2]:
        compare(walk_stream(b.data), desc)


def test_deeply_nested_trailer(bases: list[Base], tmp_path: Path) -> None:
    """A vmdescription JSON nested deeper than Python's recursion limit (json.loads raises
    RecursionError) or with hundreds of nested subsections: no command crashes."""
    bare = next((b for b in bases if b.name == "legacy-notrailer"), None)
    if bare is None:
        pytest.skip("needs a legacy sample")
    sub = '{"vmsd_name": "x", "fields": [{"name": "a", "type": "uint8", "size": 1}]}'
    for _ in range(400):
        sub = '{"vmsd_name": "x", "fields": [], "subsections": [' + sub + "]}"
    trailers = [
        '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"page_size": 4096, "devices": [{"name": "timer", "instance_id": 0, "fields": [], '
        '"subsections": [' + sub + "]}]}",
    ]
    for i, js in enumerate(trailers):
        raw = js.encode()
        data = bare.data + b"\x06" + len(raw).to_bytes(4, "big") + raw
        p = tmp_path / f"deep{i}.mig"
        p.write_bytes(data)
        for c in _commands():
            argv = _argv(c, str(p), str(p), tmp_path / "out", random.Random(i))
            rc, _out, err, _, _ = _run(argv)
            assert rc in (0, 1, 2), (c, err)


def test_many_tiny_sections(bases: list[Base], tmp_path: Path) -> None:
    """Millions of 5-byte commands or EOS-only PART sections: the walk stops at its section
    limit instead of growing with the file; `check` answers "could not tell" quickly."""
    bare = next((b for b in bases if b.name == "legacy-notrailer"), None)
    if bare is None:
        pytest.skip("needs a legacy sample")
    from miginspect.inspector.stream import MAX_SECTIONS, walk_stream

    w = walk_stream(bare.data)
    eof = w.eof_offset
    sid = next(s for s in w.sections if s.idstr == "ram").section_id.to_bytes(4, "big")
    fillers = [b"\x08\x00\x0b\x00\x00",  # SWITCHOVER_START
               b"\x02" + sid + (0x10).to_bytes(8, "big") + b"\x7e" + sid]  # ram PART: EOS
    for i, unit in enumerate(fillers):
        data = bare.data[:eof] + unit * (MAX_SECTIONS + 1000) + bare.data[eof:]
        p = tmp_path / f"many{i}.mig"
        p.write_bytes(data)
        rc, out, err, dt, peak = _run(["check", str(p), "--json"])
        assert rc == 2, err
        assert "MIGINSPECT_MAX_SECTIONS" in out
        assert dt < 3 * TIME_LIMIT
        assert peak < HEAP_PER_BYTE * len(data) + HEAP_OVERHEAD


def test_struct_headers_match_grammar(bases: list[Base]) -> None:
    """The walker reads section and command headers with struct (speed on hostile input);
    on real bytes they equal what the construct grammars parse."""
    from miginspect.formats import stream as S
    from miginspect.inspector.stream import walk_stream

    for b in bases:
        if b.name.startswith(("zstd", "libvirt", "damaged")):
            continue
        w = walk_stream(b.data)
        assert w.error is None, w.error
        for s in w.sections:
            if s.kind in (S.KIND_START, S.KIND_FULL):
                h = S.section_header_full.parse(b.data[s.offset + 1:])
                assert (h.section_id, h.idstr, h.instance_id, h.version_id) == (
                    s.section_id, s.idstr, s.instance_id, s.version_id)
            elif s.kind in (S.KIND_PART, S.KIND_END):
                assert S.section_header_part.parse(b.data[s.offset + 1:]).section_id == \
                    s.section_id
            elif s.kind == S.KIND_COMMAND:
                c = S.command.parse(b.data[s.offset + 1:])
                assert (c.cmd, s.end - s.offset) == (s.cmd, 5 + c.len)
