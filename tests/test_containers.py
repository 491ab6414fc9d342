"""The container layer (inspector/containers/): one interface for every container kind.

A kind defined here, in the test, and put in `registry.KINDS` is read by `info`, `check`
and `convert` with no edit anywhere else: its description is what `info` prints and
`info --json` holds, its problems and loading steps are what `check` reports, and the
converted output is of its kind. The real kinds are checked through the same interface
(detection from the first bytes, inner kinds in compressed data, stdin)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import SAMPLES, unpack

from miginspect.cli import main
from miginspect.inspector.containers import registry
from miginspect.inspector.containers.base import (
    WARN,
    Container,
    ContainerBrief,
    ContainerInfo,
    Fact,
    Incoming,
    Input,
    OpenOptions,
    StreamExtent,
)
from miginspect.inspector.problems import problem
from miginspect.inspector.source import Source, mmap_input

STREAM = SAMPLES / "q10-paused-legacy.mig.zst"
MAGIC = b"TOYSAVE\0"
HEADER = 4096


@dataclass
class ToyInfo(ContainerInfo):
    label: str | None = None

    def wraps(self, what: str) -> str:
        return f"{what} in a toy box labelled {self.label}"

    def facts(self) -> list[Fact]:
        return [Fact("toy box", [(f"label {self.label}, stream at 0x{self.payload_offset:x}",
                                  WARN)])]


@dataclass
class ToyPrefix:
    head: bytes

    def __len__(self) -> int:
        return len(self.head)

    def write_to(self, out: object) -> None:
        out.write(self.head)  # type: ignore[attr-defined]


@dataclass
class ToyContainer(Container):
    kind: str = "toy"
    label: str = ""

    def describe(self, src: Source, extent: StreamExtent | None) -> ContainerInfo:
        return ToyInfo(kind="toy", magic=MAGIC[:7].decode(), payload_offset=src.base,
                       stream=extent, label=self.label)

    def problems(self, src, walk) -> list:  # noqa: ANN001
        return [problem("damaged", 8, "toy", f"the toy label {self.label!r} is a test")]

    def how_to_load(self, src, walk) -> Incoming:  # noqa: ANN001
        return Incoming([], None, [f"unbox {src.path} first"], method="unbox",
                        needs=["a toy unboxer"])

    def output(self, src: Source, to: str) -> ToyPrefix:
        return ToyPrefix(bytes(src.buf[: src.base]))

    def output_brief(self, to: str) -> ContainerBrief:
        return ContainerBrief("toy")

    def brief(self) -> ContainerBrief:
        return ContainerBrief("toy")


class ToyKind:
    name = "toy"

    def detect(self, head: bytes) -> bool:
        return head.startswith(MAGIC)

    def open(self, inp: Input, options: OpenOptions, progress: object) -> Source:
        options.refuse_for("a toy box", inp.path)
        src = mmap_input(inp)
        src.base = HEADER
        src.container = ToyContainer(label=bytes(src.buf[8:16]).rstrip(b"\0").decode())
        return src


@pytest.fixture()
def toy(tmp_path: Path, monkeypatch) -> Path:  # noqa: ANN001
    if not STREAM.exists():
        pytest.skip("q10-paused-legacy is not bundled")
    monkeypatch.setattr(registry, "KINDS", (ToyKind(), *registry.KINDS))
    p = tmp_path / "state.toy"
    p.write_bytes(MAGIC + b"blue".ljust(HEADER - len(MAGIC), b"\0")
                  + unpack(STREAM).read_bytes())
    return p


def run(capsys, *args: str) -> tuple[int, str, str]:  # noqa: ANN001
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_a_new_kind_needs_no_edit_in_info_check_or_convert(toy, tmp_path, capsys) -> None:  # noqa: ANN001
    rc, out, err = run(capsys, "info", str(toy), "--no-sections", "--width", "200")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("info: legacy stream in a toy box labelled blue, ")
    assert any(ln.split()[:2] == ["toy", "box"] and "label blue, stream at 0x1000" in ln
               for ln in lines)
    rc, out, _ = run(capsys, "info", str(toy), "--json")
    c = json.loads(out)["container"]
    assert (c["kind"], c["magic"], c["payload_offset"], c["label"]) == ("toy", "TOYSAVE",
                                                                         HEADER, "blue")
    assert c["stream"]["complete"] is True and list(c)[-1] == "stream"
    assert json.loads(out)["stream_offset"] == HEADER < json.loads(out)["sections"][0]["offset"]

    rc, out, _ = run(capsys, "check", str(toy), "--json")
    r = json.loads(out)
    assert rc == 1 and r["problems"][0]["where"] == "toy" and r["problems"][0]["offset"] == 8
    assert r["incoming"] == {"capabilities": [], "uri": None, "commands": [
        f"unbox {toy} first"], "method": "unbox", "needs": ["a toy unboxer"]}

    rc, out, err = run(capsys, "--traceback", "convert", str(toy), str(tmp_path / "o.toy"),
                       "--to", "mapped-ram", "--json", "--verify")
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["output_container"] == {"kind": "toy", "compression": None}
    assert rep["verify"]["ok"] and rep["stream_offset_out"] == HEADER
    raw = (tmp_path / "o.toy").read_bytes()
    assert raw[:HEADER] == toy.read_bytes()[:HEADER] and raw[HEADER : HEADER + 4] == b"QEVM"
    rc, out, _ = run(capsys, "info", str(tmp_path / "o.toy"), "--json")
    assert json.loads(out)["format"] == "mapped-ram"
    assert json.loads(out)["container"]["kind"] == "toy"
    rc, out, err = run(capsys, "info", str(toy), "--snapshot", "s1")
    assert rc == 2 and "a toy box" in err


def test_kinds_are_detected_from_the_first_bytes() -> None:
    from miginspect.inspector.containers import compressed, libvirt, plain, qcow2

    assert registry.kind_of(b"QFI\xfb\0\0\0\3") is qcow2.KIND
    assert registry.kind_of(b"LibvirtQemudSave") is libvirt.KIND
    assert registry.kind_of(b"LibvirtQemudPart") is libvirt.KIND
    assert registry.kind_of(b"\x28\xb5\x2f\xfd....") is compressed.KIND
    assert registry.kind_of(b"QEVM\0\0\0\3") is plain.KIND
    assert registry.kind_of(b"anything") is plain.KIND
    assert registry.known(b"QEVM\0\0\0\3") and registry.known(b"QFI\xfb")
    assert not registry.known(b"\0" * 16)
    assert registry.inner_kind(b"QFI\xfb") is qcow2.KIND
    assert registry.inner_kind(b"QEVM") is None


QIMG = SAMPLES / "qcow2" / "q10-snapshots.qcow2.zst"


def test_a_compressed_image_and_an_image_on_stdin_read_as_the_plain_image(capsys) -> None:  # noqa: ANN001
    """A qcow2 image inside zstd data is adopted from the decompressed copy; one on
    standard input from the spooled copy; both give the state the image itself gives."""
    if not QIMG.exists():
        pytest.skip("q10-snapshots is not bundled")
    plain_img = unpack(QIMG)
    rc, ref, err = run(capsys, "info", str(plain_img), "--snapshot", "s2", "--json")
    assert rc == 0, err
    want = json.loads(ref)
    rc, out, err = run(capsys, "info", str(QIMG), "--snapshot", "s2", "--json")
    assert rc == 0, err
    got = json.loads(out)
    assert got["container"]["compression"] == "zstd"
    assert got["container"]["snapshot"] == want["container"]["snapshot"]
    assert got["ramblocks"] == want["ramblocks"] and got["sections"] == want["sections"]
    import miginspect

    root = Path(miginspect.__file__).resolve().parent.parent
    with open(plain_img, "rb") as f:
        p = subprocess.run(["python3", "-m", "miginspect", "info", "-", "--snapshot", "s2",
                            "--json"], stdin=f, capture_output=True, text=True, cwd=root,
                           timeout=120)
    assert p.returncode == 0, p.stderr
    piped = json.loads(p.stdout)
    assert piped["container"]["snapshot"] == want["container"]["snapshot"]
    assert piped["ramblocks"] == want["ramblocks"]


def test_check_json_incoming_of_each_kind(capsys) -> None:  # noqa: ANN001
    """How to load comes from the container: file: for a stream, exec: for compressed
    data, loadvm for a snapshot."""
    if not QIMG.exists() or not STREAM.exists():
        pytest.skip("samples are not bundled")
    rc, out, _ = run(capsys, "check", str(unpack(STREAM)), "--json")
    inc = json.loads(out)["incoming"]
    assert inc["method"] == "migrate-incoming" and inc["uri"].startswith("file:")
    assert inc["needs"] == []
    rc, out, _ = run(capsys, "check", str(STREAM), "--json")
    inc = json.loads(out)["incoming"]
    assert inc["uri"] == f"exec:zstd -dc {STREAM}" and inc["needs"] == [
        "its stream fed through a pipe (exec:zstd -dc)"]
    rc, out, _ = run(capsys, "check", str(QIMG), "--snapshot", "1", "--json")
    r = json.loads(out)
    assert r["incoming"]["method"] == "loadvm" and r["offsets_in"] == "VM state"
    assert r["incoming"]["commands"][0].startswith("decompress the image first")
