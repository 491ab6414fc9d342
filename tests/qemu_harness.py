"""The one QMP client and QEMU launcher for tests that run real QEMU."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

QEMU72_ROOT = Path(os.environ.get("MIGINSPECT_LAB", "/opt/miginspect-lab")) / "qemu72"


class QmpError(RuntimeError):
    """QEMU answered a command with an error."""


class Qmp:
    """A QMP connection to the QEMU process `proc` listening on `sock`."""

    def __init__(self, sock: Path, proc: subprocess.Popen, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.s = socket.socket(socket.AF_UNIX)
            try:
                self.s.connect(str(sock))
                break
            except OSError:
                self.s.close()
                if proc.poll() is not None:
                    raise RuntimeError("QEMU exited before QMP came up") from None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.s.settimeout(120)
        self.f = self.s.makefile("rw")
        json.loads(self.f.readline())  # greeting
        self.cmd("qmp_capabilities")

    def cmd(self, name: str, **args: Any) -> Any:
        """The command's `return` value; QmpError on an error, EOFError when QEMU is gone."""
        self.f.write(json.dumps({"execute": name, "arguments": args}) + "\n")
        self.f.flush()
        while True:
            line = self.f.readline()
            if not line:
                raise EOFError("QEMU closed QMP")
            r = json.loads(line)
            if "return" in r:
                return r["return"]
            if "error" in r:
                raise QmpError(f"{name}: {r['error'].get('desc')}")

    def set_caps(self, caps: dict[str, bool] | None) -> None:
        if caps:
            self.cmd("migrate-set-capabilities",
                     capabilities=[{"capability": k, "state": v} for k, v in caps.items()])

    def wait_migration(self, timeout: float = 300) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            q = self.cmd("query-migrate")
            if q.get("status") in ("completed", "failed", "cancelled"):
                return q
            if time.monotonic() > deadline:
                raise TimeoutError(f"migration still {q.get('status')}")
            time.sleep(0.05)

    def quit(self) -> None:
        try:
            self.cmd("quit")
        except (QmpError, EOFError, OSError, ValueError):
            pass
        self.s.close()


class QemuVM:
    """A QEMU process started with `argv` (plus its QMP socket) and connected."""

    def __init__(self, *extra: str, mem_mib: int = 64, machine: str = "pc",
                 binary: str = "qemu-system-x86_64", paused: bool = True,
                 argv: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="miginspect-qemu-"))
        sock = self.dir / "qmp.sock"
        if argv is None:
            argv = [shutil.which(binary) or binary, "-machine", machine, "-accel", "tcg",
                    "-m", str(mem_mib), "-display", "none", "-nic", "none", "-no-reboot",
                    *extra]
            if paused:
                argv.append("-S")
        argv = [*argv, "-qmp", f"unix:{sock},server=on,wait=off"]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.dir / "stderr", "wb"), env=env)
        try:
            self.qmp = Qmp(sock, self.proc)
        except BaseException:
            self.close()
            raise

    def stderr(self) -> str:
        try:
            return (self.dir / "stderr").read_text(errors="replace")
        except OSError:
            return ""

    def cmd(self, name: str, **args: Any) -> Any:
        return self.qmp.cmd(name, **args)

    def wait_migration(self, timeout: float = 300) -> dict:
        return self.qmp.wait_migration(timeout)

    def save(self, path: Path, caps: dict[str, bool] | None = None) -> dict:
        self.qmp.set_caps(caps)
        self.cmd("migrate", uri=f"file:{path}")
        return self.wait_migration()

    def load(self, uri: str, caps: dict[str, bool] | None = None,
             timeout: float = 300) -> dict:
        """`migrate-incoming` (the VM must run with `-incoming defer`); final query-migrate."""
        self.qmp.set_caps(caps)
        self.cmd("migrate-incoming", uri=uri)
        return self.wait_migration(timeout)

    def hmp(self, line: str) -> str:
        return self.cmd("human-monitor-command", **{"command-line": line})

    def close(self) -> None:
        if hasattr(self, "qmp"):
            self.qmp.quit()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> QemuVM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_info_ramblock(text: str) -> list[tuple[str, int]]:
    """(name, used_length) per row of HMP `info ramblock`."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        hexes = [p for p in parts if p.startswith("0x")]
        if len(hexes) >= 3:  # name, page size ("4 KiB"), offset, used, total[, HVA]
            out.append((parts[0], int(hexes[1], 16)))
    return out


def sample_qemu_available(meta: dict) -> bool:
    """Can the QEMU that wrote this sample be run here?"""
    argv0 = meta["qemu"]["argv"][0]
    if meta["qemu"].get("label") == "qemu72":
        return (QEMU72_ROOT / "usr/bin/qemu-system-x86_64").exists()
    return shutil.which(Path(argv0).name) is not None


def sample_vm_argv(meta: dict) -> tuple[list[str], dict[str, str]]:
    """The command line (without -incoming) and environment of the QEMU that wrote
    `meta`'s sample, ready to load a state into."""
    is72 = meta["qemu"].get("label") == "qemu72"
    argv = list(meta["qemu"]["argv"])
    argv[0] = (str(QEMU72_ROOT / "usr/bin/qemu-system-x86_64") if is72
               else shutil.which(Path(argv[0]).name) or argv[0])
    # The guest kernel/initrd are not needed to load a state (and are not on a fresh
    # machine): drop them; the RAMBlocks and devices do not depend on them. The serial
    # device stays (`-serial none` would drop it and QEMU would refuse the state).
    for opt in ("-kernel", "-initrd", "-append", "-qmp"):
        if opt in argv:
            i = argv.index(opt)
            del argv[i : i + 2]
    if "-serial" in argv:
        argv[argv.index("-serial") + 1] = "null"
    env = dict(os.environ)
    if is72:
        env["QEMU_MODULE_DIR"] = str(QEMU72_ROOT / "usr/lib/x86_64-linux-gnu/qemu")
    return argv, env


def load_into_qemu(meta: dict, capture: Path, caps: dict[str, bool] | None = None,
                   uri_offset: int = 0, timeout: float = 300) -> tuple[bytes, dict]:
    """Start the QEMU that wrote `meta`'s sample with its command line, paused with
    `-incoming defer`, load `capture` and return (its guest-physical memory as pmemsave
    writes it, the final query-migrate): exactly what QEMU restores from the file. The
    guest is never resumed."""
    is72 = meta["qemu"].get("label") == "qemu72"
    argv, env = sample_vm_argv(meta)
    with QemuVM(argv=[*argv, "-S", "-incoming", "defer"], env=env) as vm:
        if is72:
            uri = f"exec:cat {capture}"
        else:
            uri = f"file:{capture}" + (f",offset={uri_offset:#x}" if uri_offset else "")
        q = vm.load(uri, caps, timeout)
        if q.get("status") != "completed":
            raise RuntimeError(f"QEMU refused {capture}: {q} {vm.stderr()}")
        if vm.cmd("query-status")["running"]:
            raise RuntimeError("the loaded guest is running")
        size = meta["pmemsave"]["size"]
        dump = vm.dir / "mem"
        vm.cmd("pmemsave", val=0, size=size, filename=str(dump))
        return dump.read_bytes(), q


def load_and_pmemsave(meta: dict, capture: Path, caps: dict[str, bool] | None = None,
                      timeout: float = 300) -> bytes:
    """Guest-physical memory of `capture` as loaded by the QEMU that wrote it."""
    return load_into_qemu(meta, capture, caps, timeout=timeout)[0]


def try_load(meta: dict, capture: Path, caps: dict[str, bool] | None = None,
             timeout: float = 300) -> tuple[bool, str]:
    """(loaded, QEMU's stderr) for `capture` loaded into the QEMU that wrote `meta`'s
    sample (QEMU exits when an incoming migration fails, so a refusal is read from its
    stderr, not from QMP)."""
    argv, env = sample_vm_argv(meta)
    if meta["qemu"].get("label") == "qemu72":
        uri = f"exec:cat {capture}"
    else:
        uri = f"file:{capture}"
    vm = QemuVM(argv=[*argv, "-S", "-incoming", "defer"], env=env)
    try:
        try:
            loaded = vm.load(uri, caps, timeout).get("status") == "completed"
        except (EOFError, OSError, QmpError):
            loaded = False
        vm.qmp.quit()
        try:
            vm.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            vm.proc.kill()
            vm.proc.wait()
        return loaded, vm.stderr()
    finally:
        vm.close()


__all__ = ["Qmp", "QmpError", "QemuVM", "parse_info_ramblock", "load_into_qemu",
           "load_and_pmemsave", "sample_qemu_available", "sample_vm_argv", "try_load"]
