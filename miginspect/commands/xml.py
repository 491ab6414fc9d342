"""`miginspect xml FILE`: the domain XML stored in a libvirt save image."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ..errors import FormatError
from .common import common_options, emit

if TYPE_CHECKING:
    from rich.console import Console

    from ..inspector.containers.base import Container


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("xml", help="print the domain XML of a libvirt save image",
                       parents=[common_options(page_size=False)],
                       description="Print the domain XML that `virsh save` / `managedsave` "
                       "stored in the image header (what `virsh save-image-dumpxml` shows). "
                       "Reads only the header: the QEMU data is not decompressed.")
    p.add_argument("file", help="libvirt save image (any format; also one compressed as a "
                   "whole, e.g. save.img.zst); - reads it from standard input")
    p.add_argument("--cookie", action="store_true",
                   help="print the save cookie (libvirt's migration cookie XML) instead")
    p.set_defaults(func=run)


def _container(path: str) -> Container:
    from ..inspector.source import open_source, read_container
    from ..inspector.spool import is_stream_input

    if not is_stream_input(path):
        return read_container(path)
    with open_source(path) as src:  # spooled: a pipe cannot be read twice
        return src.container


def _show(text: str, console: Console) -> None:
    """The XML as stored; on a terminal, control characters are shown as escapes."""
    from ..render.text import printable

    if console.is_terminal:
        text = "\n".join(printable(ln) for ln in text.split("\n"))
    if console.file is sys.stdout and not console.record:
        sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
        return
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def run(args: argparse.Namespace) -> int:
    from .. import ui
    from ..inspector.libvirt_image import image_summary

    c = _container(args.file)
    h = c.libvirt
    if h is None:
        raise FormatError("not a libvirt save image (no LibvirtQemudSave/LibvirtQemudPart "
                          "header), so there is no domain XML in it", 0, "libvirt",
                          code="not-libvirt")
    text = h.cookie if args.cookie else h.xml
    if text is None and not args.json:
        raise FormatError("this image has no save cookie (cookieOffset is 0)", 32, "libvirt",
                          code="libvirt-no-cookie")
    emit(args, c, lambda con: _show(text or "", con), image_summary(c))
    if not h.complete:
        ui.err_console().print("note: incomplete save image (LibvirtQemudPart): libvirt never "
                               "finished writing it", markup=False)
    return 0
