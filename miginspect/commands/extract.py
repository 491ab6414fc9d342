"""`miginspect extract FILE -o DIR`: RAMBlocks or guest-physical memory as raw files."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from .common import INPUT_HELP, common_options, emit

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    if t.startswith("0x"):
        return int(t, 16)
    unit = t[-1:] if t[-1:] in _UNITS else ""
    try:
        return int(float(t[: len(t) - len(unit)]) * _UNITS[unit])
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from e


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract", help="write RAMBlocks (or guest-physical memory) as sparse raw files",
        parents=[common_options()],
        description="Write one raw file per RAMBlock into DIR (names made safe from the "
        "RAMBlock idstr; zero and never-sent pages left as holes) plus "
        "miginspect-extract.json describing them. With --physical, write the guest-physical "
        "memory of an x86 pc/q35 or aarch64 virt guest instead: physical.elf (ELF64 core with "
        "one PT_LOAD per RAM range and the vCPU notes QEMU's dump-guest-memory writes; "
        "Volatility 3 opens it), physical.lime or physical.raw (byte at address A at "
        "offset A), described in miginspect-physical.json with their sha256. With --cpu, "
        "print the vCPU registers instead. "
        "Nothing is written outside DIR; existing files are kept unless --force.")
    p.add_argument("file", help=INPUT_HELP)
    p.add_argument("-o", "--output", metavar="DIR",
                   help="output folder (created if missing; its parent must exist); "
                   "required unless --cpu")
    p.add_argument("--block", action="append", metavar="NAME",
                   help="only this RAMBlock (repeatable; not with --physical)")
    p.add_argument("--physical", action="store_true",
                   help="guest-physical image (x86 pc/q35, aarch64 virt)")
    p.add_argument("--format", action="append", choices=("elf", "lime", "raw"),
                   dest="formats", metavar="{elf,lime,raw}",
                   help="guest-physical image format (repeatable; default elf; implies "
                   "--physical)")
    p.add_argument("--physical-format", choices=("raw", "elf", "both"), default=None,
                   help=argparse.SUPPRESS)  # before --format: both = raw + elf
    p.add_argument("--ram-block", default=None, metavar="NAME",
                   help="main RAM block for --physical (default pc.ram / mach-virt.ram; a "
                   "memory backend's id when the machine uses one)")
    p.add_argument("--base", type=parse_size, default=None, metavar="ADDR",
                   help="place the RAM block whole at this guest-physical address (for "
                   "DIMMs, backends or machines whose layout is not known)")
    p.add_argument("--include-stale", action="store_true",
                   help="mapped-ram: also write bytes left under clear bitmap bits (QEMU "
                   "reads those pages as zero)")
    p.add_argument("--cpu", action="store_true",
                   help="print the vCPU registers (from the file's vmdescription) and write "
                   "nothing")
    p.add_argument("--max-ram-below-4g", type=parse_size, default=None, metavar="SIZE",
                   help="the machine's max-ram-below-4g property, if it was set (the file "
                   "does not record it)")
    p.add_argument("--partial", action="store_true",
                   help="a cut or damaged file (a killed virsh save): write every page it "
                   "holds and list in the manifest the page ranges it does not, and why "
                   "(exit status 1 when anything is missing)")
    p.set_defaults(func=run)


def _formats(args: argparse.Namespace) -> tuple[str, ...]:
    if args.formats:
        return tuple(dict.fromkeys(args.formats))
    if args.physical_format:
        return ("raw", "elf") if args.physical_format == "both" else (args.physical_format,)
    return ("elf",)


def run(args: argparse.Namespace) -> int:
    physical = args.physical or bool(args.formats) or args.physical_format is not None
    if physical and args.block:
        raise UsageError("--block and --physical exclude each other (use --ram-block)",
                         code="usage")
    if args.output is None and not args.cpu:
        raise UsageError("extract needs -o DIR (or --cpu to print the registers)", code="usage")
    from .. import ui
    from ..inspector.capture import open_capture
    from ..inspector.cpustate import cpu_states
    from ..inspector.extract import extract_blocks, extract_physical
    from ..render.extract import render_cpu, render_extract

    with ui.progress("reading") as cb:
        cap = open_capture(args.file, progress=cb, strict=not args.partial,
                           page_size=args.page_size, snapshot=args.snapshot)
    if args.cpu:
        with cap:
            cpus = cpu_states(cap)
        emit(args, cpus, lambda con: render_cpu(cpus, con))
        return 0
    with cap, ui.progress("writing") as wcb:
        if physical:
            report = extract_physical(cap, args.output, args.force, _formats(args),
                                      args.ram_block, args.max_ram_below_4g, wcb,
                                      base=args.base, include_stale=args.include_stale,
                                      partial=args.partial)
        else:
            report = extract_blocks(cap, args.output, args.force, args.block, wcb,
                                    include_stale=args.include_stale, partial=args.partial)
    emit(args, report, lambda con: render_extract(report, con))
    return 1 if report.salvage is not None and not report.salvage.complete else 0
