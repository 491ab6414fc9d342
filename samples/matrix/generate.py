#!/usr/bin/env python3
"""Target matrix: saved states loaded into targets that differ in exactly one thing.

Boots the tiny sample guest (samples/generate.py) under QEMU 10 and QEMU 7.2 with a few
command lines (machine types, -m, NICs and their PCI addresses, virtio-balloon, -smp, -cpu),
saves each paused state, then starts one target QEMU per pair whose command line differs from
the source's in exactly one thing (the binary, the machine type, -m, a device, -smp, -cpu)
and loads the state into it, recording what QEMU did:

  fails to start                   the target exited before it could listen (its stderr)
  fails to load                    migrate-incoming failed; QEMU exits, stderr is the record
  loads                            loaded, resumed, and the guest answered an NMI
                                   ("NMI received" on its serial console)
  loads but the guest may not run  loaded and resumed (query-status says running), but the
                                   guest never answered the NMI within GUEST_TIMEOUT seconds

Output in samples/matrix/ (see README.md there):

  sources.tar.zst   the raw saved states, one solid archive (they share most pages)
  matrix.json       per source: QEMU's figures (query-version, machine qom type, info
                    ramblock, CPUs) and the capture's digest; per pair: the target command
                    line, the target's figures, QEMU's outcome, its exact stderr lines and the
                    first error line

Usage:
  nice -n 10 python3 samples/matrix/generate.py            # everything (~3 minutes, 2 cores)
  python3 samples/matrix/generate.py --list
  python3 samples/matrix/generate.py --keep-work
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import generate as G  # noqa: E402  (samples/generate.py: guest builder, QMP, QEMU table)
import zstandard  # noqa: E402

QEMUS = {"qemu10": G.QEMU10, "qemu72": G.QEMU72}
MEM_MIB = 64
#: Seconds a resumed guest gets to answer an NMI on its console before it counts as hung.
GUEST_TIMEOUT = 20
NMI_LINE = "NMI received"
#: The state every source shares: the fill program writes nothing (mig_fill=0).
APPEND = ("console=ttyS0 rdinit=/init quiet nokaslr init_on_free=1 panic=-1 mig_fill=0 "
          "mig_ws=0 mig_reserve=5 mig_wsdelay=0")
#: QOM types whose CPU hotplug interface an ACPI guest switches from legacy to modern at boot
#: (the firmware's AML writes 0 to the legacy port). The tiny guest has no ACPI, so the
#: generator does the same switch by qom-set before saving, as any ACPI guest would have.
ACPI_PM_TYPES = ("PIIX4_PM", "ICH9-LPC")


def base(machine: str, *extra: str) -> list[str]:
    return ["-machine", machine, "-accel", "tcg", "-m", str(MEM_MIB), "-smp", "1",
            "-nic", "none", *extra]


NICS = ("-device", "e1000,addr=03.0", "-device", "virtio-balloon,addr=04.0")


@dataclass
class Source:
    name: str
    qemu: str
    args: list[str]
    description: str
    caps: dict[str, bool] | None = None  # migration capabilities of the save (and the load)


@dataclass
class Pair:
    id: str
    source: str
    change: str  # the one thing the target's command line changes
    qemu: str  # target QEMU label
    args: list[str]  # target arguments
    issue_expects: str  # what issue 14 says QEMU does (documentation; the record is QEMU's)


SOURCES = [
    Source("q10-i440fx10-nics", "qemu10", base("pc-i440fx-10.0", *NICS),
           "QEMU 10, pc-i440fx-10.0, e1000 at 00:03.0, virtio-balloon at 00:04.0"),
    Source("q10-pc", "qemu10", base("pc"), "QEMU 10, -machine pc (alias of pc-i440fx-10.0)"),
    Source("q10-q35", "qemu10", base("q35"), "QEMU 10, -machine q35 (alias of pc-q35-10.0)"),
    Source("q10-i440fx72", "qemu10", base("pc-i440fx-7.2"),
           "QEMU 10 running the older machine type pc-i440fx-7.2"),
    Source("q72-i440fx72", "qemu72", base("pc-i440fx-7.2"), "QEMU 7.2, pc-i440fx-7.2"),
    Source("q10-cpu-max", "qemu10", base("pc", "-cpu", "max"), "QEMU 10, pc, -cpu max"),
    Source("q10-i440fx72-mapped-ram", "qemu10", base("pc-i440fx-7.2"),
           "QEMU 10, pc-i440fx-7.2, saved with the mapped-ram capability",
           {"mapped-ram": True}),
]


def _set(args: list[str], opt: str, value: str) -> list[str]:
    out = list(args)
    out[out.index(opt) + 1] = value
    return out


def _devices(args: list[str], devs: list[str]) -> list[str]:
    """args with every -device replaced by `devs` (in that order)."""
    out, i = [], 0
    while i < len(args):
        if args[i] == "-device":
            i += 2
            continue
        out.append(args[i])
        i += 1
    for d in devs:
        out += ["-device", d]
    return out


def _pairs() -> list[Pair]:
    nics = SOURCES[0].args
    P = Pair
    return [
        P("nics-identical", "q10-i440fx10-nics", "nothing", "qemu10", nics, "loads"),
        P("nics-on-7.2", "q10-i440fx10-nics", "binary: QEMU 7.2", "qemu72", nics,
          "unsupported machine type"),
        P("nics-q35", "q10-i440fx10-nics", "-machine pc-q35-10.0 (machine family)", "qemu10",
          _set(nics, "-machine", "pc-q35-10.0"),
          "Machine type received is 'pc-i440fx-10.0' and local is 'pc-q35-10.0'"),
        P("nics-m128", "q10-i440fx10-nics", "-m 128", "qemu10", _set(nics, "-m", "128"),
          "Size mismatch: pc.ram: 0x4000000 != 0x8000000"),
        P("nics-no-e1000", "q10-i440fx10-nics", "e1000 removed", "qemu10",
          _devices(nics, ["virtio-balloon,addr=04.0"]),
          'Unknown ramblock "0000:00:03.0/e1000.rom"'),
        P("nics-virtio-net", "q10-i440fx10-nics", "e1000 replaced by virtio-net-pci",
          "qemu10", _devices(nics, ["virtio-net-pci,addr=03.0", "virtio-balloon,addr=04.0"]),
          'Unknown ramblock "0000:00:03.0/e1000.rom"'),
        P("nics-swapped", "q10-i440fx10-nics", "e1000 and virtio-balloon swap PCI slots",
          "qemu10", _devices(nics, ["virtio-balloon,addr=03.0", "e1000,addr=04.0"]),
          'Unknown ramblock "0000:00:03.0/e1000.rom"'),
        P("nics-no-balloon", "q10-i440fx10-nics", "virtio-balloon removed", "qemu10",
          _devices(nics, ["e1000,addr=03.0"]),
          "Unknown savevm section or instance '0000:00:04.0/virtio-balloon' 0"),
        P("nics-smp2", "q10-i440fx10-nics", "-smp 2", "qemu10", _set(nics, "-smp", "2"),
          "Missing section footer for 0000:00:01.3/piix4_pm"),
        P("nics-extra-device", "q10-i440fx10-nics", "an extra virtio-net-pci at 00:05.0",
          "qemu10", [*nics, "-device", "virtio-net-pci,addr=05.0"], "loads"),
        P("pc-on-7.2", "q10-pc", "binary: QEMU 7.2 (pc = pc-i440fx-7.2 there)", "qemu72",
          SOURCES[1].args,
          "Machine type received is 'pc-i440fx-10.0' and local is 'pc-i440fx-7.2'"),
        P("q35-smp2", "q10-q35", "-smp 2", "qemu10", _set(SOURCES[2].args, "-smp", "2"),
          "Missing section footer for 0000:00:1f.0/ICH9LPC"),
        P("q35-on-7.2", "q10-q35", "binary: QEMU 7.2 (q35 = pc-q35-7.2 there)", "qemu72",
          SOURCES[2].args, "Machine type received is 'pc-q35-10.0' and local is 'pc-q35-7.2'"),
        P("i440fx72-on-7.2", "q10-i440fx72", "binary: QEMU 7.2", "qemu72", SOURCES[3].args,
          "loads"),
        P("q72-on-10", "q72-i440fx72", "binary: QEMU 10", "qemu10", SOURCES[4].args, "loads"),
        P("q72-m128", "q72-i440fx72", "-m 128", "qemu72", _set(SOURCES[4].args, "-m", "128"),
          "Size mismatch: pc.ram: 0x4000000 != 0x8000000 (the issue expected 'Length "
          "mismatch' from 7.2; 7.2 already prints Size mismatch)"),
        P("cpu-max-identical", "q10-cpu-max", "nothing", "qemu10", SOURCES[5].args, "loads"),
        P("cpu-max-default", "q10-cpu-max", "-cpu max dropped (default model)", "qemu10",
          [a for i, a in enumerate(SOURCES[5].args) if a != "-cpu"
           and SOURCES[5].args[i - 1] != "-cpu"],
          "loads, reports running, hangs"),
        P("mapped-ram-identical", "q10-i440fx72-mapped-ram", "nothing (capability set)",
          "qemu10", SOURCES[6].args, "loads"),
        P("mapped-ram-on-7.2", "q10-i440fx72-mapped-ram", "binary: QEMU 7.2 (no mapped-ram)",
          "qemu72", SOURCES[6].args, "Received unknown capability mapped-ram"),
    ]


PAIRS = _pairs()


# --------------------------------------------------------------------------------------
class Qemu:
    """One QEMU process of the matrix (nice'd), its QMP, serial console and stderr."""

    started: list[Qemu] = []

    def __init__(self, label: str, args: list[str], workdir: Path, guest: dict,
                 incoming: bool = False) -> None:
        self.q = QEMUS[label]
        self.dir = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=workdir))
        self.serial = self.dir / "serial.log"
        sock = self.dir / "qmp.sock"
        self.argv = [self.q["binary"], *self.q["args"], *args, "-display", "none",
                     "-no-reboot", "-serial", f"file:{self.serial}",
                     "-qmp", f"unix:{sock},server=on,wait=off",
                     "-kernel", guest["kernel"], "-initrd", guest["initrd"], "-append", APPEND]
        if incoming:
            self.argv += ["-S", "-incoming", "defer"]
        self.errf = open(self.dir / "stderr", "wb")
        self.proc = subprocess.Popen(["nice", "-n", "10", *self.argv], stdin=subprocess.DEVNULL,
                                     stdout=self.errf, stderr=self.errf,
                                     env=dict(os.environ, **self.q["env"]))
        Qemu.started.append(self)
        self.qmp: G.QMP | None = None
        deadline = time.time() + 60
        while self.qmp is None:
            if self.proc.poll() is not None:
                return  # exited at start: stderr says why
            try:
                self.qmp = G.QMP(sock, timeout=0.5)
            except OSError:
                if time.time() > deadline:
                    raise
        self.qmp.sock.settimeout(120)

    def stderr(self) -> str:
        if not self.errf.closed:
            self.errf.flush()
        return (self.dir / "stderr").read_text(errors="replace")

    def console(self) -> str:
        try:
            return self.serial.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def figures(self) -> dict:
        q = self.qmp
        cpus = q.cmd("query-cpus-fast")
        return {
            "query-version": q.cmd("query-version"),
            "machine_qom_type": q.cmd("qom-get", path="/machine", property="type"),
            "info_ramblock": q.hmp("info ramblock"),
            "cpus": [{"qom-path": c["qom-path"],
                      "qom-type": q.cmd("qom-get", path=c["qom-path"], property="type")}
                     for c in cpus],
        }

    def stop(self) -> None:
        if self.qmp is not None:
            try:
                self.qmp.cmd("quit")
            except (OSError, EOFError, G.QMPError):
                pass
            self.qmp.close()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.errf.close()


def _qom_children(q: G.QMP, path: str, depth: int = 0):
    for p in q.cmd("qom-list", path=path):
        if p["type"].startswith("child<"):
            child = f"{path.rstrip('/')}/{p['name']}"
            yield child, p["type"][6:-1]
            if depth < 6:
                yield from _qom_children(q, child, depth + 1)


def modern_cpu_hotplug(q: G.QMP) -> list[str]:
    """Switch the ACPI device's CPU hotplug to the modern interface (what an ACPI guest's
    firmware tables do at boot); the QOM paths switched."""
    done = []
    for path, typ in _qom_children(q, "/machine"):
        if typ in ACPI_PM_TYPES:
            q.cmd("qom-set", path=path, property="cpu-hotplug-legacy", value=False)
            done.append(path)
    return done


def save_source(s: Source, workdir: Path, guest: dict, raw: Path) -> dict:
    vm = Qemu(s.qemu, s.args, workdir, guest)
    if vm.qmp is None:
        raise RuntimeError(f"{s.name}: QEMU exited at start: {vm.stderr()}")
    try:
        t0 = time.time()
        while G.SERIAL_READY not in vm.console():
            if time.time() - t0 > 300 or vm.proc.poll() is not None:
                raise RuntimeError(f"{s.name}: no {G.SERIAL_READY}: {vm.console()[-500:]}")
            time.sleep(0.2)
        switched = modern_cpu_hotplug(vm.qmp)
        vm.qmp.cmd("stop")
        if s.caps:
            vm.qmp.cmd("migrate-set-capabilities", capabilities=[
                {"capability": k, "state": v} for k, v in s.caps.items()])
        fig = vm.figures()
        vm.qmp.cmd("migrate", uri=vm.q["file_uri"](raw))
        while (q := vm.qmp.cmd("query-migrate"))["status"] not in ("completed", "failed"):
            time.sleep(0.1)
        if q["status"] != "completed":
            raise RuntimeError(f"{s.name}: save failed: {q} {vm.stderr()}")
    finally:
        vm.stop()
    G.log(f"  saved {s.name}: {raw.stat().st_size:,} bytes")
    return {"qemu": s.qemu, "args": s.args, "description": s.description, "caps": s.caps,
            "argv": vm.argv, "guest_ready_line": next(
                ln for ln in vm.console().splitlines() if G.SERIAL_READY in ln).strip(),
            "acpi_cpu_hotplug_switched_to_modern": switched, "figures": fig,
            "query-migrate": q, "stderr": vm.stderr(),
            "capture": {"member": raw.name, "raw_size": raw.stat().st_size,
                        "raw_sha256": G.sha256_file(raw)}}


def first_error(stderr: str) -> str | None:
    """QEMU's first error line: the first stderr line that is not a warning, without the
    program name prefix."""
    for ln in stderr.splitlines():
        text = ln.split(": ", 1)[1] if ln.startswith("qemu-system-") and ": " in ln else ln
        if text.strip() and not text.startswith("warning:"):
            return text.strip()
    return None


def load_pair(p: Pair, src: Source, raw: Path, workdir: Path, guest: dict) -> dict:
    vm = Qemu(p.qemu, p.args, workdir, guest, incoming=True)
    rec: dict = {"id": p.id, "source": p.source, "change": p.change, "qemu": p.qemu,
                 "args": p.args, "issue_expects": p.issue_expects, "argv": vm.argv}
    try:
        if vm.qmp is None:
            vm.proc.wait(10)
            rec.update(outcome="fails to start", exit_code=vm.proc.returncode)
            return rec
        rec["target_figures"] = vm.figures()
        uri = f"exec:cat {raw}" if p.qemu == "qemu72" else f"file:{raw}"
        rec["uri"] = uri
        if src.caps and p.qemu == "qemu10":  # what `check` tells the user to do first
            vm.qmp.cmd("migrate-set-capabilities", capabilities=[
                {"capability": k, "state": v} for k, v in src.caps.items()])
            rec["capabilities_set"] = src.caps
        vm.qmp.cmd("migrate-incoming", uri=uri)
        status = None
        t0 = time.time()
        try:
            while time.time() - t0 < 180:
                status = vm.qmp.cmd("query-migrate").get("status")
                if status in ("completed", "failed"):
                    break
                time.sleep(0.1)
        except (OSError, EOFError):
            status = "QEMU exited"
        rec["incoming_status"] = status
        if status != "completed":
            try:
                vm.proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
            rec.update(outcome="fails to load", exit_code=vm.proc.poll())
            return rec
        vm.qmp.cmd("cont")
        time.sleep(1)
        rec["query-status"] = vm.qmp.cmd("query-status")
        before = len(vm.console())
        vm.qmp.cmd("inject-nmi")
        t0 = time.time()
        answer = None
        while time.time() - t0 < GUEST_TIMEOUT and answer is None:
            new = vm.console()[before:]
            if NMI_LINE in new:
                answer = next(ln for ln in new.splitlines() if NMI_LINE in ln).strip()
            time.sleep(0.2)
        rec["guest"] = {"nmi_injected": True, "answer": answer,
                        "waited_s": round(time.time() - t0, 1),
                        "query-status_after": vm.qmp.cmd("query-status")}
        rec["outcome"] = "loads" if answer else "loads but the guest may not run"
        return rec
    finally:
        vm.stop()
        rec["stderr"] = vm.stderr()
        rec["stderr_lines"] = vm.stderr().splitlines()
        rec["first_error"] = first_error(rec["stderr"]) if rec.get("outcome", "").startswith(
            "fails") else None
        G.log(f"  {p.id}: {rec.get('outcome')} {rec['first_error'] or ''}")


def write_archive(raws: list[Path], out: Path) -> None:
    """One solid tar.zst of the raw states (long-distance matching finds the shared pages)."""
    params = zstandard.ZstdCompressionParameters.from_level(
        19, window_log=27, enable_ldm=True, threads=2)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as fo:
        with zstandard.ZstdCompressor(compression_params=params).stream_writer(fo) as zw:
            with tarfile.open(fileobj=zw, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for r in raws:
                    info = tar.gettarinfo(str(r), arcname=r.name)
                    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                    info.mode = 0o644
                    with open(r, "rb") as f:
                        tar.addfile(info, f)
    tmp.rename(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--outdir", type=Path, default=HERE)
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--keep-work", action="store_true")
    args = ap.parse_args()
    if args.list:
        for s in SOURCES:
            print(f"source {s.name}: {s.qemu} {' '.join(s.args)}")
        for p in PAIRS:
            print(f"pair {p.id}: {p.source} -> {p.qemu}, {p.change}")
        return
    t_start = time.time()
    guest = G.build_guest()
    (G.LAB / "work").mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="matrix-", dir=G.LAB / "work"))
    out = args.outdir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    try:
        sources, raws = {}, {}
        for s in SOURCES:
            raws[s.name] = workdir / f"{s.name}.mig"
            try:
                sources[s.name] = save_source(s, workdir, guest, raws[s.name])
            except RuntimeError as e:  # the tiny guest rarely fails to boot: once more
                G.log(f"  {s.name}: {e}; retrying")
                sources[s.name] = save_source(s, workdir, guest, raws[s.name])
        pairs = [load_pair(p, next(s for s in SOURCES if s.name == p.source), raws[p.source],
                           workdir, guest) for p in PAIRS]
        write_archive(list(raws.values()), out / "sources.tar.zst")
        man = {
            "generator": "samples/matrix/generate.py",
            "generated_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "guest": dict(guest, kernel_cmdline=APPEND, mem_mib=MEM_MIB),
            "guest_timeout_s": GUEST_TIMEOUT,
            "archive": {"file": "sources.tar.zst",
                        "size": (out / "sources.tar.zst").stat().st_size},
            "sources": sources,
            "pairs": pairs,
        }
        (out / "matrix.json").write_text(json.dumps(man, indent=1) + "\n")
        G.log(f"matrix: {len(pairs)} pairs, archive {man['archive']['size']:,} bytes, "
              f"{time.time() - t_start:.0f}s")
    finally:
        for vm in Qemu.started:
            if vm.proc.poll() is None:
                vm.proc.kill()
                vm.proc.wait()
        if args.keep_work:
            G.log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
