#!/usr/bin/env python3
"""Real libvirt save images (`virsh save` / `managedsave`) with libvirt's own figures.

Starts virtlogd and libvirtd by hand with a private configuration, boots the sample guest
of samples/generate.py (same kernel, initramfs and workload) as a transient libvirt domain
(type 'qemu' = TCG, direct kernel boot, no disk, no NIC, serial to a file), waits for its
ready marker and saves it in every libvirt save image format. Every image is restored
(`virsh restore --paused`) before the next one is made, and the restored guest's memory is
dumped (QMP `pmemsave`) and digested, so each image comes with the RAM that QEMU itself
loaded from it. Per image NAME, in the output folder:

  NAME.img.zst   zstd of the image (raw and sparse formats, the incomplete Part image;
                 a sparse image loses its holes in this copy, its content is identical)
  NAME.img       the image as libvirt wrote it (gzip, bzip2, xz, lzop, zstd formats)
  NAME.json      libvirt/QEMU versions, the virsh command and its output,
                 `virsh save-image-dumpxml`, the header fields the command implies, the
                 header fields as read back, sizes, sha256, libvirt's job-completed
                 statistics, restore results, pmemsave digests
  NAME.pmem-pages.bin.zst   per-page blake2b-64 digests of a pmemsave (conventions of
                 samples/generate.py); for `save-raw-paused` (taken right before the save)

Run as root on the lab machine (bash samples/install-lab.sh first). Python 3 stdlib only,
plus the `zstd` command; the guest initramfs is built by samples/generate.py's
build_guest(), imported from there. Usage:

  python3 samples/libvirt/make-images.py            # everything into samples/libvirt/
  python3 samples/libvirt/make-images.py --list
  python3 samples/libvirt/make-images.py --only save-xz --only part   # (part = Part image)
  python3 samples/libvirt/make-images.py --outdir /tmp/lv --keep-work
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLES = HERE.parent
URI = "qemu:///system"
DOM = "miginspect-lv"             # the 128 MiB domain (name ends up in every image's XML)
DOM_PART = "miginspect-lv-part"   # the 1 GiB domain used for the incomplete image
UUIDS = {DOM: "6d696769-6e73-7065-6374-6c6962766972",
         DOM_PART: "6d696769-6e73-7065-6374-706172740000"}
QEMU_BIN = "/usr/bin/qemu-system-x86_64"
PAGE = 4096
VGA_LO, VGA_HI = 0xA0000, 0xBFFFF        # inclusive; zeroed for sha256_vga_zeroed
# magic, version, data_len, was_running, format, cookieOffset, unused[14] (host order; x86: LE)
LIBVIRT_HEADER = struct.Struct("<16sIIIII56s")
FORMAT_NUMBERS = {"raw": 0, "gzip": 1, "bzip2": 2, "xz": 3, "lzop": 4, "zstd": 5, "sparse": 6}
COMPRESSED = ("gzip", "bzip2", "xz", "lzop", "zstd")
PRIVATE_QEMU_CONF = """# written by samples/libvirt/make-images.py (settings: docs/qemu-lab.md)
user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
remember_owner = 0
"""
SYSTEM_QEMU_CONF = Path("/etc/libvirt/qemu.conf")
MANAGED_SAVE_DIR = Path("/var/lib/libvirt/qemu/save")
LIBVIRT_RUN = Path("/run/libvirt")

# name -> (description); order = order of production
IMAGES = {
    "save-raw-paused": "virsh suspend, then `virsh save --image-format raw`: was_running 0. "
                       "A pmemsave of the paused guest was taken right before the save.",
    "save-gzip": "running guest, `virsh save --image-format gzip` (QEMU stream piped through gzip)",
    "save-bzip2": "running guest, `virsh save --image-format bzip2`",
    "save-xz": "running guest, `virsh save --image-format xz` (libvirt runs xz -3)",
    "save-lzop": "running guest, `virsh save --image-format lzop`",
    "save-zstd": "running guest, `virsh save --image-format zstd`",
    "save-sparse": "running guest, `virsh save --image-format sparse`: QEMU mapped-ram written "
                   "into the same file after libvirt's header (absolute offsets)",
    "save-sparse-parallel4": "running guest, `virsh save --image-format sparse "
                             "--parallel-channels 4` (mapped-ram + multifd, 4 channels)",
    "managedsave": "running guest made persistent with `virsh define`, then `virsh managedsave` "
                   "(format from qemu.conf save_image_format, default raw); copied from "
                   "/var/lib/libvirt/qemu/save/",
    "part-raw-1g": "incomplete image: `virsh save --image-format raw` of a 1 GiB guest; QEMU "
                   "frozen (SIGSTOP) mid-save, libvirtd killed (SIGKILL), then QEMU killed, so "
                   "the header keeps the LibvirtQemudPart magic and the QEMU stream is cut",
}


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def run(argv, check=False, timeout=900, quiet=False) -> dict:
    t0 = time.time()
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=timeout)
    res = {"argv": [str(a) for a in argv], "rc": p.returncode, "stdout": p.stdout,
           "stderr": p.stderr, "seconds": round(time.time() - t0, 2)}
    if not quiet:
        log(f"  $ {' '.join(res['argv'])} -> rc {p.returncode}"
            + (f": {p.stderr.strip()}" if p.returncode and p.stderr.strip() else ""))
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(res['argv'])} failed ({p.returncode}): {p.stderr.strip()}")
    return res


def virsh(*args, check=False, timeout=900, quiet=False) -> dict:
    return run(["virsh", "-c", URI, *args], check=check, timeout=timeout, quiet=quiet)


def cmdline(res: dict) -> str:
    return " ".join(res["argv"])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def holders(path: Path) -> list:
    """Processes that have `path` open: [{pid, comm, fd}]."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                        out.append({"pid": int(pid), "fd": int(fd), "comm": Path(
                            f"/proc/{pid}/comm").read_text().strip()})
                except OSError:
                    continue
        except OSError:
            continue
    return out


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)


# --------------------------------------------------------------------------------------
# daemons


class Daemons:
    """virtlogd + libvirtd started by hand; stopped by PID.

    libvirtd reads /etc/libvirt/qemu.conf (fixed path for the privileged daemon). To leave
    the system file alone it is started inside a private mount namespace where our
    qemu.conf is bind-mounted over that path. If that is impossible the system file is
    backed up, replaced and restored at stop()."""

    def __init__(self, work: Path):
        self.work = work
        self.conf = work / "conf"
        self.conf.mkdir(parents=True, exist_ok=True)
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.conf / "qemu.conf").write_text(PRIVATE_QEMU_CONF)
        (self.conf / "libvirtd.conf").write_text(
            f'log_outputs = "3:file:{self.logs}/libvirtd.log"\n')
        (self.conf / "virtlogd.conf").write_text(
            f'log_outputs = "3:file:{self.logs}/virtlogd.log"\n')
        self.virtlogd_pidfile = work / "virtlogd.pid"
        self.libvirtd_pidfile = work / "libvirtd.pid"
        self.virtlogd_pid = None
        self.libvirtd_pid = None
        self.conf_backup = None
        self.config_method = None
        self.libvirtd_starts = 0

    @staticmethod
    def socket_answers(name: str) -> bool:
        import socket
        path = LIBVIRT_RUN / name
        if not path.exists():
            return False
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False
        finally:
            s.close()

    def start(self):
        if self.socket_answers("libvirt-sock"):
            raise RuntimeError("a libvirtd is already listening on /run/libvirt/libvirt-sock; "
                               "stop it first (this script needs its own configuration)")
        if self.socket_answers("virtlogd-sock"):
            raise RuntimeError("a virtlogd is already running; stop it first")
        run(["virtlogd", "-d", "--config", self.conf / "virtlogd.conf",
             "--pid-file", self.virtlogd_pidfile], check=True)
        self.virtlogd_pid = self._read_pid(self.virtlogd_pidfile)
        log(f"virtlogd pid {self.virtlogd_pid}")
        self.start_libvirtd()

    @staticmethod
    def _read_pid(path: Path, timeout=30) -> int:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                txt = path.read_text().strip()
                if txt:
                    return int(txt)
            except (FileNotFoundError, ValueError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"no pid in {path}")

    def start_libvirtd(self):
        self.libvirtd_pidfile.unlink(missing_ok=True)
        daemon = ["libvirtd", "-d", "--config", str(self.conf / "libvirtd.conf"),
                  "--pid-file", str(self.libvirtd_pidfile)]
        started = False
        if self.config_method in (None, "private mount namespace") and shutil.which("unshare"):
            script = 'mount --bind "$0" /etc/libvirt/qemu.conf && exec "$@"'
            r = run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                     str(self.conf / "qemu.conf"), *daemon])
            if r["rc"] == 0:
                started = True
                self.config_method = "private mount namespace"
            elif self.config_method is not None:
                raise RuntimeError(f"libvirtd restart failed: {r['stderr']}")
        if not started:
            if self.conf_backup is None:
                self.conf_backup = self.work / "qemu.conf.system-backup"
                shutil.copy2(SYSTEM_QEMU_CONF, self.conf_backup)
                shutil.copy2(self.conf / "qemu.conf", SYSTEM_QEMU_CONF)
                log(f"replaced {SYSTEM_QEMU_CONF} (backup {self.conf_backup}; restored at stop)")
            self.config_method = "system qemu.conf replaced, restored afterwards"
            run(daemon, check=True)
        self.libvirtd_pid = self._read_pid(self.libvirtd_pidfile)
        self.libvirtd_starts += 1
        deadline = time.time() + 60
        while virsh("version", quiet=True)["rc"] != 0:
            if time.time() > deadline or not pid_alive(self.libvirtd_pid):
                raise RuntimeError(f"libvirtd did not come up; see {self.logs}/libvirtd.log")
            time.sleep(0.2)
        log(f"libvirtd pid {self.libvirtd_pid} ({self.config_method})")

    def kill_libvirtd(self, sig=signal.SIGKILL):
        os.kill(self.libvirtd_pid, sig)
        if not wait_gone(self.libvirtd_pid, 30):
            raise RuntimeError("libvirtd did not die")

    def stop(self):
        for attr in ("libvirtd_pid", "virtlogd_pid"):
            pid = getattr(self, attr)
            if pid and pid_alive(pid):
                os.kill(pid, signal.SIGTERM)
                if not wait_gone(pid, 30):
                    os.kill(pid, signal.SIGKILL)
                    wait_gone(pid, 10)
                log(f"stopped {attr[:-4]} pid {pid}")
        if self.conf_backup is not None:
            shutil.copy2(self.conf_backup, SYSTEM_QEMU_CONF)
            log(f"restored {SYSTEM_QEMU_CONF}")
            self.conf_backup = None


class JobEvents:
    """`virsh event --event job-completed --loop`: libvirt's statistics of each save job."""

    RE = re.compile(r"event '(?P<ev>[^']+)' for domain '(?P<dom>[^']+)'")

    def __init__(self):
        argv = ["virsh", "-c", URI, "event", "--event", "job-completed", "--loop", "--timestamp"]
        if shutil.which("stdbuf"):
            argv = ["stdbuf", "-oL", *argv]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        self.events = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._reader, daemon=True)
        self.thread.start()
        time.sleep(1.0)  # let virsh register the callback

    def _reader(self):
        cur = None
        for line in self.proc.stdout:
            m = self.RE.search(line)
            if m:
                cur = {"event": m.group("ev"), "domain": m.group("dom"),
                       "timestamp": line[:m.start()].rstrip(": ").strip(), "stats": {}}
                with self.lock:
                    self.events.append(cur)
            elif cur is not None and line.startswith("\t") and ":" in line:
                k, v = line.strip().split(":", 1)
                v = v.strip()
                cur["stats"][k] = int(v) if re.fullmatch(r"-?\d+", v) else v

    def mark(self) -> int:
        with self.lock:
            return len(self.events)

    def wait(self, domain: str, since: int, timeout=15.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                for ev in self.events[since:]:
                    if ev["domain"] == domain:
                        time.sleep(0.3)  # let the reader finish the block
                        return ev
            time.sleep(0.1)
        return None

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# --------------------------------------------------------------------------------------
# guest


def load_generate():
    path = SAMPLES / "generate.py"
    sys.dont_write_bytecode = True  # leave no __pycache__ in the other generator's folder
    spec = importlib.util.spec_from_file_location("miginspect_samples_generate", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def guest_config(args) -> dict:
    """Kernel, initramfs and workload of samples/generate.py (imported, not copied)."""
    gen = load_generate()
    guest = gen.build_guest()
    kernel = args.kernel or guest["kernel"]
    return {
        "source": "samples/generate.py build_guest()",
        "kernel": str(kernel),
        "kernel_sha256": sha256_file(Path(kernel)),
        "initrd": guest["initrd"],
        "initrd_sha256": guest["initrd_sha256"],
        "fill_c_sha256": guest.get("fill_c_sha256"),
        "busybox_sha256": guest.get("busybox_sha256"),
        "fill_mib": getattr(gen, "FILL_MIB", 24),
        "mem_mib": getattr(gen, "GUEST_MEM_MIB", 128),
        "ready_marker": getattr(gen, "SERIAL_READY", "MIGINSPECT-READY"),
        "pattern": "samples/guest/fill.c: 256 x {u32 0x4D494731, u32 page index, u32 "
                   "generation, u32 index*0x9E3779B1^gen^0xA5A5A5A5} per 4 KiB page, LE",
    }


def kernel_cmdline(fill_mib: int, reserve_mib: int) -> str:
    """Same options as samples/generate.py's VM (idle guest: no working set)."""
    return ("console=ttyS0 rdinit=/init quiet nokaslr init_on_free=1 panic=-1 "
            f"mig_fill={fill_mib} mig_ws=0 mig_reserve={reserve_mib} mig_wsdelay=0")


def domain_xml(name: str, mem_mib: int, guest: dict, cmdline_: str, serial: Path) -> str:
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <uuid>{UUIDS[name]}</uuid>
  <memory unit='MiB'>{mem_mib}</memory>
  <currentMemory unit='MiB'>{mem_mib}</currentMemory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{guest['kernel']}</kernel>
    <initrd>{guest['initrd']}</initrd>
    <cmdline>{cmdline_}</cmdline>
  </os>
  <features><acpi/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{QEMU_BIN}</emulator>
    <controller type='usb' model='none'/>
    <serial type='file'>
      <source path='{serial}'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def wait_serial(serial: Path, marker: str, timeout=600, domain=None) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            for line in serial.read_text(errors="replace").splitlines():
                if marker in line:
                    return line[line.index(marker):].strip()
        except FileNotFoundError:
            pass
        if domain and virsh("domstate", domain, quiet=True)["stdout"].strip() not in (
                "running", "paused"):
            raise RuntimeError(f"domain {domain} stopped while waiting for {marker}")
        time.sleep(0.5)
    raise TimeoutError(f"no {marker} in {serial} after {timeout}s")


def domstate(name: str) -> str:
    return virsh("domstate", name, quiet=True)["stdout"].strip()


def qemu_pid(name: str) -> int:
    return int((LIBVIRT_RUN / "qemu" / f"{name}.pid").read_text().strip())


def info_ramblock(name: str) -> dict:
    """HMP `info ramblock` of the domain's QEMU, raw and parsed."""
    r = virsh("qemu-monitor-command", name, "--hmp", "info ramblock", quiet=True)
    units = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
    blocks = []
    for line in r["stdout"].splitlines():
        m = re.match(r"\s*(\S+)\s+(\d+) (B|KiB|MiB|GiB)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)"
                     r"\s+0x([0-9a-f]+)", line)
        if m:
            blocks.append({"name": m.group(1), "page_size": int(m.group(2)) * units[m.group(3)],
                           "offset": int(m.group(4), 16), "used_length": int(m.group(5), 16),
                           "max_length": int(m.group(6), 16)})
    return {"raw": r["stdout"], "parsed": blocks}


def pmemsave(name: str, size: int, dump: Path, pages_out: Path | None) -> dict:
    """QMP pmemsave through libvirt, then digests (samples/generate.py conventions plus the
    VGA-window-zeroed sha256)."""
    dump.unlink(missing_ok=True)
    qmp = json.dumps({"execute": "pmemsave",
                      "arguments": {"val": 0, "size": size, "filename": str(dump)}})
    r = virsh("qemu-monitor-command", name, qmp, quiet=True)
    if r["rc"] != 0 or '"return"' not in r["stdout"]:
        raise RuntimeError(f"pmemsave failed: {r['stdout']} {r['stderr']}")
    for _ in range(100):
        if dump.exists() and dump.stat().st_size == size:
            break
        time.sleep(0.1)
    h, hv, hm = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
    pages = bytearray()
    nonzero = 0
    zpage = bytes(PAGE)

    def masked(chunk, off, lo, hi):
        a, b = max(lo, off), min(hi + 1, off + len(chunk))
        if a >= b:
            return chunk
        c = bytearray(chunk)
        c[a - off:b - off] = bytes(b - a)
        return c

    off = 0
    with open(dump, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            hv.update(masked(chunk, off, VGA_LO, VGA_HI))
            hm.update(masked(chunk, off, 0xA0000, 0xFFFFF))
            mv = memoryview(chunk)
            for i in range(0, len(chunk), PAGE):
                p = mv[i:i + PAGE]
                pages += hashlib.blake2b(p, digest_size=8).digest()
                if p != zpage:
                    nonzero += 1
            off += len(chunk)
    dump.unlink()
    res = {
        "command": f"virsh -c {URI} qemu-monitor-command {name} '{qmp}'",
        "size": size,
        "sha256": h.hexdigest(),
        "sha256_vga_zeroed": hv.hexdigest(),
        "vga_zeroed_range": [VGA_LO, VGA_HI],
        "sha256_masked": hm.hexdigest(),
        "masked_range": [0xA0000, 0xFFFFF],
        "pages": size // PAGE,
        "nonzero_pages": nonzero,
        "pages_raw_sha256": hashlib.sha256(pages).hexdigest(),
        "pages_file": None,
    }
    if pages_out is not None:
        raw = pages_out.with_suffix("")  # NAME.pmem-pages.bin
        raw.write_bytes(bytes(pages))
        run(["zstd", "-q", "-19", "-f", "--rm", raw, "-o", pages_out], check=True, quiet=True)
        os.chmod(pages_out, 0o644)
        res["pages_file"] = pages_out.name
        res["pages_hash"] = ("blake2b(page, digest_size=8), 8 raw bytes per 4096-byte page of "
                             "the unmasked dump, concatenated in page order, zstd-compressed")
    return res


# --------------------------------------------------------------------------------------
# images


def read_header(path: Path) -> dict:
    with open(path, "rb") as f:
        head = f.read(LIBVIRT_HEADER.size)
        magic, version, data_len, was_running, fmt, cookie_off, unused = \
            LIBVIRT_HEADER.unpack(head)
        body = f.read(data_len)
    xml_len = cookie_off if cookie_off else data_len
    xml = body[:xml_len]
    res = {
        "magic": magic.decode("latin-1"), "version": version, "data_len": data_len,
        "was_running": was_running, "format": fmt, "cookieOffset": cookie_off,
        "unused_all_zero": unused == bytes(56),
        "xml_length_incl_nul": xml.index(b"\0") + 1 if b"\0" in xml else None,
        "qemu_data_offset": LIBVIRT_HEADER.size + data_len,
    }
    if cookie_off:
        cookie = body[cookie_off:]
        end = cookie.find(b"\0")
        res["cookie_length_incl_nul"] = end + 1
        res["cookie"] = cookie[:end].decode()
        used = cookie_off + end + 1
    else:
        used = res["xml_length_incl_nul"] or 0
    res["zero_padding"] = data_len - used
    res["padding_all_zero"] = body[used:] == bytes(data_len - used)
    with open(path, "rb") as f:
        f.seek(res["qemu_data_offset"])
        res["qemu_data_first_bytes"] = f.read(16).hex()
    return res


def file_record(path: Path) -> dict:
    st = path.stat()
    return {"apparent_size": st.st_size, "allocated_size": st.st_blocks * 512,
            "sha256": sha256_file(path)}


class Run:
    """State shared by the steps: daemons, event listener, guest, output bookkeeping."""

    def __init__(self, args, work: Path):
        self.args = args
        self.work = work
        self.img_dir = work / "images"
        self.img_dir.mkdir(parents=True, exist_ok=True)
        self.outdir = args.outdir.resolve()
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.daemons = Daemons(work)
        self.events = None
        self.guest = None
        self.versions = None
        self.workload = None
        self.serial = None
        self.written = []

    def want(self, name):
        return not self.args.only or name in self.args.only

    def collect_versions(self):
        self.versions = {
            "virsh --version": run(["virsh", "--version"], quiet=True)["stdout"].strip(),
            "libvirtd --version": run(["libvirtd", "--version"], quiet=True)["stdout"].strip(),
            "virsh version": virsh("version", quiet=True)["stdout"].strip(),
            "qemu --version": run([QEMU_BIN, "--version"], quiet=True)["stdout"].splitlines()[0],
            "daemon_config": self.daemons.config_method,
            "qemu.conf": PRIVATE_QEMU_CONF,
        }

    # -- domain life cycle
    def create(self, name: str, mem_mib: int, fill_mib: int, reserve_mib: int) -> str:
        self.serial = self.work / f"{name}.serial.log"
        self.serial.unlink(missing_ok=True)
        kcmd = kernel_cmdline(fill_mib, reserve_mib)
        xml = domain_xml(name, mem_mib, self.guest, kcmd, self.serial)
        xml_path = self.work / f"{name}.xml"
        xml_path.write_text(xml)
        virsh("create", xml_path, check=True)
        ready = wait_serial(self.serial, self.guest["ready_marker"], domain=name)
        log(f"  guest ready: {ready}")
        self.workload = {"domain": name, "mem_mib": mem_mib, "fill_mib": fill_mib,
                         "zero_reserve_mib": reserve_mib, "kernel_cmdline": kcmd,
                         "domain_xml_given": xml,
                         "serial_ready_line": ready}
        return xml

    def restore(self, img: Path, parallel: int | None = None, name=DOM,
                pmem: bool = True) -> dict:
        args = ["restore", str(img), "--paused"]
        if parallel:
            args += ["--parallel-channels", str(parallel)]
        r = virsh(*args)
        res = {"command": cmdline(r), "rc": r["rc"], "stdout": r["stdout"].strip(),
               "stderr": r["stderr"].strip(), "accepted": r["rc"] == 0}
        if r["rc"] == 0:
            res["state_after"] = domstate(name)
            res["info_ramblock"] = info_ramblock(name)
            if pmem:
                res["pmemsave_after_restore"] = pmemsave(
                    name, self.guest["mem_mib"] << 20, self.work / "restore.pmem", None)
        return res

    # -- one image
    def record(self, name: str, img: Path, save: dict, expected: dict, event, extra=None,
               restores=None, store_compressed: bool | None = None,
               expect_restore: bool = True) -> dict:
        fmt = expected["format_name"]
        if store_compressed is None:
            store_compressed = fmt not in COMPRESSED
        dumpxml = virsh("save-image-dumpxml", img)
        rec = {
            "name": name,
            "description": IMAGES[name],
            "generated_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "generator": "samples/libvirt/make-images.py",
            "versions": self.versions,
            "guest": dict(self.guest, **self.workload),
            "command": cmdline(save),
            "command_result": {k: save[k] for k in ("rc", "stdout", "stderr", "seconds")},
            "image_path_at_save": str(img),
            "expected_header": expected,
            "header_read": read_header(img),
            "image": file_record(img),
            "save_image_dumpxml": {"command": cmdline(dumpxml), "rc": dumpxml["rc"],
                                   "stdout": dumpxml["stdout"], "stderr": dumpxml["stderr"]},
            "job_completed_event": event,
            "restore_expected_to_be_accepted": expect_restore,
            "restore": restores or [],
        }
        hr = rec["header_read"]
        rec["checks"] = {
            "header_matches_expected": all(hr.get(k) == v for k, v in expected.items()
                                           if k in hr),
            "restore_as_expected": bool(restores) and all(
                r["accepted"] == expect_restore for r in restores),
        }
        if extra:
            rec.update(extra)
        if store_compressed:
            dst = self.outdir / f"{name}.img.zst"
            run(["zstd", "-q", "-19", "--long=27", "-T2", "-f", img, "-o", dst],
                check=True, quiet=True)
            rec["stored_as"] = {"file": dst.name, "how": "zstd -19 --long=27 of the image "
                                "(decompresses with plain `zstd -d`; holes of a sparse image "
                                "are not kept, restore them with `zstd -d --sparse`)",
                                "size": dst.stat().st_size, "sha256": sha256_file(dst)}
        else:
            dst = self.outdir / f"{name}.img"
            shutil.copyfile(img, dst)
            rec["stored_as"] = {"file": dst.name, "how": "the image as written by libvirt",
                                "size": dst.stat().st_size, "sha256": sha256_file(dst)}
        os.chmod(dst, 0o644)
        (self.outdir / f"{name}.json").write_text(json.dumps(rec, indent=1) + "\n")
        self.written.append(name)
        for k, v in rec["checks"].items():
            if v is False:
                log(f"  WARNING {name}: check {k} failed")
        log(f"  stored {name}: image {rec['image']['apparent_size']:,} B "
            f"({rec['image']['allocated_size']:,} allocated) -> {dst.name} "
            f"{rec['stored_as']['size']:,} B")
        return rec

    def save(self, name: str, fmt: str, running: bool, parallel: int | None = None):
        img = self.img_dir / f"{name}.img"
        img.unlink(missing_ok=True)
        args = ["save", DOM, str(img), "--image-format", fmt]
        if parallel:
            args += ["--parallel-channels", str(parallel)]
        mark = self.events.mark()
        r = virsh(*args)
        if r["rc"] != 0:
            raise RuntimeError(f"{cmdline(r)}: {r['stderr']}")
        ev = self.events.wait(DOM, mark)
        expected = {"magic": "LibvirtQemudSave", "version": 2, "format": FORMAT_NUMBERS[fmt],
                    "format_name": fmt, "was_running": 1 if running else 0}
        return img, r, expected, ev


def step_boot_series(R: Run):
    names = [n for n in IMAGES if n.startswith("save-") or n == "managedsave"]
    if not any(R.want(n) for n in names):
        return
    log(f"boot {DOM} ({R.guest['mem_mib']} MiB, fill {R.guest['fill_mib']} MiB)")
    R.create(DOM, R.guest["mem_mib"], R.guest["fill_mib"], 12)

    # 1. raw, paused, with a pmemsave right before the save
    if R.want("save-raw-paused"):
        name = "save-raw-paused"
        virsh("suspend", DOM, check=True)
        pm = pmemsave(DOM, R.guest["mem_mib"] << 20, R.work / "before.pmem",
                      R.outdir / f"{name}.pmem-pages.bin.zst")
        img, r, exp, ev = R.save(name, "raw", running=False)
        rs = R.restore(img)
        extra = {"pmemsave_before_save": pm}
        if rs["accepted"]:
            extra["checks_extra"] = {"pmemsave_restored_equals_before_save":
                                     rs["pmemsave_after_restore"]["sha256"] == pm["sha256"]}
        R.record(name, img, r, exp, ev, extra=extra, restores=[rs])
        if rs["accepted"]:
            virsh("resume", DOM, check=True)
        else:
            raise RuntimeError(f"restore of {name} refused; cannot continue the chain")

    # 2. every other format from the running guest; each restore continues the chain
    for fmt in ("gzip", "bzip2", "xz", "lzop", "zstd", "sparse"):
        name = f"save-{fmt}"
        if not R.want(name):
            continue
        img, r, exp, ev = R.save(name, fmt, running=True)
        rs = R.restore(img)
        R.record(name, img, r, exp, ev, restores=[rs])
        if not rs["accepted"]:
            raise RuntimeError(f"restore of {name} refused; cannot continue the chain")
        virsh("resume", DOM, check=True)

    # 3. sparse with 4 parallel channels: restore plainly, then with --parallel-channels 4
    if R.want("save-sparse-parallel4"):
        name = "save-sparse-parallel4"
        img, r, exp, ev = R.save(name, "sparse", running=True, parallel=4)
        rs1 = R.restore(img)
        if rs1["accepted"]:
            virsh("destroy", DOM, check=True)
        rs2 = R.restore(img, parallel=4)
        extra = {}
        if rs1["accepted"] and rs2["accepted"]:
            extra["checks_extra"] = {"plain_and_parallel_restore_load_same_ram":
                                     rs1["pmemsave_after_restore"]["sha256"]
                                     == rs2["pmemsave_after_restore"]["sha256"]}
        R.record(name, img, r, exp, ev, restores=[rs1, rs2], extra=extra)
        if not rs2["accepted"]:
            raise RuntimeError(f"restore of {name} refused; cannot continue the chain")
        virsh("resume", DOM, check=True)

    # 4. managedsave: make the running transient domain persistent, managedsave, start
    if R.want("managedsave"):
        name = "managedsave"
        xml_path = R.work / f"{DOM}.xml"
        virsh("define", xml_path, check=True)
        mark = R.events.mark()
        r = virsh("managedsave", DOM)
        if r["rc"] != 0:
            raise RuntimeError(f"{cmdline(r)}: {r['stderr']}")
        ev = R.events.wait(DOM, mark)
        src = MANAGED_SAVE_DIR / f"{DOM}.save"
        img = R.img_dir / f"{name}.img"
        shutil.copyfile(src, img)
        st = virsh("start", DOM, "--paused")
        rs = {"command": cmdline(st), "rc": st["rc"], "stdout": st["stdout"].strip(),
              "stderr": st["stderr"].strip(), "accepted": st["rc"] == 0,
              "note": "`virsh start` of a domain with a managed save image restores from it"}
        if st["rc"] == 0:
            rs["state_after"] = domstate(DOM)
            rs["managed_save_file_after_start_exists"] = src.exists()
            rs["info_ramblock"] = info_ramblock(DOM)
            rs["pmemsave_after_restore"] = pmemsave(DOM, R.guest["mem_mib"] << 20,
                                                    R.work / "restore.pmem", None)
        expected = {"magic": "LibvirtQemudSave", "version": 2, "format": 0,
                    "format_name": "raw", "was_running": 1}
        R.record(name, img, r, expected, ev, restores=[rs],
                 extra={"managed_save_path": str(src)})
        virsh("destroy", DOM)
        virsh("undefine", DOM, "--managed-save")
    if domstate(DOM) in ("running", "paused"):
        virsh("destroy", DOM)


def step_part(R: Run):
    """Incomplete image: kill libvirtd while QEMU is writing the stream.

    libvirt deletes the file of a failed save, and after the save it rewrites the magic to
    LibvirtQemudSave; a LibvirtQemudPart file only survives when libvirtd dies mid-save.
    virsh save ignores migrate-setspeed (libvirt sets unlimited bandwidth for saves), so
    instead of throttling, QEMU is frozen with SIGSTOP once the stream has passed
    --part-stop-mib, libvirtd is SIGKILLed, then QEMU is SIGKILLed."""
    name = "part-raw-1g"
    if not R.want(name):
        return
    mem = R.args.part_mem_mib
    log(f"boot {DOM_PART} ({mem} MiB, fill {R.args.part_fill_mib} MiB)")
    R.create(DOM_PART, mem, R.args.part_fill_mib, R.args.part_reserve_mib)
    setspeed = virsh("migrate-setspeed", DOM_PART, "--bandwidth", "1")
    getspeed = virsh("migrate-getspeed", DOM_PART)
    img = R.img_dir / f"{name}.img"
    img.unlink(missing_ok=True)
    qpid = qemu_pid(DOM_PART)
    lpid = R.daemons.libvirtd_pid
    argv = ["virsh", "-c", URI, "save", DOM_PART, str(img), "--image-format", "raw"]
    log(f"  $ {' '.join(argv)}  (will be interrupted)")
    t0 = time.time()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    stop_at = None
    size_at_stop = None
    timeline = []
    while True:
        if proc.poll() is not None:
            break
        try:
            size = img.stat().st_size
        except FileNotFoundError:
            size = 0
        if stop_at is None and size >= LIBVIRT_HEADER.size:
            with open(img, "rb") as f:
                data_len = LIBVIRT_HEADER.unpack(f.read(LIBVIRT_HEADER.size))[2]
            if data_len:
                stop_at = LIBVIRT_HEADER.size + data_len + (R.args.part_stop_mib << 20)
        if stop_at is not None and size >= stop_at:
            os.kill(qpid, signal.SIGSTOP)
            size_at_stop = img.stat().st_size
            timeline.append({"t": round(time.time() - t0, 3), "action": f"SIGSTOP qemu {qpid}",
                             "file_size": size_at_stop, "file_open_by": holders(img)})
            os.kill(lpid, signal.SIGKILL)
            wait_gone(lpid, 30)
            timeline.append({"t": round(time.time() - t0, 3),
                             "action": f"SIGKILL libvirtd {lpid}", "file_size": img.stat().st_size})
            os.kill(qpid, signal.SIGKILL)
            wait_gone(qpid, 30)
            timeline.append({"t": round(time.time() - t0, 3), "action": f"SIGKILL qemu {qpid}",
                             "file_size": img.stat().st_size})
            # libvirt_iohelper (the file's writer) drains the pipe, sees EOF and exits
            deadline = time.time() + 30
            while holders(img) and time.time() < deadline:
                time.sleep(0.05)
            timeline.append({"t": round(time.time() - t0, 3),
                             "action": "writers of the file gone", "file_size": img.stat().st_size,
                             "file_open_by": holders(img)})
            break
        time.sleep(0.002)
    out, err = proc.communicate(timeout=120)
    save = {"argv": argv, "rc": proc.returncode, "stdout": out, "stderr": err,
            "seconds": round(time.time() - t0, 2)}
    log(f"  virsh save rc {proc.returncode}: {err.strip()}")
    if size_at_stop is None:
        raise RuntimeError("the save finished before it could be interrupted "
                           f"(file {'exists' if img.exists() else 'deleted'})")
    # libvirtd is gone: restart it (and the event listener) for the oracles
    R.events.close()
    R.daemons.start_libvirtd()
    R.events = JobEvents()
    time.sleep(1.0)
    after_restart = {"domstate": virsh("domstate", DOM_PART)["stdout"].strip() or None,
                     "list_all": virsh("list", "--all")["stdout"]}
    rs = R.restore(img, name=DOM_PART, pmem=False)
    if rs["accepted"]:
        virsh("destroy", DOM_PART)
    expected = {"magic": "LibvirtQemudPart", "version": 2, "format": 0, "format_name": "raw",
                "was_running": 1}
    R.record(name, img, save, expected, None, restores=[rs], store_compressed=True,
             expect_restore=False, extra={
        "interruption": {
            "method": "SIGSTOP qemu, SIGKILL libvirtd, SIGKILL qemu (all by PID) once the file "
                      f"held {R.args.part_stop_mib} MiB of QEMU data after the header. The file "
                      "is written by libvirt_iohelper from a pipe fed by QEMU (1 MiB blocks); "
                      "it keeps writing what is already in the pipe and exits at EOF, so the "
                      "file ends where QEMU's output stopped",
            "timeline": timeline,
            "guest_mem_mib": mem,
            "migrate-setspeed --bandwidth 1 (tried first)": {
                "setspeed": {k: setspeed[k] for k in ("rc", "stderr")},
                "getspeed": getspeed["stdout"].strip(),
                "note": "libvirt sets unlimited bandwidth for the duration of a save, so "
                        "this does not slow virsh save down"},
            "libvirtd_after_restart": after_restart,
        }})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--outdir", type=Path, default=HERE)
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/miginspect-libvirt"),
                    help="scratch folder (emptied first); its paths end up in the domain XML "
                         "of every image, so keep the default for comparable images")
    ap.add_argument("--only", action="append", default=[], help="image name; repeatable")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--keep-work", action="store_true")
    ap.add_argument("--kernel", help="guest kernel (default: the one samples/generate.py uses)")
    ap.add_argument("--part-mem-mib", type=int, default=1024)
    ap.add_argument("--part-fill-mib", type=int, default=64)
    ap.add_argument("--part-reserve-mib", type=int, default=64,
                    help="MemFree left unzeroed by fill (12 MiB, the 128 MiB default, "
                         "deadlocks a 1 GiB guest on memory)")
    ap.add_argument("--part-stop-mib", type=int, default=8,
                    help="freeze QEMU once this much QEMU data follows the libvirt header")
    args = ap.parse_args()
    if args.list:
        for n, d in IMAGES.items():
            print(f"{n}: {d}")
        return
    for n in args.only:
        if n not in IMAGES:
            ap.error(f"unknown image {n!r} (see --list)")
    if os.geteuid() != 0:
        sys.exit("make-images: must run as root (it starts libvirtd)")
    for tool in ("virsh", "libvirtd", "virtlogd", "zstd", QEMU_BIN):
        if not shutil.which(tool):
            sys.exit(f"make-images: {tool} not found; run bash samples/install-lab.sh")

    work = args.workdir
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    R = Run(args, work)
    t0 = time.time()
    R.guest = guest_config(args)
    log(f"guest kernel {R.guest['kernel']}, initrd {R.guest['initrd']}")
    try:
        R.daemons.start()
        R.collect_versions()
        R.events = JobEvents()
        step_boot_series(R)
        step_part(R)
    finally:
        for dom in (DOM, DOM_PART):
            if R.daemons.libvirtd_pid and pid_alive(R.daemons.libvirtd_pid):
                if domstate(dom) in ("running", "paused"):
                    virsh("destroy", dom)
                if virsh("dominfo", dom, quiet=True)["rc"] == 0:
                    virsh("undefine", dom, "--managed-save", quiet=True)
        if R.events:
            R.events.close()
        R.daemons.stop()
        if args.keep_work:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    log(f"done in {time.time() - t0:.0f}s: {', '.join(R.written)}")


if __name__ == "__main__":
    main()
