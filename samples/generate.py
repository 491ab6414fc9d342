#!/usr/bin/env python3
"""Sample generator for miginspect: real QEMU captures plus QEMU's own figures.

Boots a tiny Linux guest (busybox + samples/guest/fill.c in an initramfs) under
QEMU 10 (and QEMU 7.2), makes migration captures through QMP and stores, per
capture NAME in the output folder:

  NAME.mig.zst             zstd of the raw capture (mapped-ram: apparent content)
  NAME.json                manifest: QEMU's figures (query-migrate, info ramblock,
                           query-version, ...), workload, digests
  NAME.pmem-pages.bin.zst  per-4-KiB-page blake2b-64 digests of `pmemsave`

plus damaged variants in damaged/ (NAME.mig.zst + NAME.json with QEMU's own
load error).  See samples/README.md.  Python 3.11 stdlib + `zstandard`.

Usage:
  python3 samples/generate.py                    # everything into samples/
  python3 samples/generate.py --only q10-live-legacy
  python3 samples/generate.py --list
  python3 samples/generate.py --big /var/tmp/mig-big   # large benchmark captures
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gzip
import hashlib
import io
import json
import os
import random
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zstandard

HERE = Path(__file__).resolve().parent
LAB = Path(os.environ.get("MIGINSPECT_LAB", "/opt/miginspect-lab"))
KERNEL = LAB / "tiny-vmlinuz"  # built by samples/guest/build-kernel.sh
BUSYBOX = Path("/bin/busybox")
FILL_C = HERE / "guest" / "fill.c"

PAGE = 4096
MASK_LO, MASK_HI = 0xA0000, 0xFFFFF  # inclusive range zeroed for sha256_masked
SERIAL_READY = "MIGINSPECT-READY"
SERIAL_WS_START = "MIGINSPECT-WS-START"

# Default guest: 128 MiB, 24 MiB of pattern, working set 6 MiB for live captures.
GUEST_MEM_MIB = 128
FILL_MIB = 24
WS_MIB = 6

QEMU10 = {
    "label": "qemu10",
    "binary": "/usr/bin/qemu-system-x86_64",
    "args": [],
    "env": {},
    "file_uri": lambda p: f"file:{p}",
}
QEMU72 = {
    "label": "qemu72",
    "binary": str(LAB / "qemu72/usr/bin/qemu-system-x86_64"),
    "args": ["-L", str(LAB / "qemu72/usr/share/qemu"), "-L", "/usr/share/seabios"],
    "env": {"QEMU_MODULE_DIR": str(LAB / "qemu72/usr/lib/x86_64-linux-gnu/qemu")},
    "file_uri": lambda p: f"exec:cat > {p}",
}

INIT_SCRIPT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
FILL=24; WS=0; RESERVE=5; WSDELAY=0
for x in $(/bin/busybox cat /proc/cmdline); do
  case "$x" in
    mig_fill=*) FILL=${x#mig_fill=} ;;
    mig_ws=*) WS=${x#mig_ws=} ;;
    mig_reserve=*) RESERVE=${x#mig_reserve=} ;;
    mig_wsdelay=*) WSDELAY=${x#mig_wsdelay=} ;;
  esac
done
exec /fill "$FILL" "$WS" "$RESERVE" "$WSDELAY" /bin/sh /bin/busybox /init
"""


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------
# guest image


def _cpio_newc(entries) -> bytes:
    """entries: (name, mode, data_bytes, rdev_major, rdev_minor). Deterministic newc."""
    out = io.BytesIO()
    ino = 1
    for name, mode, data, rmaj, rmin in list(entries) + [("TRAILER!!!", 0, b"", 0, 0)]:
        nb = name.encode() + b"\0"
        hdr = "070701" + "".join(
            f"{v:08X}"
            for v in (ino, mode, 0, 0, 1, 0, len(data), 0, 0, rmaj, rmin, len(nb), 0)
        )
        out.write(hdr.encode() + nb)
        out.write(b"\0" * (-(110 + len(nb)) % 4))
        out.write(data)
        out.write(b"\0" * (-len(data) % 4))
        ino += 1
    out.write(b"\0" * (-out.tell() % 512))
    return out.getvalue()


def build_guest() -> dict:
    """Build (or reuse) the initramfs; cached in $MIGINSPECT_LAB/guest/<key>/."""
    subprocess.run(["bash", str(HERE / "guest" / "build-kernel.sh")], check=True,
                   stdout=subprocess.DEVNULL)
    key_src = FILL_C.read_bytes() + INIT_SCRIPT.encode() + hashlib.sha256(
        BUSYBOX.read_bytes()).digest()
    key = hashlib.sha256(key_src).hexdigest()[:16]
    d = LAB / "guest" / key
    initrd = d / "initramfs.cpio.gz"
    if not initrd.exists():
        d.mkdir(parents=True, exist_ok=True)
        fill_bin = d / "fill"
        subprocess.run(["gcc", "-static", "-O2", "-Wall", "-o", str(fill_bin), str(FILL_C)],
                       check=True)
        subprocess.run(["strip", str(fill_bin)], check=False)
        S_IFDIR, S_IFREG, S_IFCHR, S_IFLNK = 0o040000, 0o100000, 0o020000, 0o120000
        entries = [
            ("bin", S_IFDIR | 0o755, b"", 0, 0),
            ("dev", S_IFDIR | 0o755, b"", 0, 0),
            ("dev/console", S_IFCHR | 0o600, b"", 5, 1),
            ("dev/null", S_IFCHR | 0o666, b"", 1, 3),
            ("proc", S_IFDIR | 0o755, b"", 0, 0),
            ("sys", S_IFDIR | 0o755, b"", 0, 0),
            ("bin/busybox", S_IFREG | 0o755, BUSYBOX.read_bytes(), 0, 0),
            ("bin/sh", S_IFLNK | 0o777, b"busybox", 0, 0),
            ("init", S_IFREG | 0o755, INIT_SCRIPT.encode(), 0, 0),
            ("fill", S_IFREG | 0o755, fill_bin.read_bytes(), 0, 0),
        ]
        tmp = initrd.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=9, mtime=0) as gz:
                gz.write(_cpio_newc(entries))
        tmp.rename(initrd)
        log(f"built guest initramfs {initrd}")
    return {
        "kernel": str(KERNEL),
        "kernel_sha256": sha256_file(KERNEL),
        "kernel_config_fragment": "samples/guest/tiny-kernel.config (on top of tinyconfig, "
                                  "Debian linux-source-6.1)",
        "initrd": str(initrd),
        "initrd_sha256": sha256_file(initrd),
        "fill_c_sha256": hashlib.sha256(FILL_C.read_bytes()).hexdigest(),
        "busybox_sha256": hashlib.sha256(BUSYBOX.read_bytes()).hexdigest(),
    }


# --------------------------------------------------------------------------------------
# QMP


class QMPError(Exception):
    def __init__(self, cmd, err):
        super().__init__(f"{cmd}: {err.get('class')}: {err.get('desc')}")
        self.err = err


class QMP:
    def __init__(self, path: Path, timeout=60.0):
        deadline = time.time() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        self.sock.settimeout(600)
        self.f = self.sock.makefile("rb")
        self.events = []
        self.greeting = self._read()
        self.cmd("qmp_capabilities")

    def _read(self):
        line = self.f.readline()
        if not line:
            raise EOFError("QMP connection closed")
        return json.loads(line)

    def cmd(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            r = self._read()
            if "event" in r:
                self.events.append(r)
                continue
            if "error" in r:
                raise QMPError(name, r["error"])
            return r.get("return")

    def hmp(self, line):
        return self.cmd("human-monitor-command", **{"command-line": line})

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


# --------------------------------------------------------------------------------------
# VM


class VM:
    counter = 0
    started: list = []  # every VM of this run, so a failed run leaves no QEMU behind

    def __init__(self, qemu: dict, guest: dict, workdir: Path, mem_mib=GUEST_MEM_MIB,
                 fill_mib=FILL_MIB, ws_mib=0, ws_delay=0, incoming=False, reserve_mib=5):
        VM.counter += 1
        self.qemu = qemu
        self.dir = workdir / f"vm{VM.counter:02d}"
        self.dir.mkdir(parents=True)
        self.serial = self.dir / "serial.log"
        self.sock = self.dir / "qmp.sock"
        self.stderr_path = self.dir / "stderr.log"
        self.mem_mib = mem_mib
        self.workload = {
            "mem_mib": mem_mib, "fill_mib": fill_mib, "ws_mib": ws_mib,
            "ws_delay_s": ws_delay, "zero_reserve_mib": reserve_mib,
        }
        self.append = (f"console=ttyS0 rdinit=/init quiet nokaslr init_on_free=1 panic=-1 "
                       f"mig_fill={fill_mib} mig_ws={ws_mib} mig_reserve={reserve_mib} "
                       f"mig_wsdelay={ws_delay}")
        self.argv = [qemu["binary"], *qemu["args"], "-machine", "pc", "-accel", "tcg",
                     "-m", str(mem_mib), "-smp", "1", "-display", "none", "-nic", "none",
                     "-no-reboot", "-serial", f"file:{self.serial}",
                     "-qmp", f"unix:{self.sock},server=on,wait=off",
                     "-kernel", guest["kernel"], "-initrd", guest["initrd"],
                     "-append", self.append]
        if incoming:
            self.argv += ["-S", "-incoming", "defer"]
        env = dict(os.environ, **qemu["env"])
        self.errf = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                     stdout=self.errf, stderr=self.errf, env=env)
        VM.started.append(self)
        self.qmp = QMP(self.sock)
        self.ready_line = None

    def serial_text(self):
        try:
            return self.serial.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_serial(self, marker, timeout=300):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for line in self.serial_text().splitlines():
                if marker in line:
                    return line[line.index(marker):].strip()
            if self.proc.poll() is not None:
                raise RuntimeError(f"QEMU exited ({self.proc.returncode}) waiting for "
                                   f"{marker}: {self.stderr()}\n{self.serial_text()[-2000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"no {marker} on serial after {timeout}s:\n{self.serial_text()[-2000:]}")

    def wait_ready(self, timeout=300):
        self.ready_line = self.wait_serial(SERIAL_READY, timeout)
        return self.ready_line

    def stderr(self):
        if not self.errf.closed:
            self.errf.flush()
        return self.stderr_path.read_text(errors="replace")

    def info(self):
        """QEMU's identity figures."""
        q = self.qmp
        return {
            "label": self.qemu["label"],
            "query-version": q.cmd("query-version"),
            "machine_requested": "pc",
            "machine_qom_type": q.cmd("qom-get", path="/machine", property="type"),
            "argv": self.argv,
        }

    def quit(self):
        try:
            self.qmp.cmd("quit")
        except (OSError, EOFError, QMPError):
            pass
        self.qmp.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.errf.close()


def parse_ramblock(text: str) -> list:
    out = []
    units = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
    for line in text.splitlines():
        m = re.match(r"\s*(\S+)\s+(\d+)\s*(B|KiB|MiB|GiB)\s+0x([0-9a-fA-F]+)\s+0x([0-9a-fA-F]+)"
                     r"\s+0x([0-9a-fA-F]+)", line)
        if m:
            out.append({
                "name": m.group(1),
                "page_size": int(m.group(2)) * units[m.group(3)],
                "offset": int(m.group(4), 16),
                "used_length": int(m.group(5), 16),
                "total_length": int(m.group(6), 16),
            })
    return out


def set_caps(vm: VM, caps: dict):
    if caps:
        vm.qmp.cmd("migrate-set-capabilities",
                   capabilities=[{"capability": k, "state": v} for k, v in caps.items()])


def set_params(vm: VM, params: dict):
    if params:
        vm.qmp.cmd("migrate-set-parameters", **params)


def run_migration(vm: VM, out: Path, caps: dict, params: dict, live=False,
                  raise_at_sync=5, raise_when=None, timeout=1800):
    """Start `migrate` to file and poll query-migrate until done.

    live: the VM keeps running; downtime-limit is raised to 10 s once
    ram.dirty-sync-count >= raise_at_sync (or raise_when(q) is true)."""
    set_caps(vm, caps)
    set_params(vm, params)
    uri = vm.qemu["file_uri"](out)
    t0 = time.time()
    vm.qmp.cmd("migrate", uri=uri)
    raised = None
    polls = []
    while True:
        q = vm.qmp.cmd("query-migrate")
        st = q.get("status")
        ram = q.get("ram", {})
        polls.append({"t": round(time.time() - t0, 2), "status": st,
                      "dirty-sync-count": ram.get("dirty-sync-count"),
                      "transferred": ram.get("transferred"),
                      "remaining": ram.get("remaining")})
        if st in ("completed", "failed", "cancelled"):
            break
        if live and raised is None and st == "active":
            hit = (raise_when(q) if raise_when else
                   ram.get("dirty-sync-count", 0) >= raise_at_sync)
            if hit:
                vm.qmp.cmd("migrate-set-parameters", **{"downtime-limit": 10000})
                raised = {"downtime-limit": 10000, "at_dirty_sync_count":
                          ram.get("dirty-sync-count"), "at_transferred": ram.get("transferred"),
                          "t": round(time.time() - t0, 2)}
                log(f"  raised downtime-limit at dirty-sync-count={ram.get('dirty-sync-count')}")
        if time.time() - t0 > timeout:
            raise TimeoutError("migration did not finish")
        time.sleep(0.1)
    if st != "completed":
        raise RuntimeError(f"migration {st}: {q.get('error-desc')} / {vm.stderr()}")
    # thin the poll log: keep status changes and dirty-sync-count changes
    kept, last = [], None
    for p in polls:
        k = (p["status"], p["dirty-sync-count"])
        if k != last:
            kept.append(p)
            last = k
    return {
        "uri": uri,
        "capabilities_set": caps,
        "parameters_set": params,
        "live": live,
        "downtime_raise": raised,
        "wall_seconds": round(time.time() - t0, 2),
        "poll_log": kept,
        "query-migrate": q,
        "query-migrate-capabilities": vm.qmp.cmd("query-migrate-capabilities"),
        "query-migrate-parameters": vm.qmp.cmd("query-migrate-parameters"),
    }


def pmem_digest(vm: VM, dump: Path, pages_out: Path | None):
    size = vm.mem_mib << 20
    vm.qmp.cmd("pmemsave", val=0, size=size, filename=str(dump))
    # pmemsave is synchronous in QMP, but be safe about the file size
    for _ in range(100):
        if dump.exists() and dump.stat().st_size == size:
            break
        time.sleep(0.1)
    h, hm = hashlib.sha256(), hashlib.sha256()
    pages = bytearray()
    nonzero = 0
    zpage = bytes(PAGE)
    off = 0
    with open(dump, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            lo, hi = max(MASK_LO, off), min(MASK_HI + 1, off + len(chunk))
            if lo < hi:
                b = bytearray(chunk)
                b[lo - off:hi - off] = bytes(hi - lo)
                hm.update(b)
            else:
                hm.update(chunk)
            mv = memoryview(chunk)
            for i in range(0, len(chunk), PAGE):
                p = mv[i:i + PAGE]
                pages += hashlib.blake2b(p, digest_size=8).digest()
                if p != zpage:
                    nonzero += 1
            off += len(chunk)
    res = {
        "val": 0,
        "size": size,
        "sha256": h.hexdigest(),
        "sha256_masked": hm.hexdigest(),
        "masked_range": [MASK_LO, MASK_HI],
        "pages": size // PAGE,
        "nonzero_pages": nonzero,
        "pages_file": None,
        "pages_hash": "blake2b(page, digest_size=8) raw 8 bytes per 4096-byte page of the "
                      "unmasked dump, concatenated in page order, zstd-compressed",
    }
    if pages_out is not None:
        pages_out.write_bytes(zstandard.ZstdCompressor(level=19).compress(bytes(pages)))
        res["pages_file"] = pages_out.name
        res["pages_file_raw_sha256"] = hashlib.sha256(pages).hexdigest()
    dump.unlink()
    return res


def compress_file(src: Path, dst: Path, level=19):
    params = zstandard.ZstdCompressionParameters.from_level(
        level, window_log=27, enable_ldm=True, threads=2)
    cctx = zstandard.ZstdCompressor(compression_params=params)
    tmp = dst.with_name(dst.name + ".tmp")
    with open(src, "rb") as fi, open(tmp, "wb") as fo:
        cctx.copy_stream(fi, fo, size=src.stat().st_size)
    tmp.rename(dst)


def decompress_file(src: Path, dst: Path):
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        zstandard.ZstdDecompressor().copy_stream(fi, fo)


# --------------------------------------------------------------------------------------
# quick structural sanity checks on raw captures (independent of the miginspect package)


def config_caps(raw: bytes) -> dict:
    """Header + configuration record of a capture (first bytes only)."""
    assert raw[:8] == b"QEVM\x00\x00\x00\x03", raw[:8]
    res = {"magic_ok": True, "configuration": raw[8] == 7}
    if raw[8] == 7:
        n = struct.unpack(">I", raw[9:13])[0]
        res["machine"] = raw[13:13 + n].decode()
        p = 13 + n
        caps = []
        if raw[p] == 5:
            ln = raw[p + 1]
            name = raw[p + 2:p + 2 + ln].decode()
            if name == "configuration/capabilities":
                q = p + 2 + ln + 4
                cnt = struct.unpack(">I", raw[q:q + 4])[0]
                q += 4
                for _ in range(cnt):
                    caps.append(raw[q + 1:q + 1 + raw[q]].decode())
                    q += 1 + raw[q]
        res["capabilities"] = caps
    return res


def vmdesc_offset(path: Path):
    """Offset of the 0x06 VMDESCRIPTION byte, found backward (JSON ends at EOF)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - (4 << 20)))
        base = f.tell()
        tail = f.read()
    for p in range(len(tail) - 6, -1, -1):
        if tail[p] == 6 and tail[p + 5:p + 6] == b"{":
            n = struct.unpack(">I", tail[p + 1:p + 5])[0]
            if n == len(tail) - (p + 5):
                return base + p
    return None


def capture_record(raw: Path) -> dict:
    with open(raw, "rb") as f:
        head = f.read(4096)
    st = raw.stat()
    return {
        "raw_size": st.st_size,
        "raw_allocated_bytes": st.st_blocks * 512,
        "raw_sha256": sha256_file(raw),
        "header": config_caps(head),
        "vmdescription_offset": vmdesc_offset(raw),
    }


# --------------------------------------------------------------------------------------
# sample bookkeeping


class Ctx:
    def __init__(self, outdir: Path, workdir: Path, guest: dict, raw_dir=None, compress=True):
        self.outdir = outdir
        self.workdir = workdir
        self.guest = guest
        self.raw_dir = raw_dir or workdir
        self.compress = compress
        self.written = []

    def raw(self, name):
        return self.raw_dir / f"{name}.mig"

    def store(self, name: str, vm: VM, mig: dict, description: str, extra=None):
        """Record figures of a finished save from `vm` and store the sample."""
        raw = self.raw(name)
        t0 = time.time()
        man = {
            "name": name,
            "description": description,
            "generated_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "generator": "samples/generate.py",
            "qemu": vm.info(),
            "guest": dict(vm.workload, kernel_cmdline=vm.append,
                          serial_ready_line=vm.ready_line, **self.guest,
                          pattern="fill.c: 256 x {u32 0x4D494731, u32 page index, "
                                  "u32 generation, u32 index*0x9E3779B1^gen^0xA5A5A5A5} "
                                  "per 4 KiB page, little-endian"),
            "migration": mig,
            "query-migrate": mig.pop("query-migrate"),
        }
        text = vm.qmp.hmp("info ramblock")
        man["info_ramblock"] = {"raw": text, "parsed": parse_ramblock(text)}
        man["query-status"] = vm.qmp.cmd("query-status")
        man["pmemsave"] = pmem_digest(vm, self.workdir / f"{name}.pmem",
                                      self.outdir / f"{name}.pmem-pages.bin.zst")
        man["capture"] = capture_record(raw)
        if extra:
            man.update(extra)
        man["checks"] = sanity(man)
        if self.compress:
            z = self.outdir / f"{name}.mig.zst"
            compress_file(raw, z)
            man["capture"]["file"] = z.name
            man["capture"]["compressed_size"] = z.stat().st_size
        (self.outdir / f"{name}.json").write_text(json.dumps(man, indent=1) + "\n")
        q = man["query-migrate"].get("ram", {})
        zs = man["capture"].get("compressed_size")
        log(f"  stored {name}: raw {man['capture']['raw_size']:,} B, "
            + (f"zst {zs:,} B, " if zs is not None else "uncompressed, ")
            + f"normal={q.get('normal')} "
            f"duplicate={q.get('duplicate')} dirty-sync-count={q.get('dirty-sync-count')} "
            f"({time.time() - t0:.1f}s bookkeeping)")
        for k, v in man["checks"].items():
            if v is False:
                log(f"  WARNING {name}: check {k} failed")
        self.written.append(name)
        return man


def sanity(man) -> dict:
    q = man["query-migrate"]
    ram = q.get("ram", {})
    cap = man["capture"]
    caps = {c["capability"]: c["state"] for c in man["migration"]["query-migrate-capabilities"]}
    blocks = man["info_ramblock"]["parsed"]
    c = {
        "status_completed": q.get("status") == "completed",
        "starts_with_QEVM": cap["header"]["magic_ok"],
        "ram_total_equals_sum_used_length": ram.get("total") == sum(b["used_length"]
                                                                      for b in blocks),
        "vmdescription_found": cap["vmdescription_offset"] is not None,
    }
    mapped = caps.get("mapped-ram", False)
    c["mapped_ram_in_configuration"] = ("mapped-ram" in cap["header"].get("capabilities", [])
                                        ) == mapped
    if not mapped:
        pages = ram.get("normal", 0) + ram.get("duplicate", 0)
        c["normal_plus_duplicate_covers_ram"] = pages >= ram.get("total", 0) // PAGE or \
            caps.get("xbzrle", False)
        if man["qemu"]["query-version"]["qemu"]["major"] >= 10:
            c["transferred_equals_file_size"] = ram.get("transferred") == cap["raw_size"]
    return c


# --------------------------------------------------------------------------------------
# jobs

LIVE_PARAMS = {"max-bandwidth": 32 << 20, "downtime-limit": 20}


def boot(ctx, qemu=QEMU10, **kw):
    vm = VM(qemu, ctx.guest, ctx.workdir, **kw)
    line = vm.wait_ready()
    log(f"  guest ready: {line}")
    return vm


def reload_vm(ctx, src_vm_workload: dict, raw: Path, caps: dict, qemu=QEMU10):
    """Fresh `-S -incoming defer` QEMU with the same guest config, loaded from raw."""
    w = src_vm_workload
    vm = VM(qemu, ctx.guest, ctx.workdir, mem_mib=w["mem_mib"], fill_mib=w["fill_mib"],
            ws_mib=w["ws_mib"], ws_delay=w["ws_delay_s"], reserve_mib=w["zero_reserve_mib"],
            incoming=True)
    vm.ready_line = None
    set_caps(vm, caps)
    vm.qmp.cmd("migrate-incoming", uri=f"file:{raw}")
    t0 = time.time()
    while True:
        q = vm.qmp.cmd("query-migrate")
        if q.get("status") in ("completed", "failed"):
            break
        if time.time() - t0 > 900:
            raise TimeoutError("incoming migration did not finish")
        time.sleep(0.1)
    if q.get("status") != "completed":
        raise RuntimeError(f"reload failed: {q} {vm.stderr()}")
    vm.loaded_from = {"file": raw.name, "raw_sha256": sha256_file(raw),
                      "capabilities": caps, "incoming_query-migrate": q}
    return vm


def job_q10_paused_legacy(ctx):
    vm = boot(ctx)
    vm.qmp.cmd("stop")
    mig = run_migration(vm, ctx.raw("q10-paused-legacy"), {}, {})
    ctx.store("q10-paused-legacy", vm, mig,
              "QEMU 10, guest paused with `stop`, then `migrate file:` (legacy sequential "
              "stream, single pass).")
    vm.quit()


def job_q72_paused_legacy(ctx):
    vm = boot(ctx, QEMU72)
    vm.qmp.cmd("stop")
    mig = run_migration(vm, ctx.raw("q72-paused-legacy"), {}, {})
    ctx.store("q72-paused-legacy", vm, mig,
              "QEMU 7.2, guest paused with `stop`, then `migrate exec:cat > FILE` (legacy "
              "stream, no SWITCHOVER_START, vmdesc without configuration key).")
    vm.quit()


def _live(ctx, name, qemu, caps, desc, extra_params=None, raise_at=5):
    vm = boot(ctx, qemu, ws_mib=WS_MIB)
    time.sleep(1.0)  # let the working set run
    params = dict(LIVE_PARAMS, **(extra_params or {}))
    mig = run_migration(vm, ctx.raw(name), caps, params, live=True, raise_at_sync=raise_at)
    ctx.store(name, vm, mig, desc)
    vm.quit()


def job_q10_live_legacy(ctx):
    _live(ctx, "q10-live-legacy", QEMU10, {},
          f"QEMU 10, live migration to `file:` while the guest rewrites a {WS_MIB} MiB working "
          "set; max-bandwidth 32 MiB/s, downtime-limit 20 ms, raised to 10 s once "
          "dirty-sync-count reached 5. Pages are sent several times (last record wins).")


def job_q10_live_xbzrle(ctx):
    _live(ctx, "q10-live-xbzrle", QEMU10, {"xbzrle": True},
          "As q10-live-legacy with the xbzrle capability: re-sent working-set pages appear as "
          "XBZRLE delta records (see query-migrate xbzrle-cache).")


def job_q72_live_legacy(ctx):
    _live(ctx, "q72-live-legacy", QEMU72, {},
          "QEMU 7.2 live migration (`exec:cat > FILE`) with the re-dirtying working set, "
          "several precopy rounds.")


def job_q10_paused_mapped_ram(ctx):
    vm = boot(ctx)
    vm.qmp.cmd("stop")
    mig = run_migration(vm, ctx.raw("q10-paused-mapped-ram"), {"mapped-ram": True}, {})
    ctx.store("q10-paused-mapped-ram", vm, mig,
              "QEMU 10, paused guest saved with capability mapped-ram to `file:` (sparse "
              "file, per-RAMBlock bitmap + fixed page regions).")
    vm.quit()


def job_q10_live_mapped_ram(ctx):
    _live(ctx, "q10-live-mapped-ram", QEMU10, {"mapped-ram": True},
          "QEMU 10, live migration with mapped-ram while the working set is rewritten: pages "
          "are rewritten in place; query-migrate ram.normal counts every write.")


def job_q10_paused_mapped_ram_multifd4(ctx):
    vm = boot(ctx)
    vm.qmp.cmd("stop")
    mig = run_migration(vm, ctx.raw("q10-paused-mapped-ram-multifd4"),
                        {"mapped-ram": True, "multifd": True}, {"multifd-channels": 4})
    ctx.store("q10-paused-mapped-ram-multifd4", vm, mig,
              "QEMU 10, paused guest saved with mapped-ram + multifd (4 channels) to `file:`.")
    vm.quit()


def job_state_a(ctx):
    """One paused VM state saved as legacy, then reloaded and saved in other layouts."""
    vm = boot(ctx)
    vm.qmp.cmd("stop")
    base = ctx.raw("q10-state-A-legacy")
    mig = run_migration(vm, base, {}, {})
    man = ctx.store("q10-state-A-legacy", vm, mig,
                    "State A, first save: QEMU 10 paused guest, legacy stream. The other "
                    "q10-state-A-* samples are saves of this same VM state after reloading "
                    "this file into a fresh QEMU.")
    workload = vm.workload
    vm.quit()
    for name, caps, params, desc in [
        ("q10-state-A-mapped-ram", {"mapped-ram": True}, {},
         "State A reloaded from q10-state-A-legacy into a fresh `-S -incoming defer` QEMU 10, "
         "saved again with mapped-ram."),
        ("q10-state-A-multifd4", {"mapped-ram": True, "multifd": True},
         {"multifd-channels": 4},
         "State A reloaded from q10-state-A-legacy, saved with mapped-ram + multifd "
         "(4 channels)."),
        ("q10-state-A-legacy-resave", {}, {},
         "State A reloaded from q10-state-A-legacy, saved again as a legacy stream: RAM equals "
         "q10-state-A-legacy; device state differs only in clock-like fields."),
    ]:
        vm2 = reload_vm(ctx, workload, base, {})
        vm2.ready_line = man["guest"]["serial_ready_line"]
        mig = run_migration(vm2, ctx.raw(name), caps, params)
        ctx.store(name, vm2, mig, desc, extra={
            "derived_from": dict(vm2.loaded_from, sample="q10-state-A-legacy")})
        vm2.quit()


def job_sameboot(ctx):
    """Idle then live capture of the same guest boot.

    The guest fills memory, prints READY and sleeps 20 s (guest time) before starting its
    working set. Right after READY the VM is stopped and saved (idle, paused). That file is
    loaded into a fresh QEMU which is resumed (`cont`): the same boot continues, the working
    set starts, and a live capture is taken from the resumed VM."""
    vm = boot(ctx, ws_mib=WS_MIB, ws_delay=20)
    vm.qmp.cmd("stop")
    idle = ctx.raw("q10-sameboot-idle")
    mig = run_migration(vm, idle, {}, {})
    man = ctx.store("q10-sameboot-idle", vm, mig,
                    "Same-boot pair, part 1: guest filled and idle (working set not yet "
                    "started), paused, legacy save. q10-sameboot-live continues this boot.")
    workload = vm.workload
    vm.quit()
    vm2 = reload_vm(ctx, workload, idle, {})
    vm2.ready_line = man["guest"]["serial_ready_line"]
    vm2.qmp.cmd("cont")
    ws_line = vm2.wait_serial(SERIAL_WS_START, timeout=300)
    log(f"  resumed guest: {ws_line}")
    time.sleep(1.0)
    mig = run_migration(vm2, ctx.raw("q10-sameboot-live"), {}, dict(LIVE_PARAMS), live=True)
    ctx.store("q10-sameboot-live", vm2, mig,
              "Same-boot pair, part 2: q10-sameboot-idle loaded into a fresh QEMU 10, resumed "
              "with `cont`; after the guest started its working set, live legacy capture "
              "(several rounds). Memory differs from the idle capture in the working set and "
              "in pages the kernel touched meanwhile.",
              extra={"derived_from": dict(vm2.loaded_from, sample="q10-sameboot-idle"),
                     "serial_ws_start_line": ws_line})
    vm2.quit()


JOBS = {
    "q10-paused-legacy": (job_q10_paused_legacy, ["q10-paused-legacy"]),
    "q10-live-legacy": (job_q10_live_legacy, ["q10-live-legacy"]),
    "q10-live-xbzrle": (job_q10_live_xbzrle, ["q10-live-xbzrle"]),
    "q72-paused-legacy": (job_q72_paused_legacy, ["q72-paused-legacy"]),
    "q72-live-legacy": (job_q72_live_legacy, ["q72-live-legacy"]),
    "q10-paused-mapped-ram": (job_q10_paused_mapped_ram, ["q10-paused-mapped-ram"]),
    "q10-live-mapped-ram": (job_q10_live_mapped_ram, ["q10-live-mapped-ram"]),
    "q10-paused-mapped-ram-multifd4": (job_q10_paused_mapped_ram_multifd4,
                                       ["q10-paused-mapped-ram-multifd4"]),
    "state-A": (job_state_a, ["q10-state-A-legacy", "q10-state-A-mapped-ram",
                              "q10-state-A-multifd4", "q10-state-A-legacy-resave"]),
    "sameboot": (job_sameboot, ["q10-sameboot-idle", "q10-sameboot-live"]),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--outdir", type=Path, default=HERE)
    ap.add_argument("--only", action="append", default=[],
                    help="sample (or job/group) name to regenerate; repeatable. A sample that "
                         "belongs to a group regenerates the whole group.")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--keep-work", action="store_true", help="keep raw captures and logs")
    ap.add_argument("--big", type=Path, metavar="DIR",
                    help="write large uncompressed benchmark captures into DIR (not samples/)")
    args = ap.parse_args()

    if args.list:
        for job, (_, names) in JOBS.items():
            print(job + ": " + ", ".join(names))
        for n in DAMAGED:
            print(f"damaged: damaged/{n}")
        return

    t_start = time.time()
    guest = build_guest()
    (LAB / "work").mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="gen-", dir=LAB / "work"))
    log(f"workdir {workdir}")
    try:
        if args.big:
            args.big.mkdir(parents=True, exist_ok=True)
            big_main(args.big, workdir, guest)
            return
        outdir = args.outdir.resolve()
        outdir.mkdir(parents=True, exist_ok=True)
        ctx = Ctx(outdir, workdir, guest)
        selected = []
        for want in args.only or list(JOBS) + ["damaged"]:
            if want in JOBS:
                job = want
            elif want == "damaged" or want in DAMAGED or want.startswith("damaged/"):
                job = "damaged"
            else:
                job = next((j for j, (_, names) in JOBS.items() if want in names), None)
                if job is None:
                    ap.error(f"unknown sample {want!r} (see --list)")
            if job not in selected:
                selected.append(job)
        times = {}
        for job in selected:
            t0 = time.time()
            log(f"job {job}")
            if job == "damaged":
                only = [w.removeprefix("damaged/") for w in args.only
                        if w.removeprefix("damaged/") in DAMAGED]
                make_damaged(ctx, only or list(DAMAGED))
            else:
                JOBS[job][0](ctx)
            times[job] = round(time.time() - t0, 1)
            log(f"job {job} done in {times[job]}s")
        log(f"all done in {time.time() - t_start:.0f}s: {times}")
    finally:
        for vm in VM.started:
            if vm.proc.poll() is None:
                vm.proc.kill()
                vm.proc.wait()
        if args.keep_work:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------------------
# minimal stream walkers, only to locate damage points (independent of miginspect/)


def _skip_config(raw: bytes) -> int:
    p = 8
    if raw[p] != 7:
        return p
    n = struct.unpack(">I", raw[p + 1:p + 5])[0]
    p += 5 + n
    while raw[p] == 5:  # configuration subsections
        ln = raw[p + 1]
        name = raw[p + 2:p + 2 + ln].decode()
        p += 2 + ln + 4
        if name == "configuration/capabilities":
            cnt = struct.unpack(">I", raw[p:p + 4])[0]
            p += 4
            for _ in range(cnt):
                p += 1 + raw[p]
        elif name == "configuration/target-page-bits":
            p += 4
        elif name == "configuration/uuid":
            p += 16
        else:
            raise ValueError(f"unknown configuration subsection {name}")
    return p


def walk_legacy(raw: bytes) -> dict:
    """Sections and RAM records of a legacy stream, with offsets."""
    p = _skip_config(raw)
    secs, recs, cur, ram_id = [], [], None, None

    def ram(p, sec_index):
        nonlocal cur
        while True:
            w = struct.unpack(">Q", raw[p:p + 8])[0]
            rec = {"offset": p, "word": w, "flags": w & 0x3FF, "addr": w & ~0x3FF,
                   "section": sec_index}
            p += 8
            fl = w & 0x3FF
            if fl & 0x04:
                total = w & ~0x3FF
                while total > 0:
                    ln = raw[p]
                    p += 1 + ln
                    total -= struct.unpack(">Q", raw[p:p + 8])[0]
                    p += 8
                continue
            if fl == 0x10:
                return p
            if not fl & 0x20:
                ln = raw[p]
                cur = raw[p + 1:p + 1 + ln].decode()
                p += 1 + ln
            rec["block"] = cur
            t = fl & ~0x20
            rec["data_offset"] = p
            if t == 0x02:
                p += 1
            elif t == 0x08:
                p += PAGE
            elif t == 0x40:
                p += 3 + struct.unpack(">H", raw[p + 1:p + 3])[0]
            else:
                raise ValueError(f"flags {fl:#x} at {rec['offset']}")
            recs.append(rec)

    while True:
        t = raw[p]
        s = {"type": t, "offset": p}
        if t in (1, 4):
            s["id"] = struct.unpack(">I", raw[p + 1:p + 5])[0]
            ln = raw[p + 5]
            s["name"] = raw[p + 6:p + 6 + ln].decode()
            s["instance_id"], s["version_id"] = struct.unpack(">II", raw[p + 6 + ln:p + 14 + ln])
            body = p + 14 + ln
            secs.append(s)
            if s["name"] == "ram":
                ram_id = s["id"]
                p = ram(body, len(secs) - 1)
                assert raw[p] == 0x7E
                p += 5
            else:
                break  # first FULL device section: stop (device payloads need the JSON)
        elif t in (2, 3):
            s["id"] = struct.unpack(">I", raw[p + 1:p + 5])[0]
            secs.append(s)
            assert s["id"] == ram_id
            p = ram(p + 5, len(secs) - 1)
            assert raw[p] == 0x7E
            p += 5
            if t == 3:
                s["end"] = p
        elif t == 8:
            secs.append(s)
            p += 5 + struct.unpack(">H", raw[p + 3:p + 5])[0]
        else:
            raise ValueError(f"section type {t} at {p}")
    ram_end = next(s["end"] for s in secs if s["type"] == 3)
    return {"sections": secs, "records": recs, "ram_end": ram_end}


def device_sections(raw: bytes, start: int, vmdesc_off: int) -> list:
    """Locate FULL device sections between start and EOF using the vmdesc device list."""
    desc = json.loads(raw[vmdesc_off + 5:])
    out, p = [], start
    for d in desc["devices"]:
        name = d["name"].encode()
        pat = bytes([len(name)]) + name + struct.pack(">II", d["instance_id"], d["version"])
        q = p
        while True:
            q = raw.index(pat, q)
            if raw[q - 5] == 4:
                break
            q += 1
        out.append({"name": d["name"], "instance_id": d["instance_id"], "offset": q - 5,
                    "payload_offset": q + len(pat)})
        p = q + len(pat)
    for a, b in zip(out, out[1:], strict=False):
        a["end"] = b["offset"]
    out[-1]["end"] = vmdesc_off - 1  # the 0x00 EOF byte
    return out


def walk_mapped_ram(raw_path: Path) -> list:
    """MEM_SIZE entries of a mapped-ram file: name, length, header fields and offsets."""
    with open(raw_path, "rb") as f:
        head = f.read(1 << 16)
        p = _skip_config(head)
        assert head[p] == 1
        ln = head[p + 5]
        assert head[p + 6:p + 6 + ln] == b"ram"
        p += 14 + ln
        w = struct.unpack(">Q", head[p:p + 8])[0]
        assert w & 0x3FF == 0x04
        total = w & ~0x3FF
        p += 8
        out = []
        while total > 0:
            f.seek(p)
            b = f.read(256 + 36)
            ln = b[0]
            name = b[1:1 + ln].decode()
            length = struct.unpack(">Q", b[1 + ln:9 + ln])[0]
            h = 9 + ln
            ver, psz, bmo, pgo = struct.unpack(">IQQQ", b[h:h + 28])
            out.append({"name": name, "entry_offset": p, "used_length": length,
                        "header_offset": p + h, "version": ver, "page_size": psz,
                        "bitmap_offset": bmo, "pages_offset": pgo})
            total -= length
            p = pgo + length
    return out


# --------------------------------------------------------------------------------------
# damaged samples


def _d_source(ctx, name) -> Path:
    """Raw copy of a good capture: from this run's workdir or from outdir/NAME.mig.zst."""
    raw = ctx.raw(name)
    if not raw.exists():
        z = ctx.outdir / f"{name}.mig.zst"
        if not z.exists():
            JOBS[next(j for j, (_, n) in JOBS.items() if name in n)][0](ctx)
        else:
            decompress_file(z, raw)
    return raw


KEEP_AFTER = 64 << 10  # bytes kept after a non-truncation damage point


def _dmg_trunc_ram(ctx):
    src = _d_source(ctx, "q10-paused-legacy")
    raw = src.read_bytes()
    w = walk_legacy(raw)
    # first PAGE|CONTINUE record of pc.ram at block offset >= 1 MiB (early in the first PART
    # section, before the kernel image); cut in the middle of its data
    rec = next(r for r in w["records"] if r["flags"] == 0x28 and r["block"] == "pc.ram"
               and r["addr"] >= 0x100000)
    cut = rec["data_offset"] + PAGE // 2
    return src, raw[:cut], {
        "damage": "truncated inside RAM: cut in the middle of a PAGE record's 4096 data bytes",
        "offset": cut, "record_offset": rec["offset"], "record_word": f"{rec['word']:#018x}",
        "block": rec["block"], "block_offset": rec["addr"],
        "section_offset": w["sections"][rec["section"]]["offset"]}, {}


def _dmg_trunc_device(ctx):
    src = _d_source(ctx, "q10-paused-legacy")
    raw = src.read_bytes()
    w = walk_legacy(raw)
    vd = vmdesc_offset(src)
    devs = device_sections(raw, w["ram_end"], vd)
    d = next(x for x in devs if x["name"] == "cpu")
    cut = (d["payload_offset"] + d["end"]) // 2
    return src, raw[:cut], {
        "damage": "truncated inside device state: cut in the middle of the FULL section "
                  "'cpu' payload (all RAM sections complete)",
        "offset": cut, "section_offset": d["offset"], "section_name": d["name"],
        "section_payload_offset": d["payload_offset"], "section_end": d["end"],
        "ram_end": w["ram_end"]}, {}


def _dmg_trunc_vmdesc(ctx):
    src = _d_source(ctx, "q10-paused-legacy")
    raw = src.read_bytes()
    vd = vmdesc_offset(src)
    n = struct.unpack(">I", raw[vd + 1:vd + 5])[0]
    cut = vd + 5 + n // 2
    return src, raw[:cut], {
        "damage": "truncated inside the VMDESCRIPTION JSON trailer (half of the JSON kept); "
                  "the state stream up to and including EOF is complete",
        "offset": cut, "vmdescription_offset": vd, "json_length": n,
        "eof_byte_offset": vd - 1}, {}


def _dmg_continue_flip(ctx):
    src = _d_source(ctx, "q10-paused-legacy")
    raw = bytearray(src.read_bytes())
    w = walk_legacy(raw)
    rec = next(r for r in w["records"] if r["flags"] == 0x28)  # PAGE|CONTINUE
    new = rec["word"] & ~0x20
    raw[rec["offset"]:rec["offset"] + 8] = struct.pack(">Q", new)
    cut = rec["offset"] + KEEP_AFTER
    return src, bytes(raw[:cut]), {
        "damage": "CONTINUE flag (0x20) cleared on the first PAGE|CONTINUE record, so the "
                  "loader expects a RAMBlock name where the page data starts; file truncated "
                  f"{KEEP_AFTER} bytes after the record to stay small",
        "offset": rec["offset"] + 7, "record_offset": rec["offset"],
        "word_before": f"{rec['word']:#018x}", "word_after": f"{new:#018x}",
        "block": rec["block"], "block_offset": rec["addr"], "truncated_at": cut}, {}


def _dmg_unknown_flag(ctx):
    src = _d_source(ctx, "q10-paused-legacy")
    raw = bytearray(src.read_bytes())
    w = walk_legacy(raw)
    rec = next(r for r in w["records"] if r["flags"] == 0x28)
    new = (rec["word"] & ~0x3FF) | 0x20 | 0x01  # CONTINUE | 0x001 (FULL: never emitted)
    raw[rec["offset"]:rec["offset"] + 8] = struct.pack(">Q", new)
    cut = rec["offset"] + KEEP_AFTER
    return src, bytes(raw[:cut]), {
        "damage": "RAM record type flag PAGE (0x08) replaced by 0x01 (old FULL flag, never "
                  "emitted and unknown to QEMU 10) on the first PAGE|CONTINUE record; file "
                  f"truncated {KEEP_AFTER} bytes after the record",
        "offset": rec["offset"] + 7, "record_offset": rec["offset"],
        "word_before": f"{rec['word']:#018x}", "word_after": f"{new:#018x}",
        "block": rec["block"], "block_offset": rec["addr"], "truncated_at": cut}, {}


def _dmg_mr_bitmap_past_eof(ctx):
    src = _d_source(ctx, "q10-paused-mapped-ram")
    ents = walk_mapped_ram(src)
    e = ents[0]
    nbits = e["used_length"] // e["page_size"]
    bm_bytes = (nbits + 63) // 64 * 8
    cut = e["bitmap_offset"] + bm_bytes
    with open(src, "rb") as f:
        data = bytearray(f.read(cut))
    bad = cut + (1 << 20)
    o = e["header_offset"] + 12
    data[o:o + 8] = struct.pack(">Q", bad)
    return src, bytes(data), {
        "damage": f"mapped-ram: bitmap_offset of the first RAMBlock ({e['name']}) set past the "
                  "end of the file; file truncated right after that block's original bitmap "
                  "(its pages and everything after are gone)",
        "offset": o, "block": e["name"], "bitmap_offset_before": e["bitmap_offset"],
        "bitmap_offset_after": bad, "header_offset": e["header_offset"],
        "truncated_at": cut, "pages_offset": e["pages_offset"]}, {"mapped-ram": True}


def _dmg_mr_truncated(ctx):
    src = _d_source(ctx, "q10-paused-mapped-ram")
    ents = walk_mapped_ram(src)
    e = next(x for x in ents if x["name"] == "pc.ram")
    cut = e["pages_offset"] + (8 << 20) + PAGE // 2
    with open(src, "rb") as f:
        data = f.read(cut)
    return src, data, {
        "damage": "mapped-ram file truncated inside the pc.ram page region (8 MiB + 2 KiB "
                  "into it); bitmaps before it are intact",
        "offset": cut, "block": e["name"], "pages_offset": e["pages_offset"],
        "bitmap_offset": e["bitmap_offset"], "used_length": e["used_length"],
        "original_size": src.stat().st_size}, {"mapped-ram": True}


def _dmg_empty(ctx):
    return _d_source(ctx, "q10-paused-legacy"), b"", {
        "damage": "empty file (0 bytes)", "offset": 0}, {}


def _dmg_random(ctx):
    data = random.Random(20250101).randbytes(64 << 10)
    return _d_source(ctx, "q10-paused-legacy"), data, {
        "damage": "64 KiB of pseudo-random bytes (random.Random(20250101).randbytes)",
        "offset": 0}, {}


def _dmg_header_only(ctx):
    src = _d_source(ctx, "q10-paused-legacy")
    return src, src.read_bytes()[:8], {
        "damage": "only the 8-byte file header (QEVM, version 3); nothing else", "offset": 8}, {}


def _dmg_version2(ctx):
    src = _d_source(ctx, "q10-paused-legacy")
    raw = bytearray(src.read_bytes()[:KEEP_AFTER])
    raw[4:8] = struct.pack(">I", 2)
    return src, bytes(raw), {
        "damage": "stream version field changed from 3 to 2 (obsolete format); truncated to "
                  f"{KEEP_AFTER} bytes", "offset": 4}, {}


DAMAGED = {
    "trunc-ram": _dmg_trunc_ram,
    "trunc-device-state": _dmg_trunc_device,
    "trunc-vmdesc": _dmg_trunc_vmdesc,
    "continue-flag-cleared": _dmg_continue_flip,
    "unknown-ram-flag": _dmg_unknown_flag,
    "mapped-ram-bitmap-past-eof": _dmg_mr_bitmap_past_eof,
    "mapped-ram-truncated": _dmg_mr_truncated,
    "empty": _dmg_empty,
    "random-bytes": _dmg_random,
    "header-only": _dmg_header_only,
    "version-2": _dmg_version2,
}


def qemu_load(ctx, raw: Path, caps: dict, workload: dict, timeout=300) -> dict:
    """Ask QEMU 10 to load raw (-S -incoming defer); record what it says."""
    vm = VM(QEMU10, ctx.guest, ctx.workdir, mem_mib=workload["mem_mib"],
            fill_mib=workload["fill_mib"], ws_mib=workload["ws_mib"],
            ws_delay=workload["ws_delay_s"], reserve_mib=workload["zero_reserve_mib"],
            incoming=True)
    res = {"qemu_version": vm.qmp.cmd("query-version"), "capabilities_set": caps,
           "argv": vm.argv}
    q = None
    try:
        set_caps(vm, caps)
        args = {"uri": f"file:{raw}"}
        try:
            vm.qmp.cmd("migrate-incoming", **args, **{"exit-on-error": False})
            res["migrate-incoming"] = dict(args, **{"exit-on-error": False})
        except QMPError as e:
            res["migrate-incoming_error"] = e.err
            raise
        t0 = time.time()
        while time.time() - t0 < timeout:
            q = vm.qmp.cmd("query-migrate")
            if q.get("status") in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.1)
        res["query-migrate"] = q
        res["query-status"] = vm.qmp.cmd("query-status")
    except (QMPError, EOFError, OSError) as e:
        res["exception"] = str(e)
    finally:
        vm.quit()
    res["qemu_exit_code"] = vm.proc.returncode
    res["stderr"] = vm.stderr()
    res["status"] = (q or {}).get("status")
    res["error-desc"] = (q or {}).get("error-desc")
    res["loaded"] = res["status"] == "completed"
    return res


def make_damaged(ctx, names):
    ddir = ctx.outdir / "damaged"
    ddir.mkdir(exist_ok=True)
    for name in names:
        src, data, info, caps = DAMAGED[name](ctx)
        src_man = json.loads((ctx.outdir / f"{src.stem}.json").read_text())
        raw = ctx.workdir / f"damaged-{name}.mig"
        raw.write_bytes(data)
        load = qemu_load(ctx, raw, caps, src_man["guest"])
        z = ddir / f"{name}.mig.zst"
        compress_file(raw, z)
        man = {
            "name": name,
            "derived_from": {"sample": src.stem, "raw_sha256": src_man["capture"]["raw_sha256"],
                             "raw_size": src_man["capture"]["raw_size"]},
            **info,
            "raw_size": len(data),
            "raw_sha256": hashlib.sha256(data).hexdigest(),
            "file": z.name,
            "compressed_size": z.stat().st_size,
            "qemu_load": load,
        }
        (ddir / f"{name}.json").write_text(json.dumps(man, indent=1) + "\n")
        err = (load.get("error-desc") or "").strip()
        log(f"  damaged/{name}: {len(data):,} B, loaded={load['loaded']} "
            f"error-desc={err!r} stderr={load['stderr'].strip()[-200:]!r}")
        raw.unlink()
        ctx.written.append("damaged/" + name)


# --------------------------------------------------------------------------------------
# --big: large benchmark captures (uncompressed, not committed)


def big_main(outdir: Path, workdir: Path, guest: dict):
    ctx = Ctx(outdir, workdir, guest, raw_dir=outdir, compress=False)
    mem, fill = 2048, 1200
    vm = boot(ctx, mem_mib=mem, fill_mib=fill, reserve_mib=24)
    vm.qmp.cmd("stop")
    mig = run_migration(vm, ctx.raw("big-paused-legacy"), {}, {})
    man = ctx.store("big-paused-legacy", vm, mig,
                    f"Benchmark: QEMU 10, {mem} MiB guest with {fill} MiB of pattern, paused, "
                    "legacy stream, uncompressed.")
    workload = vm.workload
    vm.quit()
    vm2 = reload_vm(ctx, workload, ctx.raw("big-paused-legacy"), {})
    vm2.ready_line = man["guest"]["serial_ready_line"]
    mig = run_migration(vm2, ctx.raw("big-paused-mapped-ram"), {"mapped-ram": True}, {})
    ctx.store("big-paused-mapped-ram", vm2, mig,
              "Benchmark: the state of big-paused-legacy reloaded into a fresh QEMU 10 and "
              "saved with mapped-ram.",
              extra={"derived_from": dict(vm2.loaded_from, sample="big-paused-legacy")})
    vm2.quit()

    fill, ws = 1100, 512
    vm = boot(ctx, mem_mib=mem, fill_mib=fill, ws_mib=ws, reserve_mib=24)
    time.sleep(2.0)
    target = 2.3 * (fill + 16) * (1 << 20)
    mig = run_migration(vm, ctx.raw("big-live-legacy"), {},
                        {"max-bandwidth": 128 << 20, "downtime-limit": 20}, live=True,
                        raise_when=lambda q: q.get("ram", {}).get("transferred", 0) >= target
                        and q["ram"].get("dirty-sync-count", 0) >= 3)
    man = ctx.store("big-live-legacy", vm, mig,
                    f"Benchmark: QEMU 10 live legacy capture of a {mem} MiB guest with "
                    f"{fill} MiB of pattern and a {ws} MiB re-dirtying working set; the file "
                    "is more than twice the final RAM data (redirty amplification >= 2).")
    vm.quit()
    amp = man["capture"]["raw_size"] / (man["pmemsave"]["nonzero_pages"] * PAGE)
    man["redirty_amplification"] = round(amp, 3)
    (outdir / "big-live-legacy.json").write_text(json.dumps(man, indent=1) + "\n")
    log(f"big-live-legacy amplification {amp:.2f}")


if __name__ == "__main__":
    main()
