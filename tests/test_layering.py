"""Layering: grammars and analyses never import rich (only renderers and commands do)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import miginspect.formats
import miginspect.inspector


def _modules(pkg) -> list[str]:  # noqa: ANN001
    return [f"{pkg.__name__}.{m.name}" for m in pkgutil.iter_modules(pkg.__path__)]


def test_analysis_and_grammar_modules_do_not_import_rich() -> None:
    mods = _modules(miginspect.inspector) + _modules(miginspect.formats)
    # the modules each issue's analysis lives in are all among them
    for name in ("info", "capture", "mapped_ram", "mapview", "extract", "physical", "size",
                 "rounds", "diff", "devices", "check", "target", "convert"):
        assert f"miginspect.inspector.{name}" in mods, name
    assert "miginspect.formats.vmstate" in mods
    code = (f"import sys, importlib\nfor m in {mods!r}: importlib.import_module(m)\n"
            "loaded = sorted(m for m in sys.modules if m == 'rich' or m.startswith('rich.'))\n"
            "print(loaded)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def _loaded_by(code: str) -> list[str]:
    """The modules `code` loads (run in a fresh interpreter; what site loaded is left out)."""
    run = ("import sys\nbefore = set(sys.modules)\n" + code +
           "\nprint('\\n'.join(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-c", run], capture_output=True, text=True,
                         check=True)
    return out.stdout.split()


def test_the_parser_imports_no_analysis_renderer_or_rich() -> None:
    """`miginspect --help` and usage errors build the whole parser: the command modules
    import their analyses, renderers and rich only when they run."""
    loaded = _loaded_by("from miginspect.cli import build_parser\nbuild_parser()")
    heavy = [m for m in loaded if m.split(".")[0] in ("rich", "numpy", "construct")
             or m.startswith("miginspect.render")
             or (m.startswith("miginspect.inspector.") and m != "miginspect.inspector.choices")]
    assert heavy == []


def test_a_plain_stream_imports_only_what_it_needs(tmp_path) -> None:  # noqa: ANN001
    """`info` on a plain stream in a pipe: no decompressor, lzop pipe, temporary file, page
    content reader, libvirt XML, libvirt or qcow2 module, or progress bar is imported."""
    from conftest import sample_path

    path = sample_path("q10-paused-legacy")
    loaded = _loaded_by("import contextlib, io\nfrom miginspect.cli import main\n"
                        "with contextlib.redirect_stdout(io.StringIO()):\n"
                        f"    assert main(['info', {str(path)!r}]) == 0")
    unwanted = {"bz2", "lzma", "zstandard", "subprocess", "tempfile", "shutil", "xxhash",
                "xml.etree.ElementTree", "rich.progress", "miginspect.bars",
                "miginspect.inspector.content", "miginspect.inspector.qcow2",
                "miginspect.inspector.containers.libvirt",
                "miginspect.inspector.containers.qcow2"}
    assert sorted(unwanted & set(loaded)) == []
    assert "miginspect.inspector.capture" in loaded  # the path was taken


def test_no_function_over_80_lines() -> None:
    """Style: no function in miginspect/ longer than 80 lines."""
    import ast
    from pathlib import Path

    root = Path(miginspect.inspector.__file__).resolve().parent.parent
    long = []
    for p in sorted(root.rglob("*.py")):
        for n in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                    n.end_lineno - n.lineno + 1 > 80:
                long.append(f"{p.relative_to(root)}:{n.lineno} {n.name}")
    assert not long, long


#: fields whose values are free-form data by nature: a device field's decoded value (an
#: integer, a list, hex), and the container description the `containers` work rebuilds
FREE_FORM = {("FieldDiff", "a"), ("FieldDiff", "b"), ("InfoReport", "container")}


def _report_types() -> list[type]:
    from miginspect.inspector.check import CheckReport
    from miginspect.inspector.convert import ConvertReport
    from miginspect.inspector.cpustate import CpuReport
    from miginspect.inspector.diff import DiffReport, PageHexDiff
    from miginspect.inspector.extract import ExtractReport
    from miginspect.inspector.info import InfoReport
    from miginspect.inspector.mapview import MapReport
    from miginspect.inspector.size import SizeReport

    return [CheckReport, ConvertReport, CpuReport, DiffReport, PageHexDiff, ExtractReport,
            InfoReport, MapReport, SizeReport]


def test_reports_are_typed_all_the_way_down() -> None:
    """One report contract (issue 11): every report is a dataclass whose fields, and the
    fields of the dataclasses in them, are typed: no `Any`, no `dict[str, Any]`, no list
    of dicts, no free-text notes (notes are `Note`s, a stop is a `Stop`)."""
    import dataclasses
    import typing

    seen: set[type] = set()
    bad = []
    todo = _report_types()
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if (cls.__name__, f.name) in FREE_FORM:
                continue
            t = hints[f.name]
            text = repr(t)
            if "Any" in text or "dict[str, typing.Any]" in text or \
                    (f.name in ("notes", "notices", "problems") and "list[str]" in text):
                bad.append(f"{cls.__name__}.{f.name}: {text}")
            stack = [t]
            while stack:
                x = stack.pop()
                if dataclasses.is_dataclass(x):
                    todo.append(x)
                stack.extend(typing.get_args(x))
    assert not bad, bad
    assert len(seen) > 30  # the walk reached the nested types
