"""Terminal rendering of `SnapshotsReport` (the JSON comes from its to_json).

Snapshot names and paths come from the image: they are made printable (control
characters as \\xNN), wrapped at / : . - _ to the width the table leaves them, and escaped
before they reach rich markup. Below NARROW columns each snapshot is a block of lines."""

from __future__ import annotations

import datetime as _dt

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..inspector.qcow2 import vm_clock
from ..inspector.snapshots import ImageSnapshots, SnapshotRow, SnapshotsReport
from .fmt import hexoff, short_size, size

#: Below this width the snapshot table does not fit: each snapshot is a block of lines.
NARROW = 72
_MIN_NAME = 10


def printable(s: str | None) -> str:
    """An untrusted string with control characters shown as \\xNN (no markup escaping)."""
    if s is None:
        return "-"
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in s)


def shown(s: str | None) -> str:
    """An untrusted string made printable and escaped for rich markup."""
    return escape(printable(s))


def wrapped(s: str | None, width: int) -> str:
    """`shown`, in lines of at most `width`, broken after / : . - _ or a space when one is
    near enough, else at the width."""
    text = printable(s)
    lines = []
    while len(text) > width:
        cut = width
        for seps in ("/:.", "-_ "):
            at = max(text.rfind(c, 0, width) for c in seps)
            if at >= width // 2:
                cut = at + 1
                break
        lines.append(text[:cut])
        text = text[cut:]
    lines.append(text)
    return "\n".join(escape(x) for x in lines)


def date(sec: int) -> str:
    return _dt.datetime.fromtimestamp(sec, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def headline(r: SnapshotsReport) -> str:
    """The first line: how many snapshots, how many hold VM state, what that costs."""
    n, states = r.snapshot_count, r.with_state
    text = f"{n} snapshot{'s' if n != 1 else ''}"
    if len(r.images) > 1:
        text += f" in {len(r.images)} images"
    if not states:
        return text + ", none with VM state"
    held = sum(x.vm_state_allocated or 0 for x in states)
    return text + f", {len(states)} with VM state ({size(held)} of the image" \
        + ("s)" if len(r.images) > 1 else ")")


def _image_line(im: ImageSnapshots, width: int) -> str:
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
    return f"[bold]{wrapped(i['path'], width)}[/]\n  " + ", ".join(bits)


def _state_cell(r: SnapshotRow, im: ImageSnapshots) -> str:
    sn = r.snapshot
    if sn.has_vm_state:
        return short_size(sn.vm_state_size)
    if r.vm_state_in and r.vm_state_in != im.path:
        return "other disk"
    return "disk only"


def _cells(r: SnapshotRow, im: ImageSnapshots, icount: bool) -> list[str]:
    """The cells after the name, as plain text."""
    sn = r.snapshot
    cells = [date(sn.date_sec), vm_clock(sn.vm_clock_nsec), _state_cell(r, im)]
    if icount:
        cells.append("-" if sn.icount is None else f"{sn.icount:,}")
    return cells


def _name_width(im: ImageSnapshots, width: int, icount: bool) -> int:
    """What the table leaves the name column: each gap between two columns takes 3
    (padding on both sides and the box's blank divider)."""
    heads = ["ID", "date (UTC)", "VM clock", "VM state"] + (["icount"] if icount else [])
    cols = [[printable(r.snapshot.id)] + _cells(r, im, icount) for r in im.snapshots]
    widths = [max(len(h), *(len(c[k]) for c in cols)) for k, h in enumerate(heads)]
    return width - sum(widths) - 3 * len(heads)


def _table(im: ImageSnapshots, name_width: int, icount: bool) -> Table:
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    t.add_column("ID", no_wrap=True)
    longest = max(len(printable(r.snapshot.name)) for r in im.snapshots)
    t.add_column("name", overflow="fold", min_width=min(max(4, longest), name_width))
    t.add_column("date (UTC)", no_wrap=True)
    t.add_column("VM clock", no_wrap=True)
    t.add_column("VM state", justify="right", no_wrap=True)
    if icount:
        t.add_column("icount", justify="right", no_wrap=True)
    for r in im.snapshots:
        cells = _cells(r, im, icount)
        if not r.snapshot.has_vm_state:
            cells[2] = f"[dim]{cells[2]}[/]"
        t.add_row(shown(r.snapshot.id), wrapped(r.snapshot.name, name_width), *cells)
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


def _stacked(im: ImageSnapshots, console: Console) -> None:
    """One block of lines per snapshot, for terminals too narrow for the table."""
    w = max(20, console.width - 2)
    for r in im.snapshots:
        sn = r.snapshot
        console.print(f"[bold]{shown(sn.id)}[/] {wrapped(sn.name, w - len(sn.id) - 1)}")
        console.print(f"  {date(sn.date_sec)} UTC, VM clock {vm_clock(sn.vm_clock_nsec)}")
        text = f"  VM state {_state_cell(r, im)}"
        if sn.icount is not None:
            text += f", icount {sn.icount:,}"
        console.print(text)
        if sn.has_vm_state:
            disk = short_size(sn.disk_size) + ("" if sn.disk_size_recorded else "*")
            console.print(f"  at guest {hexoff(sn.vm_state_offset)} (disk {disk} then)")
            console.print("  [red]damaged[/]" if r.problem else
                          f"  {short_size(r.vm_state_allocated)} of the image, "
                          f"{r.vm_state_runs:,} piece(s)")


def _image(im: ImageSnapshots, console: Console) -> None:
    console.print()
    if not im.is_qcow2:
        console.print(f"[bold]{wrapped(im.path, console.width)}[/]\n  not a qcow2 image: a "
                      f"{shown(im.image['format'])}, no internal snapshots (the other "
                      "commands read its VM state directly)")
        return
    console.print(_image_line(im, console.width))
    if not im.snapshots:
        console.print("  no internal snapshots")
        return
    icount = any(r.snapshot.icount is not None for r in im.snapshots)
    name_width = _name_width(im, console.width, icount)
    if console.width < NARROW or name_width < _MIN_NAME:
        _stacked(im, console)
    else:
        console.print(_table(im, name_width, icount))
        p = _placement(im)
        if p is not None:
            console.print(p)
    if any(not x.snapshot.disk_size_recorded for x in im.snapshots):
        console.print("[dim]* not recorded in the snapshot (old QEMU); QEMU uses the image's "
                      "current size[/]")


def _groups(r: SnapshotsReport, console: Console) -> None:
    for g in r.groups:
        others = [p for p in g.images if p not in g.vm_state_images]
        if len(g.vm_state_images) == 1:
            text = f"VM state of {shown(g.name)}: in {shown(g.vm_state_images[0])}"
            if others:
                text += "; " + ", ".join(shown(p) for p in others) + " hold the disk only"
        elif not g.vm_state_images:
            text = f"{shown(g.name)}: disk-only snapshot on " + ", ".join(map(shown, g.images))
        else:
            text = (f"[yellow]{shown(g.name)}: VM state in "
                    + ", ".join(shown(p) for p in g.vm_state_images)
                    + " (snapshots of different VMs that share a name?)[/]")
        console.print(text)


def render_snapshots(r: SnapshotsReport, console: Console) -> None:
    console.print(headline(r))
    for im in r.images:
        _image(im, console)
    if r.groups:
        console.print()
        _groups(r, console)
    for im in r.images:
        for row in im.snapshots:
            for note in row.notes:
                console.print(f"[yellow]{shown(im.path)}: {shown(row.snapshot.label())}: "
                              f"{shown(note)}[/]")
    for path, row in r.problems:
        at = f" at offset {hexoff(row.problem_offset)}" if row.problem_offset is not None else ""
        console.print(f"[red]{shown(path)}{at}: {shown(row.problem)}[/]")
