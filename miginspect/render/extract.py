"""Terminal rendering of `ExtractReport`: what was written where, the verdict first."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from ..inspector.cpustate import Aarch64Cpu, CpuReport, X86Cpu
from ..inspector.extract import MANIFEST, PHYSICAL_MANIFEST, ExtractReport
from ..inspector.physical import PhysicalLayout
from ..inspector.salvage import MISSING_NOT_REACHED
from . import vocab as V
from .fmt import hexoff, num, short_size, size
from .layout import Col, Grid, layout_width, say
from .salvage import missing_text, stop_line
from .text import line, note_text, stop_text

#: the manifest each kind of extraction writes (physical or not)
MANIFESTS = {False: MANIFEST, True: PHYSICAL_MANIFEST}


def safe_differs(block: str, file: str) -> bool:
    return file.removesuffix(".raw") != block


def verdict(r: ExtractReport) -> Text:
    data = sum(f.data_bytes for f in r.files)
    t = line(("extract: ", "bold"), f"wrote {len(r.files)} file"
             f"{'s' if len(r.files) != 1 else ''} into ", r.output_dir)
    s = r.salvage
    if s is None:
        return t + line(f" ({size(data)} of data; zero and never-sent pages are holes)")
    t += line(f" ({size(data)} of data; zero and missing pages are holes); ")
    if s.complete:
        return t + line(("the file was read to its end, nothing is missing", V.GOOD))
    pages = sum(b.pages for b in s.blocks)
    return t + line((f"PARTIAL: {num(s.missing_pages)} of {num(pages)} pages missing", V.BAD),
                    f", listed in {MANIFESTS[r.physical is not None]}")


def _physical(p: PhysicalLayout) -> Grid:
    g = Grid([Col("guest-physical"), Col("end"), Col("length"), Col("block offset")],
             line("Guest-physical layout: ", p.ram_block,
                  f" ({size(p.ram_size)}) on {p.machine_type}").plain)
    for x in p.ranges:
        g.add_row(hexoff(x.gpa), hexoff(x.gpa + x.length), size(x.length),
                  hexoff(x.block_offset))
    return g


def render_extract(r: ExtractReport, console: Console) -> None:
    say(console, verdict(r))
    say(console, "from: ", r.path, f" ({r.format})")
    # a RAM section cut short: every never-sent page is a missing one
    missing = r.salvage is not None and not r.salvage.ram_complete
    last = V.MISSING if missing else V.NEVER_SENT
    g = Grid([Col("file (RAMBlock when the name differs)", "left", flex="name"),
              Col("size"), Col(V.DATA.word, style=V.DATA.style),
              Col(f"{V.ZERO.word} pages", style=V.ZERO.style),
              Col(last.word, style=last.style)])
    for f in r.files:
        label = line(f.file)
        if f.block and f.kind == "block" and safe_differs(f.block, f.file):
            label += line((f" ({f.block})", "dim"))
        g.add_row(label, short_size(f.size), short_size(f.data_bytes), num(f.zero_pages),
                  num(f.missing_pages if missing else f.never_sent_pages))
    console.print()
    console.print(g)
    if r.physical is not None:
        console.print()
        console.print(_physical(r.physical))
    if r.cpu is not None:
        say(console, f"CPU state: {len(r.cpu.cpus)} vCPU(s), {r.cpu.arch}, in the ELF notes")
    hashed = [f for f in r.files if f.sha256]
    if hashed:
        console.print()
        h = Grid([Col("file", "left", flex="name"), Col("sha256 (as written)", "left")])
        for f in hashed:
            h.add_row(line(f.file), f.sha256)
        console.print(h)
    for n in r.notes:
        say(console, note_text(n))
    if r.salvage is not None:
        _salvage(r, console)
    elif r.stopped is not None:
        say(console, ("the walk stopped early, pages after it are missing", V.BAD), ": ",
            stop_text(r.stopped))


def _salvage(r: ExtractReport, console: Console) -> None:
    """--partial: the stop and, per file, its missing pages by reason."""
    s = r.salvage
    assert s is not None
    console.print()
    say(console, stop_line(s.stopped, s.read_to))
    unreached = [f for f in r.files if f.missing and not f.held_pages and
                 all(m.reason == MISSING_NOT_REACHED for m in f.missing)]
    for f in r.files:
        if f.missing and f not in unreached:
            say(console, (f.file, "bold"), ": ", missing_text(f.missing, f.missing_pages))
    if unreached:
        n = sum(f.missing_pages or 0 for f in unreached)
        say(console, (f"{len(unreached)} block{'s' if len(unreached) != 1 else ''} not reached "
                      f"({num(n)} pages missing)", V.MISSING.style), ": ",
            ", ".join(f.file for f in unreached))
    if s.unlisted_ram_bytes:
        say(console, (f"{num(s.unlisted_ram_bytes)} B of RAM in blocks listed after the "
                      "stop", V.MISSING.style), " (their names are not in the file)")


# -- --cpu --------------------------------------------------------------------------

def reg_lines(pairs: list[tuple[str, int]], width: int) -> list[str]:
    """'name value' cells (64-bit hex) packed into aligned columns of `width`."""
    if not pairs:
        return []
    nw = max(len(k) for k, _ in pairs)
    cell = nw + 1 + 18
    per = max(1, (width - 2 + 2) // (cell + 2))
    out = []
    for i in range(0, len(pairs), per):
        out.append("  " + "  ".join(f"{k:<{nw}} {v:#018x}" for k, v in pairs[i:i + per]))
    return [x.rstrip() for x in out]


def _segments(c: X86Cpu) -> Grid:
    g = Grid([Col("segment", "left"), Col("selector"), Col("base"), Col("limit"),
              Col("flags")])
    for k, v in c.segments.items():
        g.add_row(k, f"{v.selector:#06x}", f"{v.base:#x}", f"{v.limit:#x}",
                  f"{v.flags:#x}")
    return g


def _cpu_groups(c: X86Cpu | Aarch64Cpu) -> list[list[tuple[str, int]]]:
    """The registers of one vCPU in groups of names of about one length (each group is
    packed in columns of its own)."""
    if isinstance(c, X86Cpu):
        ctl = [*((f"cr{i}", v) for i, v in enumerate(c.cr)),
               *([("efer", c.efer)] if c.efer is not None else [])]
        return [list(c.regs.items()), [("rip", c.rip), ("rflags", c.rflags)], ctl,
                [("kernel_gs_base", c.kernel_gs_base)]]
    return [[(f"x{i}", v) for i, v in enumerate(c.x)],
            [("sp", c.sp), ("pc", c.pc), ("pstate", c.pstate), ("fpsr", c.fpsr),
             ("fpcr", c.fpcr)], list(c.sysregs.items())]


def render_cpu(r: CpuReport, console: Console) -> None:
    """Registers per vCPU in aligned columns (as many as the width holds), segments as a
    table."""
    width = layout_width(console, 100)
    say(console, ("cpu: ", "bold"), f"{len(r.cpus)} vCPU(s), {r.arch} (registers from the "
        "file's vmdescription)")
    for c in r.cpus:
        mode = ("long mode" if c.long_mode else "not in long mode") if isinstance(c, X86Cpu) \
            else ("AArch64" if c.aarch64 else "AArch32")
        say(console, (f"cpu {c.index}", "bold"), f": {mode}, section at {hexoff(c.offset)}")
        for group in _cpu_groups(c):
            for ln in reg_lines(group, width):
                say(console, ln)
        if isinstance(c, X86Cpu):
            console.print(_segments(c))
    for n in r.notes:
        say(console, note_text(n))
