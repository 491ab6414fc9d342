"""`--target-qemu CMDLINE`: ask the target QEMU itself what it would accept.

CMDLINE is the target's command line, split like a shell (shlex): an optional `env` and
`NAME=VALUE` words first (QEMU_MODULE_DIR for a QEMU unpacked beside the system's), then the
binary, then its arguments. The probe starts that QEMU with the same machine and devices
but made harmless:

* paused (`-S`: no guest code ever runs), `-snapshot` (disks opened through temporary
  overlays), `-display none`, `-monitor none`, its own QMP socket in a private temporary
  folder, and no `-incoming`, `-daemonize`, `-qmp`, `-monitor`, `-mon`, `-pidfile`, `-D`,
  `-loadvm`, `-writeconfig`, `-vnc`, `-spice`, `-gdb`;
* every character device becomes `null` (same ids, so serial ports and other devices
  stay: a missing serial device would change the state), every network backend a hub port
  (same ids), `-nic` a user-mode NIC of the same model, legacy `-net` backends are dropped
  (the NICs stay), every memory backend plain RAM of the same id and size (same RAMBlock
  name and length; no file, no preallocation, no host NUMA binding);
* a command line with a device that takes a host device at start (vfio-*, usb-host,
  vhost-scsi/-vsock/-vdpa) is refused: the probe would take the device from the host;

asks it (QMP): `query-version`, `query-target`, the machine type (`qom-get /machine type`)
and the machines with their aliases (`query-machines`), its RAMBlocks (HMP `info ramblock`),
its vCPUs and the CPU model's feature properties (`qom-get` on the vCPU), then saves its own
paused state to a temporary file (`migrate file:` on QEMU >= 8.2, `exec:cat > FILE` before)
and reads it with this package's readers (sections, versions, vmdescription, device bytes);
a second run with `-dump-vmstate` lists the subsections it knows. The process is always
killed (its process group) and the folder removed, within `timeout` seconds overall.

If the file's ACPI device carries the modern CPU hotplug state (an ACPI guest switched to
it at boot), the probe switches its own ACPI device the same way before saving (QOM
property `cpu-hotplug-legacy`), so that its state has that part to compare.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from .prediction import TargetCpu, TargetModel
from .target import parse_info_ramblock
from .target_cpu import FEATURES

if TYPE_CHECKING:
    from .prediction import TargetPrediction
    from .source import Source
    from .stream import StreamWalk

#: QEMU options that take no argument (qemu-options.hx); every other option takes one.
_NO_ARG = {"S", "snapshot", "enable-kvm", "nographic", "no-reboot", "no-shutdown",
           "daemonize", "nodefaults", "no-user-config", "no-acpi", "no-hpet",
           "no-fd-bootchk", "full-screen", "alt-grab", "ctrl-grab", "win2k-hack",
           "rtc-td-hack", "no-kvm", "usb", "only-migratable", "semihosting", "preconfig",
           "xen-attach", "s", "mem-prealloc", "no-frame", "no-quit", "sdl", "curses",
           "portrait", "h", "help", "version", "nodefconfig", "enable-sync-profile",
           "no-kvm-irqchip", "no-kvm-pit", "no-kvm-pit-reinjection", "enable-fips",
           "old-param", "no-graphic"}
#: Dropped with their argument.
_DROP = {"incoming", "qmp", "qmp-pretty", "monitor", "mon", "pidfile", "D", "d", "trace",
         "loadvm", "writeconfig", "vnc", "spice", "display", "gdb", "runas", "chroot",
         "run-with", "mem-path", "daemonize", "nographic", "S", "snapshot", "s",
         "mem-prealloc", "dump-vmstate", "no-graphic"}
#: Devices that take a host device at start (the probe refuses them).
_HOST_DEVICES = ("vfio-", "usb-host", "pci-assign", "kvm-pci-assign", "vhost-scsi",
                 "vhost-vsock", "vhost-vdpa")
#: Lines QEMU writes to stderr that are not errors.
_NOISE = ("warning:", "failed to open module:")
#: QOM types of the ACPI devices with a CPU hotplug interface an ACPI guest switches.
ACPI_PM_TYPES = ("PIIX4_PM", "ICH9-LPC")
MAX_QOM_NODES = 4000


@dataclass
class ProbeHints:
    """What the probe should mirror from the file before saving its own state."""

    modern_cpu_hotplug: bool = False


def hints_for(walk: StreamWalk) -> ProbeHints:
    """ProbeHints from the file's vmdescription: a `*/cpuhp` subsection anywhere (ich9_pm
    nests it in a struct field) means the guest switched to modern CPU hotplug."""
    from .prediction import find_cpuhp

    data = walk.trailer.data if walk.trailer is not None else None
    devs = (data or {}).get("devices") if isinstance(data, dict) else None
    return ProbeHints(any(find_cpuhp(d) for d in devs if isinstance(d, dict))
                      if isinstance(devs, list) else False)


# ---------------------------------------------------------------------------
def parse_cmdline(cmdline: str) -> tuple[dict[str, str], str, list[str]]:
    """(environment additions, binary, arguments) of a target command line."""
    try:
        words = shlex.split(cmdline)
    except ValueError as e:
        raise UsageError(f"--target-qemu: cannot split the command line ({e})", None,
                         "target", code="usage") from e
    env: dict[str, str] = {}
    if words and words[0] == "env":
        words = words[1:]
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        k, v = words.pop(0).split("=", 1)
        env[k] = v
    if not words:
        raise UsageError("--target-qemu: no QEMU binary in the command line", None, "target",
                         code="usage")
    return env, words[0], words[1:]


def _opt(word: str) -> str | None:
    if not word.startswith("-") or word == "-":
        return None
    return word.lstrip("-").split("=", 1)[0]


def _kv(value: str) -> dict[str, str]:
    out = {}
    for part in value.split(","):
        k, _, v = part.partition("=")
        out[k] = v
    return out


def _rewrite(name: str, value: str) -> list[str] | None:
    """The safe form of one option (None: drop it)."""
    if name in _DROP:
        return None
    if name in ("serial", "parallel", "debugcon"):
        return [f"-{name}", "none" if value == "none" else "null"]
    if name == "chardev":
        cid = _kv(value).get("id")
        return ["-chardev", f"null,id={cid}"] if cid else None
    if name == "netdev":
        nid = _kv(value).get("id")
        return ["-netdev", f"hubport,id={nid},hubid=0"] if nid else None
    if name == "nic":
        kv = _kv(value)
        if value.split(",", 1)[0] == "none":
            return ["-nic", "none"]
        keep = [f"{k}={kv[k]}" for k in ("model", "mac", "id") if kv.get(k)]
        return ["-nic", ",".join(["user", "restrict=on", *keep])]
    if name == "net":  # legacy -net: keep the NICs, drop the backends (tap runs scripts)
        return ["-net", value] if value.split(",", 1)[0] == "nic" else None
    if name == "object":
        typ = value.split(",", 1)[0]
        if typ.startswith("memory-backend-"):  # same id and size: same RAMBlock; no files,
            kv = _kv(value)                    # no preallocation, no host binding
            keep = [f"{k}={kv[k]}" for k in ("id", "size", "merge", "dump") if kv.get(k)]
            return ["-object", ",".join(["memory-backend-ram", *keep])]
    if name == "device" and value.split(",", 1)[0].startswith(_HOST_DEVICES):
        raise UsageError(f"--target-qemu: -device {value.split(',', 1)[0]} takes a host device "
                         "when QEMU starts; the probe will not start such a command line "
                         "(drop the device from it to check the rest)", None, "target",
                         code="usage")
    return [f"-{name}", value]


def sanitize(args: list[str], sock: Path) -> tuple[list[str], list[str]]:
    """(probe arguments, notes on what was changed)."""
    out: list[str] = []
    notes: list[str] = []
    i = 0
    while i < len(args):
        w = args[i]
        name = _opt(w)
        if name is None:  # a bare word (a disk image as first argument)
            out.append(w)
            i += 1
            continue
        if name in _NO_ARG:
            value, step = "", 1
        else:
            value, step = (args[i + 1] if i + 1 < len(args) else ""), 2
        i += step
        if name in _NO_ARG and name not in _DROP:
            out.append(f"-{name}")
            continue
        new = _rewrite(name, value)
        if new != [f"-{name}", value] and name not in ("S", "snapshot"):
            notes.append(f"-{name} {value}".strip() + (" dropped" if new is None
                                                        else f" -> {' '.join(new)}"))
        out += new or []
    out += ["-S", "-snapshot", "-display", "none", "-monitor", "none",
            "-qmp", f"unix:{sock},server=on,wait=off"]
    return out, notes


def first_error_line(stderr: str) -> str | None:
    """QEMU's first error line, without the program name prefix and past warnings."""
    for ln in stderr.splitlines():
        text = re.sub(r"^[^\s:]*qemu[^\s:]*: ", "", ln).strip()
        if text and not text.startswith(_NOISE):
            return text
    return None


# ---------------------------------------------------------------------------
class _Qmp:
    def __init__(self, path: Path, proc: subprocess.Popen, deadline: float) -> None:
        self.deadline = deadline
        while True:
            self.s = socket.socket(socket.AF_UNIX)
            try:
                self.s.connect(str(path))
                break
            except OSError:
                self.s.close()
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.f = self.s.makefile("rwb")
        self._read()
        self.cmd("qmp_capabilities")

    def _read(self) -> dict[str, Any]:
        self.s.settimeout(max(0.1, self.deadline - time.monotonic()))
        line = self.f.readline(1 << 24)
        if not line:
            raise EOFError("the target QEMU closed its QMP socket")
        return json.loads(line)

    def cmd(self, name: str, **args: Any) -> Any:
        self.f.write(json.dumps({"execute": name, "arguments": args}).encode() + b"\n")
        self.f.flush()
        while True:
            r = self._read()
            if "return" in r:
                return r["return"]
            if "error" in r:
                raise QmpError(f"{name}: {r['error'].get('desc')}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.s.close()


class QmpError(RuntimeError):
    """The target QEMU answered a command with an error."""


def _qom_walk(q: _Qmp, root: str = "/machine") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    todo = [(root, 0)]
    while todo and len(out) < MAX_QOM_NODES:
        path, depth = todo.pop()
        for p in q.cmd("qom-list", path=path):
            t = str(p.get("type", ""))
            if t.startswith("child<") and depth < 8:
                child = f"{path.rstrip('/')}/{p['name']}"
                out.append((child, t[6:-1]))
                todo.append((child, depth + 1))
    return out


# ---------------------------------------------------------------------------
def probe_qemu(cmdline: str, hints: ProbeHints | None = None, timeout: float = 120.0,
               tmpdir: str | None = None) -> TargetModel:
    """Start the target QEMU paused, learn what it accepts, stop it (see the module doc)."""
    env, binary, args = parse_cmdline(cmdline)
    if shutil.which(binary) is None:
        raise UsageError(f"--target-qemu: {binary!r} is not an executable", None, "target",
                         code="usage")
    work = Path(tempfile.mkdtemp(prefix="miginspect-target-", dir=tmpdir))
    deadline = time.monotonic() + timeout
    try:
        argv, notes = sanitize(args, work / "qmp.sock")
        t = TargetModel("qemu", cmdline)
        t.notes += notes
        _run(binary, argv, dict(os.environ, **env), work, deadline, t, hints or ProbeHints())
        if t.start_error is None:
            _dump_vmstate(binary, argv[:-2], dict(os.environ, **env), work, deadline, t)
        return t
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _spawn(binary: str, argv: list[str], env: dict[str, str], work: Path,
           log: str) -> subprocess.Popen:
    with open(work / log, "wb") as f:
        return subprocess.Popen([binary, *argv], stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                                env=env, cwd=work, start_new_session=True)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def _run(binary: str, argv: list[str], env: dict[str, str], work: Path, deadline: float,
         t: TargetModel, hints: ProbeHints) -> None:
    proc = _spawn(binary, argv, env, work, "stderr")
    q = None
    try:
        try:
            q = _Qmp(work / "qmp.sock", proc, deadline)
        except (OSError, EOFError, ValueError):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, min(10.0, deadline - time.monotonic())))
            t.stderr = (work / "stderr").read_text(errors="replace").splitlines()
            t.start_error = first_error_line("\n".join(t.stderr)) or (
                f"QEMU exited with status {proc.returncode}" if proc.poll() is not None
                else "QEMU did not open its QMP socket in time")
            t.machines = _machine_help(binary, env, work, deadline)
            return
        _ask(q, t)
        if hints.modern_cpu_hotplug:
            _modern_cpu_hotplug(q, t)
        _save_own_state(q, t, work, deadline)
        with contextlib.suppress(QmpError, OSError, EOFError):
            q.cmd("quit")
    except (QmpError, OSError, EOFError, ValueError) as e:
        t.notes.append(f"the target QEMU stopped answering: {e}")
    finally:
        if q is not None:
            q.close()
        _kill(proc)
        t.stderr = (work / "stderr").read_text(errors="replace").splitlines()


def _ask(q: _Qmp, t: TargetModel) -> None:
    v = q.cmd("query-version")["qemu"]
    t.qemu_version = f"{v['major']}.{v['minor']}.{v['micro']}"
    t.arch = q.cmd("query-target").get("arch")
    mt = str(q.cmd("qom-get", path="/machine", property="type"))
    t.machine_type = mt[: -len("-machine")] if mt.endswith("-machine") else mt
    t.machines = {m["name"]: m.get("alias") for m in q.cmd("query-machines")}
    t.blocks = parse_info_ramblock(q.cmd("human-monitor-command",
                                         **{"command-line": "info ramblock"}))
    cpus = q.cmd("query-cpus-fast")
    cpu = TargetCpu(count=len(cpus))
    with contextlib.suppress(QmpError):
        cpu.possible = len(q.cmd("query-hotpluggable-cpus"))
    if cpus:
        path = cpus[0]["qom-path"]
        cpu.model = str(q.cmd("qom-get", path=path, property="type"))
        cpu.features = {}
        for f in FEATURES:
            try:
                cpu.features[f] = bool(q.cmd("qom-get", path=path, property=f))
            except QmpError:
                cpu.features[f] = False  # this QEMU does not know the feature at all
    t.cpu = cpu
    t.compared.append("target QEMU (query-version, machines, info ramblock, CPU)")


def _modern_cpu_hotplug(q: _Qmp, t: TargetModel) -> None:
    for path, typ in _qom_walk(q):
        if typ in ACPI_PM_TYPES:
            try:
                q.cmd("qom-set", path=path, property="cpu-hotplug-legacy", value=False)
                t.notes.append(f"switched {path} ({typ}) to the modern CPU hotplug interface, "
                               "as the file's guest did")
            except QmpError as e:
                t.notes.append(f"could not switch {path} to modern CPU hotplug: {e}")


def _save_own_state(q: _Qmp, t: TargetModel, work: Path, deadline: float) -> None:
    from .target_formats import model_from_walk

    out = work / "own-state.mig"
    major, minor = (int(x) for x in (t.qemu_version or "0.0").split(".")[:2])
    uri = f"file:{out}" if (major, minor) >= (8, 2) else f"exec:cat > {shlex.quote(str(out))}"
    q.cmd("migrate", uri=uri)
    while True:
        st = q.cmd("query-migrate")
        if st.get("status") in ("completed", "failed", "cancelled"):
            break
        if time.monotonic() > deadline:
            raise OSError("saving the target's own state did not finish in time")
        time.sleep(0.05)
    if st.get("status") != "completed":
        t.notes.append(f"the target could not save its own state: {st.get('error-desc')}")
        return
    from .capture import open_capture

    with open_capture(str(out), strict=False) as cap:
        own = model_from_walk(cap.source.buf, cap.walk, "qemu", t.source)
    t.sections, t.layouts = own.sections, own.layouts
    t.page_size = own.page_size
    t.notes += [n for n in own.notes if "could not be read" in n]
    t.compared.append("the target's own saved state")


def _dump_vmstate(binary: str, argv: list[str], env: dict[str, str], work: Path,
                  deadline: float, t: TargetModel) -> None:
    from .target_formats import vmsd_index

    dump = work / "vmstate.json"
    proc = _spawn(binary, [*argv, "-dump-vmstate", str(dump)], env, work, "dump.stderr")
    try:
        proc.wait(max(0.1, deadline - time.monotonic()))
        t.vmsds, t.vmsd_versions = vmsd_index(json.loads(dump.read_text()))
    except (subprocess.TimeoutExpired, OSError, ValueError) as e:
        t.notes.append(f"-dump-vmstate gave nothing usable ({type(e).__name__})")
    finally:
        _kill(proc)


def _machine_help(binary: str, env: dict[str, str], work: Path,
                  deadline: float) -> dict[str, str | None] | None:
    """Machine types of a binary that did not start (`-machine help`)."""
    try:
        r = subprocess.run([binary, "-machine", "help"], env=env, cwd=work,
                           stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=max(0.1, min(20.0, deadline - time.monotonic())))
    except (OSError, subprocess.TimeoutExpired):
        return None
    out: dict[str, str | None] = {}
    for ln in r.stdout.decode(errors="replace").splitlines()[1:]:
        m = re.match(r"^(\S+)\s+(.*)$", ln)
        if m:
            alias = re.search(r"\(alias of (\S+)\)", m[2])
            if alias:
                out[alias[1]] = m[1]
            else:
                out.setdefault(m[1], None)
    return out or None


def predict_on_qemu(src: Source, walk: StreamWalk, cmdline: str,
                    timeout: float = 120.0) -> TargetPrediction:
    """Probe the target QEMU of `cmdline` (mirroring what the file needs) and predict the
    load of the walked file into it: a `prediction.TargetPrediction`."""
    from .prediction import predict

    return predict(src, walk, probe_qemu(cmdline, hints_for(walk), timeout))


__all__ = ["parse_cmdline", "sanitize", "hints_for", "ProbeHints", "first_error_line",
           "probe_qemu", "predict_on_qemu", "QmpError", "ACPI_PM_TYPES"]
