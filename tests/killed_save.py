"""Real killed saves of one paused guest, with a complete save of the same guest beside.

The guest never runs: QEMU starts paused (`-S`) with a block of random bytes loaded into
its RAM (`-device loader`), so its memory holds data pages, zero pages and the firmware.
Two ways to kill a save half-way:

* `qemu_killed_save`: QEMU saves the paused guest whole (`migrate file:`), a second QEMU
  loads that file (`-incoming`, still paused: the same guest) and saves it again with
  `max-bandwidth` low; it is SIGKILLed once the file holds `stop_mib` MiB. About a
  second of work.
* `libvirt_killed_save`: libvirt does the same (`virsh create --paused`, `virsh save`,
  `virsh restore --paused`, `virsh save` again). libvirt deletes the file of a failed
  save and rewrites the header's magic when a save succeeds, so a `LibvirtQemudPart`
  image survives only when libvirtd dies mid-save (samples/libvirt/README.md): QEMU is
  frozen (SIGSTOP) once the image holds `stop_mib` MiB of QEMU data, libvirtd is
  SIGKILLed, then QEMU. Uses samples/libvirt/make-images.py's private daemons (root, no
  libvirtd already running); about 20 s.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from conftest import ROOT
from qemu_harness import QemuVM

BLOB_ADDR = 0x1000000  # guest-physical address of the random bytes


@dataclass
class KilledSave:
    full: Path  # the complete save of the paused guest
    killed: Path  # the save of the same paused guest, killed half-way
    how: str


def blob(work: Path, mib: int, seed: int = 15) -> Path:
    import numpy as np

    p = work / "blob.bin"
    np.random.default_rng(seed).integers(0, 256, mib << 20, np.uint8).tofile(p)
    return p


def _wait_size(path: Path, size: int, proc: subprocess.Popen | None, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        n = path.stat().st_size if path.exists() else 0
        if n >= size:
            return n
        if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
            raise RuntimeError(f"{path} stayed at {n} bytes (wanted {size})")
        time.sleep(0.002)


def qemu_killed_save(work: Path, mem_mib: int = 128, blob_mib: int = 24,
                     stop_mib: int = 6) -> KilledSave:
    dev = ["-device", f"loader,file={blob(work, blob_mib)},addr={BLOB_ADDR:#x},force-raw=on"]
    full, killed = work / "full.mig", work / "killed.mig"
    with QemuVM(*dev, mem_mib=mem_mib) as vm:
        q = vm.save(full)
        if q.get("status") != "completed":
            raise RuntimeError(f"complete save: {q}")
    with QemuVM(*dev, "-incoming", "defer", mem_mib=mem_mib) as vm:
        q = vm.load(f"file:{full}")
        if q.get("status") != "completed":
            raise RuntimeError(f"load: {q}")
        vm.cmd("migrate-set-parameters", **{"max-bandwidth": 8 << 20})
        vm.cmd("migrate", uri=f"file:{killed}")
        _wait_size(killed, stop_mib << 20, vm.proc, 60)
        os.kill(vm.proc.pid, signal.SIGKILL)
        vm.proc.wait()
    return KilledSave(full, killed, f"QEMU SIGKILLed at {stop_mib} MiB")


# -- libvirt --------------------------------------------------------------------------------
def _make_images():
    """samples/libvirt/make-images.py as a module (its private daemons and helpers)."""
    path = ROOT / "samples" / "libvirt" / "make-images.py"
    spec = importlib.util.spec_from_file_location("miginspect_make_images", path)
    mod = importlib.util.module_from_spec(spec)
    sys.dont_write_bytecode = True
    spec.loader.exec_module(mod)
    return mod


def libvirt_missing() -> str | None:
    for tool in ("virsh", "libvirtd", "virtlogd", "qemu-system-x86_64"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (bash samples/install-lab.sh)"
    if os.geteuid() != 0:
        return "driving libvirt's system daemon needs root"
    if _make_images().Daemons.socket_answers("libvirt-sock"):
        return "a libvirtd is already running (the test needs its own configuration)"
    return None


DOMAIN = "miginspect-salvage"


def _domain_xml(blob_path: Path, mem_mib: int) -> str:
    return f"""<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{DOMAIN}</name>
  <memory unit='MiB'>{mem_mib}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-device'/>
    <qemu:arg value='loader,file={blob_path},addr={BLOB_ADDR:#x},force-raw=on'/>
  </qemu:commandline>
</domain>
"""


def libvirt_killed_save(work: Path, mem_mib: int = 1024, blob_mib: int = 192,
                        stop_mib: int = 24) -> KilledSave:
    mi = _make_images()
    daemons = mi.Daemons(work / "libvirt")
    xml = work / "domain.xml"
    xml.write_text(_domain_xml(blob(work, blob_mib), mem_mib))
    full, killed = work / "full.img", work / "killed.img"
    qpid = None
    daemons.start()
    try:
        mi.virsh("create", str(xml), "--paused", check=True)
        mi.virsh("save", DOMAIN, str(full), "--image-format", "raw", check=True)
        mi.virsh("restore", str(full), "--paused", check=True)
        qpid = mi.qemu_pid(DOMAIN)
        argv = ["virsh", "-c", mi.URI, "save", DOMAIN, str(killed), "--image-format", "raw"]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        _wait_size(killed, mi.LIBVIRT_HEADER.size, proc, 60)
        with open(killed, "rb") as f:
            data_len = mi.LIBVIRT_HEADER.unpack(f.read(mi.LIBVIRT_HEADER.size))[2]
        _wait_size(killed, mi.LIBVIRT_HEADER.size + data_len + (stop_mib << 20), proc, 60)
        os.kill(qpid, signal.SIGSTOP)
        daemons.kill_libvirtd()
        os.kill(qpid, signal.SIGKILL)
        mi.wait_gone(qpid, 30)
        qpid = None
        proc.wait(timeout=60)
        deadline = time.monotonic() + 30  # libvirt_iohelper drains the pipe and exits
        while mi.holders(killed) and time.monotonic() < deadline:
            time.sleep(0.05)
        daemons.start_libvirtd()  # forgets the dead domain; stopped below
    finally:
        if qpid is not None and mi.pid_alive(qpid):
            os.kill(qpid, signal.SIGKILL)
        daemons.stop()
    return KilledSave(full, killed, f"libvirtd and QEMU SIGKILLed at {stop_mib} MiB")
