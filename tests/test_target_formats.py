"""`check --target` with QEMU's -dump-vmstate JSON and with a libvirt domain XML, on the
target matrix: for what each can describe, the prediction agrees with what QEMU did.

A domain XML gives machine type, memory, vCPUs and the PCI addresses of NICs, balloon and
video: every matrix pair but the ones decided by the binary (a machine type it lacks) or the
CPU model. A -dump-vmstate JSON (made here by the pair's target QEMU) gives the machine
type, section versions and subsections: the pairs decided by the machine type, and the
loads; for the rest it cannot know and says so (`certain` false).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from target_matrix import matrix, prefix, qemu_missing, source_path

from miginspect.cli import main as cli_main
from miginspect.errors import UsageError
from miginspect.inspector.check import check_file
from miginspect.inspector.target_formats import (
    from_domain_xml,
    from_dump_vmstate,
    load_any_target,
    sniff_target,
)
from miginspect.jsondata import jsonable

M = matrix()
PAIRS = M["pairs"]
#: Pairs decided by what a domain XML does not say: the binary, the CPU model's features.
NOT_IN_XML = {"nics-on-7.2": "QEMU 7.2 lacks the machine type: a property of the binary",
              "cpu-max-default": "CPU features of the model are not in the XML",
              "mapped-ram-on-7.2": "the capabilities a QEMU knows: a property of the binary"}
XML_PAIRS = [p for p in PAIRS if p["id"] not in NOT_IN_XML]


def _opts(args: list[str], opt: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == opt]


def _addr(slot: str) -> str:
    s, f = slot.split(".")
    return (f"<address type='pci' domain='0x0000' bus='0x00' slot='0x{s}' "
            f"function='0x{f}'/>")


def domain_xml(pair: dict) -> str:
    """The domain XML libvirt would hold for the pair's target (machine type resolved as
    libvirt stores it, memory, vCPUs, NICs, balloon, VGA)."""
    args = pair["args"]
    machine = pair["target_figures"]["machine_qom_type"].removesuffix("-machine")
    devs = []
    balloon = "<memballoon model='none'/>"
    for d in _opts(args, "-device"):
        kind, _, rest = d.partition(",")
        slot = re.search(r"addr=([0-9a-f]+\.[0-9a-f])", rest)[1]
        if kind == "virtio-balloon":
            balloon = f"<memballoon model='virtio'>{_addr(slot)}</memballoon>"
        else:
            model = {"e1000": "e1000", "virtio-net-pci": "virtio"}[kind]
            devs.append(f"<interface type='user'><model type='{model}'/>{_addr(slot)}"
                        "</interface>")
    vga = "01.0" if "q35" in machine else "02.0"
    devs.append(f"<video><model type='vga' vram='16384' heads='1' primary='yes'/>{_addr(vga)}"
                "</video>")
    return (f"<domain type='qemu'>\n  <name>matrix</name>\n"
            f"  <memory unit='MiB'>{_opts(args, '-m')[0]}</memory>\n"
            f"  <vcpu placement='static'>{_opts(args, '-smp')[0]}</vcpu>\n"
            f"  <os><type arch='x86_64' machine='{machine}'>hvm</type></os>\n"
            f"  <devices>\n    " + "\n    ".join(devs + [balloon]) + "\n  </devices>\n"
            "</domain>\n")


@pytest.mark.parametrize("pair", XML_PAIRS, ids=[p["id"] for p in XML_PAIRS])
def test_domain_xml_prediction_agrees_with_qemu(pair: dict, tmp_path: Path) -> None:
    x = tmp_path / "domain.xml"
    x.write_text(domain_xml(pair))
    t = load_any_target(str(x))
    assert t.kind == "domain-xml"
    rep = check_file(str(source_path(pair["source"])), target=t)
    pred = jsonable(rep.target)["prediction"]
    assert pred["outcome"] == pair["outcome"], (pair["stderr_lines"], pred)
    assert pred["first_error"] == pair["first_error"], (pair["stderr_lines"], pred)
    assert pred["certain"] is False  # a domain XML is a partial description


def test_domain_xml_cannot_see_cpu_features(tmp_path: Path) -> None:
    """The limit, stated: a guest on -cpu max is predicted to load (QEMU: loads, then the
    guest hangs), and the prediction says it is not certain."""
    pair = next((p for p in PAIRS if p["id"] == "cpu-max-default"), None)
    if pair is None:
        pytest.skip("no cpu-max-default pair")
    x = tmp_path / "domain.xml"
    x.write_text(domain_xml(pair))
    pred = jsonable(check_file(str(source_path(pair["source"])),
                               target=load_any_target(str(x))).target)["prediction"]
    assert (pred["outcome"], pred["certain"]) == ("loads", False)


def test_domain_xml_facts(tmp_path: Path) -> None:
    pair = next(p for p in PAIRS if p["id"] == "nics-swapped")
    x = tmp_path / "d.xml"
    x.write_text(domain_xml(pair))
    t = from_domain_xml(str(x))
    assert (t.machine_type, t.arch, t.cpu.count, t.cpu.possible) == (
        "pc-i440fx-10.0", "x86_64", 1, 1)
    assert t.pci_devices == {"0000:00:03.0": "virtio-balloon", "0000:00:04.0": "e1000",
                             "0000:00:02.0": "vga"}
    names = {b.name: b.used_length for b in t.blocks}
    assert names["pc.ram"] == 64 << 20 and "0000:00:04.0/e1000.rom" in names
    assert names["0000:00:02.0/vga.vram"] == 16 << 20


def test_domain_xml_behind_a_root_port(tmp_path: Path) -> None:
    """A NIC on bus 1 behind a pcie-root-port at 00:02.0 is QEMU's 0000:00:02.0:00.0."""
    x = tmp_path / "d.xml"
    x.write_text("<domain type='kvm'><memory unit='GiB'>2</memory><vcpu current='2'>4</vcpu>"
                 "<os><type arch='x86_64' machine='pc-q35-10.0'>hvm</type></os><devices>"
                 "<controller type='pci' index='0' model='pcie-root'/>"
                 "<controller type='pci' index='1' model='pcie-root-port'>"
                 "<address type='pci' domain='0x0000' bus='0x00' slot='0x02' "
                 "function='0x0'/></controller>"
                 "<interface type='network'><model type='virtio'/><rom enabled='no'/>"
                 "<address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>"
                 "</interface></devices></domain>")
    t = from_domain_xml(str(x))
    assert t.pci_devices["0000:00:02.0:00.0"] == "virtio-net"
    assert not any(b.name.endswith(".rom") for b in t.blocks)  # <rom enabled='no'/>
    assert (t.cpu.count, t.cpu.possible) == (2, 4)
    assert next(b for b in t.blocks if b.name == "pc.ram").used_length == 2 << 30


@pytest.mark.parametrize("text", [
    "<domain><memory>1</memory",  # not well-formed
    "<?xml version='1.0'?><!DOCTYPE d [<!ENTITY a 'aaaaaaaaaa'><!ENTITY b '&a;&a;&a;&a;&a;"
    "&a;&a;&a;&a;&a;'><!ENTITY c '&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;'><!ENTITY e '&c;&c;&c;&c;"
    "&c;&c;&c;&c;&c;&c;'><!ENTITY f '&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;'><!ENTITY g '&f;&f;&f;"
    "&f;&f;&f;&f;&f;&f;&f;'><!ENTITY h '&g;&g;&g;&g;&g;&g;&g;&g;&g;&g;'>]><domain>"
    "<name>&h;&h;&h;&h;&h;&h;&h;&h;&h;&h;&h;&h;</name></domain>",  # entity expansion bomb
    "<domain><memory unit='KiB'>lots</memory><vcpu>x</vcpu><devices><interface>"
    "<address type='pci' slot='zz'/></interface></devices></domain>",  # odd values
])
def test_hostile_domain_xml_is_one_line(text: str, tmp_path: Path) -> None:
    x = tmp_path / "d.xml"
    x.write_text(text)
    try:
        t = from_domain_xml(str(x))
    except UsageError as e:
        assert "\n" not in e.oneline()
        return
    assert t.blocks == [] and t.cpu is None  # nothing understood, nothing invented


# -- -dump-vmstate --------------------------------------------------------------------
#: First errors a -dump-vmstate JSON can predict (machine type, versions, subsections).
DUMP_SEES = ("Machine type received", "savevm: unsupported version", "incoming version_id")
DUMP_PAIRS = [p for p in PAIRS if p["outcome"] != "fails to start"]


def _dump(pair: dict, out: Path) -> Path:
    why = qemu_missing(pair["qemu"])
    if why:
        pytest.skip(why)
    words = prefix(pair["qemu"]) + list(pair["args"]) + [
        "-display", "none", "-S", "-dump-vmstate", str(out)]
    env = dict(os.environ)
    while words[0] == "env" or "=" in words[0]:
        w = words.pop(0)
        if w != "env":
            k, v = w.split("=", 1)
            env[k] = v
    subprocess.run(words, env=env, check=True, timeout=120, capture_output=True)
    return out


@pytest.mark.qemu
@pytest.mark.parametrize("pair", DUMP_PAIRS, ids=[p["id"] for p in DUMP_PAIRS])
def test_dump_vmstate_prediction(pair: dict, tmp_path: Path) -> None:
    d = _dump(pair, tmp_path / "vmstate.json")
    assert sniff_target(d.read_bytes()[:4096]) == "dump-vmstate"
    rep = check_file(str(source_path(pair["source"])), target=load_any_target(str(d)))
    pred = jsonable(rep.target)["prediction"]
    assert pred["certain"] is False
    sees = pair["outcome"] == "loads" or (pair["first_error"] or "").startswith(DUMP_SEES)
    if sees:
        assert pred["outcome"] == pair["outcome"], (pair["stderr_lines"], pred)
        assert pred["first_error"] == pair["first_error"], pred
    elif pair["outcome"] != "loads but the guest may not run":
        # RAMBlocks, instances and PCI addresses are not in a -dump-vmstate
        assert pred["outcome"] == "loads", pred


def _nics_dump(tmp_path: Path) -> tuple[dict, dict]:
    pair = next(p for p in PAIRS if p["id"] == "nics-identical")
    return pair, json.loads(_dump(pair, tmp_path / "v.json").read_text())


@pytest.mark.qemu
def test_dump_vmstate_older_section_version(tmp_path: Path) -> None:
    """A target whose piix4_pm is one version older: QEMU's savevm.c line for it, at the
    section's offset."""
    pair, data = _nics_dump(tmp_path)
    data["PIIX4_PM"]["Description"]["version_id"] = 2
    d = tmp_path / "older.json"
    d.write_text(json.dumps(data))
    path = str(source_path(pair["source"]))
    rep = check_file(path, target=load_any_target(str(d)))
    pred = jsonable(rep.target)["prediction"]
    assert pred["first_error"] == "savevm: unsupported version 3 for '0000:00:01.3/piix4_pm' v2"
    assert pred["causes"][0]["code"] == "qemu-older"
    raw = Path(path).read_bytes()
    assert raw[pred["offset"]] == 0x04 and b"piix4_pm" in raw[pred["offset"]:pred["offset"] + 40]


@pytest.mark.qemu
def test_dump_vmstate_unknown_subsection(tmp_path: Path) -> None:
    """A target that does not know the file's piix4_pm/cpuhp subsection fails in
    vmstate_subsection_load, which prints nothing itself: savevm.c's line is the first."""
    pair, data = _nics_dump(tmp_path)
    desc = data["PIIX4_PM"]["Description"]
    desc["Subsections"] = [s for s in desc["Subsections"] if s["name"] != "piix4_pm/cpuhp"]
    d = tmp_path / "nosub.json"
    d.write_text(json.dumps(data))
    path = str(source_path(pair["source"]))
    pred = jsonable(check_file(path, target=load_any_target(str(d))).target)["prediction"]
    assert pred["first_error"] == ("error while loading state for instance 0x0 of device "
                                   "'0000:00:01.3/piix4_pm'")
    raw = Path(path).read_bytes()
    n = raw[pred["offset"] + 1]
    assert raw[pred["offset"]] == 0x05 and raw[pred["offset"] + 2:pred["offset"] + 2 + n] == (
        b"piix4_pm/cpuhp")


@pytest.mark.parametrize("text", ["{\"vmschkmachine\": 5}", "{\"vmschkmachine\": {}} x",
                                  "{\"vmschkmachine\": {\"Name\": \"pc\"}, \"d\": " + "[" * 5000
                                  + "]" * 5000 + "}"])
def test_hostile_dump_vmstate(text: str, tmp_path: Path) -> None:
    d = tmp_path / "v.json"
    d.write_text(text)
    try:
        t = from_dump_vmstate(str(d))
    except UsageError as e:
        assert "\n" not in e.oneline()
        return
    assert t.vmsds == {}


def test_target_kind_detection(tmp_path: Path) -> None:
    x = tmp_path / "a"
    x.write_text("<?xml version='1.0'?>\n<domain type='kvm'><name>x</name></domain>")
    assert load_any_target(str(x)).kind == "domain-xml"
    x.write_text('{\n  "vmschkmachine": {\n    "Name": "pc-i440fx-10.0"\n  }\n}\n')
    t = load_any_target(str(x))
    assert (t.kind, t.machine_type) == ("dump-vmstate", "pc-i440fx-10.0")
    x.write_text('{"machine_type": "pc-q35-10.0"}')
    assert load_any_target(str(x)).kind == "json"


def test_cli_json_carries_the_prediction(tmp_path: Path) -> None:
    pair = next(p for p in PAIRS if p["id"] == "nics-m128")
    x = tmp_path / "domain.xml"
    x.write_text(domain_xml(pair))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli_main(["check", str(source_path(pair["source"])), "--target", str(x), "--json"])
    rep = json.loads(out.getvalue())
    assert rc == 1
    pred = rep["target"]["prediction"]
    assert set(pred) >= {"outcome", "first_error", "causes"}
    assert [c["code"] for c in pred["causes"]] == ["ram-size"]
    assert [p["code"] for p in rep["problems"] if p["code"].startswith("target-")] == [
        "target-ram-size"]
