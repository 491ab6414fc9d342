"""The target probe: command line parsing and the safe rewrite, what it learns from a real
QEMU, and that it never leaves a process, a socket or a file behind, whatever the target
command line asks for."""

from __future__ import annotations

import os
import shlex
import sys
import time
from pathlib import Path

import pytest
from target_matrix import QEMU10_BIN, matrix, prefix, qemu_missing, source_path

from miginspect.errors import UsageError
from miginspect.inspector.check import check_file
from miginspect.inspector.target_qemu import (
    first_error_line,
    parse_cmdline,
    probe_qemu,
    sanitize,
)
from miginspect.jsondata import jsonable

PAIRS = {p["id"]: p for p in matrix()["pairs"]}


def test_parse_cmdline_env_prefix() -> None:
    env, binary, args = parse_cmdline(
        "env QEMU_MODULE_DIR='/opt/q 72/lib' A=1 /opt/q/qemu-system-x86_64 -m 64 -name 'a b'")
    assert env == {"QEMU_MODULE_DIR": "/opt/q 72/lib", "A": "1"}
    assert binary == "/opt/q/qemu-system-x86_64"
    assert args == ["-m", "64", "-name", "a b"]
    assert parse_cmdline("B=2 qemu-system-x86_64")[:2] == ({"B": "2"}, "qemu-system-x86_64")
    for bad in ("", "env A=1", "qemu 'unterminated"):
        with pytest.raises(UsageError):
            parse_cmdline(bad)


def test_sanitize_makes_the_command_line_harmless(tmp_path: Path) -> None:
    args = shlex.split(
        "-machine q35 -m 4G -enable-kvm -daemonize -nographic -S -incoming tcp:0:4444 "
        "-qmp unix:/run/x.sock,server=on,wait=off -monitor stdio -mon chardev=m0 "
        "-chardev socket,id=m0,path=/run/m.sock,server=on,wait=on "
        "-chardev file,id=log0,path=/var/log/guest.log -serial chardev:log0 -serial pty "
        "-parallel none -netdev tap,id=n0,script=/etc/qemu-ifup -device e1000,netdev=n0 "
        "-nic tap,model=virtio-net-pci,mac=52:54:00:12:34:56,script=/x "
        "-object memory-backend-file,id=mem,size=4G,mem-path=/dev/hugepages,share=on "
        "-machine memory-backend=mem -pidfile /run/q.pid -D /tmp/q.log -loadvm snap1 "
        "-vnc :1 --display gtk -drive file=/img.qcow2,if=virtio")
    out, notes = sanitize(args, tmp_path / "qmp.sock")
    line = shlex.join(out)
    for gone in ("-incoming", "-daemonize", "-nographic", "-pidfile", "-loadvm", "-vnc",
                 "gtk", "/run/x.sock", "stdio", "-mon ", "tap", "script=", "/var/log",
                 "/run/m.sock", "mem-path", "-D "):
        assert gone not in line, gone
    assert out[out.index("-chardev") + 1] == "null,id=m0"
    assert "null,id=log0" in out and out.count("-serial") == 2 and "pty" not in out
    assert "-parallel" in out and out[out.index("-parallel") + 1] == "none"
    assert "hubport,id=n0,hubid=0" in out and "e1000,netdev=n0" in out
    assert "user,restrict=on,model=virtio-net-pci,mac=52:54:00:12:34:56" in out
    assert "memory-backend-ram,id=mem,size=4G" in out and "memory-backend=mem" in line
    assert ["-enable-kvm"] == [w for w in out if w == "-enable-kvm"]  # the accelerator stays
    assert "file=/img.qcow2,if=virtio" in out
    assert out[-8:] == ["-S", "-snapshot", "-display", "none", "-monitor", "none", "-qmp",
                        f"unix:{tmp_path / 'qmp.sock'},server=on,wait=off"]
    assert out.count("-S") == 1 and any("-incoming" in n for n in notes)
    out, _ = sanitize(["-net", "nic,model=e1000", "-net", "tap,script=/x", "-object",
                       "memory-backend-ram,id=m,size=1G,prealloc=on,host-nodes=0"], tmp_path)
    assert out[:4] == ["-net", "nic,model=e1000", "-object", "memory-backend-ram,id=m,size=1G"]
    for dev in ("vfio-pci,host=0000:01:00.0", "usb-host,hostbus=1,hostaddr=2"):
        with pytest.raises(UsageError):
            sanitize(["-device", dev], tmp_path)


def test_first_error_line() -> None:
    assert first_error_line("qemu-system-x86_64: warning: nic e1000.0 has no peer\n"
                            "qemu-system-x86_64: Size mismatch: pc.ram: 0x1 != 0x2: Invalid "
                            "argument\nqemu-system-x86_64: load of migration failed\n") == (
        "Size mismatch: pc.ram: 0x1 != 0x2: Invalid argument")
    assert first_error_line("/opt/x/qemu-system-x86_64: failed to open module: libepoxy\n"
                            "/opt/x/qemu-system-x86_64: unsupported machine type\n"
                            "Use -machine help to list supported machines\n") == (
        "unsupported machine type")
    assert first_error_line("") is None


def _leftovers(tag: str) -> list[str]:
    """Processes whose command line mentions `tag`."""
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if tag.encode() in cmd:
                out.append(cmd.decode(errors="replace"))
    return out


def test_probe_of_something_that_is_not_qemu(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        probe_qemu("/nonexistent/qemu-system-x86_64 -m 64", tmpdir=str(tmp_path))
    t = probe_qemu("false", tmpdir=str(tmp_path))
    assert t.start_error == "QEMU exited with status 1"
    assert list(tmp_path.iterdir()) == []


def test_probe_that_never_answers_is_killed_in_time(tmp_path: Path) -> None:
    """A target that never opens its QMP socket: the probe gives up at its time limit,
    kills it (and its children) and reports it did not start."""
    code = "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)"
    cmd = shlex.join([sys.executable, "-c", code, "miginspect-hang-probe"])
    t0 = time.monotonic()
    t = probe_qemu(cmd, timeout=3, tmpdir=str(tmp_path))
    assert time.monotonic() - t0 < 20
    assert t.start_error == "QEMU did not open its QMP socket in time"
    time.sleep(0.5)
    assert _leftovers("miginspect-hang-probe") == []
    assert list(tmp_path.iterdir()) == []


@pytest.mark.qemu
def test_probe_real_qemu_learns_and_leaves_nothing(tmp_path: Path) -> None:
    if qemu_missing("qemu10"):
        pytest.skip(qemu_missing("qemu10"))
    user = tmp_path / "user"
    user.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    cmd = shlex.join([
        QEMU10_BIN, "-machine", "pc", "-accel", "tcg", "-m", "96", "-smp", "2,maxcpus=3",
        "-nic", "none", "-cpu", "qemu64,+smep", "-daemonize", "-incoming", "defer",
        "-pidfile", str(user / "pid"), "-qmp", f"unix:{user / 'qmp'},server=on,wait=off",
        "-chardev", f"file,id=c0,path={user / 'serial.log'}", "-serial", "chardev:c0",
        "-monitor", "stdio", "-D", str(user / "log")])
    t = probe_qemu(cmd, tmpdir=str(work))
    assert t.start_error is None, t.stderr
    assert t.qemu_version.startswith("10.") and t.arch == "x86_64"
    assert t.machine_type.startswith("pc-i440fx-") and t.machines[t.machine_type] == "pc"
    assert next(b for b in t.blocks if b.name == "pc.ram").used_length == 96 << 20
    assert (t.cpu.count, t.cpu.possible) == (2, 3)
    assert t.cpu.model == "qemu64-x86_64-cpu"
    assert t.cpu.features["smep"] is True and t.cpu.features["la57"] is False
    assert ("cpu", 1) in t.layouts and any(s.idstr == "serial" for s in t.sections)
    assert t.vmsds and "piix4_pm" in t.vmsds
    assert list(user.iterdir()) == [] and list(work.iterdir()) == []
    assert _leftovers(str(work)) == []


@pytest.mark.qemu
def test_unsupported_machine_type_names_what_the_binary_has() -> None:
    pair = PAIRS.get("nics-on-7.2")
    if pair is None or qemu_missing("qemu72"):
        pytest.skip(qemu_missing("qemu72") or "no nics-on-7.2 pair")
    rep = check_file(str(source_path(pair["source"])),
                     target_qemu=shlex.join(prefix("qemu72") + pair["args"]))
    c = jsonable(rep.target)["prediction"]["causes"][0]
    assert c["code"] == "start" and "unsupported machine type" in c["summary"]
    assert rep.target.start_error == "unsupported machine type"


@pytest.mark.qemu
def test_machine_version_fix_says_the_older_qemu_cannot() -> None:
    pair = PAIRS.get("pc-on-7.2")
    if pair is None or qemu_missing("qemu72"):
        pytest.skip(qemu_missing("qemu72") or "no pc-on-7.2 pair")
    rep = check_file(str(source_path(pair["source"])),
                     target_qemu=shlex.join(prefix("qemu72") + pair["args"]))
    c = jsonable(rep.target)["prediction"]["causes"][0]
    assert c["code"] == "machine-version"
    assert "`pc` is pc-i440fx-7.2 on QEMU 7.2" in c["summary"]
    assert "does not have pc-i440fx-10.0" in c["fix"] and "-machine pc-i440fx-7.2" in c["fix"]
