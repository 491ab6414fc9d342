"""`devices`: VMState sections decoded with the vmdescription JSON.

Hand-built sections check every description shape (scalars by type, arrays,
nested structs, tmp, subsections, nullptr, a description that does not fit);
real captures check that every device decodes exactly to its section end and
that decoded values agree with QEMU's own figures."""

from __future__ import annotations

import datetime
import json
import struct

import pytest
from conftest import sample_meta, sample_names, sample_path
from construct import ConstructError
from synthetic_stream import PS, build_stream, subsection

from miginspect.cli import main as cli_main
from miginspect.formats import vmstate as V
from miginspect.inspector.capture import open_capture
from miginspect.inspector.devices import decode_devices

SCALAR_CASES = [
    ("bool", b"\x01", 1), ("int8", b"\xff", -1), ("uint8", b"\xff", 255),
    ("int16", b"\xff\xfe", -2), ("uint16", b"\x12\x34", 0x1234),
    ("int32", b"\xff\xff\xff\xfd", -3), ("uint32 equal", b"\x00\x00\x01\x00", 256),
    ("int32 le", b"\x00\x00\x00\x05", 5), ("int64", b"\xff" * 8, -1),
    ("uint64", b"\x01" + b"\x00" * 7, 1 << 56), ("timer", b"\xff" * 8, -1),
    ("float64", struct.pack(">d", 1.5), 1.5),
]


@pytest.mark.parametrize("typ,data,value", SCALAR_CASES)
def test_scalar_grammar_both_ways(typ, data, value):
    g = V.VMSTATE_SCALARS[typ]
    assert g.parse(data) == value
    assert g.build(value) == data


def test_subsection_header_both_ways():
    data = b"\x05\x0afw_cfg/dma\x00\x00\x00\x01"
    obj = V.vmstate_subsection_header.parse(data)
    assert (obj.name, obj.version_id) == ("fw_cfg/dma", 1)
    assert V.vmstate_subsection_header.build({"name": "fw_cfg/dma", "version_id": 1}) == data
    with pytest.raises(ConstructError):
        V.vmstate_subsection_header.parse(b"\x04\x0afw_cfg/dma\x00\x00\x00\x01")


def _one_device(tmp_path, desc, payload, extra=()):
    raw = build_stream({"pc.ram": PS}, [("pc.ram", 0, None)],
                       [("dev", desc, payload), *extra])
    p = tmp_path / "dev.mig"
    p.write_bytes(raw)
    return p


@pytest.mark.parametrize("typ,data,value", SCALAR_CASES)
def test_scalars_decode_by_type(tmp_path, typ, data, value):
    desc = {"vmsd_name": "dev", "version": 1,
            "fields": [{"name": "f", "type": typ, "size": len(data)}]}
    with open_capture(str(_one_device(tmp_path, desc, data))) as cap:
        dev, = decode_devices(cap).devices
    assert dev.error is None
    (path, node), = list(dev.leaves())
    assert path == "f" and node.value == (bool(value) if typ == "bool" else value)


def test_nested_structs_arrays_tmp_subsections(tmp_path):
    seg = {"vmsd_name": "segment", "version": 1, "fields": [
        {"name": "selector", "type": "uint32", "size": 4},
        {"name": "base", "type": "uint64", "size": 8}]}
    drive = {"vmsd_name": "fdrive", "version": 1,
             "fields": [{"name": "head", "type": "uint8", "size": 1}],
             "subsections": [{"vmsd_name": "fdrive/media_rate", "version": 1,
                              "fields": [{"name": "media_rate", "type": "uint8", "size": 1}]}]}
    desc = {"vmsd_name": "dev", "version": 3, "fields": [
        {"name": "regs", "array_len": 3, "type": "uint16", "size": 2},
        {"name": "segs", "array_len": 2, "type": "struct", "struct": seg, "size": 12},
        {"name": "fp", "type": "tmp", "vmsd_name": "fp_tmp", "version": 0,
         "fields": [{"name": "mant", "type": "uint64", "size": 8}], "size": 8},
        {"name": "drives", "index": 0, "type": "struct", "struct": drive,
         "size": 1 + 1 + 1 + 17 + 4 + 1},
        # QEMU 10 leaves "index" off the last element of a non-collapsed array
        {"name": "drives", "type": "struct", "struct": drive, "size": 1 + 1 + 1 + 17 + 4 + 1},
        {"name": "ptr", "type": "nullptr", "size": 1},
        {"name": "blob", "type": "buffer", "size": 3},
    ], "subsections": [{"vmsd_name": "dev/extra", "version": 2,
                        "fields": [{"name": "x", "type": "int32", "size": 4}]}]}
    payload = (struct.pack(">3H", 1, 2, 3)
               + struct.pack(">IQ", 7, 0x1000) + struct.pack(">IQ", 8, 0x2000)
               + struct.pack(">Q", 42)
               + b"\x05" + subsection("fdrive/media_rate", 1, b"\x09")
               + b"\x06" + subsection("fdrive/media_rate", 1, b"\x0a")
               + b"\x30" + b"\xde\xad\xbe"
               + subsection("dev/extra", 2, struct.pack(">i", -5)))
    with open_capture(str(_one_device(tmp_path, desc, payload))) as cap:
        dev, = decode_devices(cap).devices
    assert dev.error is None, dev.error
    leaves = {p: n.value for p, n in dev.leaves()}
    assert leaves == {
        "regs": [1, 2, 3],
        "segs[0].selector": 7, "segs[0].base": 0x1000,
        "segs[1].selector": 8, "segs[1].base": 0x2000,
        "fp.mant": 42,
        "drives[0].head": 5, "drives[0].{fdrive/media_rate}.media_rate": 9,
        "drives[1].head": 6, "drives[1].{fdrive/media_rate}.media_rate": 10,
        "ptr": None,
        "blob": "deadbe",
        "{dev/extra}.x": -5,
    }
    sub = dev.fields[-1]
    assert (sub.type, sub.version) == ("subsection", 2)


def test_description_that_does_not_fit_is_reported_on_that_device_only(tmp_path):
    bad = {"vmsd_name": "dev", "version": 1,
           "fields": [{"name": "a", "type": "uint32", "size": 4}],
           "subsections": [{"vmsd_name": "dev/sub", "version": 1, "fields": []}]}
    good = ("other", {"vmsd_name": "other", "version": 1,
                      "fields": [{"name": "b", "type": "uint8", "size": 1}]}, b"\x02")
    # the walker sizes "dev" by its footer (the description is 11 bytes too long for it)
    p = _one_device(tmp_path, bad, b"\x00\x00\x00\x01", extra=[good])
    with open_capture(str(p)) as cap:
        rep = decode_devices(cap)
    dev, other = rep.devices
    # the 4-byte field decodes; the subsection header the description wants is past the end
    assert dev.error is not None and dev.error_offset == dev.payload_offset + 4 == dev.payload_end
    assert other.error is None and [n.value for _, n in other.leaves()] == [2]


def test_no_vmdescription_is_a_one_line_error(tmp_path, capsys):
    raw = build_stream({"pc.ram": PS}, [("pc.ram", 0, None)])
    cut = raw[: raw.rindex(b"\x06")]  # drop the trailer
    p = tmp_path / "nodesc.mig"
    p.write_bytes(cut)
    assert cli_main(["devices", str(p)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "vmdescription" in err[0]


# -- real captures -----------------------------------------------------------------------

SAMPLES = sample_names()


@pytest.mark.skipif(not SAMPLES, reason="no bundled samples (samples/generate.py)")
@pytest.mark.parametrize("name", SAMPLES)
def test_every_device_decodes_to_its_section_end(name, opened):
    cap = opened(name)
    rep = decode_devices(cap)
    full = [s for s in cap.walk.sections if s.kind == "FULL"]
    assert len(rep.devices) == len(full) == len(cap.walk.trailer.data["devices"])
    for d in rep.devices:
        assert d.error is None, f"{name}: {d.idstr} at 0x{d.section_offset:x}: {d.error}"
        assert list(d.leaves()), d.idstr


def _ramblock(meta: dict, name: str) -> int:
    return next(b["used_length"] for b in meta["info_ramblock"]["parsed"] if b["name"] == name)


@pytest.mark.skipif(not SAMPLES, reason="no bundled samples (samples/generate.py)")
@pytest.mark.parametrize("name", SAMPLES)
def test_fw_cfg_acpi_sizes_equal_info_ramblock(name, opened):
    """fw_cfg/acpi_mr records the byte sizes of the ACPI blobs; QEMU's `info ramblock`
    lists their RAMBlocks, whose used length is that size rounded up to the page."""
    rep = decode_devices(opened(name), only="fw_cfg")
    leaves = {p: n.value for d in rep.devices for p, n in d.leaves()}
    meta = sample_meta(name)
    for field, block in (("table_mr_size", "/rom@etc/acpi/tables"),
                         ("linker_mr_size", "/rom@etc/table-loader"),
                         ("rsdp_mr_size", "/rom@etc/acpi/rsdp")):
        size = leaves["{fw_cfg/acpi_mr}." + field]
        assert 0 < size <= _ramblock(meta, block) == -(-size // PS) * PS, (field, size)


@pytest.mark.skipif(not SAMPLES, reason="no bundled samples (samples/generate.py)")
def test_devices_cli_json_and_device_filter(capsys):
    name = SAMPLES[0]
    assert cli_main(["devices", str(sample_path(name)), "--device", "mc146818rtc",
                     "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    dev, = data["devices"]
    assert dev["idstr"] == "mc146818rtc"
    names = [f["name"] for f in dev["fields"]]
    assert {"cmos_data", "base_rtc", "last_update", "offset"} <= set(names)
    assert cli_main(["devices", str(sample_path(name)), "--device", "no-such-dev"]) == 2


def _rtc_datetime(cmos: bytes) -> datetime.datetime:
    """Date and time in MC146818 CMOS registers 0-9 (BCD unless register B bit 2)."""
    binary = bool(cmos[0x0B] & 0x04)

    def v(i: int) -> int:
        return cmos[i] if binary else (cmos[i] >> 4) * 10 + (cmos[i] & 0x0F)

    assert cmos[0x0B] & 0x02, "12-hour mode not handled"
    return datetime.datetime(2000 + v(9), v(8), v(7), v(4), v(2), v(0),
                             tzinfo=datetime.timezone.utc)


@pytest.mark.skipif(not SAMPLES, reason="no bundled samples (samples/generate.py)")
@pytest.mark.parametrize("name", SAMPLES)
def test_rtc_fields_decode_to_the_wall_clock_of_the_save(name, opened):
    """The RTC's CMOS time and its base_rtc (host seconds when the guest RTC started)
    decode to the host's wall clock: the generator notes the UTC time when it stores
    the sample, just after QEMU finished the save."""
    dev, = decode_devices(opened(name), only="mc146818rtc").devices
    f = {p: n.value for p, n in dev.leaves()}
    stored = datetime.datetime.strptime(sample_meta(name)["generated_utc"],
                                        "%Y-%m-%dT%H:%M:%SZ").replace(
                                            tzinfo=datetime.timezone.utc)
    rtc = _rtc_datetime(bytes.fromhex(f["cmos_data"]))
    assert stored - datetime.timedelta(minutes=5) <= rtc <= stored + datetime.timedelta(
        seconds=2), (rtc, stored)
    base = datetime.datetime.fromtimestamp(f["base_rtc"], datetime.timezone.utc)
    assert stored - datetime.timedelta(hours=1) <= base <= rtc
    assert f["last_update"] // 10**9 >= f["base_rtc"]


def test_hostile_description_is_refused_quickly(tmp_path):
    """Zero-size struct elements repeated a billion times: refused, not expanded."""
    inner = {"vmsd_name": "e", "version": 1,
             "fields": [{"name": "z", "type": "buffer", "size": 0}]}
    desc = {"vmsd_name": "dev", "version": 1, "fields": [
        {"name": "many", "array_len": 10**9, "type": "struct", "struct": inner, "size": 0},
        {"name": "x", "type": "uint8", "size": 1}]}
    with open_capture(str(_one_device(tmp_path, desc, b"\x01"))) as cap:
        dev, = decode_devices(cap).devices
    assert dev.error is not None and "more than" in dev.error
