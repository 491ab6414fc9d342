"""The container kinds, in detection order, and the one way an input is opened.

`KINDS` is the only list of kinds: a new kind is a module of this package with a
`KIND` object (`base.ContainerKind`: `detect`, `open`, and `adopt` when it can be found
inside compressed data) and one line here. A kind whose module is heavy is listed as a
`DeferredKind` (its name and a first-bytes check of `magic`): its module is imported
only when an input starts like it, and `kind_of` / `inner_kind` answer the module's own
`KIND`.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

from ..inflate import Progress
from ..source import Source
from . import compressed, magic, plain
from .base import ContainerKind, Input, OpenOptions


class DeferredKind:
    """The kind of module `name` of this package, detected by `detect` without
    importing that module."""

    def __init__(self, name: str, detect: Callable[[bytes], bool]) -> None:
        self.name = name
        self._detect = detect

    def detect(self, head: bytes) -> bool:
        return self._detect(head)

    def resolve(self) -> ContainerKind:
        """The module's own `KIND` (the module is imported the first time)."""
        kind: ContainerKind = import_module(f".{self.name}", __package__).KIND
        return kind

    def open(self, inp: Input, options: OpenOptions, progress: Progress | None) -> Source:
        return self.resolve().open(inp, options, progress)


def _resolved(k: ContainerKind) -> ContainerKind:
    return k.resolve() if isinstance(k, DeferredKind) else k


QCOW2 = DeferredKind("qcow2", magic.is_qcow2)
LIBVIRT = DeferredKind("libvirt", magic.is_libvirt)

#: detection order; the plain stream is the fallback (it detects anything)
KINDS: tuple[ContainerKind, ...] = (QCOW2, LIBVIRT, compressed.KIND, plain.KIND)
#: kinds that may be found inside decompressed data
INNER: tuple[ContainerKind, ...] = (LIBVIRT, QCOW2)


def kind_of(head: bytes) -> ContainerKind:
    return _resolved(next(k for k in KINDS if k.detect(head)))


def inner_kind(head: bytes) -> ContainerKind | None:
    k = next((k for k in INNER if k.detect(head)), None)
    return None if k is None else _resolved(k)


def known(head: bytes) -> bool:
    """The first bytes are a QEMU stream's or a container's (not unknown content)."""
    return head[:4] == b"QEVM" or any(k.detect(head) for k in KINDS if k is not plain.KIND)


def open_input(inp: Input, options: OpenOptions, progress: Progress | None) -> Source:
    return kind_of(inp.head).open(inp, options, progress)
