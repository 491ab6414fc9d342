"""`miginspect extract FILE -o DIR`: RAMBlocks or guest-physical memory as raw files."""

from __future__ import annotations

import argparse

from .. import ui
from ..errors import UsageError
from ..inspector.capture import open_capture
from ..inspector.extract import extract_blocks, extract_physical
from ..render.extract import render_extract
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
        "memory of an x86 pc/q35 guest instead: physical.raw (byte at address A at offset A) "
        "and physical.elf (ELF64 core with one PT_LOAD per RAM range; Volatility 3 opens it), "
        "described in miginspect-physical.json. "
        "Nothing is written outside DIR; existing files are kept unless --force.")
    p.add_argument("file", help=INPUT_HELP)
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="output folder (created if missing; its parent must exist)")
    p.add_argument("--block", action="append", metavar="NAME",
                   help="only this RAMBlock (repeatable; not with --physical)")
    p.add_argument("--physical", action="store_true",
                   help="guest-physical image (x86 pc/q35): physical.raw and physical.elf")
    p.add_argument("--physical-format", choices=("raw", "elf", "both"), default="both",
                   help="which guest-physical file(s) to write (default both)")
    p.add_argument("--ram-block", default=None, metavar="NAME",
                   help="main RAM block for --physical (default pc.ram; a named memory "
                   "backend's id otherwise)")
    p.add_argument("--max-ram-below-4g", type=parse_size, default=None, metavar="SIZE",
                   help="the machine's max-ram-below-4g property, if it was set (the file "
                   "does not record it)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.physical and args.block:
        raise UsageError("--block and --physical exclude each other (use --ram-block)")
    with ui.progress("reading") as cb:
        cap = open_capture(args.file, progress=cb, page_size=args.page_size)
    with cap, ui.progress("writing") as wcb:
        if args.physical:
            fmts = ("raw", "elf") if args.physical_format == "both" else (args.physical_format,)
            report = extract_physical(cap, args.output, args.force, fmts, args.ram_block,
                                      args.max_ram_below_4g, wcb)
        else:
            report = extract_blocks(cap, args.output, args.force, args.block, wcb)
    data = report.to_json()
    data = {"path": data.pop("input"), **data}  # the input is `path` in every report
    emit(args, report, lambda con: render_extract(report, con), data)
    return 0
