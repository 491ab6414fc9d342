"""A small QMP harness for tests that run real QEMU (BIOS-only guests, seconds each)."""

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


class QemuVM:
    """A QEMU 10 process with a QMP socket; `-S` (paused) unless told otherwise."""

    def __init__(self, *extra: str, mem_mib: int = 64, machine: str = "pc",
                 binary: str = "qemu-system-x86_64", paused: bool = True) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="miginspect-qemu-"))
        self.sock = self.dir / "qmp.sock"
        argv = [shutil.which(binary) or binary, "-machine", machine, "-accel", "tcg",
                "-m", str(mem_mib), "-display", "none", "-nic", "none", "-no-reboot",
                "-qmp", f"unix:{self.sock},server=on,wait=off", *extra]
        if paused:
            argv.append("-S")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(self.dir / "stderr", "wb"))
        deadline = time.monotonic() + 30
        while not self.sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"QEMU did not start: {self.stderr()}")
            time.sleep(0.05)
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(str(self.sock))
        self.f = self.s.makefile("rw")
        json.loads(self.f.readline())  # greeting
        self.cmd("qmp_capabilities")

    def stderr(self) -> str:
        try:
            return (self.dir / "stderr").read_text(errors="replace")
        except OSError:
            return ""

    def cmd(self, name: str, **args: Any) -> Any:
        self.f.write(json.dumps({"execute": name, "arguments": args}) + "\n")
        self.f.flush()
        while True:
            line = self.f.readline()
            if not line:
                raise RuntimeError(f"QMP closed: {self.stderr()}")
            r = json.loads(line)
            if "return" in r:
                return r["return"]
            if "error" in r:
                raise RuntimeError(f"{name}: {r['error'].get('desc')}")

    def wait_migration(self, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            q = self.cmd("query-migrate")
            if q.get("status") in ("completed", "failed", "cancelled"):
                return q
            if time.monotonic() > deadline:
                raise TimeoutError(f"migration still {q.get('status')}")
            time.sleep(0.05)

    def save(self, path: Path, caps: dict[str, bool] | None = None) -> dict:
        if caps:
            self.cmd("migrate-set-capabilities", capabilities=[
                {"capability": k, "state": v} for k, v in caps.items()])
        self.cmd("migrate", uri=f"file:{path}")
        return self.wait_migration()

    def hmp(self, line: str) -> str:
        return self.cmd("human-monitor-command", **{"command-line": line})

    def close(self) -> None:
        try:
            self.cmd("quit")
        except (RuntimeError, OSError, ValueError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
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


__all__ = ["QemuVM", "parse_info_ramblock", "load_and_pmemsave", "sample_qemu_available"]


QEMU72_ROOT = Path(os.environ.get("MIGINSPECT_LAB", "/opt/miginspect-lab")) / "qemu72"


def sample_qemu_available(meta: dict) -> bool:
    """Can the QEMU that wrote this sample be run here?"""
    argv0 = meta["qemu"]["argv"][0]
    if meta["qemu"].get("label") == "qemu72":
        return (QEMU72_ROOT / "usr/bin/qemu-system-x86_64").exists()
    return shutil.which(Path(argv0).name) is not None


def load_and_pmemsave(meta: dict, capture: Path, caps: dict[str, bool] | None = None,
                      timeout: float = 300) -> bytes:
    """Start the QEMU that wrote `meta`'s sample with the same command line, paused with
    `-incoming defer`, load `capture` into it and return its guest-physical memory
    (pmemsave), i.e. exactly what QEMU restores from the file."""
    is72 = meta["qemu"].get("label") == "qemu72"
    work = Path(tempfile.mkdtemp(prefix="miginspect-load-"))
    sock = work / "qmp.sock"
    argv = list(meta["qemu"]["argv"])
    if is72:
        argv[0] = str(QEMU72_ROOT / "usr/bin/qemu-system-x86_64")
    else:
        argv[0] = shutil.which(Path(argv[0]).name) or argv[0]
    # The guest kernel/initrd are not needed to load a state (and are not on a fresh
    # machine): drop them; the RAMBlocks and devices do not depend on them.
    for opt in ("-kernel", "-initrd", "-append"):
        if opt in argv:
            i = argv.index(opt)
            del argv[i : i + 2]
    argv[argv.index("-qmp") + 1] = f"unix:{sock},server=on,wait=off"
    if "-serial" in argv:
        argv[argv.index("-serial") + 1] = f"file:{work / 'serial.log'}"
    env = dict(os.environ)
    if is72:
        env["QEMU_MODULE_DIR"] = str(QEMU72_ROOT / "usr/lib/x86_64-linux-gnu/qemu")
    proc = subprocess.Popen(argv + ["-S", "-incoming", "defer"], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=open(work / "stderr", "wb"))
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((work / "stderr").read_text(errors="replace"))
            time.sleep(0.05)
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(sock))
        f = s.makefile("rw")
        json.loads(f.readline())

        def cmd(name: str, **args: Any) -> Any:
            f.write(json.dumps({"execute": name, "arguments": args}) + "\n")
            f.flush()
            while True:
                r = json.loads(f.readline())
                if "return" in r:
                    return r["return"]
                if "error" in r:
                    raise RuntimeError(f"{name}: {r['error'].get('desc')}")

        cmd("qmp_capabilities")
        if caps:
            cmd("migrate-set-capabilities",
                capabilities=[{"capability": k, "state": v} for k, v in caps.items()])
        uri = f"exec:cat {capture}" if is72 else f"file:{capture}"
        cmd("migrate-incoming", uri=uri)
        deadline = time.monotonic() + timeout
        while True:
            q = cmd("query-migrate")
            if q.get("status") in ("completed", "failed"):
                break
            if time.monotonic() > deadline:
                raise TimeoutError("incoming migration did not finish")
            time.sleep(0.1)
        if q.get("status") != "completed":
            raise RuntimeError(f"QEMU refused the file: {q}")
        size = meta["pmemsave"]["size"]
        dump = work / "mem"
        cmd("pmemsave", val=0, size=size, filename=str(dump))
        data = dump.read_bytes()
        try:
            cmd("quit")
        except (RuntimeError, OSError, ValueError):
            pass
        return data
    finally:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)
