"""Field-level comparison (layout_compare) on the real matrix states and on small edge
cases built with our grammars: an array whose length the stream carries is read as the
file wrote it; one the target sizes itself is read with the target's length, and QEMU's
footer or subsection check fails at the byte the simulation names."""

from __future__ import annotations

import copy
import json
import struct
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from target_matrix import matrix, source_path

from miginspect.formats import stream as S
from miginspect.formats import vmstate as V
from miginspect.inspector.check import check_file
from miginspect.inspector.layout_compare import SubsectionInfo, compare_section
from miginspect.inspector.prediction import OUTCOMES, cpuhp_layout, find_cpuhp
from miginspect.inspector.stream import walk_stream
from miginspect.inspector.target_formats import from_saved_state
from miginspect.inspector.vmdesc import device_index
from miginspect.jsondata import jsonable

SID = 7


def _section(payload: bytes) -> tuple[bytes, SimpleNamespace]:
    """A payload followed by its footer, as a FULL section's bytes (offset 0)."""
    buf = payload + S.section_footer.build(dict(section_id=SID))
    sec = SimpleNamespace(idstr="dev", instance_id=0, offset=0, payload_offset=0,
                          payload_end=len(payload), section_id=SID)
    return buf, sec


def _desc(n: int, sub: dict | None = None) -> dict:
    d = {"vmsd_name": "dev", "version": 1, "fields": [
        {"name": "count", "type": "uint32", "size": 4},
        {"name": "vals", "type": "uint16", "size": 2, **({"array_len": n} if n > 1 else {})},
        {"name": "tail", "type": "uint8", "size": 1}]}
    if sub is not None:
        d["subsections"] = [sub]
    return d


def test_stream_sized_array_is_harmless() -> None:
    """`vals` has as many elements as `count` says, in both states: the target reads the
    file's two, and the section ends at its footer."""
    buf, sec = _section(struct.pack(">IHHB", 2, 10, 11, 0))
    tpayload = struct.pack(">IHHHB", 3, 1, 2, 3, 0)
    lay = compare_section(buf, sec, _desc(2), _desc(3), tpayload)
    assert lay.stop is None
    assert [(d.kind, d.file_value, d.target_value, d.harmless) for d in lay.diffs] == [
        ("array-length", 2, 3, True)]


def test_target_sized_array_stops_at_the_footer() -> None:
    """The same difference where no count in the stream explains it: the target reads three
    elements and then finds no footer byte where it looks."""
    buf, sec = _section(struct.pack(">IHHB", 0, 10, 11, 0))
    tpayload = struct.pack(">IHHHB", 0, 1, 2, 3, 0)
    lay = compare_section(buf, sec, _desc(2), _desc(3), tpayload)
    assert lay.stop is not None and lay.stop.line == "Missing section footer for dev"
    assert lay.stop.offset == 4 + 3 * 2 + 1  # where the target reads the footer byte
    assert buf[lay.stop.offset] != S.QEMU_VM_SECTION_FOOTER
    d = lay.stop.diverges
    assert (d.path, d.offset, d.harmless) == ("vals", 4, False)


def test_misread_that_lands_on_another_footer_is_a_mismatched_id() -> None:
    """The target reads one element less: its footer check reads the last payload byte
    and the footer's first id bytes -- here arranged to be a footer byte."""
    buf, sec = _section(struct.pack(">IHH", 0, 10, 0x007E) + bytes([0]))
    tpayload = struct.pack(">IHB", 0, 1, 0)
    lay = compare_section(buf, sec, _desc(2), _desc(1), tpayload)
    assert lay.stop is not None
    assert lay.stop.line.startswith("Mismatched section id in footer for dev - read 0x")
    assert lay.stop.offset == 4 + 2 + 1


def _sub(version: int) -> dict:
    return {"vmsd_name": "dev/extra", "version": version,
            "fields": [{"name": "x", "type": "uint32", "size": 4}]}


def _with_sub(version: int) -> tuple[bytes, SimpleNamespace]:
    hdr = V.vmstate_subsection_header.build(dict(marker=S.QEMU_VM_SUBSECTION,
                                                 name="dev/extra", version_id=version))
    return _section(struct.pack(">IHHB", 0, 1, 2, 0) + hdr + struct.pack(">I", 5))


def test_subsection_too_new_and_unknown() -> None:
    buf, sec = _with_sub(2)
    lay = compare_section(buf, sec, _desc(2, _sub(2)), _desc(2, _sub(1)), None)
    assert lay.stop.line == "dev/extra: incoming version_id 2 is too new for local version_id 1"
    assert lay.stop.offset == 9 and buf[9] == S.QEMU_VM_SUBSECTION
    # a target whose -dump-vmstate knows "dev" but not "dev/extra"
    lay = compare_section(buf, sec, _desc(2, _sub(2)), None, None,
                          known={"dev": {"dev/other": SubsectionInfo(1, 1)}})
    assert lay.stop.line == "error while loading state for instance 0x0 of device 'dev'"
    # knowing it, in a version at least as new: the section loads
    lay = compare_section(buf, sec, _desc(2, _sub(2)), None, None,
                          known={"dev": {"dev/extra": SubsectionInfo(2, 1)}})
    assert lay.stop is None


# -- the real states ------------------------------------------------------------------
def _nics() -> tuple[bytes, object, dict]:
    if not matrix()["pairs"]:
        pytest.skip("no samples/matrix")
    buf = source_path("q10-i440fx10-nics").read_bytes()
    w = walk_stream(buf)
    return buf, w, device_index(w.trailer.data)


def test_cpuhp_layout_for_more_cpus_names_the_acpi_device() -> None:
    """The piix4_pm state read as a 2-CPU target reads it: QEMU's own line for the matrix's
    -smp 2 pair, at the byte after the file's cpuhp array plus one element."""
    buf, w, idx = _nics()
    key = ("0000:00:01.3/piix4_pm", 0)
    sec = next(s for s in w.sections if s.kind == "FULL" and s.idstr == key[0])
    fdesc = idx[key][0]
    assert [s["vmsd_name"] for s in find_cpuhp(fdesc)] == ["piix4_pm/cpuhp"]
    lay = compare_section(buf, sec, fdesc, cpuhp_layout(fdesc, 2))
    assert lay.stop.line == "Missing section footer for 0000:00:01.3/piix4_pm"
    assert lay.stop.offset == sec.payload_end + 10  # one CPU hotplug device state: 10 bytes
    assert lay.stop.diverges.path.endswith("{piix4_pm/cpuhp}.cpuhp_state.devs")
    assert compare_section(buf, sec, fdesc, cpuhp_layout(fdesc, 1)).stop is None


def test_every_section_reads_cleanly_against_its_own_layout() -> None:
    buf, w, idx = _nics()
    for s in w.sections:
        if s.kind == "FULL" and (s.idstr, s.instance_id) in idx:
            d = idx[(s.idstr, s.instance_id)][0]
            lay = compare_section(buf, s, d, copy.deepcopy(d))
            assert lay.stop is None and lay.diffs == [], s.idstr


def _with_trailer(buf: bytes, w: object, data: dict) -> bytes:
    body = json.dumps(data).encode()
    return buf[:w.trailer.offset] + bytes([S.QEMU_VM_VMDESCRIPTION]) + struct.pack(
        ">I", len(body)) + body


@pytest.mark.parametrize("mutate", ["huge-array", "deep", "garbage-types", "negative"])
def test_hostile_file_description_is_bounded(mutate: str, tmp_path: Path) -> None:
    """A file whose vmdescription lies (huge arrays, deep nesting, wrong types): the
    comparison gives up on that device, the check still answers, quickly."""
    buf, w, _ = _nics()
    data = copy.deepcopy(w.trailer.data)
    pm = next(d for d in data["devices"] if d["name"] == "0000:00:01.3/piix4_pm")
    if mutate == "huge-array":
        pm["fields"][1]["array_len"] = 10 ** 9
    elif mutate == "deep":
        node: dict = {"vmsd_name": "x", "fields": []}
        pm["fields"][0] = {"name": "deep", "type": "struct", "size": 1, "struct": node}
        for _ in range(300):
            node["fields"] = [{"name": "d", "type": "struct", "size": 1,
                               "struct": {"vmsd_name": "x", "fields": []}}]
            node = node["fields"][0]["struct"]
    elif mutate == "garbage-types":
        pm["fields"] = [{"name": 5, "type": None, "size": "x"}, "junk", None]
        pm["subsections"] = {"not": "a list"}
    else:
        pm["fields"][1]["size"] = -4
    f = tmp_path / "hostile.mig"
    f.write_bytes(_with_trailer(buf, w, data))
    target = from_saved_state(str(source_path("q10-i440fx10-nics")), "snapshot", "t")
    t0 = time.process_time()
    rep = check_file(str(f), target=target)
    assert time.process_time() - t0 < 10
    assert jsonable(rep.target)["prediction"]["outcome"] in OUTCOMES
