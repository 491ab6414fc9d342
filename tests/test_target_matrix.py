"""`check --target-qemu` on every pair of the target matrix (samples/matrix): the predicted
outcome is QEMU's recorded outcome, the predicted first error line is the line QEMU
printed, and the offset points at what QEMU stopped at.

The matrix was recorded by samples/matrix/generate.py: real states saved by QEMU 10 and
7.2, each loaded into targets whose command line differs in one thing, with QEMU's stderr
(and, for loads, whether the resumed guest answered an NMI). Here the same target command
lines go to the real target binaries, which the prediction starts paused and questions.
"""

from __future__ import annotations

import struct

import pytest
from target_matrix import matrix, qemu_missing, source_path, target_cmdline

from miginspect.formats import stream as S
from miginspect.inspector.check import check_file
from miginspect.inspector.prediction import OUTCOMES
from miginspect.jsondata import jsonable

M = matrix()
PAIRS = M["pairs"]


def test_matrix_records_every_outcome_and_the_issue_cases() -> None:
    if not PAIRS:
        pytest.skip("no samples/matrix/matrix.json")
    assert {p["outcome"] for p in PAIRS} == set(OUTCOMES)
    for p in PAIRS:
        assert p["source"] in M["sources"]
        if p["outcome"].startswith("fails"):
            # QEMU's first error line is among its stderr lines, word for word
            assert any(p["first_error"] in ln for ln in p["stderr_lines"]), p["id"]
        elif p["outcome"] == "loads":
            assert "NMI received" in p["guest"]["answer"], p["id"]
        else:  # resumed and running, and silent: the hang the issue describes
            assert p["guest"]["answer"] is None and p["query-status"]["running"], p["id"]
    phrases = ["unsupported machine type", "Machine type received is", "Size mismatch: pc.ram",
               'Unknown ramblock "0000:00:03.0/e1000.rom"',
               "Unknown savevm section or instance '0000:00:04.0/virtio-balloon' 0",
               "Missing section footer for 0000:00:01.3/piix4_pm",
               "Received unknown capability mapped-ram"]
    for ph in phrases:
        assert any(ph in (p["first_error"] or "") for p in PAIRS), ph


def _check_offset(pair: dict, pred: dict, path: str) -> None:
    """The predicted offset holds what QEMU stopped at."""
    buf = open(path, "rb").read()
    off = pred["offset"]
    line = pred["first_error"]
    assert off is not None and 0 <= off < len(buf), pred
    if line.startswith("Machine type received"):
        assert buf[off] == S.QEMU_VM_CONFIGURATION
    elif line.startswith(("Unknown ramblock", "Size mismatch")):
        name = pred["where"].encode()
        assert buf[off] == len(name) and buf[off + 1:off + 1 + len(name)] == name
    elif line.startswith("Unknown savevm section"):
        assert buf[off] in (S.QEMU_VM_SECTION_FULL, S.QEMU_VM_SECTION_START)
        n = buf[off + 5]
        assert buf[off + 6:off + 6 + n].decode() == pred["where"]
    elif line.startswith("Received unknown capability"):
        n = buf[off + 1]
        assert buf[off] == S.QEMU_VM_SUBSECTION
        assert buf[off + 2:off + 2 + n] == b"configuration/capabilities"
    elif line.startswith("Missing section footer"):
        assert buf[off] != S.QEMU_VM_SECTION_FOOTER
    elif line.startswith("Mismatched section id"):
        assert buf[off] == S.QEMU_VM_SECTION_FOOTER
        assert f"read 0x{struct.unpack_from('>I', buf, off + 1)[0]:x}" in line


@pytest.mark.qemu
@pytest.mark.parametrize("pair", PAIRS, ids=[p["id"] for p in PAIRS])
def test_prediction_agrees_with_qemu(pair: dict) -> None:
    why = qemu_missing(pair["qemu"])
    if why:
        pytest.skip(why)
    path = str(source_path(pair["source"]))
    rep = check_file(path, target_qemu=target_cmdline(pair))
    pred = jsonable(rep.target)["prediction"]
    assert pred["outcome"] == pair["outcome"], (pair["stderr_lines"], pred)
    if pair["first_error"] is not None:
        assert pred["first_error"] == pair["first_error"], (pair["stderr_lines"], pred)
    else:
        assert pred["first_error"] is None, pred
    # the verdict follows: a refused load is "will not load"; a guest that may not run
    # loads but exits 1 as well (a script must notice); a load exits 0
    assert (rep.exit_code == 1) == (pair["outcome"] != "loads"), rep.problems
    want = {"loads": "loadable", "loads but the guest may not run": "loads, guest may not run"}
    assert rep.verdict == want.get(pair["outcome"], "will not load"), rep.verdict
    if pair["outcome"] == "fails to load":
        _check_offset(pair, pred, path)
    # one problem per cause, and the cause holding QEMU's error comes first
    causes = pred["causes"]
    assert len([p for p in rep.problems if p.code.startswith("target-")]) == len(causes)
    if pair["outcome"] != "loads":
        assert causes and causes[0]["stops_load"] == pair["outcome"].startswith("fails")
    else:
        assert causes == []
