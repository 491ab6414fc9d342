"""`miginspect xml FILE`: the domain XML stored in a libvirt save image."""

from __future__ import annotations

import argparse
import sys

from .. import ui
from ..errors import FormatError
from ..inspector.source import read_container


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("xml", help="print the domain XML of a libvirt save image",
                       description="Print the domain XML that `virsh save` / `managedsave` "
                       "stored in the image header (what `virsh save-image-dumpxml` shows). "
                       "Reads only the header: the QEMU data is not decompressed.")
    p.add_argument("file", help="libvirt save image (any format; also one compressed as a "
                   "whole, e.g. save.img.zst)")
    p.add_argument("--cookie", action="store_true",
                   help="print the save cookie (libvirt's migration cookie XML) instead")
    p.add_argument("--json", action="store_true",
                   help="print {xml, cookie, header fields, domain} as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..inspector.libvirt_image import image_summary

    c = read_container(args.file)
    h = c.libvirt
    if h is None:
        raise FormatError("not a libvirt save image (no LibvirtQemudSave/LibvirtQemudPart "
                          "header), so there is no domain XML in it", 0, "libvirt")
    if args.json:
        ui.print_json(image_summary(c))
        return 0
    text = h.cookie if args.cookie else h.xml
    if text is None:
        raise FormatError("this image has no save cookie (cookieOffset is 0)", 32, "libvirt")
    sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    if not h.complete:
        ui.err_console().print("[yellow]note: incomplete save image (LibvirtQemudPart): "
                               "libvirt never finished writing it[/]")
    return 0
