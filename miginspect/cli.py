"""The command line: parses arguments, runs one command, maps errors to exit codes.

A user never sees a traceback unless they ask for it with --traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .errors import MigError, UsageError

#: Subcommand modules in miginspect.commands, in help order.
COMMANDS = ["info", "map", "extract", "size", "diff", "devices", "xml", "check", "convert",
            "snapshots"]

EXIT_OK = 0
EXIT_BAD_INPUT = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `only`, just that subcommand (its module alone is imported)."""
    p = argparse.ArgumentParser(
        prog="miginspect",
        description="Take QEMU migration and snapshot files apart (legacy streams, mapped-ram, "
        "libvirt save images; plain or gzip/xz/zstd-compressed).",
    )
    p.add_argument("--traceback", action="store_true", help="show the stack on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        if only is not None and name != only:
            continue
        importlib.import_module(f".commands.{name}", __package__).add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    first = next((w for w in words if not w.startswith("-")), None)
    # import only the command being run (startup time); anything else gets the full parser
    parser = build_parser(first if first in COMMANDS else None)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MigError as e:
        if args.traceback:
            raise
        print(f"miginspect: {e.oneline()}", file=sys.stderr)
        return EXIT_USAGE if isinstance(e, UsageError) else EXIT_BAD_INPUT
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        print("miginspect: interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        if args.traceback:
            raise
        print(f"miginspect: {e.filename}: {e.strerror}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        if args.traceback:
            raise
        print(f"miginspect: I/O error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except MemoryError:
        print("miginspect: out of memory", file=sys.stderr)
        return EXIT_INTERNAL
    except Exception as e:  # noqa: BLE001 - the last line of defence
        if args.traceback:
            raise
        print(f"miginspect: internal error ({type(e).__name__}: {e}); rerun with --traceback "
              "and report it", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
