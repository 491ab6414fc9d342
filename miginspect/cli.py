"""The command line: parses arguments, runs one command, maps errors to exit codes.

This is the only place that turns an error into a message and an exit status. A user
never sees a traceback unless they ask for it with --traceback (accepted anywhere on the
line). Every message is printed through `render.text.printable`: error messages embed
strings from the file, which are data. With --json a failure also prints a JSON error
object on stdout: {"error": {"code", "kind", "message", "offset", "where", "hint"},
"exit_code"}.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any, NoReturn

from . import __version__
from .errors import FormatError, MigError, UsageError

#: Subcommand modules in miginspect.commands, in help order.
COMMANDS = ["info", "map", "extract", "size", "diff", "devices", "xml", "check", "convert",
            "snapshots", "audit"]

EXIT_OK = 0
EXIT_BAD_INPUT = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3

#: commands whose errors on damaged input point to `check` (and to --partial if they have it)
POINT_TO_CHECK = {"size", "map", "diff", "extract", "convert", "devices"}


class ArgError(Exception):
    """A usage mistake argparse found, with the parser whose usage applies."""

    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser
        self.message = message


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise ArgError(self, message)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `only`, just that subcommand (its module alone is imported)."""
    p = Parser(
        prog="miginspect",
        description="Take QEMU migration and snapshot files apart (legacy streams, mapped-ram, "
        "libvirt save images; plain or gzip/bzip2/xz/lzop/zstd-compressed).",
        epilog="miginspect COMMAND --help shows a command's options. Exit status: 0 fine, 1 "
        "bad input (diff: different; check: will not load), 2 usage error (diff: any error; "
        "check: could not tell).")
    p.add_argument("--version", action="version", version=f"miginspect {__version__}")
    p.add_argument("--traceback", action="store_true", help="show the stack on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        if only is not None and name != only:
            continue
        importlib.import_module(f".commands.{name}", __package__).add_parser(sub)
    return p


def _split(words: list[str]) -> tuple[list[str], bool]:
    """Take --traceback out wherever it is (before a `--`)."""
    out, tb, rest = [], False, False
    for w in words:
        if not rest and w == "--traceback":
            tb = True
            continue
        rest = rest or w == "--"
        out.append(w)
    return out, tb


def _first_word(words: list[str]) -> str | None:
    return next((w for w in words if not w.startswith("-") or w == "-"), None)


def _command_hint(words: list[str]) -> tuple[str | None, str | None]:
    """For a first word that is not a command: (what the user probably meant, the
    command it names)."""
    import difflib  # only on this error path
    import shlex

    pos = [w for w in words if not w.startswith("-") or w == "-"]
    if not pos:
        return None, None
    first = pos[0]
    later = next((w for w in pos[1:] if w in COMMANDS), None)
    if later is not None:
        rest = [w for w in words if w != later]
        return f"did you mean '{shlex.join(['miginspect', later, *rest])}'?", later
    close = difflib.get_close_matches(first, COMMANDS, 1)
    if close:
        return f"did you mean 'miginspect {close[0]} ...'?", close[0]
    if first == "-" or os.path.exists(first):
        return f"did you mean '{shlex.join(['miginspect', 'info', first])}'?", "info"
    return None, None


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction) and name in a.choices:
            return a.choices[name]
    return parser


def main(argv: list[str] | None = None) -> int:
    words, traceback = _split(list(sys.argv[1:] if argv is None else argv))
    want_json = "--json" in words
    first = _first_word(words)
    # import only the command being run (startup time); anything else gets the full parser
    parser = build_parser(first if first in COMMANDS else None)
    if first is not None and first not in COMMANDS and not {"-h", "--help"} & set(words):
        hint, meant = _command_hint(words)
        msg = f"'{first}' is not a command (choose from {', '.join(COMMANDS)})"
        usage = _subparser(build_parser(meant), meant) if meant else parser
        return _usage_error(usage, msg, hint, want_json, "miginspect")
    try:
        args = parser.parse_args(words)
    except ArgError as e:
        return _usage_error(e.parser, e.message, None, want_json)
    args.traceback = traceback or getattr(args, "traceback", False)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        print("miginspect: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every error is mapped here, and only here
        if args.traceback:
            raise
        return _fail(args, e)


def _usage_error(parser: argparse.ArgumentParser, message: str, hint: str | None,
                 want_json: bool, prog: str | None = None) -> int:
    from .render.text import printable

    sys.stderr.write(parser.format_usage())
    text = f"{prog or parser.prog}: error: {message}"
    print(printable(text), file=sys.stderr)
    if hint:
        print(printable(f"hint: {hint}"), file=sys.stderr)
    if want_json:
        _json_error({"code": "usage", "kind": "usage error", "message": message,
                     "offset": None, "where": "", "hint": hint}, EXIT_USAGE)
    return EXIT_USAGE


def _exit_code(args: argparse.Namespace, e: BaseException) -> int:
    if isinstance(e, UsageError):
        return EXIT_USAGE
    if isinstance(e, MigError):
        return int(getattr(args, "error_exit", EXIT_BAD_INPUT))
    if isinstance(e, (FileNotFoundError, IsADirectoryError, PermissionError,
                      NotADirectoryError)):
        return EXIT_USAGE
    if isinstance(e, OSError):
        return int(getattr(args, "error_exit", EXIT_BAD_INPUT))
    return EXIT_INTERNAL


def _hint(args: argparse.Namespace, e: BaseException) -> str | None:
    """Damaged input in a command that does not diagnose it: point to `check`."""
    if args.command not in POINT_TO_CHECK or not isinstance(e, FormatError):
        return None
    path = getattr(args, "file", None) or getattr(args, "input", None)
    target = f"'miginspect check {path}'" if path else "'miginspect check' on that file"
    partial = " (--partial reads what is there)" if hasattr(args, "partial") and \
        not getattr(args, "partial", False) else ""
    return f"{target} says why and how to fix it{partial}"


def _describe(e: BaseException) -> dict[str, Any]:
    if isinstance(e, MigError):
        code = getattr(e, "code", None) or e.kind.replace(" ", "-")
        return {"code": code, "kind": e.kind, "message": e.message, "offset": e.offset,
                "where": e.where, "text": e.oneline()}
    if isinstance(e, OSError) and e.filename is not None:
        name = {FileNotFoundError: "not-found", PermissionError: "permission-denied",
                IsADirectoryError: "is-a-directory", NotADirectoryError: "not-a-directory"}
        code = name.get(type(e), "os-error")
        return {"code": code, "kind": "file error", "message": f"{e.filename}: {e.strerror}",
                "offset": None, "where": "", "text": f"{e.filename}: {e.strerror}"}
    if isinstance(e, OSError):
        return {"code": "io-error", "kind": "I/O error", "message": str(e), "offset": None,
                "where": "", "text": f"I/O error: {e}"}
    if isinstance(e, MemoryError):
        return {"code": "out-of-memory", "kind": "internal error", "message": "out of memory",
                "offset": None, "where": "", "text": "out of memory"}
    return {"code": "internal-error", "kind": "internal error",
            "message": f"{type(e).__name__}: {e}", "offset": None, "where": "",
            "text": f"internal error ({type(e).__name__}: {e}); rerun with --traceback and "
                    "report it"}


def _fail(args: argparse.Namespace, e: BaseException) -> int:
    from .render.text import printable

    rc = _exit_code(args, e)
    d = _describe(e)
    hint = _hint(args, e)
    text = d.pop("text") + (f"; {hint}" if hint else "")
    print(f"miginspect: {printable(text)}", file=sys.stderr)
    if getattr(args, "json", False):
        _json_error({**d, "hint": hint}, rc)
    return rc


def _json_error(err: dict[str, Any], rc: int) -> None:
    from . import ui

    try:
        ui.print_json({"error": err, "exit_code": rc})
    except BrokenPipeError:
        pass


if __name__ == "__main__":
    sys.exit(main())
