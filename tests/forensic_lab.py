"""Paused guests for the forensics tests: a Debian kernel booted without a root file system
panics (`VFS: Unable to mount root fs`) and, with `panic=0`, spins there with paging on and
its banner mapped. From that paused state QEMU writes both its own `dump-guest-memory` ELF
core (the oracle) and a migration file (what we read). A few seconds of TCG each.

Also the kernel's own address of `linux_banner`, found with vmlinux-to-elf (Debian's
System.map is a stub that points at the -dbg package, ~850 MB): from the kernel's kallsyms
where it holds data symbols (amd64), else (arm64 has no KALLSYMS_ALL) where the banner the
guest printed lies in the image vmlinux-to-elf lays out at the kernel's link address.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from qemu_harness import QemuVM

LAB = Path(os.environ.get("MIGINSPECT_LAB", "/opt/miginspect-lab"))
CACHE = Path(os.environ.get("MIGINSPECT_SAMPLE_CACHE", "/tmp/miginspect-sample-cache"))
PANIC = "Unable to mount root fs"


@dataclass
class Guest:
    kind: str
    binary: str
    machine: str
    mem_mib: int
    kernel: Path
    console: str
    smp: int = 1
    extra: list[str] = field(default_factory=list)

    def missing(self) -> str | None:
        if shutil.which(self.binary) is None:
            return f"{self.binary} is not installed (bash samples/install-lab.sh)"
        if not self.kernel.exists():
            return f"no guest kernel at {self.kernel} (bash samples/install-lab.sh)"
        return None


GUESTS = {
    # two vCPUs: one NT_PRSTATUS and one QEMU note each
    "pc": Guest("pc", "qemu-system-x86_64", "pc", 512, LAB / "vmlinuz", "ttyS0", smp=2),
    # q35 with 2.75 GiB or more splits RAM at 2 GiB: 768 MiB lie above 4 GiB
    "q35-high": Guest("q35-high", "qemu-system-x86_64", "q35", 2816, LAB / "vmlinuz", "ttyS0"),
    "virt": Guest("virt", "qemu-system-aarch64", "virt", 512, LAB / "arm64" / "vmlinuz",
                  "ttyAMA0", extra=["-cpu", "cortex-a57"]),
}


@dataclass
class PausedState:
    guest: Guest
    capture: Path  # QEMU's migration file of the paused guest
    dump: Path  # QEMU's dump-guest-memory ELF (paging off) of the same state
    console: str  # what the guest printed
    query_migrate: dict

    @property
    def banner(self) -> str:
        """The kernel's banner line as the guest printed it."""
        m = re.search(r"(Linux version [^\r\n]+)", self.console)
        assert m, self.console[:2000]
        return m.group(1)


def make_paused_state(guest: Guest, work: Path, caps: dict | None = None,
                      timeout: float = 240) -> PausedState:
    work.mkdir(parents=True, exist_ok=True)
    log = work / "console.log"
    append = f"console={guest.console} panic=0 nokaslr"
    with QemuVM("-smp", str(guest.smp), "-kernel", str(guest.kernel), "-append", append,
                "-serial", f"file:{log}", *guest.extra, mem_mib=guest.mem_mib,
                machine=guest.machine, binary=guest.binary, paused=False) as vm:
        deadline = time.monotonic() + timeout
        while PANIC not in (log.read_text(errors="replace") if log.exists() else ""):
            if time.monotonic() > deadline or vm.proc.poll() is not None:
                raise RuntimeError(f"{guest.kind}: no panic line within {timeout} s\n"
                                   f"{vm.stderr()}")
            time.sleep(0.5)
        time.sleep(1)  # let the panic path reach its loop
        vm.cmd("stop")
        dump = work / "qemu-dump.elf"
        vm.cmd("dump-guest-memory", paging=False, protocol=f"file:{dump}")
        cap = work / "state.mig"
        q = vm.save(cap, caps)
        if q.get("status") != "completed":
            raise RuntimeError(f"{guest.kind}: migration {q}")
    return PausedState(guest, cap, dump, log.read_text(errors="replace"), q)


# -- the kernel's linux_banner address -------------------------------------------------------
def _run(argv: list[str]) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=600).stdout


def kernel_elf(kernel: Path) -> Path | None:
    """The kernel image as an ELF with its kallsyms (vmlinux-to-elf), cached by digest."""
    tool = shutil.which("vmlinux-to-elf")
    if tool is None:
        return None
    digest = hashlib.sha256(kernel.read_bytes()).hexdigest()[:16]
    CACHE.mkdir(parents=True, exist_ok=True)
    out = CACHE / f"kernel-{digest}.elf"
    if not out.exists():
        tmp = out.with_suffix(f".part{os.getpid()}")
        subprocess.run([tool, str(kernel), str(tmp)], check=True, capture_output=True,
                       timeout=900)
        tmp.rename(out)
    return out


def linux_banner_va(kernel: Path, banner: str) -> int | None:
    """Virtual address of `linux_banner` in the kernel (None without vmlinux-to-elf)."""
    elf = kernel_elf(kernel)
    if elf is None:
        return None
    syms = _run(["readelf", "-sW", str(elf)])
    m = re.search(r"^\s*\d+:\s+([0-9a-f]+)\s+\d+\s+\w+\s+\w+\s+\w+\s+\S+\s+linux_banner$",
                  syms, re.M)
    if m:
        return int(m.group(1), 16)
    # no data symbols: the printed banner's place in the image at its link address
    data = elf.read_bytes()
    want = banner.encode() + b"\n\0"
    hits = [m.start() for m in re.finditer(re.escape(want), data)]
    if len(hits) != 1:
        return None
    return _file_to_va(data, hits[0])


def _file_to_va(elf: bytes, off: int) -> int | None:
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack_from(
            "<IIQQQQ", elf, phoff + i * phentsize)
        if p_type == 1 and p_offset <= off < p_offset + p_filesz:
            return p_vaddr + off - p_offset
    return None


__all__ = ["GUESTS", "Guest", "PausedState", "make_paused_state", "linux_banner_va"]
