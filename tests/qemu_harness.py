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


__all__ = ["QemuVM", "parse_info_ramblock", "os"]
