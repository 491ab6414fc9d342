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
