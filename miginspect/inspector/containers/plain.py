"""A bare QEMU stream (a migration file, a mapped-ram file, a raw state volume): no
container. A state volume (Proxmox keeps `vmstate` volumes this way) is a QEVM stream
followed by zeros up to the volume's size; the walker reports those as padding
(`zero-padding`), so it needs no kind of its own.
"""

from __future__ import annotations

from ..inflate import Progress
from ..source import Source, mmap_input
from .base import Container, Input, OpenOptions


class PlainKind:
    name = "none"

    def detect(self, head: bytes) -> bool:
        return True  # the fallback: the walker says what is wrong with other content

    def open(self, inp: Input, options: OpenOptions, progress: Progress | None) -> Source:
        options.refuse_for("a QEMU migration stream" if inp.head[:4] == b"QEVM" else
                           "neither a qcow2 image nor a migration stream", inp.path)
        src = mmap_input(inp)
        src.container = Container()
        return src


KIND = PlainKind()
