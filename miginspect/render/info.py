"""Terminal rendering of `InfoReport`."""

from __future__ import annotations

from rich import box
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table

from ..inspector.info import InfoReport, SectionInfo
from .fmt import hexoff, name, num, short_size, size


def _summary(r: InfoReport) -> Table:
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    t.add_row("file", name(r.path))
    fmt = r.format
    c = r.container or {}
    if c.get("kind") == "libvirt":
        state = "complete" if c.get("complete") else "[red]INCOMPLETE (LibvirtQemudPart)[/]"
        fmt = f"{fmt} inside a libvirt save image ({c.get('format')}, {state})"
    elif c.get("compression"):
        fmt = f"{fmt} ({c['compression']}-compressed)"
    t.add_row("format", fmt)
    for label, value in _container_rows(c):
        t.add_row(label, value)
    alloc = f"  (allocated {size(r.allocated_size)})" if r.allocated_size != r.file_size else ""
    t.add_row("file size", f"{size(r.file_size)} = {num(r.file_size)} bytes{alloc}")
    if r.decompressed_size is not None:
        t.add_row("decompressed", f"{size(r.decompressed_size)} = {num(r.decompressed_size)} bytes")
    if r.stream_offset:
        t.add_row("QEMU stream at", hexoff(r.stream_offset))
    t.add_row("machine type", name(r.machine_type))
    t.add_row("page size", f"{r.page_size} (from {r.page_size_source})")
    t.add_row("capabilities", name(", ".join(r.capabilities)) or "none recorded")
    if r.ram_total is not None:
        t.add_row("RAM total", f"{size(r.ram_total)} in {len(r.ramblocks)} RAMBlocks")
    if r.vmdescription:
        v = r.vmdescription
        t.add_row("vmdescription", f"{size(v['length'])} JSON at {hexoff(v['offset'])}"
                  + (f", {v['devices']} devices" if v.get("devices") is not None else ""))
    return t


def _container_rows(c: dict) -> list[tuple[str, str]]:
    """libvirt header, domain and stream completeness lines of the summary."""
    rows: list[tuple[str, str]] = []
    if c.get("kind") == "libvirt":
        state = "was running" if c.get("was_running") else "was paused"
        rows.append(("libvirt header", f"{name(c.get('magic'))} version {c.get('version')}, "
                     f"format {name(c.get('format'))}, {state}, {c.get('byte_order')}-endian, "
                     f"QEMU data at {hexoff(c.get('payload_offset'))}"))
        d = c.get("domain") or {}
        if d.get("error"):
            rows.append(("domain", f"[yellow]{name(d['error'])}[/]"))
        else:
            mem = d.get("memory_kib")
            rows.append(("domain", f"{name(d.get('name'))}  uuid {name(d.get('uuid'))}  "
                         f"memory {size(mem * 1024) if mem is not None else '-'}"))
    s = c.get("stream") or {}
    z = s.get("decompressed")
    if z and not z.get("complete"):
        rows.append((f"{z['compression']} data", f"[red]{name(z['compression'])} data "
                     f"{name(z.get('error'))} at file offset {hexoff(z.get('error_offset'))}; "
                     f"{num(z.get('inflated'))} bytes decompressed[/]"))
    elif z and z.get("trailing"):
        rows.append((f"{z['compression']} data", f"[yellow]{num(z['trailing'])} bytes after "
                     f"the end of the {name(z['compression'])} data, ignored[/]"))
    if s and (c.get("kind") == "libvirt" or not s.get("complete")):
        if s.get("complete"):
            text = f"complete: {num(s.get('bytes'))} bytes, up to the EOF record"
        else:
            text = (f"[red]cut: {num(s.get('bytes'))} bytes present, readable up to "
                    f"{hexoff(s.get('stopped_at'))}[/]")
        pages, sent = s.get("ram_pages"), s.get("ram_pages_sent")
        if pages:
            text += f"; RAM pages sent {num(sent)} of {num(pages)}"
        rows.append(("QEMU stream", text))
    return rows


def _blocks(r: InfoReport) -> Table:
    legacy = r.format == "legacy"
    caption = ("final page state: data / zero / never sent; records: PAGE / ZERO / XBZRLE, "
               "repeats included; re-sent: pages sent more than once" if legacy else
               "final page state from the bitmap: data = set bits, zero = clear bits")
    t = Table(title="RAMBlocks", title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
              caption=caption, caption_justify="left", caption_style="dim")
    t.add_column("name", overflow="fold", min_width=12)
    for col, style in (("size", None), ("pages", None), ("data", "green"), ("zero", "cyan"),
                       ("unsent", "dim")):
        t.add_column(col, justify="right", style=style, no_wrap=True)
    if legacy:
        for col, style in (("PAGE", None), ("ZERO", None), ("XBZRLE", None),
                           ("re-sent", "yellow")):
            t.add_column(col, justify="right", style=style, no_wrap=True)
    else:
        t.add_column("pages region", justify="right", no_wrap=True)
        t.add_column("bitmap at", justify="right", no_wrap=True)
    for b in r.ramblocks:
        row = [name(b.name), short_size(b.used_length), num(b.pages), num(b.data_pages),
               num(b.zero_pages), num(b.absent_pages)]
        if legacy:
            row += [num(b.page_records), num(b.zero_records), num(b.xbzrle_records),
                    num(b.resent_pages)]
        else:
            m = b.mapped_ram or {}
            if m.get("skipped"):
                row += ["skipped (x-ignore-shared)", "-"]
            else:
                row += [f"{hexoff(m.get('pages_offset'))}-{hexoff(m.get('pages_end'))}",
                        hexoff(m.get("bitmap_offset"))]
        t.add_row(*row)
    return t


def _collapse(sections: list[SectionInfo]) -> list[tuple[SectionInfo, int, int]]:
    """Runs of consecutive PART sections of one idstr shown as one row."""
    out: list[tuple[SectionInfo, int, int]] = []
    for s in sections:
        if out and s.type == "PART" and out[-1][0].type == "PART" and out[-1][0].idstr == s.idstr:
            first, n, total = out[-1]
            out[-1] = (first, n + 1, total + s.length)
        else:
            out.append((s, 1, s.length))
    return out


def _sections(r: InfoReport) -> Table:
    t = Table(title="Sections", title_justify="left", title_style="bold", box=box.SIMPLE_HEAD)
    t.add_column("type")
    t.add_column("idstr")
    t.add_column("inst", justify="right")
    t.add_column("ver", justify="right")
    t.add_column("id", justify="right")
    t.add_column("offset", justify="right")
    t.add_column("length", justify="right")
    for s, n, total in _collapse(r.sections):
        typ = s.type if n == 1 else f"PART ×{n}"
        ident = name(s.idstr) if s.type != "COMMAND" else f"[magenta]{s.command}[/]"
        t.add_row(typ, ident, num(s.instance_id), num(s.version_id), num(s.section_id),
                  hexoff(s.offset), num(total))
    return t


def render_info(r: InfoReport, console: Console, show_sections: bool = True) -> None:
    parts: list = [_summary(r)]
    console.print(Panel(Group(*parts), title="miginspect info", title_align="left"))
    console.print(_blocks(r))
    if show_sections:
        console.print(_sections(r))
    for n in r.notices:
        style = "yellow" if n["severity"] == "warning" else "dim"
        where = f" [{name(n['where'])}]" if n["where"] else ""
        console.print(f"[{style}]{n['severity']}{where} at {hexoff(n['offset'])}: "
                      f"{name(n['message'])}[/]")
    for b in r.ramblocks:
        m = b.mapped_ram or {}
        if m.get("stale_pages"):
            console.print(f"[yellow]{name(b.name)}: {num(m['stale_pages'])} stale page(s): clear "
                          "bit, old non-zero bytes left in the region (read as zero)[/]")
        if m.get("bitmap_untrusted"):
            console.print(f"[red]{name(b.name)}: bitmap untrusted: "
                          f"{name(m['bitmap_untrusted'])}[/]")
    if r.stopped:
        console.print(f"[red]stopped early: {name(r.stopped)}[/]")
