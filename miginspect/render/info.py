"""Terminal rendering of `InfoReport`: a verdict line, the summary, RAMBlocks, sections."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.text import Text

from ..inspector.containers.base import BAD, GOOD, WARN, ContainerInfo, stream_state
from ..inspector.info import InfoReport, SectionInfo
from . import vocab as V
from .fmt import hexoff, num, short_size, size
from .layout import KV, Col, Grid, say
from .text import line, note_text, stop_text

#: the tone of a container fact -> its style
_TONES = {BAD: V.BAD, GOOD: V.GOOD, WARN: V.ORANGE}


def _parts(parts: list[tuple[str, str]]) -> Text:
    return line(*((text, _TONES.get(tone)) for text, tone in parts))


def describe_format(fmt: str, c: ContainerInfo | None) -> str:
    """'legacy stream (zstd-compressed)', 'mapped-ram file inside a libvirt save image
    (sparse)': the container words it."""
    what = "legacy stream" if fmt == "legacy" else f"{fmt} file"
    return c.wraps(what) if c is not None else what


def verdict(r: InfoReport) -> Text:
    """What the file is and whether it reads whole, in one line."""
    c = r.container
    s = c.stream if c is not None else None
    bits = [describe_format(r.format, c)]
    if r.machine_type:
        bits.append(r.machine_type)
    if r.ram_total is not None:
        bits.append(f"{size(r.ram_total)} RAM in {len(r.ramblocks)} RAMBlocks")
    head = line(("info: ", "bold"), ", ".join(bits), ": ")
    warnings = sum(1 for n in r.notices if n.severity == "warning")
    damage = c.damage() if c is not None else None
    if damage:
        return head + _parts(damage)
    if r.stopped or (s is not None and not s.complete):
        why = stop_text(r.stopped) if r.stopped else line(stream_state(s))
        return head + line(("does not read whole", V.BAD), ": ", why)
    tail = f" ({warnings} warning{'s' if warnings != 1 else ''} below)" if warnings else ""
    return head + line(("reads whole", V.GOOD), f", up to its EOF record{tail}")


def _summary(r: InfoReport) -> KV:
    c = r.container
    rows: list[tuple[str, Text | str]] = [("file", line(r.path)),
                                          ("format", describe_format(r.format, c))]
    rows += _container_rows(c)
    alloc = f" (allocated {size(r.allocated_size)})" if r.allocated_size != r.file_size else ""
    rows.append(("file size", f"{size(r.file_size)} = {num(r.file_size)} B{alloc}"))
    if r.decompressed_size is not None:
        rows.append(("decompressed", f"{size(r.decompressed_size)} = "
                                     f"{num(r.decompressed_size)} B"))
    if r.stream_offset:
        rows.append(("QEMU stream at", hexoff(r.stream_offset)))
    rows.append(("machine type", line(r.machine_type or "-")))
    rows.append(("page size", f"{short_size(r.page_size)} ({num(r.page_size)} B, from "
                              f"{r.page_size_source})"))
    rows.append(("capabilities", line(", ".join(r.capabilities) or "none recorded")))
    if r.ram_total is not None:
        rows.append(("RAM total", f"{size(r.ram_total)} = {num(r.ram_total)} B in "
                                  f"{len(r.ramblocks)} RAMBlocks"))
    if r.vmdescription:
        v = r.vmdescription
        text = f"{size(v.length)} JSON at {hexoff(v.offset)}"
        if v.devices is not None:
            text += f", {v.devices} devices"
        rows.append(("vmdescription", line(text, (f"; {v.error}", V.BAD) if v.error
                                           else None)))
    return KV(rows)


def _container_rows(c: ContainerInfo | None) -> list[tuple[str, Text | str]]:
    """The container's own lines of the summary (header, image, snapshot, stream extent)."""
    return [(f.label, _parts(f.parts)) for f in (c.facts() if c is not None else [])]


def ramblock_grid(r: InfoReport) -> Grid:
    legacy = r.format == "legacy"
    caption = ("final page state: data / zero / never sent; records: PAGE / ZERO / XBZRLE, "
               "repeats included; re-sent: pages sent more than once" if legacy else
               "final page state from the bitmap: data = set bits, zero = clear bits")
    cols = [Col("name", "left", flex="name"), Col("size"), Col("pages"),
            Col(V.DATA.word, style=V.DATA.style), Col(V.ZERO.word, style=V.ZERO.style),
            Col(V.NEVER_SENT.word, style=V.NEVER_SENT.style)]
    if legacy:
        cols += [Col("PAGE"), Col("ZERO"), Col("XBZRLE"), Col(V.RESENT.word,
                                                               style=V.RESENT.style)]
    else:
        cols += [Col("pages region"), Col("bitmap at")]
    g = Grid(cols, "RAMBlocks", caption)
    for b in r.ramblocks:
        row: list[Any] = [line(b.name), short_size(b.used_length), num(b.pages),
                          num(b.data_pages), num(b.zero_pages), num(b.never_sent_pages)]
        if legacy:
            row += [num(b.page_records), num(b.zero_records), num(b.xbzrle_records),
                    num(b.resent_pages)]
        else:
            m = b.mapped_ram
            if m is None:
                row += ["-", "-"]
            elif m.skipped:
                row += ["skipped (x-ignore-shared)", "-"]
            else:
                row += [f"{hexoff(m.pages_offset)}-{hexoff(m.pages_end)}",
                        hexoff(m.bitmap_offset)]
        g.add_row(*row)
    return g


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


def section_grid(r: InfoReport) -> Grid:
    g = Grid([Col("type", "left"), Col("idstr", "left", flex="name"), Col("inst"),
              Col("ver"), Col("id"), Col("offset"), Col("length")], "Sections",
             "offset: of the record's type byte; length: incl. the footer; PART xN: N "
             "consecutive PART sections, their total length")
    for s, n, total in _collapse(r.sections):
        typ = s.type if n == 1 else f"PART x{n}"
        ident = line(s.idstr if s.type != "COMMAND" else s.command or "-")
        g.add_row(typ, ident, num(s.instance_id), num(s.version_id), num(s.section_id),
                  hexoff(s.offset), num(total))
    return g


def render_info(r: InfoReport, console: Console, show_sections: bool = True) -> None:
    say(console, verdict(r))
    console.print(_summary(r))
    console.print()
    console.print(ramblock_grid(r))
    if show_sections:
        console.print()
        console.print(section_grid(r))
    if r.notices or r.stopped:
        console.print()
    for n in r.notices:
        say(console, note_text(n))
    for b in r.ramblocks:
        m = b.mapped_ram
        if m is not None and m.stale_pages:
            say(console, (f"{b.name}: {num(m.stale_pages)} stale page(s)", V.ORANGE),
                ": clear bit, old non-zero bytes left in the region (read as zero)")
        if m is not None and m.bitmap_untrusted:
            say(console, (f"{b.name}: bitmap untrusted", V.BAD), ": ", m.bitmap_untrusted)
    if r.stopped:
        say(console, ("stopped early", V.BAD), ": ", stop_text(r.stopped))
