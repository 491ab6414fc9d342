"""The container kinds, in detection order, and the one way an input is opened.

`KINDS` is the only list of kinds: a new kind is a module of this package with a
`KIND` object (`base.ContainerKind`: `detect`, `open`, and `adopt` when it can be found
inside compressed data) and one line here.
"""

from __future__ import annotations

from ..inflate import Progress
from ..source import Source
from . import compressed, libvirt, plain, qcow2
from .base import ContainerKind, Input, OpenOptions

#: detection order; the plain stream is the fallback (it detects anything)
KINDS: tuple[ContainerKind, ...] = (qcow2.KIND, libvirt.KIND, compressed.KIND, plain.KIND)
#: kinds that may be found inside decompressed data
INNER: tuple[ContainerKind, ...] = (libvirt.KIND, qcow2.KIND)


def kind_of(head: bytes) -> ContainerKind:
    return next(k for k in KINDS if k.detect(head))


def inner_kind(head: bytes) -> ContainerKind | None:
    return next((k for k in INNER if k.detect(head)), None)


def known(head: bytes) -> bool:
    """The first bytes are a QEMU stream's or a container's (not unknown content)."""
    return head[:4] == b"QEVM" or any(k.detect(head) for k in KINDS if k is not plain.KIND)


def open_input(inp: Input, options: OpenOptions, progress: Progress | None) -> Source:
    return kind_of(inp.head).open(inp, options, progress)
