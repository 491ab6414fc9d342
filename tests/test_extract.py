"""`miginspect extract`: per-RAMBlock and guest-physical images against QEMU's pmemsave
digests, safe output paths, and Volatility 3 reading the ELF core."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess

import pytest
import zstandard
from conftest import SAMPLES, sample_meta, sample_names, sample_path

from miginspect.cli import main
from miginspect.errors import UnsupportedError, UsageError
from miginspect.formats import elfcore as E
from miginspect.inspector.capture import open_capture
from miginspect.inspector.extract import MANIFEST, PHYSICAL_MANIFEST, extract_blocks, safe_name
from miginspect.inspector.physical import below_4g_size, x86_layout

GiB = 1 << 30
MiB = 1 << 20
ALL = sample_names("q*")
STATE_A = ["q10-state-A-legacy", "q10-state-A-mapped-ram", "q10-state-A-multifd4"]


def _need_samples() -> None:
    if not ALL:
        pytest.skip("no samples bundled yet (samples/generate.py)")


def _masked_sha256(data: bytearray, lo: int, hi: int) -> str:
    data[lo : hi + 1] = bytes(hi + 1 - lo)
    return hashlib.sha256(data).hexdigest()


def _first_bad_pages(meta: dict, data: bytes, lo: int, hi: int) -> list[int]:
    """Pages outside the masked window whose blake2b-8 differs from pmemsave's."""
    pf = meta["pmemsave"].get("pages_file")
    if not pf or not (SAMPLES / pf).exists():
        return []
    ref = zstandard.ZstdDecompressor().decompress((SAMPLES / pf).read_bytes())
    bad = []
    for i in range(len(data) // 4096):
        if lo <= i * 4096 <= hi:
            continue
        h = hashlib.blake2b(data[i * 4096 : (i + 1) * 4096], digest_size=8).digest()
        if h != ref[i * 8 : i * 8 + 8]:
            bad.append(i)
            if len(bad) == 10:
                break
    return bad


def _check_against_pmemsave(meta: dict, data: bytes) -> None:
    pm = meta["pmemsave"]
    lo, hi = pm["masked_range"]
    assert len(data) >= pm["size"]
    got = _masked_sha256(bytearray(data[: pm["size"]]), lo, hi)
    if got != pm["sha256_masked"]:
        bad = _first_bad_pages(meta, data, lo, hi)
        pytest.fail(f"{meta['name']}: extracted memory differs from pmemsave outside "
                    f"0x{lo:x}-0x{hi:x}; first differing pages (offset = page * 4096): {bad}")


# -- per-RAMBlock files against pmemsave ---------------------------------------------------
#: Captures whose stream itself does not hold the memory pmemsave saw afterwards: QEMU 7.2
#: (TCG) did not re-send ~500 re-dirtied working-set pages. There QEMU's own loader is the
#: oracle: what it restores from the file must equal our extract.
STREAM_LAGS_PMEMSAVE = {"q72-live-legacy"}


@pytest.mark.parametrize("name", ALL or ["none"])
def test_extracted_pc_ram_equals_pmemsave(name: str, tmp_path) -> None:  # noqa: ANN001
    _need_samples()
    meta = sample_meta(name)
    if "pmemsave" not in meta:
        pytest.skip(f"{name} has no pmemsave digest")
    out = tmp_path / "out"
    assert main(["extract", str(sample_path(name)), "-o", str(out), "--block", "pc.ram"]) == 0
    data = (out / "pc.ram.raw").read_bytes()
    pc = next(b for b in meta["info_ramblock"]["parsed"] if b["name"] == "pc.ram")
    assert len(data) == pc["used_length"]
    if name in STREAM_LAGS_PMEMSAVE:
        from qemu_harness import load_and_pmemsave, sample_qemu_available

        if not sample_qemu_available(meta):
            pytest.skip(f"the QEMU that wrote {name} is not installed to load it back")
        lo, hi = meta["pmemsave"]["masked_range"]
        loaded = _masked_sha256(bytearray(load_and_pmemsave(meta, sample_path(name))), lo, hi)
        assert _masked_sha256(bytearray(data[: meta["pmemsave"]["size"]]), lo, hi) == loaded
        return
    _check_against_pmemsave(meta, data)
    man = json.loads((out / MANIFEST).read_text())
    assert [f["file"] for f in man["files"]] == ["pc.ram.raw"]


def test_state_a_blocks_extract_identically(tmp_path) -> None:  # noqa: ANN001
    names = [n for n in STATE_A if n in ALL]
    if len(names) < 3:
        pytest.skip("q10-state-A-* samples not bundled yet")
    digests = []
    for n in names:
        out = tmp_path / n
        with open_capture(str(sample_path(n))) as cap:
            rep = extract_blocks(cap, out)
        digests.append({f.block: hashlib.sha256((out / f.file).read_bytes()).hexdigest()
                        for f in rep.files})
    assert digests[0] == digests[1] == digests[2]
    qemu = [b["name"] for b in sample_meta(names[0])["info_ramblock"]["parsed"]]
    assert sorted(digests[0]) == sorted(qemu)


def test_extract_is_sparse_where_zero(tmp_path) -> None:  # noqa: ANN001
    _need_samples()
    out = tmp_path / "out"
    with open_capture(str(sample_path(ALL[0]))) as cap:
        rep = extract_blocks(cap, out, blocks=["pc.ram"])
    (f,) = rep.files
    st = os.stat(out / f.file)
    assert st.st_size == f.used_length
    assert f.data_bytes == f.data_pages * 4096
    if st.st_blocks * 512 >= st.st_size:
        pytest.skip("this file system does not keep holes")
    # zero pages were seeked over: allocation follows the data, not the size
    assert st.st_blocks * 512 <= f.data_bytes + 64 * 4096


# -- output folder safety ---------------------------------------------------------------------
def test_safe_names() -> None:
    taken: set[str] = set()
    names = [safe_name(n, taken) for n in
             ["pc.ram", "/rom@etc/acpi/tables", "0000:00:02.0/vga.vram", "..", ".", "",
              "a/b", "a:b", "A_B", "../../etc/passwd", "x" * 300]]
    assert names[:3] == ["pc.ram.raw", "rom@etc_acpi_tables.raw", "0000_00_02.0_vga.vram.raw"]
    for n in names:
        assert "/" not in n and ":" not in n and not n.startswith(".") and len(n) < 255
    assert len({n.lower() for n in names}) == len(names)  # a_b, a_b~2, A_B~3 ...
    assert names[6] == "a_b.raw" and names[7] == "a_b~2.raw" and names[8] == "A_B~3.raw"


def test_refuses_to_overwrite_without_force(tmp_path, capsys) -> None:  # noqa: ANN001
    _need_samples()
    src = str(sample_path(ALL[0]))
    out = tmp_path / "out"
    out.mkdir()
    (out / "pc.bios.raw").write_bytes(b"keep me")
    assert main(["extract", src, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--force" in err[0]
    assert (out / "pc.bios.raw").read_bytes() == b"keep me"
    assert sorted(p.name for p in out.iterdir()) == ["pc.bios.raw"]  # nothing written
    assert main(["extract", src, "-o", str(out), "--force"]) == 0
    assert (out / "pc.bios.raw").stat().st_size == 256 * 1024


def test_never_writes_through_symlinks(tmp_path, capsys) -> None:  # noqa: ANN001
    _need_samples()
    src = str(sample_path(ALL[0]))
    outside = tmp_path / "outside"
    outside.write_bytes(b"secret")
    out = tmp_path / "out"
    out.mkdir()
    (out / "pc.rom.raw").symlink_to(outside)
    for extra in ([], ["--force"]):
        assert main(["extract", src, "-o", str(out), *extra]) == 2
        assert "symlink" in capsys.readouterr().err
    assert outside.read_bytes() == b"secret"


def test_output_folder_must_have_a_parent(tmp_path) -> None:  # noqa: ANN001
    _need_samples()
    with open_capture(str(sample_path(ALL[0]))) as cap, pytest.raises(UsageError):
        extract_blocks(cap, tmp_path / "missing" / "out")
    assert not (tmp_path / "missing").exists()


def test_every_file_lands_inside_dir(tmp_path) -> None:  # noqa: ANN001
    _need_samples()
    out = tmp_path / "out"
    with open_capture(str(sample_path(ALL[0]))) as cap:
        rep = extract_blocks(cap, out)
        names = [b.name for b in cap.blocks]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    files = {p.name for p in out.iterdir()}
    assert files == {f.file for f in rep.files} | {MANIFEST}
    assert [f.block for f in rep.files] == names
    man = json.loads((out / MANIFEST).read_text())
    assert [f["block"] for f in man["files"]] == names


# -- guest-physical ---------------------------------------------------------------------------
def test_below_4g_rule_follows_qemus_documented_examples() -> None:
    # examples QEMU's i440FX machine code documents for its split
    assert below_4g_size("pc-1.7", 4 * GiB)[0] == 3584 * MiB
    assert below_4g_size("pc-i440fx-10.0", 4 * GiB)[0] == 3072 * MiB
    assert below_4g_size("pc-i440fx-10.0", 4 * GiB, 2 * GiB)[0] == 2048 * MiB
    assert below_4g_size("pc-i440fx-10.0", 3968 * MiB, 4 * GiB)[0] == 3968 * MiB
    assert below_4g_size("pc", 3 * GiB)[0] == 3 * GiB
    assert below_4g_size("pc-i440fx-2.0", 3584 * MiB)[0] == 3584 * MiB
    # q35: 2.75 GiB or more is split at 2 GiB
    assert below_4g_size("pc-q35-10.0", 2 * GiB)[0] == 2 * GiB
    assert below_4g_size("pc-q35-10.0", 0xB0000000 - 4096)[0] == 0xB0000000 - 4096
    assert below_4g_size("pc-q35-10.0", 0xB0000000)[0] == 2 * GiB
    assert below_4g_size("q35", 8 * GiB, 1 * GiB)[0] == 1 * GiB
    lay = x86_layout("pc-q35-9.2", 6 * GiB)
    assert [(r.gpa, r.block_offset, r.length) for r in lay.ranges] == [
        (0, 0, 2 * GiB), (4 * GiB, 2 * GiB, 4 * GiB)]
    assert lay.end == 8 * GiB
    for mt in ("virt-9.2", "microvm", "isapc", None):
        with pytest.raises(UnsupportedError):
            x86_layout(mt, GiB)


def _physical(name: str, tmp_path) -> tuple[dict, bytes, bytes]:  # noqa: ANN001
    out = tmp_path / "phys"
    assert main(["extract", str(sample_path(name)), "-o", str(out), "--physical",
                 "--format", "raw", "--format", "elf"]) == 0
    return (json.loads((out / PHYSICAL_MANIFEST).read_text()),
            (out / "physical.raw").read_bytes(),
            (out / "physical.elf").read_bytes())


PHYSICAL = [n for n in ALL if "paused" in n or n in STATE_A]


@pytest.mark.parametrize("name", PHYSICAL or ["none"])
def test_physical_images_equal_pmemsave(name: str, tmp_path) -> None:  # noqa: ANN001
    if not PHYSICAL:
        pytest.skip("no paused samples bundled yet (samples/generate.py)")
    meta = sample_meta(name)
    man, raw, elf = _physical(name, tmp_path)
    assert man["physical"]["ram_block"] == "pc.ram"
    assert man["physical"]["below_4g"] == meta["pmemsave"]["size"]
    _check_against_pmemsave(meta, raw)
    eh = E.Elf64_Ehdr.parse(elf)
    assert eh.e_type == E.ET_CORE and eh.e_machine == E.EM_X86_64 and eh.e_phnum == 2
    note = E.Elf64_Phdr.parse(elf[eh.e_phoff :])  # the vCPU notes, then the RAM
    assert note.p_type == E.PT_NOTE and note.p_filesz > 0
    ph = E.Elf64_Phdr.parse(elf[eh.e_phoff + E.PHDR_SIZE :])
    assert ph.p_type == E.PT_LOAD and ph.p_paddr == 0 and ph.p_filesz == len(raw)
    assert ph.p_offset % 4096 == 0
    assert elf[ph.p_offset : ph.p_offset + ph.p_filesz] == raw


# -- Volatility 3 --------------------------------------------------------------------------
def test_volatility_finds_the_linux_banner_in_the_elf_core(tmp_path) -> None:  # noqa: ANN001
    if importlib.util.find_spec("volatility3") is None or shutil.which("vol") is None:
        pytest.skip("volatility3 is not installed (pip install volatility3; CI installs it)")
    name = next((n for n in STATE_A + ALL if n in ALL), None)
    if name is None:
        pytest.skip("no samples bundled yet")
    out = tmp_path / "phys"
    assert main(["extract", str(sample_path(name)), "-o", str(out), "--format", "elf",
                 "--format", "raw"]) == 0
    elf = out / "physical.elf"
    res = subprocess.run(["vol", "-q", "-f", str(elf), "banners.Banners"], capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    hits = re.findall(r"^(0x[0-9a-f]+)\s+(Linux version \S+)", res.stdout, re.M)
    assert hits, f"no Linux banner in Volatility's output:\n{res.stdout[-2000:]}"
    # Volatility read the ELF through its PT_LOAD mapping: its offsets are guest-physical
    # addresses, where physical.raw holds the banner (the ELF file has it 4 KiB further)
    raw = (out / "physical.raw").read_bytes()
    off, banner = hits[0]
    assert raw[int(off, 16) : int(off, 16) + len(banner)].decode("latin-1") == banner


# -- the split against QEMU's own memory map (real QEMU, BIOS-only, seconds each) ------------
_MTREE = re.compile(r"^\s*([0-9a-f]+)-([0-9a-f]+) \(prio -?\d+, (?:ram|rom)\): pc\.ram"
                    r"(?: @([0-9a-f]+))?", re.M)


@pytest.mark.qemu
@pytest.mark.parametrize("machine,mem_mib,below_opt", [
    ("pc", 4096, None),
    ("pc", 3584, None),
    ("pc,max-ram-below-4g=2G", 4096, 2 * GiB),
    ("q35", 4096, None),
    ("q35", 2816, None),
])
def test_physical_split_matches_qemu(machine: str, mem_mib: int, below_opt: int | None,
                                     need_qemu, tmp_path) -> None:  # noqa: ANN001
    """A paused BIOS-only guest with a random blob loaded above 4 GiB: QEMU's flat memory
    map (`info mtree -f`) and its pmemsave of the blob's guest-physical window must agree
    with our layout, our physical.raw and our pc.ram extract."""
    from qemu_harness import QemuVM

    blob = os.urandom(3 * 4096)
    (tmp_path / "blob").write_bytes(blob)
    gpa = (4 << 30) + 0x1234000
    cap_path = tmp_path / "cap.mig"
    with QemuVM("-device", f"loader,file={tmp_path / 'blob'},addr={gpa:#x},force-raw=on",
                mem_mib=mem_mib, machine=machine, binary=need_qemu) as vm:
        mtree = vm.hmp("info mtree -f")
        vm.cmd("pmemsave", val=gpa, size=len(blob), filename=str(tmp_path / "win"))
        q = vm.save(cap_path, {"mapped-ram": True})
        assert q["status"] == "completed", q
    assert (tmp_path / "win").read_bytes() == blob  # QEMU put the blob at that address
    views = {(int(a, 16), int(b, 16) + 1, int(o or "0", 16)) for a, b, o in _MTREE.findall(mtree)}
    assert views, mtree
    out = tmp_path / "out"
    argv = ["extract", str(cap_path), "-o", str(out), "--physical", "--format", "raw"]
    if below_opt:
        argv += ["--max-ram-below-4g", str(below_opt)]
    assert main(argv) == 0
    lay = json.loads((out / PHYSICAL_MANIFEST).read_text())["physical"]
    for start, end, off in views:  # every QEMU view of pc.ram lies in one of our ranges
        r = next((r for r in lay["ranges"] if r["gpa"] <= start < r["gpa"] + r["length"]), None)
        assert r is not None, (hex(start), lay)
        assert end <= r["gpa"] + r["length"]
        assert off == start - r["gpa"] + r["block_offset"], (hex(start), hex(off), lay)
    with open(out / "physical.raw", "rb") as f:
        f.seek(gpa)
        assert f.read(len(blob)) == blob
    assert main(["extract", str(cap_path), "-o", str(tmp_path / "blk"), "--block", "pc.ram"]) == 0
    with open(tmp_path / "blk" / "pc.ram.raw", "rb") as f:
        f.seek(lay["below_4g"] + (gpa - (4 << 30)))
        assert f.read(len(blob)) == blob


# -- libvirt save images (sparse = mapped-ram with absolute offsets after the header) ---------
def _libvirt_images() -> list[str]:
    out = []
    for j in sorted((SAMPLES / "libvirt").glob("*.json")):
        m = json.loads(j.read_text())
        r = m.get("restore")
        r = r[0] if isinstance(r, list) and r else r
        pm = (r or {}).get("pmemsave_after_restore") or {}
        stored = (m.get("stored_as") or {}).get("file")
        if pm.get("sha256_masked") and stored and (SAMPLES / "libvirt" / stored).exists():
            out.append(j.stem)
    return out


LIBVIRT = _libvirt_images()


@pytest.mark.parametrize("name", LIBVIRT or ["none"])
def test_libvirt_image_extract_equals_restored_memory(name: str, tmp_path) -> None:  # noqa: ANN001
    """What libvirt restored from the image (QEMU's pmemsave after `virsh restore`)
    equals our pc.ram extract and guest-physical image, for every save format."""
    if not LIBVIRT:
        pytest.skip("no libvirt images bundled (samples/libvirt/make-images.py)")
    from conftest import unpack

    meta = json.loads((SAMPLES / "libvirt" / f"{name}.json").read_text())
    r = meta["restore"][0] if isinstance(meta["restore"], list) else meta["restore"]
    pm = r["pmemsave_after_restore"]
    stored = SAMPLES / "libvirt" / meta["stored_as"]["file"]
    img = unpack(stored) if stored.name.endswith(".zst") else stored
    if "lzop" in name and shutil.which("lzop") is None:
        pytest.skip("lzop images are read through the lzop program, which is not installed")
    out = tmp_path / "out"
    assert main(["extract", str(img), "-o", str(out), "--block", "pc.ram"]) == 0
    assert main(["extract", str(img), "-o", str(out), "--physical", "--format", "raw"]) == 0
    lo, hi = pm["masked_range"]
    for f in ("pc.ram.raw", "physical.raw"):
        data = bytearray((out / f).read_bytes()[: pm["size"]])
        assert _masked_sha256(data, lo, hi) == pm["sha256_masked"], f
    with open_capture(str(img)) as cap:
        assert cap.source.container.kind == "libvirt"
        if cap.format == "mapped-ram":  # offsets are absolute: past libvirt's header
            b = cap.block("pc.ram")
            assert b.mapped_ram.bitmap_offset > cap.source.base


def test_force_replaces_without_touching_hard_links_or_the_input(tmp_path, capsys) -> None:  # noqa: ANN001
    _need_samples()
    out = tmp_path / "out"
    out.mkdir()
    keep = tmp_path / "keep"
    keep.write_bytes(b"other link")
    os.link(keep, out / "pc.bios.raw")
    src = out / "physical.raw"  # the input itself sits in DIR under an output name
    shutil.copyfile(sample_path(ALL[0]), src)
    assert main(["extract", str(src), "-o", str(out), "--force"]) == 0
    assert keep.read_bytes() == b"other link"  # replaced by a new file, not truncated
    assert (out / "pc.bios.raw").stat().st_size == 256 * 1024
    assert main(["extract", str(src), "-o", str(out), "--format", "raw", "--force"]) == 2
    assert "input file" in capsys.readouterr().err
    with open_capture(str(src)) as cap:  # still the capture
        assert cap.blocks
