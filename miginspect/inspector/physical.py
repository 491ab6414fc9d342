"""Guest-physical layout of x86 `pc` (i440FX) and `q35` machines.

A migration file holds RAMBlocks, not guest-physical memory. On x86 PC machines
the main RAM block (`pc.ram` unless the machine uses a named memory backend) is
split around the 32-bit PCI hole: its first `below_4g` bytes appear at
guest-physical 0, the rest at 4 GiB. The split depends only on the machine
type and the RAM size (plus the `max-ram-below-4g` machine property, which the
stream does not record; pass it explicitly if it was set). The rule QEMU's PC
machines follow, restated:

pc (i440FX, machine types `pc`, `pc-i440fx-X.Y`, old `pc-X.Y`)
    The default limit is 3.5 GiB (0xE0000000). If the RAM size reaches that
    limit and the machine type aligns to gigabytes (every type from 2.1 on),
    the limit drops to 3 GiB (0xC0000000) so that both halves stay 1 GiB
    aligned. A `max-ram-below-4g` value replaces the 3.5 GiB default (and is
    still capped to 3 GiB by the alignment rule when RAM reaches it).

q35 (machine types `q35`, `pc-q35-X.Y`)
    The 32-bit window must also hold the 256 MiB PCIe MMCONFIG area, so RAM of
    2.75 GiB (0xB0000000) or more is split at 2 GiB (0x80000000); smaller RAM
    uses a limit of 2.75 GiB, i.e. stays entirely below 4 GiB. A
    `max-ram-below-4g` value lower than that limit lowers it.

Either way: below_4g = limit if RAM size >= limit, else the whole RAM, and
above_4g = RAM size - below_4g, mapped from 4 GiB up. (Guests with RAM ending
near 1 TiB on AMD hosts may be relocated above the HyperTransport hole; that is
not modelled.) The 0xA0000-0xFFFFF legacy window is RAM in the block but MMIO
(VGA) or ROM shadow in the guest's view; the image keeps the block's bytes.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import UnsupportedError, UsageError

GiB = 1 << 30
FOUR_GIB = 4 * GiB
PC_DEFAULT_BELOW_4G = 0xE0000000  # 3.5 GiB
PC_GIGABYTE_ALIGNED_BELOW_4G = 0xC0000000  # 3 GiB
Q35_SMALL_LIMIT = 0xB0000000  # 2.75 GiB
Q35_SPLIT_BELOW_4G = 0x80000000  # 2 GiB
DEFAULT_RAM_BLOCK = "pc.ram"


@dataclass
class PhysRange:
    gpa: int  # guest-physical start
    block_offset: int  # offset in the RAM block
    length: int


@dataclass
class PhysicalLayout:
    machine_type: str
    family: str  # "pc" or "q35"
    ram_block: str
    ram_size: int
    below_4g: int
    above_4g: int
    rule: str
    ranges: list[PhysRange] = field(default_factory=list)

    @property
    def end(self) -> int:
        """One past the highest guest-physical RAM address."""
        return max((r.gpa + r.length for r in self.ranges), default=0)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_Q35 = re.compile(r"^(pc-q35-(\d+)\.(\d+)|q35)$")
_PC = re.compile(r"^(pc-i440fx-(\d+)\.(\d+)|pc-(\d+)\.(\d+)|pc)$")


def machine_family(machine_type: str | None) -> tuple[str, tuple[int, int] | None]:
    """('pc' | 'q35', (major, minor) or None for the unversioned alias)."""
    mt = machine_type or ""
    m = _Q35.match(mt)
    if m:
        return "q35", (int(m.group(2)), int(m.group(3))) if m.group(2) else None
    m = _PC.match(mt)
    if m:
        if m.group(2):
            return "pc", (int(m.group(2)), int(m.group(3)))
        if m.group(4):
            return "pc", (int(m.group(4)), int(m.group(5)))
        return "pc", None
    raise UnsupportedError(
        f"guest-physical layout is known for x86 pc and q35 machines only, not "
        f"{machine_type!r}; extract the RAMBlocks without --physical", None, "physical")


def below_4g_size(machine_type: str, ram_size: int,
                  max_ram_below_4g: int | None = None) -> tuple[int, str]:
    """(bytes of RAM below 4 GiB, the rule applied in words)."""
    family, ver = machine_family(machine_type)
    if max_ram_below_4g is not None and not 0 < max_ram_below_4g <= FOUR_GIB:
        raise UsageError("max-ram-below-4g must be between 1 byte and 4 GiB")
    if family == "pc":
        limit = max_ram_below_4g or PC_DEFAULT_BELOW_4G
        why = f"pc: limit 0x{limit:x}"
        aligned = ver is None or ver >= (2, 1)
        if ram_size >= limit and aligned and limit > PC_GIGABYTE_ALIGNED_BELOW_4G:
            limit = PC_GIGABYTE_ALIGNED_BELOW_4G
            why += ", RAM reaches it: gigabyte-aligned to 0xc0000000"
    else:
        limit = Q35_SPLIT_BELOW_4G if ram_size >= Q35_SMALL_LIMIT else Q35_SMALL_LIMIT
        why = f"q35: RAM {'>=' if ram_size >= Q35_SMALL_LIMIT else '<'} 0xb0000000, " \
              f"limit 0x{limit:x}"
        if max_ram_below_4g is not None and limit > max_ram_below_4g:
            limit = max_ram_below_4g
            why += f", lowered by max-ram-below-4g to 0x{limit:x}"
    below = limit if ram_size >= limit else ram_size
    why += f"; {'split' if ram_size > below else 'all below 4 GiB'}"
    return below, why


def x86_layout(machine_type: str | None, ram_size: int, ram_block: str = DEFAULT_RAM_BLOCK,
               max_ram_below_4g: int | None = None) -> PhysicalLayout:
    """Where the main RAM block's bytes sit in guest-physical memory."""
    family, _ = machine_family(machine_type)
    below, why = below_4g_size(machine_type or "", ram_size, max_ram_below_4g)
    above = ram_size - below
    ranges = [PhysRange(0, 0, below)] if below else []
    if above:
        ranges.append(PhysRange(FOUR_GIB, below, above))
    return PhysicalLayout(machine_type or "", family, ram_block, ram_size, below, above, why,
                          ranges)
