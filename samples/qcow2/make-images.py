#!/usr/bin/env python3
"""Real qcow2 images with internal snapshots, and QEMU's own figures beside each.

Boots the sample guest of samples/generate.py (same kernel, initramfs, workload) under
QEMU 10 or QEMU 7.2 with qcow2 disks, takes internal snapshots with HMP `savevm`, QMP
`snapshot-save` (QEMU 10), QMP `blockdev-snapshot-internal-sync` and `qemu-img snapshot -c`
(disk-only), or `virsh snapshot-create-as` on a running libvirt domain, and stores per
scenario NAME in the output folder:

  NAME.qcow2.zst            zstd -19 of each image (NAME-a / NAME-b for two disks)
  NAME.SNAP.pmem-pages.bin.zst   per-4-KiB-page blake2b-64 digests of `pmemsave` taken with
                            the VM paused right before the snapshot (samples/generate.py's
                            pmem_digest conventions)
  NAME.json                 the manifest: QEMU versions and command lines, every step, per
                            snapshot `info ramblock` and pmemsave digests at save time, the
                            sha256 of the VM state as QEMU itself reads it (`qemu-img
                            snapshot -a` on a copy, then `qemu-io -c 'read -b -v'`), and a
                            pmemsave after a real `-loadvm SNAP` of a copy; per image
                            `qemu-img snapshot -l`, `qemu-img info --output=json`,
                            `qemu-img check`

plus `q10-state-volume.raw.zst` (+ .json): the VM state of one snapshot as QEMU read it,
followed by zero padding up to a round size, the way Proxmox keeps `vmstate` volumes.

Usage (as root on the lab machine; bash samples/install-lab.sh first):
  python3 samples/qcow2/make-images.py                 # every scenario into samples/qcow2/
  python3 samples/qcow2/make-images.py --list
  python3 samples/qcow2/make-images.py --only q10-snapshots --outdir /tmp/q
  python3 samples/qcow2/make-images.py --big /var/tmp/qcow2-big   # benchmark image, not committed

Tests import this file (make_scenario) to make the quick variants at test time.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLES = HERE.parent
QEMU_IMG = "qemu-img"
QEMU_IO = "qemu-io"
MiB = 1 << 20


def _load(name: str, path: Path):
    sys.dont_write_bytecode = True  # leave no __pycache__ in the samples folders
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


gen = _load("miginspect_samples_generate", SAMPLES / "generate.py")
log = gen.log


def run(argv: list, check: bool = True, timeout: float = 900) -> dict:
    t0 = time.time()
    p = subprocess.run([str(a) for a in argv], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=timeout)
    res = {"argv": [str(a) for a in argv], "rc": p.returncode, "stdout": p.stdout,
           "stderr": p.stderr, "seconds": round(time.time() - t0, 2)}
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(res['argv'])} failed ({p.returncode}): {p.stderr.strip()}")
    return res


def file_record(path: Path) -> dict:
    st = path.stat()
    return {"apparent_size": st.st_size, "allocated_size": st.st_blocks * 512,
            "sha256": gen.sha256_file(path)}


def sparse_copy(src: Path, dst: Path) -> None:
    run(["cp", "--sparse=always", src, dst])


# --------------------------------------------------------------------------------------
# images and snapshots


def create_image(path: Path, size: str, options: dict) -> dict:
    argv = [QEMU_IMG, "create", "-f", "qcow2"]
    if options:
        argv += ["-o", ",".join(f"{k}={v}" for k, v in options.items())]
    argv += [path, size]
    r = run(argv)
    return {"command": " ".join(r["argv"]), "stdout": r["stdout"].strip()}


def image_figures(path: Path) -> dict:
    """What QEMU's own tools say about the image (read-only)."""
    lst = run([QEMU_IMG, "snapshot", "-l", path])
    info = run([QEMU_IMG, "info", "--output=json", path])
    chk = run([QEMU_IMG, "check", "--output=json", path], check=False)
    return {"qemu-img snapshot -l": lst["stdout"],
            "qemu-img info": json.loads(info["stdout"]),
            "qemu-img check": {"rc": chk["rc"], "json": json.loads(chk["stdout"] or "null"),
                               "stderr": chk["stderr"]},
            "qemu-img --version": run([QEMU_IMG, "--version"])["stdout"].splitlines()[0]}


def drive_args(disks: list[dict]) -> list[str]:
    out = []
    for i, d in enumerate(disks):
        out += ["-drive", f"file={d['path']},format=qcow2,if=ide,index={i},node-name={d['node']}"]
    return out


def boot(qemu: dict, guest: dict, work: Path, disks: list[dict], extra=(), wait=True,
         **kw) -> object:
    q = dict(qemu, args=list(qemu["args"]) + drive_args(disks) + list(extra))
    vm = gen.VM(q, guest, work, **kw)
    if wait:
        log(f"  guest ready: {vm.wait_ready()}")
    return vm


def savevm_hmp(vm, name: str) -> dict:
    t0 = time.time()
    out = vm.qmp.hmp(f"savevm {name}")
    if out.strip():
        raise RuntimeError(f"savevm {name}: {out.strip()}")
    return {"how": f"HMP (human-monitor-command) savevm {name}", "output": out,
            "seconds": round(time.time() - t0, 2)}


def snapshot_save_qmp(vm, name: str, vmstate: str, devices: list[str]) -> dict:
    """QEMU >= 6.0 QMP snapshot-save job."""
    t0 = time.time()
    args = {"job-id": f"save-{name}", "tag": name, "vmstate": vmstate, "devices": devices}
    vm.qmp.cmd("snapshot-save", **args)
    while True:
        jobs = {j["id"]: j for j in vm.qmp.cmd("query-jobs")}
        j = jobs[args["job-id"]]
        if j["status"] == "concluded":
            break
        if time.time() - t0 > 600:
            raise TimeoutError("snapshot-save did not conclude")
        time.sleep(0.1)
    vm.qmp.cmd("job-dismiss", id=args["job-id"])
    if j.get("error"):
        raise RuntimeError(f"snapshot-save {name}: {j['error']}")
    return {"how": "QMP snapshot-save", "arguments": args, "job": j,
            "seconds": round(time.time() - t0, 2)}


def qmp(vm, command: str, arguments: dict):
    """A QMP command whose arguments include `name` (generate.QMP.cmd takes it as its own)."""
    q = vm.qmp
    q.sock.sendall(json.dumps({"execute": command, "arguments": arguments}).encode() + b"\n")
    while True:
        r = q._read()
        if "event" in r:
            q.events.append(r)
            continue
        if "error" in r:
            raise gen.QMPError(command, r["error"])
        return r.get("return")


def disk_only_qmp(vm, node: str, name: str) -> dict:
    qmp(vm, "blockdev-snapshot-internal-sync", {"device": node, "name": name})
    return {"action": "disk-only snapshot", "snapshot": name,
            "how": f"QMP blockdev-snapshot-internal-sync device={node} name={name} "
                   "(VM running)"}


def save_time_figures(vm, outdir: Path, stem: str, snap: str, work: Path) -> dict:
    """With the VM paused: info ramblock, query-status and the pmemsave digests."""
    text = vm.qmp.hmp("info ramblock")
    pages = outdir / f"{stem}.{snap}.pmem-pages.bin.zst"
    return {"query-status": vm.qmp.cmd("query-status"),
            "info_ramblock": {"raw": text, "parsed": gen.parse_ramblock(text)},
            "pmemsave": gen.pmem_digest(vm, work / f"{stem}.{snap}.pmem", pages)}


def qemu_read_state(image: Path, snap: str, size: int, work: Path,
                    keep: Path | None = None) -> dict:
    """The VM state bytes as QEMU reads them: `qemu-img snapshot -a` on a copy makes the
    snapshot active, `qemu-io -r -c 'read -b -v'` dumps its vmstate area."""
    copy = work / f"read-{snap}.qcow2"
    sparse_copy(image, copy)
    run([QEMU_IMG, "snapshot", "-a", snap, copy])
    h = hashlib.sha256()
    out = open(keep, "wb") if keep else None
    chunk = 4 * MiB
    try:
        for off in range(0, size, chunk):
            n = min(chunk, size - off)
            r = run([QEMU_IO, "-r", "-f", "qcow2", "-c",
                     f"read -b -v {off} {(n + 511) // 512 * 512}", copy])
            data = bytearray()
            for line in r["stdout"].splitlines():
                if len(line) > 10 and line[8] == ":":
                    data += bytes.fromhex(line[10:58].replace(" ", ""))
            data = bytes(data[:n])
            if len(data) != n:
                raise RuntimeError(f"qemu-io returned {len(data)} of {n} bytes at {off}")
            h.update(data)
            if out:
                out.write(data)
    finally:
        if out:
            out.close()
        copy.unlink()
    return {"how": "qemu-img snapshot -a SNAP on a copy; qemu-io -r -c 'read -b -v OFF LEN' "
                   "(LEN rounded up to 512, cut to vm_state_size)",
            "bytes": size, "sha256": h.hexdigest()}


def loadvm_figures(qemu: dict, guest: dict, work: Path, disks: list[dict], snap: str,
                   mem_mib: int, save_pmem: dict, workload: dict) -> dict:
    """A real `-loadvm SNAP -S` on copies of the disks, then pmemsave."""
    copies = []
    for d in disks:
        c = work / f"loadvm-{snap}-{Path(d['path']).name}"
        sparse_copy(Path(d["path"]), c)
        copies.append(dict(d, path=str(c)))
    vm = boot(qemu, guest, work, copies, extra=["-loadvm", snap, "-S"], wait=False,
              mem_mib=mem_mib, fill_mib=workload["fill_mib"], ws_mib=workload["ws_mib"],
              ws_delay=workload["ws_delay_s"], reserve_mib=workload["zero_reserve_mib"])
    try:
        status = vm.qmp.cmd("query-status")
        pm = gen.pmem_digest(vm, work / f"loadvm-{snap}.pmem", None)
        argv = vm.argv
    finally:
        vm.quit()
        for c in copies:
            Path(c["path"]).unlink(missing_ok=True)
    return {"argv": argv, "query-status": status, "pmemsave": pm, "stderr": vm.stderr(),
            "pmemsave_masked_equals_save_time": pm["sha256_masked"] == save_pmem["sha256_masked"],
            "pmemsave_equals_save_time": pm["sha256"] == save_pmem["sha256"]}


# --------------------------------------------------------------------------------------
# scenarios: each returns nothing; it fills `man` and the images in `disks`


def _paused_snapshot(ctx, vm, snap: str, how: str, disks: list[dict]) -> None:
    vm.qmp.cmd("stop")
    fig = save_time_figures(vm, ctx.outdir, ctx.name, snap, ctx.work)
    if how == "qmp":
        step = snapshot_save_qmp(vm, snap, disks[0]["node"], [d["node"] for d in disks])
    else:
        step = savevm_hmp(vm, snap)
    ctx.steps.append(dict(step, action="snapshot with VM state", snapshot=snap))
    ctx.save_time[snap] = fig
    log(f"  {snap}: {step['how']} ({step['seconds']} s)")


def sc_snapshots(ctx) -> None:
    """Two VM-state snapshots, guest memory changed between them, plus a disk-only one."""
    d = ctx.disk("", "1G", {})
    vm = boot(ctx.qemu, ctx.guest, ctx.work, [d], ws_mib=gen.WS_MIB, ws_delay=0)
    ctx.vm_info = vm.info()
    ctx.workload = vm.workload
    _paused_snapshot(ctx, vm, "s1", "hmp", [d])
    vm.qmp.cmd("cont")
    time.sleep(1.5)  # the working set keeps rewriting guest pages
    if ctx.qemu is gen.QEMU10:
        ctx.steps.append(disk_only_qmp(vm, d["node"], "disk-only"))
        time.sleep(0.5)
    _paused_snapshot(ctx, vm, "s2", "qmp" if ctx.qemu is gen.QEMU10 else "hmp", [d])
    vm.quit()
    if ctx.qemu is not gen.QEMU10:
        r = run([QEMU_IMG, "snapshot", "-c", "disk-only", d["path"]])
        ctx.steps.append({"action": "disk-only snapshot", "snapshot": "disk-only",
                          "how": " ".join(r["argv"]) + " (VM off; QEMU 10's qemu-img)"})


def sc_small_clusters(ctx) -> None:
    """512-byte clusters (L1 coverage 32 KiB) on a disk whose size is not a multiple of
    it, and the zstd compression type."""
    d = ctx.disk("", str(100 * MiB + 3 * 512 + 512 * 7),
                 {"cluster_size": 512, "compression_type": "zstd"})
    vm = boot(ctx.qemu, ctx.guest, ctx.work, [d])
    ctx.vm_info, ctx.workload = vm.info(), vm.workload
    _paused_snapshot(ctx, vm, "small", "hmp", [d])
    vm.quit()


def sc_extl2_resized(ctx) -> None:
    """Extended L2 entries (32 KiB clusters, 1 KiB subclusters); the disk grows after the
    first snapshot and a second one is taken at the new size."""
    d = ctx.disk("", str(40 * MiB), {"cluster_size": 32768, "extended_l2": "on"})
    vm = boot(ctx.qemu, ctx.guest, ctx.work, [d])
    ctx.vm_info, ctx.workload = vm.info(), vm.workload
    _paused_snapshot(ctx, vm, "before-resize", "hmp", [d])
    vm.quit()
    r = run([QEMU_IMG, "resize", d["path"], "+300M"])
    ctx.steps.append({"action": "resize", "how": " ".join(r["argv"]),
                      "stdout": r["stdout"].strip()})
    vm = boot(ctx.qemu, ctx.guest, ctx.work, [d])
    _paused_snapshot(ctx, vm, "after-resize", "hmp", [d])
    vm.quit()


def sc_compat_010(ctx) -> None:
    """A version-2 header (compat=0.10, QEMU's format before 1.1): 72-byte header, no
    feature bits, no zero flag."""
    d = ctx.disk("", "256M", {"compat": "0.10"})
    vm = boot(ctx.qemu, ctx.guest, ctx.work, [d])
    ctx.vm_info, ctx.workload = vm.info(), vm.workload
    _paused_snapshot(ctx, vm, "v2", "hmp", [d])
    vm.quit()


def sc_two_disks(ctx) -> None:
    """A VM with two disks: savevm keeps the state in the first; the second gets a
    snapshot of the same name with vm_state_size 0."""
    a = ctx.disk("-a", "64M", {})
    b = ctx.disk("-b", "96M", {"cluster_size": 16384})
    vm = boot(ctx.qemu, ctx.guest, ctx.work, [a, b])
    ctx.vm_info, ctx.workload = vm.info(), vm.workload
    _paused_snapshot(ctx, vm, "both", "hmp", [a, b])
    vm.quit()


LIBVIRT_DOM = "miginspect-qcow2"
LIBVIRT_UUID = "6d696769-6e73-7065-6374-71636f773200"


def _libvirt_xml(lv, ctx, disk: dict, serial: Path) -> str:
    g = ctx.guest
    cmdline = (f"console=ttyS0 rdinit=/init quiet nokaslr init_on_free=1 panic=-1 "
               f"mig_fill={gen.FILL_MIB} mig_ws=0 mig_reserve=12 mig_wsdelay=0")
    ctx.workload = {"mem_mib": gen.GUEST_MEM_MIB, "fill_mib": gen.FILL_MIB, "ws_mib": 0,
                    "ws_delay_s": 0, "zero_reserve_mib": 12, "kernel_cmdline": cmdline}
    return f"""<domain type='qemu'>
  <name>{LIBVIRT_DOM}</name>
  <uuid>{LIBVIRT_UUID}</uuid>
  <memory unit='MiB'>{gen.GUEST_MEM_MIB}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{g['kernel']}</kernel>
    <initrd>{g['initrd']}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk['path']}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <controller type='usb' model='none'/>
    <serial type='file'><source path='{serial}'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def sc_libvirt(ctx) -> None:
    """`virsh snapshot-create-as` of a running (then paused) libvirt domain with a qcow2
    disk; `virsh snapshot-revert` is the loadvm oracle."""
    if os.geteuid() != 0 or not shutil.which("libvirtd"):
        raise RuntimeError("the libvirt scenario needs root and libvirtd")
    lv = _load("miginspect_samples_libvirt", SAMPLES / "libvirt" / "make-images.py")
    d = ctx.disk("", "1G", {})
    daemons = lv.Daemons(ctx.work / "libvirt")
    daemons.start()
    serial = ctx.work / "libvirt-serial.log"
    xml = ctx.work / f"{LIBVIRT_DOM}.xml"
    xml.write_text(_libvirt_xml(lv, ctx, d, serial))
    v = lambda *a: lv.virsh(*a, check=True)  # noqa: E731
    try:
        ctx.vm_info = {"libvirtd --version": lv.run(["libvirtd", "--version"])["stdout"].strip(),
                       "virsh version": lv.virsh("version")["stdout"].strip(),
                       "domain_xml_given": xml.read_text()}
        v("define", xml)
        v("start", LIBVIRT_DOM)
        log(f"  guest ready: {lv.wait_serial(serial, gen.SERIAL_READY, domain=LIBVIRT_DOM)}")
        v("suspend", LIBVIRT_DOM)
        size = gen.GUEST_MEM_MIB << 20
        fig = {"info_ramblock": lv.info_ramblock(LIBVIRT_DOM),
               "pmemsave": lv.pmemsave(LIBVIRT_DOM, size, ctx.work / "lv.pmem",
                                       ctx.outdir / f"{ctx.name}.lv-snap.pmem-pages.bin.zst")}
        ctx.save_time["lv-snap"] = fig
        r = v("snapshot-create-as", LIBVIRT_DOM, "lv-snap", "--description",
              "miginspect sample: internal snapshot of a paused domain")
        ctx.steps.append({"action": "snapshot with VM state", "snapshot": "lv-snap",
                          "how": " ".join(r["argv"]), "stdout": r["stdout"].strip()})
        ctx.vm_info["virsh snapshot-dumpxml"] = v("snapshot-dumpxml", LIBVIRT_DOM,
                                                  "lv-snap")["stdout"]
        qlog = Path(f"/var/log/libvirt/qemu/{LIBVIRT_DOM}.log")
        if qlog.exists():  # the QEMU command line libvirt ran
            ctx.vm_info["libvirt qemu log (tail)"] = qlog.read_text(errors="replace")[-8192:]
        v("resume", LIBVIRT_DOM)
        time.sleep(1.0)
        rv = v("snapshot-revert", LIBVIRT_DOM, "lv-snap", "--paused")
        pm = lv.pmemsave(LIBVIRT_DOM, size, ctx.work / "revert.pmem", None)
        ctx.loadvm["lv-snap"] = {
            "command": " ".join(rv["argv"]), "state_after": lv.domstate(LIBVIRT_DOM),
            "pmemsave": pm,
            "pmemsave_masked_equals_save_time":
                pm["sha256_masked"] == fig["pmemsave"]["sha256_masked"],
            "pmemsave_equals_save_time": pm["sha256"] == fig["pmemsave"]["sha256"]}
    finally:
        lv.virsh("destroy", LIBVIRT_DOM)
        lv.virsh("snapshot-delete", LIBVIRT_DOM, "lv-snap", "--metadata")
        lv.virsh("undefine", LIBVIRT_DOM)
        daemons.stop()


SCENARIOS = {
    # name: (function, QEMU, description)
    "q10-snapshots": (sc_snapshots, "qemu10",
                      "QEMU 10, default qcow2 (64 KiB clusters), 1 GiB disk: s1 by HMP savevm "
                      "with the guest paused, s2 by QMP snapshot-save 1.5 s later (the guest's "
                      "working set changed memory in between), and a disk-only snapshot taken "
                      "between them with blockdev-snapshot-internal-sync."),
    "q72-snapshots": (sc_snapshots, "qemu72",
                      "QEMU 7.2, default qcow2: s1 and s2 by HMP savevm with the guest paused, "
                      "memory changed between them; then a disk-only snapshot by `qemu-img "
                      "snapshot -c` with the VM off."),
    "q10-small-clusters-zstd": (sc_small_clusters, "qemu10",
                                "QEMU 10, cluster_size 512 (one L1 entry maps 32 KiB), "
                                "disk of 100 MiB + 5 KiB (not a multiple of the L1 coverage), "
                                "compression_type zstd; one savevm."),
    "q10-extl2-resized": (sc_extl2_resized, "qemu10",
                          "QEMU 10, extended_l2=on with 32 KiB clusters; savevm, qemu-img "
                          "resize +300M with the VM off, savevm again: the two states live "
                          "at different guest offsets."),
    "q10-two-disks": (sc_two_disks, "qemu10",
                      "QEMU 10, two IDE disks; one savevm: disk -a holds the VM state, disk -b "
                      "a snapshot of the same name with vm_state_size 0."),
    "q10-compat-0.10": (sc_compat_010, "qemu10",
                        "QEMU 10, a version-2 image (compat=0.10), 256 MiB disk; one savevm."),
    "q72-extl2-resized": (sc_extl2_resized, "qemu72",
                          "As q10-extl2-resized, with QEMU 7.2."),
    "libvirt-snapshot": (sc_libvirt, "qemu10",
                         "libvirt 11 with QEMU 10: a defined domain with a virtio qcow2 disk, "
                         "paused with `virsh suspend`, then `virsh snapshot-create-as` (an "
                         "internal snapshot with VM state); `virsh snapshot-revert --paused` "
                         "is the loadvm oracle."),
}
#: Scenarios whose images are committed; the others are made by the tests.
COMMITTED = ["q10-snapshots", "q72-snapshots", "q10-small-clusters-zstd", "q10-extl2-resized",
             "libvirt-snapshot"]


class Ctx:
    def __init__(self, name: str, outdir: Path, work: Path, guest: dict, compress: bool):
        self.name, self.outdir, self.work, self.guest = name, outdir, work, guest
        self.compress = compress
        self.qemu = gen.QEMU10 if SCENARIOS[name][1] == "qemu10" else gen.QEMU72
        self.disks: list[dict] = []
        self.steps: list[dict] = []
        self.save_time: dict[str, dict] = {}
        self.loadvm: dict[str, dict] = {}  # set by scenarios with their own loadvm oracle
        self.vm_info = self.workload = None

    def disk(self, suffix: str, size: str, options: dict) -> dict:
        path = self.work / f"{self.name}{suffix}.qcow2"
        rec = create_image(path, size, options)
        d = {"suffix": suffix, "path": str(path), "node": f"disk{len(self.disks)}",
             "create": rec, "options": options}
        self.disks.append(d)
        self.steps.append({"action": "create", "image": path.name, **rec})
        return d


def make_scenario(name: str, outdir: Path, work: Path, guest: dict | None = None,
                  compress: bool = True, volume: bool = False) -> dict:
    """Run scenario `name`; images go to `outdir` (zstd-compressed if `compress`, else as
    NAME.qcow2), with NAME.json. Returns the manifest."""
    guest = guest or gen.build_guest()
    ctx = Ctx(name, outdir, work, guest, compress)
    t0 = time.time()
    try:
        SCENARIOS[name][0](ctx)
    finally:
        for vm in gen.VM.started:
            if vm.proc.poll() is None:
                vm.proc.kill()
                vm.proc.wait()
    man = {"name": name, "description": SCENARIOS[name][2],
           "generated_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "generator": "samples/qcow2/make-images.py", "qemu": ctx.vm_info,
           "guest": dict(ctx.workload, **guest), "steps": ctx.steps, "images": [],
           "snapshots": {}}
    state_disk = Path(ctx.disks[0]["path"])
    figs0 = image_figures(state_disk)
    for snap, fig in ctx.save_time.items():
        size = next(s["vm-state-size"] for s in figs0["qemu-img info"]["snapshots"]
                    if s["name"] == snap)
        keep = work / f"{name}.{snap}.state" if volume else None
        rec = {"save_time": fig, "image": state_disk.name,
               "qemu_read_state": qemu_read_state(state_disk, snap, size, work, keep)}
        rec["loadvm"] = ctx.loadvm.get(snap) or loadvm_figures(
            ctx.qemu, guest, work, ctx.disks, snap, ctx.workload["mem_mib"], fig["pmemsave"],
            ctx.workload)
        man["snapshots"][snap] = rec
        log(f"  {snap}: loadvm pmemsave equals save time (masked): "
            f"{rec['loadvm']['pmemsave_masked_equals_save_time']}")
    for d in ctx.disks:
        man["images"].append(_store_image(ctx, Path(d["path"]), d))
    (outdir / f"{name}.json").write_text(json.dumps(man, indent=1) + "\n")
    log(f"{name}: done in {time.time() - t0:.0f} s")
    return man


def _store_image(ctx, path: Path, d: dict) -> dict:
    rec = {"role": d["suffix"].lstrip("-") or "disk", "node": d["node"],
           "options": d["options"], "raw": file_record(path), **image_figures(path)}
    if ctx.compress:
        dst = ctx.outdir / f"{path.name}.zst"
        run(["zstd", "-q", "-19", "--long=27", "-T2", "-f", path, "-o", dst])
        os.chmod(dst, 0o644)
        rec["file"] = dst.name
        rec["compressed_size"] = dst.stat().st_size
    else:
        dst = ctx.outdir / path.name
        if dst != path:
            shutil.copyfile(path, dst)
        rec["file"] = dst.name
    return rec


def make_volume(man: dict, outdir: Path, work: Path, snap: str, round_to: int = 64 * MiB) -> dict:
    """A Proxmox-style state volume: the snapshot's VM state as QEMU read it, then zeros up
    to the next multiple of `round_to`."""
    state = work / f"{man['name']}.{snap}.state"
    size = state.stat().st_size
    total = (size + round_to - 1) // round_to * round_to
    with open(state, "r+b") as f:
        f.truncate(total)
    name = "q10-state-volume"
    dst = outdir / f"{name}.raw.zst"
    run(["zstd", "-q", "-19", "--long=27", "-T2", "-f", state, "-o", dst])
    os.chmod(dst, 0o644)
    rec = {"name": name, "generator": "samples/qcow2/make-images.py",
           "description": f"The VM state of snapshot {snap!r} of {man['name']} as QEMU read "
                          "it (qemu-io read -b), followed by zero bytes up to a multiple of "
                          f"{round_to // MiB} MiB: a raw state volume as Proxmox keeps them.",
           "derived_from": {"scenario": man["name"], "snapshot": snap},
           "stream_bytes": size, "volume_bytes": total, "padding_bytes": total - size,
           "stream_sha256": man["snapshots"][snap]["qemu_read_state"]["sha256"],
           "volume": file_record(state), "file": dst.name,
           "compressed_size": dst.stat().st_size,
           "save_time": man["snapshots"][snap]["save_time"],
           "pmem_pages_file": f"{man['name']}.{snap}.pmem-pages.bin.zst"}
    (outdir / f"{name}.json").write_text(json.dumps(rec, indent=1) + "\n")
    state.unlink()
    return rec


def big_main(outdir: Path, work: Path, guest: dict) -> None:
    """>= 1 GiB VM states for benchmarks/bench_qcow2.py (uncompressed, not committed):
    big.qcow2 (64 KiB clusters: one contiguous run) by HMP savevm, and big-4k.qcow2
    (4 KiB clusters: L2 tables between the data) by QMP snapshot-save with vmstate on it."""
    disks = [{"suffix": "", "path": str(outdir / "big.qcow2"), "node": "disk0", "options": {}},
             {"suffix": "-4k", "path": str(outdir / "big-4k.qcow2"), "node": "disk1",
              "options": {"cluster_size": 4096}}]
    for d in disks:
        create_image(Path(d["path"]), "4G", d["options"])
    vm = boot(gen.QEMU10, guest, work, disks, mem_mib=2048, fill_mib=1200, reserve_mib=24)
    vm.qmp.cmd("stop")
    steps = [savevm_hmp(vm, "big"), snapshot_save_qmp(vm, "big-4k", "disk1", ["disk1"])]
    vm.quit()
    man = {"name": "big", "generator": "samples/qcow2/make-images.py --big", "steps": steps,
           "qemu": {"argv": vm.argv}, "images": [dict(d, **image_figures(Path(d["path"])))
                                                  for d in disks]}
    (outdir / "big.json").write_text(json.dumps(man, indent=1) + "\n")
    for rec in man["images"]:
        sizes = [s["vm-state-size"] for s in rec["qemu-img info"].get("snapshots", [])]
        log(f"big: {rec['path']}: VM states {sizes}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--outdir", type=Path, default=HERE)
    ap.add_argument("--only", action="append", default=[], help="scenario; repeatable")
    ap.add_argument("--all", action="store_true", help="also the scenarios the tests make")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--keep-work", action="store_true")
    ap.add_argument("--big", type=Path, metavar="DIR", help="write the benchmark image into DIR")
    args = ap.parse_args()
    if args.list:
        for n, (_, q, desc) in SCENARIOS.items():
            print(f"{n} ({q}{', committed' if n in COMMITTED else ', made by the tests'}): {desc}")
        return
    for n in args.only:
        if n not in SCENARIOS:
            ap.error(f"unknown scenario {n!r} (see --list)")
    guest = gen.build_guest()
    (gen.LAB / "work").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="qcow2-", dir=gen.LAB / "work"))
    log(f"workdir {work}")
    try:
        if args.big:
            args.big.mkdir(parents=True, exist_ok=True)
            big_main(args.big.resolve(), work, guest)
            return
        outdir = args.outdir.resolve()
        outdir.mkdir(parents=True, exist_ok=True)
        names = args.only or (list(SCENARIOS) if args.all else COMMITTED)
        for n in names:
            log(f"scenario {n}")
            man = make_scenario(n, outdir, work, guest, volume=n == "q10-snapshots")
            if n == "q10-snapshots":
                rec = make_volume(man, outdir, work, "s1")
                log(f"state volume: {rec['stream_bytes']:,} B stream + "
                    f"{rec['padding_bytes']:,} B zeros")
    finally:
        if args.keep_work:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
