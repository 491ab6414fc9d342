"""Terminal rendering of `ExtractReport`."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table

from ..inspector.cpustate import Aarch64Cpu, CpuReport, X86Cpu
from ..inspector.extract import ExtractReport
from .fmt import hexoff, name, num, short_size, size


def safe_differs(block: str, file: str) -> bool:
    return file.removesuffix(".raw") != block


def render_extract(r: ExtractReport, console: Console) -> None:
    t = Table(title=f"extracted into {name(r.output_dir)}", title_justify="left",
              title_style="bold", box=box.SIMPLE_HEAD,
              caption="zero and never-sent pages are holes in the files", caption_justify="left",
              caption_style="dim")
    t.add_column("file", overflow="fold", min_width=12)
    t.add_column("size", justify="right", no_wrap=True)
    t.add_column("data", justify="right", style="green", no_wrap=True)
    t.add_column("zero pages", justify="right", style="cyan", no_wrap=True)
    t.add_column("never sent", justify="right", style="dim", no_wrap=True)
    for f in r.files:
        label = name(f.file)
        if f.block and f.kind == "block" and safe_differs(f.block, f.file):
            label += f" [dim]({name(f.block)})[/]"
        t.add_row(label, short_size(f.size), short_size(f.data_bytes), num(f.zero_pages),
                  num(f.absent_pages))
    console.print(t)
    p = r.physical
    if p:
        console.print(f"guest-physical ({name(p['machine_type'])}, {name(p['ram_block'])} "
                      f"{size(p['ram_size'])}): "
                      + ", ".join(f"GPA {hexoff(x['gpa'])}-{hexoff(x['gpa'] + x['length'])} "
                                  f"= block {hexoff(x['block_offset'])}"
                                  for x in p["ranges"]))
    if r.cpu:
        console.print(f"CPU state: {len(r.cpu['cpus'])} vCPU(s), {r.cpu['arch']}, in the ELF "
                      "notes")
    for f in r.files:
        if f.sha256:
            console.print(f"[dim]sha256 {f.sha256}  {name(f.file)}[/]")
    for n in r.notes:
        console.print(f"[dim]{name(n)}[/]")


def _regs(pairs: list[tuple[str, int]]) -> str:
    return "  ".join(f"{k}={v:#018x}" for k, v in pairs)


def render_cpu(r: CpuReport, console: Console) -> None:
    """Registers per vCPU, four to a line."""
    console.print(f"[bold]{len(r.cpus)} vCPU(s), {r.arch}[/] (from the vmdescription)")
    for c in r.cpus:
        console.print(f"[bold]cpu {c.index}[/]")
        if isinstance(c, X86Cpu):
            pairs = [*c.regs.items(), ("rip", c.rip), ("rflags", c.rflags),
                     *((f"cr{i}", v) for i, v in enumerate(c.cr)),
                     ("kernel_gs_base", c.kernel_gs_base)]
            segs = [f"{k}={v.selector:#06x}/{v.base:#x}/{v.limit:#x}/{v.flags:#x}"
                    for k, v in c.segments.items()]
        elif isinstance(c, Aarch64Cpu):
            pairs = [*((f"x{i}", v) for i, v in enumerate(c.x)), ("sp", c.sp), ("pc", c.pc),
                     ("pstate", c.pstate), *c.sysregs.items()]
            segs = []
        for i in range(0, len(pairs), 4):
            console.print("  " + _regs(pairs[i : i + 4]))
        for i in range(0, len(segs), 2):
            console.print("  " + "  ".join(segs[i : i + 2]) + " [dim](selector/base/limit/"
                          "flags)[/]")
    for n in r.notes:
        console.print(f"[dim]{name(n)}[/]")
