"""Terminal rendering of `DiffReport` and `PageHexDiff`."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table

from ..inspector.diff import CHANGED, EQUAL, ONLY_A, ONLY_B, BlockDiff, DiffReport, PageHexDiff
from .devices import value_text
from .fmt import hexoff, name, num, size

#: Cells of the change picture per block row.
PICTURE_CELLS = 64
_CELL = {EQUAL: "[dim]·[/]", CHANGED: "[yellow]█[/]", ONLY_A: "[red]▌[/]",
         ONLY_B: "[green]▐[/]"}
#: Ranges listed per block before "… and N more".
MAX_RANGES = 12


def _blocks(r: DiffReport, wide: bool) -> Table:
    t = Table(title="RAM", title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
              pad_edge=False)
    t.add_column("block", overflow="fold", min_width=12)
    t.add_column("pages", justify="right")
    t.add_column("equal", justify="right", style="dim")
    t.add_column("changed", justify="right", style="yellow")
    t.add_column("only A", justify="right", style="red")
    t.add_column("only B", justify="right", style="green")
    trans = wide and any(b.zero_to_data or b.data_to_zero for b in r.blocks)
    if trans:
        t.add_column("0→data", justify="right")
        t.add_column("data→0", justify="right")
    t.add_column("note", overflow="fold")
    for b in r.blocks:
        note = ""
        if b.missing == "a":
            note = "[red]only in B[/]"
        elif b.missing == "b":
            note = "[red]only in A[/]"
        elif b.used_length_a != b.used_length_b:
            note = (f"[red]used_length {size(b.used_length_a)} vs "
                    f"{size(b.used_length_b)}[/]")
        elif b.identical:
            note = "[green]same[/]"
        row = [name(b.name), num(b.pages), num(b.equal), num(b.changed), num(b.only_a),
               num(b.only_b)]
        if trans:
            row += [num(b.zero_to_data), num(b.data_to_zero)]
        t.add_row(*row, note)
    return t


def _ranges(b: BlockDiff, console: Console) -> None:
    cells = b.picture(max(16, min(PICTURE_CELLS, console.width - 4)))
    per = -(-b.pages // max(len(cells), 1))
    console.print(f"[bold]{name(b.name)}[/] [dim]({num(b.pages)} pages, {num(per)} per cell)[/]")
    console.print("  " + "".join(_CELL[c] for c in cells))
    shown = b.ranges
    if len(shown) > MAX_RANGES:  # the largest runs, in address order
        big = sorted(range(len(shown)), key=lambda i: -shown[i].pages)[:MAX_RANGES]
        shown = [shown[i] for i in sorted(big)]
    for rg in shown:
        gpa = f"  GPA {hexoff(rg.gpa)}-{hexoff(rg.gpa + rg.length - 1)}" if rg.gpa is not None \
            else ""
        what = ", ".join(f"{n} {k}" for k, n in (("changed", rg.changed), ("only A", rg.only_a),
                                                  ("only B", rg.only_b)) if n)
        console.print(f"  {hexoff(rg.offset)}-{hexoff(rg.offset + rg.length - 1)} "
                      f"({num(rg.pages)} pages: {what}){gpa}")
    if len(b.ranges) > MAX_RANGES:
        console.print(f"  [dim]… the {MAX_RANGES} largest of {len(b.ranges)} ranges "
                      "(--json or --pages lists all)[/]")


def _pages(b: BlockDiff, console: Console) -> None:
    rows = b.changed_pages()
    gpa = any(p["gpa"] is not None and p["gpa"] != p["offset"] for p in rows)
    same = not gpa and b.gpa_low is not None
    t = Table(title=f"differing pages of {name(b.name)}", title_justify="left",
              box=box.SIMPLE_HEAD, pad_edge=False,
              caption="offset = guest-physical address" if same else None,
              caption_justify="left")
    t.add_column("page", justify="right", no_wrap=True)
    t.add_column("offset", justify="right", no_wrap=True)
    if gpa:
        t.add_column("GPA", justify="right", no_wrap=True)
    t.add_column("kind", no_wrap=True, min_width=7)
    t.add_column("A→B", no_wrap=True)
    t.add_column("xxh3 A", no_wrap=True, min_width=16)
    t.add_column("xxh3 B", no_wrap=True, min_width=16)
    for p in rows:
        row = [num(p["page"]), hexoff(p["offset"])]
        if gpa:
            row.append(hexoff(p["gpa"]))
        t.add_row(*row, p["kind"], f"{p['state_a']}→{p['state_b']}", p["hash_a"], p["hash_b"])
    console.print(t)


def _devices(r: DiffReport, console: Console) -> None:
    dd = r.devices
    if dd is None:
        return
    if dd.identical:
        console.print(f"[green]device state: {dd.compared} devices, identical[/]")
        return
    t = Table(title=f"device state ({dd.compared} devices compared, {len(dd.devices)} differ)",
              title_justify="left", title_style="bold")
    t.add_column("device", overflow="fold")
    t.add_column("field", overflow="fold")
    t.add_column("A")
    t.add_column("B")
    for d in dd.devices:
        if d.status != "changed":
            side = "A" if d.status == "only_a" else "B"
            t.add_row(name(d.key), f"[red]section only in {side}[/]", "", "")
            continue
        if d.version_a != d.version_b:
            t.add_row(name(d.key), "[magenta](version)[/]", num(d.version_a), num(d.version_b))
        for f in d.fields:
            va, vb = _hex_delta(f.a, f.b)
            if va is None:
                va = "[dim](absent)[/]" if f.offset_a is None else value_text(f.a, f.type)
                vb = "[dim](absent)[/]" if f.offset_b is None else value_text(f.b, f.type)
            t.add_row(name(d.key), name(f.path), va, vb)
        if d.error:
            t.add_row(name(d.key), f"[red]{name(d.error)}[/]", "", "")
    console.print(t)


def _hex_delta(a: object, b: object, most: int = 6) -> tuple[str | None, str | None]:
    """For two hex strings of one length: only the differing bytes, as `[i]=xx`."""
    if not (isinstance(a, str) and isinstance(b, str) and len(a) == len(b) and "." not in a):
        return None, None
    try:
        xa, xb = bytes.fromhex(a), bytes.fromhex(b)
    except ValueError:
        return None, None
    idx = [i for i in range(len(xa)) if xa[i] != xb[i]]
    more = f" +{len(idx) - most} more" if len(idx) > most else ""
    return (" ".join(f"[{i}]={xa[i]:02x}" for i in idx[:most]) + more,
            " ".join(f"[{i}]={xb[i]:02x}" for i in idx[:most]) + more)


def render_diff(r: DiffReport, console: Console, pages: bool = False) -> None:
    console.print(f"[bold]A[/] {name(r.path_a)} [dim]({r.format_a}, {name(r.machine_a)})[/]")
    console.print(f"[bold]B[/] {name(r.path_b)} [dim]({r.format_b}, {name(r.machine_b)})[/]")
    wide = console.width >= 110
    console.print(_blocks(r, wide))
    tot = r.totals()
    if not wide and (tot["zero_to_data"] or tot["data_to_zero"]):
        console.print(f"state transitions: {num(tot['zero_to_data'])} zero→data, "
                      f"{num(tot['data_to_zero'])} data→zero (wider terminal: per block)")
    differing = [b for b in r.blocks if not b.identical]
    if differing:
        console.print("[bold]where[/] [dim](· equal, [yellow]█[/] changed, [red]▌[/] only A, "
                      "[green]▐[/] only B)[/]")
        for b in differing:
            _ranges(b, console)
            if pages and b.differing:
                _pages(b, console)
    _devices(r, console)
    for n in r.notices:
        console.print(f"[yellow]{name(n)}[/]")
    if r.identical:
        console.print("[bold green]identical[/]")
    else:
        ram = "RAM identical" if r.ram_identical else (
            f"RAM differs in {num(tot['pages'] - tot['equal'])} of {num(tot['pages'])} pages")
        dev = {None: "devices not compared", True: "devices identical",
               False: "device state differs"}[r.devices_identical]
        console.print(f"[bold yellow]different[/]: {ram}; {dev}")


def render_page_hexdiff(h: PageHexDiff, console: Console) -> None:
    gpa = f", GPA {hexoff(h.gpa)}" if h.gpa is not None else ""
    console.print(f"[bold]{name(h.block)}[/] page {num(h.page)} (offset {hexoff(h.offset)}{gpa})")
    console.print(f"  A: {h.state_a}, xxh3 {h.hash_a}")
    console.print(f"  B: {h.state_b}, xxh3 {h.hash_b}")
    if not h.rows:
        console.print("[green]the page is identical[/]")
        return
    console.print(f"{num(h.differing_bytes)} bytes differ in {len(h.rows)} rows of 16")
    for row in h.rows:
        a = " ".join(_hexbytes(row.a, row.b, "red"))
        b = " ".join(_hexbytes(row.b, row.a, "green"))
        console.print(f"  {row.offset:04x}  A {a}")
        console.print(f"        B {b}")


def _hexbytes(x: bytes, other: bytes, style: str) -> list[str]:
    return [f"[{style}]{v:02x}[/]" if v != w else f"{v:02x}" for v, w in zip(x, other,
                                                                            strict=True)]
