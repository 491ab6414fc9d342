"""`miginspect snapshots`: the report at 80 and 120 columns, piped and under NO_COLOR, its
JSON against qemu-img, and untrusted snapshot names."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import struct
from pathlib import Path

import pytest
from test_qcow2_samples import COMMITTED, image_file, scenario

from miginspect.cli import main
from miginspect.formats import qcow2 as Q
from miginspect.inspector import qcow2 as R

NAME = "q10-snapshots"
pytestmark = pytest.mark.skipif(NAME not in COMMITTED, reason=f"{NAME} is not bundled")


def run(capsys, monkeypatch, *args: str, columns: int = 80, no_color: bool = True):  # noqa: ANN001, ANN201
    monkeypatch.setenv("COLUMNS", str(columns))
    if no_color:
        monkeypatch.setenv("NO_COLOR", "1")
    rc = main(["snapshots", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


#: messages (the verdict, where each name's VM state is) are never hard-wrapped in a pipe
MESSAGES = ("snapshots: ", "VM state of ", "s1: ", "s2: ", "disk-only: ")


def check_layout(text: str, width: int) -> list[str]:
    """Every table and path line fits `width`; nothing is cut."""
    lines = text.splitlines()
    long = [ln for ln in lines if len(ln) > width and not ln.startswith(MESSAGES)]
    assert not long, long
    assert "…" not in text
    return lines


@pytest.mark.parametrize("columns", [80, 120])
def test_report_text_reads_right_at_80_and_120_columns(capsys, monkeypatch, columns) -> None:  # noqa: ANN001
    path = str(image_file(NAME))
    rc, out, err = run(capsys, monkeypatch, path, columns=columns)
    assert rc == 0 and err == ""
    lines = check_layout(out, columns)
    assert lines[0].startswith("snapshots: 3 snapshots, 2 with VM state (") and \
        lines[0].endswith("of the image)")
    assert "".join(lines[2 : 2 + len(path) // columns + 1]) == path
    assert "\x1b[" not in out  # NO_COLOR and piped: plain text
    man, _ = scenario(NAME)
    q = man["images"][0]["qemu-img info"]["snapshots"]
    clocks = [ln.split()[-2] for ln in man["images"][0]["qemu-img snapshot -l"].splitlines()[2:]]
    for s, clock in zip(q, clocks, strict=True):
        when = dt.datetime.fromtimestamp(s["date-sec"], dt.timezone.utc)
        row = next(ln for ln in lines if ln.split()[:2] == [s["id"], s["name"]])
        assert when.strftime("%Y-%m-%d %H:%M:%S") in row and clock in row
        assert ("disk only" in row) == (s["vm-state-size"] == 0)
    with R.open_image(path) as img:
        for sn in img.snapshots:
            if sn.has_vm_state:
                assert any(ln.split()[:1] == [sn.id] and f"0x{sn.vm_state_offset:x}" in ln
                           for ln in lines)


def test_narrow_terminal_stacks_rows_instead_of_cutting(capsys, monkeypatch) -> None:  # noqa: ANN001
    rc, out, _ = run(capsys, monkeypatch, str(image_file(NAME)), columns=50)
    lines = check_layout(out, 50)
    assert rc == 0 and any(ln.split()[:2] == ["2", "disk-only"] for ln in lines)


def test_json_keys_and_values_equal_qemu_img(capsys, monkeypatch) -> None:  # noqa: ANN001
    path = str(image_file(NAME))
    rc, out, _ = run(capsys, monkeypatch, "--json", path)
    assert rc == 0
    data = json.loads(out)
    man, _ = scenario(NAME)
    info = man["images"][0]["qemu-img info"]
    (im,) = data["images"]
    assert (im["path"], im["version"], im["cluster_size"], im["virtual_size"],
            im["extended_l2"]) == (path, 3, info["cluster-size"], info["virtual-size"], False)
    for s, q in zip(im["snapshots"], info["snapshots"], strict=True):
        assert (s["id"], s["name"], s["vm_state_size"]) == (q["id"], q["name"],
                                                            q["vm-state-size"])
        assert s["vm_clock_ns"] == q["vm-clock-sec"] * 10**9 + q["vm-clock-nsec"]
        assert s["date"] == dt.datetime.fromtimestamp(q["date-sec"], dt.timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%S") + f".{q['date-nsec']:09d}Z"
        assert s["disk_size"] == info["virtual-size"] and s["icount"] is None
        if q["vm-state-size"]:
            assert s["vm_state_offset"] == info["virtual-size"]  # 1 GiB = 2 L1 entries
            assert s["vm_state_allocated"] >= s["vm_state_size"] and s["vm_state_runs"] == 1
            assert s["vm_state_in"] == path
        else:
            assert s["vm_state_offset"] is None and s["vm_state_allocated"] is None


def test_several_images_say_where_each_state_is(capsys, monkeypatch) -> None:  # noqa: ANN001
    names = [n for n in ("q10-snapshots", "q72-snapshots") if n in COMMITTED]
    paths = [str(image_file(n)) for n in names]
    rc, out, _ = run(capsys, monkeypatch, *paths)
    lines = check_layout(out, 80)
    assert lines[0].startswith(f"snapshots: {3 * len(paths)} snapshots in {len(paths)} "
                               f"images, {2 * len(paths)} with VM state (")
    rc, out, _ = run(capsys, monkeypatch, "--json", *paths)
    groups = {g["name"]: g for g in json.loads(out)["vm_states"]}
    if len(paths) == 2:
        assert groups["s1"]["images"] == paths and groups["s1"]["vm_state_images"] == paths
        assert groups["disk-only"]["vm_state_images"] == []


def _renamed(base: Path, out: Path, names: list[bytes]) -> None:
    """The image with its snapshot table rewritten (new names) at the end of the file."""
    shutil.copyfile(base, out)
    with R.open_image(str(out)) as img:
        h, snaps = img.header, img.snapshots
        raw = [img.pread(s.entry_offset, 40 + s.extra_data_size + len(s.id) + len(s.name), "e")
               for s in snaps]
    table = b""
    for r, name in zip(raw, names, strict=True):
        e = Q.QCowSnapshotEntry.parse(r)
        e.name = name
        table += Q.QCowSnapshotEntryPadded.build(e)
    with open(out, "r+b") as f:
        at = (out.stat().st_size + h.cluster_size - 1) // h.cluster_size * h.cluster_size
        f.seek(at)
        f.write(table)
        f.seek(Q.HEADER_FIELD_OFFSETS["snapshots_offset"])
        f.write(struct.pack(">Q", at))


def test_untrusted_names_are_escaped_and_long_ones_fold(capsys, monkeypatch, tmp_path) -> None:  # noqa: ANN001
    bad = tmp_path / "names.qcow2"
    long = b"a-very-long-snapshot-name/" * 5
    _renamed(image_file(NAME), bad, [b"[bold red]x[/]", b"esc\x1b[31mred\x07", long])
    rc, out, _ = run(capsys, monkeypatch, str(bad), no_color=False)
    assert rc == 0
    check_layout(out, 80)
    assert "[bold red]x[/]" in out
    assert "\x1b[31m" not in out and "\x07" not in out and "esc\\x1b[31mred\\x07" in out
    lines = out.splitlines()
    # the name does not fit: every snapshot's name on its own lines (broken after / or -),
    # its values on the next line
    first = next(i for i, ln in enumerate(lines) if ln.split()[:1] == ["3"]
                 and ln.split()[1].startswith("a-very"))
    pieces = [lines[first].split(None, 1)[1]]
    for ln in lines[first + 1 :]:
        if ln.startswith("  ") or not ln.strip():
            break
        pieces.append(ln)
    assert "".join(pieces) == long.decode()
    assert all(p[-1] in "/-" for p in pieces)  # broken after a separator
    with R.open_snapshot(str(bad), long.decode()) as src:  # by name
        assert src.container.snapshot.id == "3"
