"""The first bytes of the container kinds that `registry` imports only when an input
starts with them: the checks are here, the magic values are the grammars' own
(`formats/`), so that reading a plain stream never imports the libvirt or qcow2 modules.
"""

from __future__ import annotations

from ...formats.libvirt import QEMU_SAVE_MAGIC, QEMU_SAVE_PARTIAL
from ...formats.qcow2 import QCOW_MAGIC


def is_qcow2(head: bytes) -> bool:
    """True when the first bytes are a qcow2 image's (magic "QFI\\xfb")."""
    return head[:4] == QCOW_MAGIC


def is_libvirt(head: bytes) -> bool:
    """True when the first bytes are a libvirt save image's (finished or partial)."""
    return head[:16] in (QEMU_SAVE_MAGIC, QEMU_SAVE_PARTIAL)
