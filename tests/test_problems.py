"""Problem codes: every code the package can raise or note is in the one table
(inspector/problems.py), codes are given where damage is found, and a cut inside any
RAM record of a real capture is `truncated-ram` with the truncation fix."""

from __future__ import annotations

import ast
import json
import re
import zlib
from pathlib import Path

import pytest
from conftest import ROOT, sample_names, sample_path

from miginspect import errors
from miginspect.formats import ram as R
from miginspect.inspector.check import check_file
from miginspect.inspector.problems import PROBLEMS
from miginspect.inspector.stream import walk_stream

PKG = ROOT / "miginspect"
ERROR_CLASSES = {n for n, c in vars(errors).items()
                 if isinstance(c, type) and issubclass(c, errors.MigError)}
#: Calls whose code is a keyword argument: errors, the parse choke point, notices.
CODE_KEYWORD_CALLS = ERROR_CLASSES | {"parse_at", "note"}
#: Calls whose code is the first argument.
CODE_FIRST_ARG_CALLS = {"problem"}

#: Modules whose raise sites still rely on the class's default code (they belong to
#: other work in progress; convert them by adding code= and drop them from this list).
PENDING: set[str] = set()


def _name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _strings(node: ast.expr) -> list[str]:
    """The string literals a code expression can take (`"a"`, `"a" if x else "b"`)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _strings(node.body) + _strings(node.orelse)
    return []


def _modules() -> list[tuple[str, ast.Module]]:
    return [(str(p.relative_to(PKG)), ast.parse(p.read_text(), str(p)))
            for p in sorted(PKG.rglob("*.py"))]


def _codes_in_use() -> dict[str, list[str]]:
    """code -> where it is given (file:line), found in the source: code= keywords of
    error raises, parse_at and notes, first arguments of problem(), class defaults."""
    found: dict[str, list[str]] = {}
    for rel, tree in _modules():
        for node in ast.walk(tree):
            codes: list[str] = []
            if isinstance(node, ast.Call):
                name = _name(node.func)
                if name in CODE_KEYWORD_CALLS or name == "cls" or isinstance(node.func, ast.Call):
                    for kw in node.keywords:
                        if kw.arg in ("code", "cut_code"):
                            codes += _strings(kw.value)
                if name in CODE_FIRST_ARG_CALLS and node.args:
                    codes += _strings(node.args[0])
            if isinstance(node, ast.Call) and _name(node.func) in ("Problem", "LayoutStop"):
                # problems the target prediction builds itself: the code is a positional
                # argument (Problem: the 6th; LayoutStop: the 3rd)
                i = 5 if _name(node.func) == "Problem" else 2
                if len(node.args) > i:
                    codes += _strings(node.args[i])
            if isinstance(node, ast.Call) and _name(node.func) in ("_cause", "Cause") \
                    and node.args:  # a root cause is reported as code "target-<cause>"
                codes += [f"target-{c}" for c in _strings(node.args[0])]
            if isinstance(node, ast.Call) and rel.startswith("inspector/prediction") \
                    and _name(node.func) == "_err":
                codes += [c for a in node.args for c in _strings(a) if c.startswith("target-")]
            if isinstance(node, ast.Assign) and rel == "errors.py":
                if any(isinstance(t, ast.Name) and t.id == "default_code" for t in node.targets):
                    codes += _strings(node.value)
            elif isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id.startswith("CODE_") for t in node.targets):
                codes += _strings(node.value)  # a module's named codes (inspector/qcow2.py)
            for c in codes:
                found.setdefault(c, []).append(f"{rel}:{node.lineno}")
    return found


def test_every_code_in_use_is_in_the_table() -> None:
    used = _codes_in_use()
    assert len(used) > 60, sorted(used)  # the scan finds the raise sites at all
    missing = {c: w for c, w in used.items() if c not in PROBLEMS}
    assert not missing, f"codes given but not in inspector/problems.py: {missing}"


def test_every_table_code_is_used() -> None:
    unused = set(PROBLEMS) - set(_codes_in_use())
    assert not unused, f"table entries no code site gives: {sorted(unused)}"


def test_codes_are_given_where_damage_is_found() -> None:
    """Every raise of a MigError and every parse_at call names its code, except in the
    modules listed in PENDING (and each of those still has such a site)."""
    bare: dict[str, list[int]] = {}
    for rel, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _name(node.func) in ERROR_CLASSES | {"parse_at"} \
                    and not any(kw.arg == "code" for kw in node.keywords):
                bare.setdefault(rel, []).append(node.lineno)
    unexpected = {k: v for k, v in bare.items() if k not in PENDING}
    assert not unexpected, f"raise sites without code=: {unexpected}"
    converted = PENDING - set(bare)
    assert not converted, f"no bare raise site left in {converted}: drop them from PENDING"


def test_kinds_are_well_formed() -> None:
    for code, k in PROBLEMS.items():
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", code), code
        assert k.severity in ("error", "warning", "info"), code
        assert k.meaning, code
        assert not k.undecided or k.severity == "error", code
        assert not k.cut or k.severity == "error", code


def test_readme_documents_every_code() -> None:
    text = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `([a-z0-9-]+)` \| (error|warning|info) \|", text, re.M)
    assert rows, "README has no problem-code table"
    documented = dict(rows)
    assert set(documented) == set(PROBLEMS), (
        f"undocumented: {sorted(set(PROBLEMS) - set(documented))}; "
        f"not codes: {sorted(set(documented) - set(PROBLEMS))}")
    for code, sev in documented.items():
        assert PROBLEMS[code].severity == sev, code


# -- cuts inside records of real captures -------------------------------------------
XBZ = [n for n in sample_names() if "xbzrle" in n]


def _records(raw: bytes):  # noqa: ANN202
    w = walk_stream(raw)
    assert w.error is None and w.records is not None
    return w


def _first(w, raw: bytes, kind: int, cont: bool) -> int | None:  # noqa: ANN001
    """Offset of the first record of `kind` with (or without) CONTINUE."""
    rt = w.records
    for off, k in zip(rt.rec_off.tolist(), rt.kind.tolist(), strict=True):
        word = int.from_bytes(raw[off:off + 8], "big")
        if k == kind and bool(word & R.RAM_SAVE_FLAG_CONTINUE) == cont:
            return off
    return None


def _name_len(raw: bytes, rec: int, cont: bool) -> int:
    return 0 if cont else 1 + raw[rec + 8]


def _cuts(raw: bytes) -> list[tuple[str, int, int]]:
    """(what, record offset, cut offset): a cut inside each part of each record kind."""
    w = _records(raw)
    out = []
    ram = next(s for s in w.sections if s.idstr == "ram")
    out.append(("MEM_SIZE word", ram.payload_offset, ram.payload_offset + 5))
    blk = w.blocks[1]
    out.append(("RAMBlock list entry", blk.entry_offset, blk.entry_offset + 3))
    for kind, cont in ((R.RAM_SAVE_FLAG_PAGE, False), (R.RAM_SAVE_FLAG_PAGE, True),
                       (R.RAM_SAVE_FLAG_ZERO, False), (R.RAM_SAVE_FLAG_ZERO, True),
                       (R.RAM_SAVE_FLAG_XBZRLE, False), (R.RAM_SAVE_FLAG_XBZRLE, True)):
        rec = _first(w, raw, kind, cont)
        if rec is None:  # QEMU sends no XBZRLE record that names its block here
            continue
        name = R.RAM_SAVE_FLAG_NAMES[kind] + ("|CONTINUE" if cont else "")
        body = rec + 8 + _name_len(raw, rec, cont)
        out.append((f"{name} record word", rec, rec + 3))
        if not cont:
            out.append((f"{name} RAMBlock idstr", rec, rec + 8 + 2))
        if kind == R.RAM_SAVE_FLAG_PAGE:
            out.append((f"{name} page payload", rec, body + 100))
        elif kind == R.RAM_SAVE_FLAG_ZERO:
            out.append((f"{name} fill byte", rec, body))
        else:
            out.append((f"{name} header", rec, body + 1))
            out.append((f"{name} payload", rec, body + 3 + 1))
    return out


def _assert_truncated_ram(path: Path, rec: int, cut: int, what: str) -> None:
    rep = check_file(str(path))
    first = rep.primary
    assert first is not None, what
    assert (first.code, first.offset) == ("truncated-ram", rec), (what, first)
    assert first.fix == PROBLEMS["truncated-ram"].fix, what
    assert f"(the data ends at 0x{cut:x})" in first.cause, (what, first.cause)
    assert rep.verdict == "will not load"


@pytest.mark.skipif(not XBZ, reason="no bundled XBZRLE capture (samples/generate.py)")
def test_cut_inside_any_record_is_truncated_ram(tmp_path: Path) -> None:
    raw = Path(sample_path(XBZ[0])).read_bytes()
    cuts = _cuts(raw)
    assert len(cuts) >= 15
    for what, rec, cut in cuts:
        p = tmp_path / "cut.mig"
        p.write_bytes(raw[:cut])
        _assert_truncated_ram(p, rec, cut, what)


@pytest.mark.skipif(not XBZ, reason="no bundled capture (samples/generate.py)")
def test_cut_inside_compress_page_record_is_truncated_ram(tmp_path: Path) -> None:
    """No QEMU we run writes COMPRESS_PAGE any more (removed in 9.1): a real PAGE record
    rewritten as one with the grammar (its page deflated), then cut in its length and in
    its data."""
    raw = Path(sample_path(XBZ[0])).read_bytes()
    w = _records(raw)
    ps = w.page_size
    rec = _first(w, raw, R.RAM_SAVE_FLAG_PAGE, True)
    assert rec is not None
    word = int.from_bytes(raw[rec:rec + 8], "big")
    addr = word & ~(ps - 1)
    data = zlib.compress(raw[rec + 8:rec + 8 + ps])
    new = R.ram_page_record.build(
        dict(word=addr | R.RAM_SAVE_FLAG_COMPRESS_PAGE | R.RAM_SAVE_FLAG_CONTINUE, idstr=None,
             payload=dict(length=len(data), data=data)), page_size=ps)
    assert R.ram_page_record.parse(new, page_size=ps).payload.data == data
    stream = raw[:rec] + new
    for what, cut in (("COMPRESS_PAGE length", rec + 8 + 2),
                      ("COMPRESS_PAGE data", rec + 8 + 4 + len(data) // 2)):
        p = tmp_path / "cut.mig"
        p.write_bytes(stream[:cut])
        _assert_truncated_ram(p, rec, cut, what)
    # whole, the record is read as a COMPRESS_PAGE (and the QEMU >= 9.1 warning given)
    p = tmp_path / "whole.mig"
    p.write_bytes(stream + raw[rec + 8 + ps:])
    rep = check_file(str(p))
    assert any(x.code == "compress-page" and x.offset == rec for x in rep.problems), \
        [(x.code, x.offset) for x in rep.problems]


@pytest.mark.skipif(not XBZ, reason="no bundled capture (samples/generate.py)")
def test_damaged_record_fields_keep_their_own_codes(tmp_path: Path) -> None:
    """Damage that is not a cut keeps its specific code (the old text rules gave cuts
    these codes; a cut is not one of these)."""
    raw = Path(sample_path(XBZ[0])).read_bytes()
    w = _records(raw)
    z = _first(w, raw, R.RAM_SAVE_FLAG_ZERO, True)
    x = _first(w, raw, R.RAM_SAVE_FLAG_XBZRLE, True)
    assert z is not None and x is not None
    cases = [("zero-fill", z, raw[:z + 8] + b"\x05" + raw[z + 9:]),
             ("xbzrle", x, raw[:x + 8] + b"\x02" + raw[x + 9:])]
    for code, rec, data in cases:
        p = tmp_path / f"{code}.mig"
        p.write_bytes(data)
        rc = check_file(str(p)).primary
        assert rc is not None and (rc.code, rc.offset) == (code, rec), rc


def test_check_json_codes_are_table_codes(tmp_path: Path) -> None:
    """Whatever check reports (here: a few damaged bundled files), every code is a key
    of the table and carries the table's severity or is a fatal error."""
    from conftest import SAMPLES, unpack

    paths = [unpack(z) for z in sorted((SAMPLES / "damaged").glob("*.mig.zst"))]
    if not paths:
        pytest.skip("no damaged samples bundled")
    for p in paths:
        rep = json.loads(json.dumps(check_file(str(p)).to_json()))
        for prob in rep["problems"]:
            k = PROBLEMS[prob["code"]]
            assert prob["severity"] in (k.severity, "error"), (p.name, prob)
