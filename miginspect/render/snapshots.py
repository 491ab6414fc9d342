"""Terminal rendering of `SnapshotsReport` (the JSON comes from its to_json)."""

from __future__ import annotations

import datetime as _dt

from rich import box
from rich.console import Console
from rich.table import Table

from ..inspector.snapshots import ImageSnapshots, SnapshotRow, SnapshotsReport
from .fmt import hexoff, name, short_size, size


def shown(s: str | None) -> str:
    """An untrusted name made printable (control characters as \\xNN) and escaped for
    rich markup."""
    if s is None:
        return "-"
    return name("".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in s))


def vm_clock(ns: int) -> str:
    """Guest run time as qemu-img shows it: hours:minutes:seconds.milliseconds."""
    ms = ns // 1_000_000
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:04d}:{m:02d}:{s:02d}.{ms:03d}"


def date(sec: int) -> str:
    return _dt.datetime.fromtimestamp(sec, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def headline(r: SnapshotsReport) -> str:
    """The first line: how many snapshots, how many hold VM state, what that costs."""
    n, states = r.snapshot_count, r.with_state
    where = shown(r.images[0].path) if len(r.images) == 1 else f"{len(r.images)} images"
    held = sum(x.vm_state_allocated or 0 for x in states)
    text = f"{n} snapshot{'s' if n != 1 else ''}, "
    if not states:
        return text + f"none with VM state: {where}"
    return text + f"{len(states)} with VM state ({size(held)} of the image): {where}"


def _image_line(im: ImageSnapshots) -> str:
    i = im.image
    bits = [f"qcow2 v{i['version']}", f"{short_size(i['cluster_size'])} clusters",
            f"disk {short_size(i['virtual_size'])}"]
    if i["extended_l2"]:
        bits.append("extended L2")
    if i["compression_type"] != "zlib":
        bits.append(f"compression {shown(i['compression_type'])}")
    if i["encryption"]:
        bits.append(f"[yellow]encrypted ({shown(i['encryption'])})[/]")
    if i["data_file"]:
        bits.append(f"[yellow]external data file {shown(i['data_file'])}[/]")
    if i["backing_file"]:
        bits.append(f"backing file {shown(i['backing_file'])}")
    return f"[bold]{shown(i['path'])}[/]: " + ", ".join(bits)


def _state_cell(r: SnapshotRow, im: ImageSnapshots) -> str:
    sn = r.snapshot
    if sn.has_vm_state:
        return short_size(sn.vm_state_size)
    if r.vm_state_in and r.vm_state_in != im.path:
        return "[dim]in another disk[/]"
    return "[dim]disk only[/]"


def _table(im: ImageSnapshots) -> Table:
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    t.add_column("ID", no_wrap=True)
    t.add_column("name", overflow="fold", min_width=8)
    t.add_column("date (UTC)", no_wrap=True)
    t.add_column("VM clock", no_wrap=True)
    t.add_column("VM state", justify="right", overflow="fold")
    icount = any(r.snapshot.icount is not None for r in im.snapshots)
    if icount:
        t.add_column("icount", justify="right", no_wrap=True)
    for r in im.snapshots:
        sn = r.snapshot
        row = [shown(sn.id), shown(sn.name), date(sn.date_sec), vm_clock(sn.vm_clock_nsec),
               _state_cell(r, im)]
        if icount:
            row.append("-" if sn.icount is None else f"{sn.icount:,}")
        t.add_row(*row)
    return t


def _placement(im: ImageSnapshots) -> Table | None:
    """Where each VM state lives: guest offset, disk size then, clusters it occupies."""
    rows = [r for r in im.snapshots if r.snapshot.has_vm_state]
    if not rows:
        return None
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
              title="where the VM states are", title_justify="left", title_style="bold")
    t.add_column("ID", no_wrap=True)
    t.add_column("disk size then", justify="right", no_wrap=True)
    t.add_column("state at guest", justify="right", no_wrap=True)
    t.add_column("in the image", justify="right", no_wrap=True)
    t.add_column("pieces", justify="right", no_wrap=True)
    for r in rows:
        sn = r.snapshot
        disk = short_size(sn.disk_size) + ("" if sn.disk_size_recorded else "*")
        if r.problem:
            t.add_row(shown(sn.id), disk, hexoff(sn.vm_state_offset), "[red]damaged[/]", "-")
        else:
            t.add_row(shown(sn.id), disk, hexoff(sn.vm_state_offset),
                      short_size(r.vm_state_allocated), f"{r.vm_state_runs:,}")
    return t


#: Below this width the tables do not fit: each snapshot is shown as a block of lines.
NARROW = 76


def _stacked(im: ImageSnapshots, console: Console) -> None:
    for r in im.snapshots:
        sn = r.snapshot
        console.print(f"[bold]{shown(sn.id)}[/] {shown(sn.name)}")
        console.print(f"  {date(sn.date_sec)} UTC, VM clock {vm_clock(sn.vm_clock_nsec)}")
        text = f"  VM state {_state_cell(r, im)}"
        if sn.has_vm_state:
            text += f" at guest {hexoff(sn.vm_state_offset)}, disk {short_size(sn.disk_size)}"
            text += " then" + ("" if sn.disk_size_recorded else "*")
            text += (", [red]damaged[/]" if r.problem else
                     f", {short_size(r.vm_state_allocated)} in {r.vm_state_runs:,} piece(s)")
        if sn.icount is not None:
            text += f", icount {sn.icount:,}"
        console.print(text)


def render_snapshots(r: SnapshotsReport, console: Console) -> None:
    console.print(headline(r))
    for im in r.images:
        console.print()
        console.print(_image_line(im))
        if not im.snapshots:
            console.print("  no internal snapshots")
            continue
        if console.width < NARROW:
            _stacked(im, console)
        else:
            console.print(_table(im))
            p = _placement(im)
            if p is not None:
                console.print(p)
        if any(not x.snapshot.disk_size_recorded for x in im.snapshots):
            console.print("[dim]* not recorded in the snapshot (old QEMU); QEMU uses the "
                          "image's current size[/]")
    for g in r.groups:
        others = [p for p in g.images if p not in g.vm_state_images]
        if len(g.vm_state_images) == 1:
            text = f"VM state of {shown(g.name)!s}: in {shown(g.vm_state_images[0])}"
            if others:
                text += "; " + ", ".join(shown(p) for p in others) + " hold the disk only"
        elif not g.vm_state_images:
            text = f"{shown(g.name)}: disk-only snapshot on " + ", ".join(shown(p)
                                                                           for p in g.images)
        else:
            text = (f"[yellow]{shown(g.name)}: VM state in "
                    + ", ".join(shown(p) for p in g.vm_state_images)
                    + " (snapshots of different VMs that share a name?)[/]")
        console.print(text)
    for im in r.images:
        for row in im.snapshots:
            for note in row.notes:
                console.print(f"[yellow]{shown(im.path)}: {shown(row.snapshot.label())}: "
                              f"{shown(note)}[/]")
    for path, row in r.problems:
        at = f" at offset {hexoff(row.problem_offset)}" if row.problem_offset is not None else ""
        console.print(f"[red]{shown(path)}{at}: {shown(row.problem)}[/]")
