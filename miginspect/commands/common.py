"""What every command shares: the common options and the one way a report goes out.

A command parses its own arguments, calls one analysis and hands the typed report to
`emit`, which prints it to the terminal (through the command's renderer), as JSON
(through `ui.jsonable`), and exports it with `--export FILE.html|.svg|.txt`. Errors are
not handled here: they propagate to `cli.main`, the one place that maps them to messages
and exit codes.

Building the parser (`common_options`, every command's `add_parser`) imports nothing
beyond argparse: `miginspect --help` and usage errors load no analysis, renderer or
rich. What prints a report (`emit`, the export) is imported when it runs.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import UsageError

if TYPE_CHECKING:
    from rich.console import Console

#: the suffixes --export knows
EXPORT_KINDS = {".html": "html", ".htm": "html", ".svg": "svg", ".txt": "txt"}
#: export width when the report has no width of its own (a pipe without COLUMNS)
EXPORT_WIDTH = 100

INPUT_HELP = ("migration stream, mapped-ram file, libvirt save image or qcow2 disk image with "
              "internal snapshots (--snapshot; .gz/.bz2/.xz/.lzo/.zst read transparently); - "
              "reads a stream from standard input")
SNAPSHOT_HELP = ("for a qcow2 disk image: the internal snapshot whose VM state to read (ID or "
                 "name, as QEMU looks it up; may be left out when exactly one snapshot holds "
                 "VM state; `miginspect snapshots IMG` lists them)")


def _width(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of columns: {text!r}") from None
    if n < 20:
        raise argparse.ArgumentTypeError("--width must be at least 20")
    return n


def _page_size(text: str) -> int:
    try:
        n = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a page size: {text!r}") from None
    if n < 512 or n & (n - 1):
        raise argparse.ArgumentTypeError("the page size must be a power of two >= 512")
    return n


def common_options(page_size: bool = True, snapshot: bool | None = None
                   ) -> argparse.ArgumentParser:
    """The parent parser of every subcommand: --json, --export, --width, --force,
    --traceback, and (for commands that read a capture) --page-size and --snapshot
    (`snapshot` defaults to `page_size`)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true",
                   help="print the report as JSON on stdout (errors too, as {\"error\": ...})")
    g.add_argument("--export", metavar="FILE",
                   help="also write the report as a person sees it to FILE.html, FILE.svg or "
                   "FILE.txt (colours and pictures included; never replaces a file without "
                   "--force)")
    g.add_argument("--width", type=_width, metavar="N",
                   help="lay the report out in N columns (default: the terminal's width, or "
                   "COLUMNS, or unlimited in a pipe)")
    g.add_argument("--force", action="store_true",
                   help="replace existing output files (--export, and the command's own)")
    g.add_argument("--traceback", action="store_true",
                   help="show the stack on errors (accepted anywhere on the line)")
    if page_size:
        p.add_argument("--page-size", type=_page_size, default=None, metavar="BYTES",
                       help="target page size when the file does not record it")
    if page_size if snapshot is None else snapshot:
        p.add_argument("--snapshot", metavar="ID|NAME", default=None, help=SNAPSHOT_HELP)
    return p


Render = Callable[["Console"], None]


def emit(args: argparse.Namespace, report: Any, render: Render, data: Any = None) -> None:
    """Print `report`: as JSON (`data` if given, else the report itself) with --json,
    else through `render` on the terminal console; then --export it."""
    from .. import ui

    export = getattr(args, "export", None)
    if export:
        from ..outfile import check_output_file

        _export_kind(export)
        check_output_file(export, getattr(args, "force", False))
    if getattr(args, "json", False):
        ui.print_json(report if data is None else data)
    else:
        render(ui.console(getattr(args, "width", None)))
    if export:
        from ..render.text import printable

        export_report(export, render, getattr(args, "width", None),
                      getattr(args, "force", False), title=_title(args))
        ui.err_console().print(f"report written to {printable(export)}", markup=False,
                               soft_wrap=True)


def _title(args: argparse.Namespace) -> str:
    """'miginspect info FILE' (the command and its inputs) for the exported document."""
    from ..render.text import printable

    words = [str(args.command)] + [str(getattr(args, k)) for k in ("file", "a", "b", "input")
                                   if getattr(args, k, None)]
    return printable("miginspect " + " ".join(words))


def _export_kind(path: str) -> str:
    for suffix, kind in EXPORT_KINDS.items():
        if path.lower().endswith(suffix):
            return kind
    raise UsageError(f"--export {path}: the name must end in .html, .svg or .txt", code="usage")


_FONT_FACE = re.compile(r"@font-face \{\{.*?\}\}\s*", re.S)
_COMMENT = re.compile(r"<!--.*?-->\s*", re.S)


def render_export(kind: str, render: Render, width: int, title: str) -> str:
    """The report rendered at `width` as a self-contained HTML, SVG or text document."""
    import html
    import io

    from rich._export_format import CONSOLE_HTML_FORMAT, CONSOLE_SVG_FORMAT

    from .. import ui

    con = ui.console(width, file=io.StringIO(), record=True, force_terminal=True,
                     no_color=False)
    render(con)
    if kind == "txt":
        return con.export_text(styles=False)
    safe = html.escape(title).replace("{", "{{").replace("}", "}}")
    if kind == "svg":
        # no web fonts: the SVG must not fetch anything
        fmt = _COMMENT.sub("", _FONT_FACE.sub("", CONSOLE_SVG_FORMAT))
        return con.export_svg(title=title, code_format=fmt)
    fmt = CONSOLE_HTML_FORMAT.replace("<head>\n", f"<head>\n<title>{safe}</title>\n", 1)
    return con.export_html(code_format=fmt, inline_styles=False)


def export_report(path: str, render: Render, width: int | None, force: bool,
                  title: str = "miginspect") -> None:
    from .. import ui
    from ..outfile import write_atomic

    kind = _export_kind(path)
    w = width or ui.output_width() or EXPORT_WIDTH
    doc = render_export(kind, render, w, title)
    write_atomic(path, doc.encode("utf-8"), force)
