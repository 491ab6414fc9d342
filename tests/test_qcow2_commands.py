"""Every command on a qcow2 internal snapshot (`IMG --snapshot NAME|ID`), against QEMU's own
figures of every sample scenario (samples/qcow2/): `extract` (blocks and `--physical`)
equals the pmemsave taken at save time; `convert` writes a standalone migration file that
the QEMU which saved the snapshot restores with `-incoming`, to that same memory; `diff`
of two snapshots of one image counts exactly the pages where their pmemsaves differ;
`info --json` names the snapshot as `qemu-img info` does; `check` says how to load it.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import struct
from pathlib import Path

import pytest
from qemu_harness import load_into_qemu, sample_qemu_available
from test_qcow2_samples import (
    ALL,
    CASES,
    COMMITTED,
    MASK,
    PAGE,
    image_file,
    pmem_pages,
    scenario,
    state_image,
)

from miginspect.cli import main
from miginspect.inspector import qcow2 as R

SNAPSHOTS = "q10-snapshots"  # two snapshots with state and a disk-only one


def cli(capsys, *args: str) -> tuple[int, str, str]:  # noqa: ANN001
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def digests(data: bytes | memoryview) -> list[bytes]:
    mv = memoryview(data)
    return [hashlib.blake2b(mv[i : i + PAGE], digest_size=8).digest()
            for i in range(0, len(mv), PAGE)]


def differing(ours: list[bytes], ref: bytes) -> list[int]:
    """Pages (outside the VGA/ROM window pmemsave shows differently) whose digests differ."""
    n = len(ref) // 8
    assert len(ours) >= n, (len(ours), n)
    return [i for i in range(n) if i not in MASK and ours[i] != ref[i * 8 : i * 8 + 8]]


def needs_bundled(name: str) -> None:
    if name not in COMMITTED:
        pytest.skip(f"{name} is not bundled")


def ram_block_args(name: str) -> list[str]:
    """libvirt runs the guest with `-machine memory-backend=pc.ram`: the main RAM block is
    named by the backend, which --physical does not take without being told."""
    return ["--ram-block", "pc.ram"] if name.startswith("libvirt") else []


# -- extract ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name,snap", CASES)
def test_extract_snapshot_equals_pmemsave(name: str, snap: str, tmp_path, capsys) -> None:  # noqa: ANN001
    img = str(state_image(name, snap))
    ref = pmem_pages(name, snap)
    rc, out, err = cli(capsys, "extract", img, "--snapshot", snap, "-o",
                       str(tmp_path / "blocks"), "--block", "pc.ram", "--json")
    assert rc == 0, err
    assert json.loads(out)["path"] == img
    raw = (tmp_path / "blocks" / "pc.ram.raw").read_bytes()
    assert differing(digests(raw), ref) == []
    rc, out, err = cli(capsys, "extract", img, "--snapshot", snap, "-o", str(tmp_path / "phys"),
                       "--physical", "--format", "raw", "--format", "elf",
                       *ram_block_args(name))
    assert rc == 0, err
    phys = (tmp_path / "phys" / "physical.raw").read_bytes()
    assert len(phys) >= len(ref) // 8 * PAGE  # 128 MiB below 4 GiB: one range at 0
    assert differing(digests(phys), ref) == []
    assert (tmp_path / "phys" / "physical.elf").stat().st_size > 0


def test_extract_cpu_reads_the_snapshot_registers(capsys) -> None:  # noqa: ANN001
    needs_bundled(SNAPSHOTS)
    rc, out, err = cli(capsys, "extract", str(state_image(SNAPSHOTS, "s1")), "--snapshot", "s1",
                       "--cpu", "--json")
    assert rc == 0, err
    cpus = json.loads(out)["cpus"]
    assert len(cpus) == 1 and cpus[0]["long_mode"] and cpus[0]["cr"][3]


# -- choosing a snapshot ------------------------------------------------------------------------
@pytest.mark.parametrize("cmd", ["info", "map", "size", "devices", "check"])
def test_several_states_need_a_choice_and_disk_only_is_refused(cmd: str, capsys) -> None:  # noqa: ANN001
    needs_bundled(SNAPSHOTS)
    img = str(state_image(SNAPSHOTS, "s1"))
    rc, out, err = cli(capsys, cmd, img)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and "1 's1'" in err and "3 's2'" in err and "--snapshot" in err
    rc, out, err = cli(capsys, cmd, img, "--snapshot", "disk-only")
    assert rc == 2 and err.count("\n") == 1 and "'disk-only'" in err and "disk-only" in err
    rc, out, err = cli(capsys, cmd, img, "--snapshot", "2")  # the ID of 'disk-only'
    assert rc == 2 and "'disk-only'" in err
    rc, out, err = cli(capsys, cmd, img, "--snapshot", "nope")
    assert rc == 2 and "'nope'" in err and "'disk-only'" in err  # lists them all


def test_one_state_needs_no_choice_and_streams_refuse_the_option(capsys) -> None:  # noqa: ANN001
    name = "q10-small-clusters-zstd"
    needs_bundled(name)
    img = str(state_image(name, "small"))
    rc, out, _ = cli(capsys, "info", img, "--json")
    assert rc == 0 and json.loads(out)["container"]["snapshot"]["name"] == "small"
    vol = Path(scenario(SNAPSHOTS)[1] / "q10-state-volume.raw.zst")
    if vol.exists():
        rc, out, err = cli(capsys, "info", str(vol), "--snapshot", "s1")
        assert rc == 2 and "--snapshot 's1'" in err and "not a disk image" in err


@pytest.mark.parametrize("cmd", ["map", "size", "devices"])
def test_reports_of_a_snapshot_read_its_state(cmd: str, capsys) -> None:  # noqa: ANN001
    needs_bundled(SNAPSHOTS)
    img = str(state_image(SNAPSHOTS, "s2"))
    rc, out, err = cli(capsys, cmd, img, "--snapshot", "s2", "--json")
    assert rc == 0, err
    data = json.loads(out)
    with R.open_image(img) as im:
        sn = im.find_snapshot("s2")
        lay = im.state_layout(sn)
    if cmd == "size":  # the state's own bytes, not the disk image's
        assert data["stream_bytes"] == sn.vm_state_size
        assert data["file_size"] == sn.vm_state_size
        assert data["allocated_size"] == lay.allocated
    elif cmd == "map":
        assert {b["name"] for b in data["blocks"]} >= {"pc.ram"}
    else:
        assert {"cpu", "timer", "ram"} - {d["idstr"] for d in data["devices"]} == {"ram"}


# -- info ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_info_json_names_the_snapshot_as_qemu_img_does(name: str, capsys) -> None:  # noqa: ANN001
    man, _ = scenario(name)
    for snap in man["snapshots"]:
        img = str(state_image(name, snap))
        rc, out, err = cli(capsys, "info", img, "--snapshot", snap, "--json", "--no-sections")
        assert rc == 0, err
        c = json.loads(out)["container"]
        keys = ["kind", "magic", "complete", "version", "format", "was_running",
                "payload_offset", "domain", "compression"]
        assert list(c)[: len(keys)] == keys and list(c)[-1] == "stream"
        assert c["kind"] == "qcow2" and c["stream"]["complete"] is True
        rec = next(i for i in man["images"] if i["file"].startswith(man["snapshots"][snap][
            "image"]))["qemu-img info"]
        q = next(s for s in rec["snapshots"] if s["name"] == snap)
        s = c["snapshot"]
        assert (s["id"], s["name"], s["vm_state_size"]) == (q["id"], snap, q["vm-state-size"])
        assert s["vm_clock_ns"] == q["vm-clock-sec"] * 10**9 + q["vm-clock-nsec"]
        with R.open_image(img) as im:
            sn = im.find_snapshot(snap)
            assert (s["disk_size"], s["vm_state_offset"]) == (sn.disk_size, sn.vm_state_offset)
        assert c["image"]["virtual_size"] == rec["virtual-size"]
        assert c["image"]["cluster_size"] == rec["cluster-size"]
        assert c["stream"]["bytes"] == q["vm-state-size"]
        assert c["state"]["bytes"]["data"] + c["state"]["bytes"]["compressed"] == \
            q["vm-state-size"]


def test_info_text_says_which_snapshot(capsys, monkeypatch) -> None:  # noqa: ANN001
    needs_bundled(SNAPSHOTS)
    monkeypatch.setenv("COLUMNS", "80")
    rc, out, _ = cli(capsys, "info", str(state_image(SNAPSHOTS, "s2")), "--snapshot", "3")
    lines = out.splitlines()
    assert rc == 0 and lines[0].startswith("info: legacy stream in snapshot 's2' (ID 3) of a "
                                           "qcow2 image")
    assert "reads whole" in lines[0] and any(ln.startswith("VM state ") for ln in lines)
    assert all(len(ln) <= 80 for ln in lines[1:])  # the verdict is never wrapped in a pipe


# -- check ----------------------------------------------------------------------------------------
def test_check_says_how_to_load_the_snapshot(capsys) -> None:  # noqa: ANN001
    needs_bundled(SNAPSHOTS)
    img = str(state_image(SNAPSHOTS, "s1"))
    rc, out, err = cli(capsys, "check", img, "--snapshot", "s1", "--json")
    assert rc == 0, err
    r = json.loads(out)
    assert r["verdict"] == "loadable" and r["offsets_in"] == "VM state"
    inc = r["incoming"]
    assert inc["method"] == "loadvm" and inc["uri"] is None
    text = "\n".join(inc["commands"])
    for phrase in ("-loadvm s1", "loadvm s1", '"snapshot-load"', "virsh snapshot-revert",
                   f"miginspect convert {img} --snapshot s1"):
        assert phrase in text, phrase
    rc, out, _ = cli(capsys, "check", img, "--snapshot", "s1")
    assert rc == 0 and "loadvm s1" in out


def u64(v: int) -> bytes:
    return struct.pack(">Q", v)


def test_check_reports_qcow2_damage_with_image_offsets(tmp_path, capsys) -> None:  # noqa: ANN001
    """A cut image: the state's clusters past the end (qcow2-past-eof, the L2 entry's
    image offset); a state longer than QEMU wrote (unallocated clusters: a warning, the
    stream itself then fails where the zeros begin)."""
    needs_bundled(SNAPSHOTS)
    base = state_image(SNAPSHOTS, "s1")
    with R.open_image(str(base)) as im:
        s1 = im.find_snapshot("s1")
        h = im.header
        l1e = struct.unpack(">Q", im.pread(s1.l1_table_offset
                                           + s1.vm_state_offset // h.l1_coverage * 8, 8, "l1"))
        size = im.file_size
    mid = s1.vm_state_size // 2 // h.cluster_size  # a cluster in the middle of the state
    l2e_at = (l1e[0] & 0x00FFFFFFFFFFFE00) + mid * 8
    past = (size // h.cluster_size + 16) * h.cluster_size
    cut = tmp_path / "cut.qcow2"
    shutil.copyfile(base, cut)
    with open(cut, "r+b") as f:
        f.seek(l2e_at)
        f.write(u64(1 << 63 | past))  # QCOW_OFLAG_COPIED | a cluster past the end
    rc, out, err = cli(capsys, "check", str(cut), "--snapshot", "s1", "--json")
    r = json.loads(out)
    assert rc == 1 and r["verdict"] == "will not load"
    (p,) = [p for p in r["problems"] if p["severity"] == "error"]
    assert (p["code"], p["where"], p["offset"]) == ("qcow2-past-eof", "qcow2", l2e_at)
    assert f"0x{past:x}" in p["cause"] and "cut short" in p["cause"]

    longer = tmp_path / "longer.qcow2"
    shutil.copyfile(base, longer)
    with open(longer, "r+b") as f:
        f.seek(s1.entry_offset + 40)
        f.write(u64(s1.vm_state_size + (1 << 20)))  # the 64-bit vm_state_size
    rc, out, err = cli(capsys, "check", str(longer), "--snapshot", "s1", "--json")
    r = json.loads(out)
    codes = {p["code"]: p for p in r["problems"]}
    warn = codes["qcow2-state-not-stored"]
    cs = 65536  # the image's clusters: the first one past the state's last is not there
    assert warn["severity"] == "warning" and warn["offset"] == -(-s1.vm_state_size // cs) * cs
    # the stream ends at its EOF and trailer as before; the zeros after it are padding
    assert codes["zero-padding"]["offset"] == s1.vm_state_size
    assert rc == 0 and r["verdict"] == "loadable"


def test_walk_errors_name_the_image_offset(tmp_path, capsys) -> None:  # noqa: ANN001
    """Damage inside the state (a RAM record word) is named at its state offset and its
    image offset."""
    needs_bundled(SNAPSHOTS)
    base = state_image(SNAPSHOTS, "s1")
    with R.open_snapshot(str(base), "s1") as src:
        from miginspect.inspector.stream import walk_stream

        w = walk_stream(src.buf)
        ram = next(s for s in w.sections if s.kind == "PART" and s.idstr == "ram")
        at = ram.payload_offset
        host = src.container.image_offset(at)
    bad = tmp_path / "bad.qcow2"
    shutil.copyfile(base, bad)
    with open(bad, "r+b") as f:
        f.seek(host)
        f.write(u64(0x1FF))  # every flag bit: no such record
    rc, out, err = cli(capsys, "check", str(bad), "--snapshot", "s1", "--json")
    r = json.loads(out)
    first = next(p for p in r["problems"] if p["severity"] == "error")
    assert rc == 1 and first["offset"] == at and f"image offset 0x{host:x}" in first["cause"]
    rc, out, err = cli(capsys, "map", str(bad), "--snapshot", "s1")
    assert rc == 1 and f"image offset 0x{host:x}" in err and f"0x{at:x}" in err


# -- diff -----------------------------------------------------------------------------------------
def _diff_pages(data: dict, block: str = "pc.ram") -> set[int]:
    b = next(x for x in data["blocks"] if x["name"] == block)
    return {r["first_page"] + k for r in b["ranges"] for k in range(r["pages"])}


@pytest.mark.parametrize("name", [n for n in ALL if n.endswith("-snapshots")
                                  or n.endswith("-resized")])
def test_diff_of_two_snapshots_counts_the_pages_their_pmemsaves_differ(name: str, capsys) -> None:  # noqa: ANN001
    man, _ = scenario(name)
    a, b = list(man["snapshots"])
    pa, pb = pmem_pages(name, a), pmem_pages(name, b)
    want = {i for i in range(len(pa) // 8) if i not in MASK and pa[i * 8 : i * 8 + 8]
            != pb[i * 8 : i * 8 + 8]}
    img = str(state_image(name, a))
    rc, out, err = cli(capsys, "diff", img, "--snapshot-a", a, "--snapshot-b", b, "--json",
                       "--jobs", "1")
    assert rc == 1, err
    data = json.loads(out)
    assert data["a"]["snapshot"].endswith(f" {a}") and data["b"]["snapshot"].endswith(f" {b}")
    got = _diff_pages(data)
    assert want and {i for i in got if i not in MASK} == want
    blk = next(x for x in data["blocks"] if x["name"] == "pc.ram")
    assert blk["changed"] + blk["only_a"] + blk["only_b"] == len(got)


def test_diff_a_snapshot_against_itself_and_its_state_volume(capsys) -> None:  # noqa: ANN001
    needs_bundled(SNAPSHOTS)
    img = str(state_image(SNAPSHOTS, "s1"))
    rc, out, err = cli(capsys, "diff", img, "--snapshot-a", "s1", "--snapshot-b", "1")
    assert rc == 0, err
    _, d = scenario(SNAPSHOTS)
    vol = d / "q10-state-volume.raw.zst"
    if not vol.exists():
        pytest.skip("q10-state-volume is not bundled")
    rc, out, err = cli(capsys, "diff", img, str(vol), "--snapshot-a", "s1", "--json")
    assert rc == 0 and json.loads(out)["identical"] is True
    rc, out, err = cli(capsys, "diff", img)  # one image and no snapshots: a usage error
    assert rc == 2 and "--snapshot-a" in err


# -- convert: a standalone migration file QEMU restores ----------------------------------------
_FLAGS = {"-S", "-no-user-config", "-nodefaults", "-no-shutdown", "-no-reboot"}


def _libvirt_argv(man: dict, disk: Path) -> list[str]:
    """The QEMU command line libvirt ran (its log), made to run here: no libvirt file
    descriptors, secrets or monitor; the disk a copy; no kernel (the state brings RAM)."""
    log = man["qemu"]["libvirt qemu log (tail)"]
    block = log[log.rindex("starting up") :].split("\n", 1)[1]
    cmd = block.split("\n20")[0].replace("\\\n", " ")
    words = shlex.split(cmd)
    words = words[next(i for i, w in enumerate(words) if w.endswith("qemu-system-x86_64")) :]
    out, i = [words[0]], 1
    while i < len(words):
        w = words[i]
        if w in _FLAGS:
            out.append(w)
            i += 1
            continue
        v = words[i + 1]
        i += 2
        if w in ("-mon", "-add-fd", "-kernel", "-initrd", "-append", "-sandbox", "-msg") or (
                w == "-object" and "secret" in v) or (w == "-chardev" and "charmonitor" in v):
            continue
        if w == "-chardev" and "charserial0" in v:
            v = "null,id=charserial0"
        if w == "-blockdev" and '"driver":"file"' in v:
            d = json.loads(v)
            d["filename"] = str(disk)
            v = json.dumps(d)
        out += [w, v]
    return out


def _restore_meta(name: str, snap: str, tmp: Path) -> dict:
    """What qemu_harness.load_into_qemu needs: the saving QEMU's command line with the disk
    pointing at a copy of the image (the IDE/virtio device state needs a disk)."""
    man, _ = scenario(name)
    copies = {}
    for k, rec in enumerate(man["images"]):  # every disk of the VM, by its stored name
        copies[rec["file"].removesuffix(".zst")] = c = tmp / f"disk{k}.qcow2"
        shutil.copyfile(image_file(name, k), c)
    size = man["snapshots"][snap]["save_time"]["pmemsave"]["size"]
    if "argv" not in man["qemu"]:  # libvirt
        (disk,) = copies.values()
        return {"qemu": {"label": "qemu10", "argv": _libvirt_argv(man, disk)},
                "pmemsave": {"size": size}}
    argv = []
    for w in man["qemu"]["argv"]:
        if w.startswith("file=") and "format=qcow2" in w:
            path, rest = w[5:].split(",", 1)
            w = f"file={copies[Path(path).name]},{rest}"
        argv.append(w)
    return {"qemu": dict(man["qemu"], argv=argv), "pmemsave": {"size": size}}


RESTORE = [(n, s, "legacy") for n, s in CASES] + [
    (n, s, "mapped-ram") for n, s in CASES[:1] if not n.startswith("q72")]


@pytest.mark.parametrize("name,snap,to", RESTORE)
def test_converted_snapshot_restores_in_qemu_to_the_saved_memory(name: str, snap: str, to: str,
                                                                 tmp_path, capsys) -> None:  # noqa: ANN001
    meta = _restore_meta(name, snap, tmp_path)
    if not sample_qemu_available(meta):
        pytest.skip("the QEMU that saved this snapshot is not installed here")
    out = tmp_path / f"state.{to}.mig"
    rc, o, err = cli(capsys, "convert", str(state_image(name, snap)), str(out), "--snapshot",
                     snap, "--to", to, "--verify", "--json")
    assert rc == 0, err
    rep = json.loads(o)
    assert rep["input_container"]["kind"] == "qcow2" and rep["output_container"] == {
        "kind": "none", "compression": None}
    assert rep["verify"]["ok"] is True
    caps = {"mapped-ram": True} if to == "mapped-ram" else None
    mem, q = load_into_qemu(meta, out, caps)
    ref = pmem_pages(name, snap)
    assert q["status"] == "completed"
    assert differing(digests(mem), ref) == [], f"{name} {snap}: QEMU restored other memory"
