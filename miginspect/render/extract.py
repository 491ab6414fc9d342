"""Terminal rendering of `ExtractReport`: what was written where, the verdict first."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from ..inspector.cpustate import Aarch64Cpu, CpuReport, X86Cpu
from ..inspector.extract import ExtractReport
from . import vocab as V
from .fmt import hexoff, num, short_size, size
from .layout import Col, Grid, say
from .text import line


def safe_differs(block: str, file: str) -> bool:
    return file.removesuffix(".raw") != block


def verdict(r: ExtractReport) -> Text:
    data = sum(f.data_bytes for f in r.files)
    return line(("extract: ", "bold"), f"wrote {len(r.files)} file"
                f"{'s' if len(r.files) != 1 else ''} into ", r.output_dir,
                f" ({size(data)} of data; zero and never-sent pages are holes)")


def render_extract(r: ExtractReport, console: Console) -> None:
    say(console, verdict(r))
    say(console, "from: ", r.input, f" ({r.format})")
    g = Grid([Col("file (RAMBlock when the name differs)", "left", flex="name"),
              Col("size"), Col(V.DATA.word, style=V.DATA.style),
              Col(f"{V.ZERO.word} pages", style=V.ZERO.style),
              Col(V.NEVER_SENT.word, style=V.NEVER_SENT.style)])
    for f in r.files:
        label = line(f.file)
        if f.block and f.kind == "block" and safe_differs(f.block, f.file):
            label += line((f" ({f.block})", "dim"))
        g.add_row(label, short_size(f.size), short_size(f.data_bytes), num(f.zero_pages),
                  num(f.absent_pages))
    console.print()
    console.print(g)
    p = r.physical
    if p:
        say(console, f"guest-physical ({p['machine_type']}, ", p["ram_block"],
            f" {size(p['ram_size'])}): " + ", ".join(
                f"GPA {hexoff(x['gpa'])}-{hexoff(x['gpa'] + x['length'])} = block "
                f"{hexoff(x['block_offset'])}" for x in p["ranges"]))
    if r.cpu:
        say(console, f"CPU state: {len(r.cpu['cpus'])} vCPU(s), {r.cpu['arch']}, in the ELF "
            "notes")
    for f in r.files:
        if f.sha256:
            say(console, (f"sha256 {f.sha256}  ", "dim"), f.file)
    for n in r.notes:
        say(console, ("note: ", "dim"), n)


def _regs(pairs: list[tuple[str, int]]) -> str:
    return "  ".join(f"{k}={v:#018x}" for k, v in pairs)


def render_cpu(r: CpuReport, console: Console) -> None:
    """Registers per vCPU, three to a line (80 columns)."""
    say(console, (f"cpu: {len(r.cpus)} vCPU(s), {r.arch}", "bold"),
        " (registers from the file's vmdescription)")
    for c in r.cpus:
        say(console, (f"cpu {c.index}", "bold"))
        segs: list[str] = []
        if isinstance(c, X86Cpu):
            pairs = [*c.regs.items(), ("rip", c.rip), ("rflags", c.rflags),
                     *((f"cr{i}", v) for i, v in enumerate(c.cr)),
                     ("kernel_gs_base", c.kernel_gs_base)]
            segs = [f"{k}={v.selector:#06x}/{v.base:#x}/{v.limit:#x}/{v.flags:#x}"
                    for k, v in c.segments.items()]
        elif isinstance(c, Aarch64Cpu):
            pairs = [*((f"x{i}", v) for i, v in enumerate(c.x)), ("sp", c.sp), ("pc", c.pc),
                     ("pstate", c.pstate), *c.sysregs.items()]
        else:
            pairs = []
        for i in range(0, len(pairs), 3):
            say(console, "  " + _regs(pairs[i : i + 3]))
        if segs:
            say(console, ("  segments: selector/base/limit/flags", "dim"))
        for i in range(0, len(segs), 2):
            say(console, "  " + "  ".join(segs[i : i + 2]))
