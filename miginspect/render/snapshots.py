"""Terminal rendering of `SnapshotsReport` (the JSON comes from its to_json): the verdict
first, then per image its snapshot table and where the VM states are.

Snapshot names and paths come from the image: they reach rich only through `render.text`
(control characters as escapes, never markup). The tables re-flow like every report's
(`render.layout.Grid`): a snapshot whose name does not fit gets the name on its own lines
(broken at / : . - _), its values below; nothing is cut."""

from __future__ import annotations

import datetime as _dt

from rich.console import Console
from rich.text import Text

from ..inspector.qcow2 import vm_clock
from ..inspector.snapshots import ImageSnapshots, SnapshotRow, SnapshotsReport
from . import vocab as V
from .fmt import hexoff, num, short_size, size
from .layout import Col, Grid, natural, say
from .text import line, wrap_text


def date(sec: int) -> str:
    return _dt.datetime.fromtimestamp(sec, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def headline(r: SnapshotsReport) -> str:
    """The answer: how many snapshots, how many hold VM state, what that costs."""
    n, states = r.snapshot_count, r.with_state
    text = f"{n} snapshot{'s' if n != 1 else ''}"
    if len(r.images) > 1:
        text += f" in {len(r.images)} images"
    if not states:
        return text + ", none with VM state"
    held = sum(x.vm_state_allocated or 0 for x in states)
    return text + f", {len(states)} with VM state ({size(held)} of the image" \
        + ("s)" if len(r.images) > 1 else ")")


def verdict(r: SnapshotsReport) -> Text:
    return line(("snapshots: ", "bold"), headline(r))


def _image_line(im: ImageSnapshots) -> Text:
    i = im.facts
    assert i is not None
    t = line(f"  qcow2 v{i.version}, {short_size(i.cluster_size)} clusters, disk "
             f"{short_size(i.virtual_size)}")
    if i.extended_l2:
        t += line(", extended L2")
    if i.compression_type != "zlib":
        t += line(", compression ", i.compression_type)
    if i.encryption:
        t += line(", ", (f"encrypted ({i.encryption})", V.ORANGE))
    if i.data_file:
        t += line(", ", ("external data file ", V.ORANGE), (i.data_file, V.ORANGE))
    if i.backing_file:
        t += line(", backing file ", i.backing_file)
    return t


def _state_cell(r: SnapshotRow, im: ImageSnapshots) -> Text:
    sn = r.snapshot
    if sn.has_vm_state:
        return line(short_size(sn.vm_state_size))
    if r.vm_state_in and r.vm_state_in != im.path:
        return line(("other disk", "dim"))
    return line(("disk only", "dim"))


def _table(im: ImageSnapshots) -> Grid:
    """One row per snapshot: `ID name` (the name re-flows), date, VM clock, VM state."""
    icount = any(r.snapshot.icount is not None for r in im.snapshots)
    cols = [Col("ID name", "left", flex="name"), Col("date (UTC)", "left"),
            Col("VM clock", "left"), Col("VM state")] + ([Col("icount")] if icount else [])
    g = Grid(cols)
    w = max([2] + [len(r.snapshot.id) for r in im.snapshots])  # names start in one column
    for r in im.snapshots:
        sn = r.snapshot
        row = [line(sn.id.ljust(w), " ", sn.name), date(sn.date_sec), vm_clock(sn.vm_clock_nsec),
               _state_cell(r, im)]
        if icount:
            row.append("-" if sn.icount is None else num(sn.icount))
        g.add_row(*row)
    return g


def _placement(im: ImageSnapshots) -> Grid | None:
    """Where each VM state lives: guest offset, disk size then, clusters it occupies."""
    rows = [r for r in im.snapshots if r.snapshot.has_vm_state]
    if not rows:
        return None
    g = Grid([Col("ID", "left", flex="name"), Col("disk size then"), Col("state at guest"),
              Col("in the image"), Col("pieces")], "where the VM states are")
    for r in rows:
        sn = r.snapshot
        disk = short_size(sn.disk_size) + ("" if sn.disk_size_recorded else "*")
        if r.problem:
            g.add_row(line(sn.id), disk, hexoff(sn.vm_state_offset), line(("damaged", V.BAD)),
                      "-")
        else:
            g.add_row(line(sn.id), disk, hexoff(sn.vm_state_offset),
                      short_size(r.vm_state_allocated), num(r.vm_state_runs))
    return g


def _path(console: Console, path: str) -> None:
    """An image's path in bold, broken at / : . - _ where it does not fit."""
    t = line((path, "bold"))
    lines = [t] if natural(console) else wrap_text(t, console.width, names=True)
    for ln in lines:
        console.print(ln, soft_wrap=True)


def _image(im: ImageSnapshots, console: Console) -> None:
    console.print()
    _path(console, im.path)
    if not im.is_qcow2:
        say(console, "  not a qcow2 image: a ", im.format, ", no internal snapshots "
            "(the other commands read its VM state directly)")
        return
    say(console, _image_line(im))
    if not im.snapshots:
        say(console, "  no internal snapshots")
        return
    console.print(_table(im))
    p = _placement(im)
    if p is not None:
        console.print(p)
    if any(not x.snapshot.disk_size_recorded for x in im.snapshots):
        say(console, ("* not recorded in the snapshot (old QEMU); QEMU uses the image's "
                      "current size", "dim"))


def _groups(r: SnapshotsReport, console: Console) -> None:
    for g in r.groups:
        others = [p for p in g.images if p not in g.vm_state_images]
        if len(g.vm_state_images) == 1:
            t = line("VM state of ", g.name, ": in ", g.vm_state_images[0])
            if others:
                t += line("; ", ", ".join(others), " hold the disk only")
        elif not g.vm_state_images:
            t = line(g.name, ": disk-only snapshot on ", ", ".join(g.images))
        else:
            t = line((g.name, V.ORANGE), (": VM state in " + ", ".join(g.vm_state_images)
                                          + " (snapshots of different VMs that share a "
                                          "name?)", V.ORANGE))
        say(console, t)


def render_snapshots(r: SnapshotsReport, console: Console) -> None:
    say(console, verdict(r))
    for im in r.images:
        _image(im, console)
    if r.groups:
        console.print()
        _groups(r, console)
    for im in r.images:
        for row in im.snapshots:
            for note in row.notes:
                say(console, (im.path, V.ORANGE), (": ", V.ORANGE),
                    (row.snapshot.label(), V.ORANGE), (": ", V.ORANGE), (note, V.ORANGE))
    for path, row in r.problems:
        at = f" at offset {hexoff(row.problem_offset)}" if row.problem_offset is not None else ""
        say(console, (path, V.BAD), (at, V.BAD), (": ", V.BAD), (row.problem, V.BAD))
