"""Guest-physical layout of x86 `pc` (i440FX) and `q35` machines and aarch64 `virt`.

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
refused, since the file does not record the CPU vendor.) The 0xA0000-0xBFFFF legacy
window is RAM in the block but VGA MMIO in the guest's view (QEMU's own dump leaves it
out); the image keeps the block's bytes.

virt (aarch64, machine types `virt`, `virt-X.Y`)
    The main RAM block `mach-virt.ram` is one range at 0x40000000 (1 GiB).

When the file cannot tell the layout, `physical_layout` refuses and says why, rather
than guess: memory that comes from memory backends (NUMA nodes, `-machine
memory-backend=`; the blocks are named by the backend ids and their order in guest
memory is not in the file), DIMMs and other hotplugged memory (their addresses are
device properties, not migrated), or any other RAM block that could be main memory.
`ram_block` names the main memory block (laid out by the machine's rule); `base`
places the chosen block, whole, at that guest-physical address (also for machines
whose layout is not known here).
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
VIRT_RAM_BLOCK = "mach-virt.ram"
VIRT_MEM_BASE = 0x40000000  # hw/arm/virt.c base_memmap[VIRT_MEM]
AMD_HT_START = 0xFD00000000  # above this, AMD hosts relocate above-4G RAM to 1 TiB
MAIN_RAM_BLOCKS = {"pc": DEFAULT_RAM_BLOCK, "q35": DEFAULT_RAM_BLOCK, "virt": VIRT_RAM_BLOCK}
#: RAM blocks that are firmware, ROM or device memory on the machines known here
#: (device-owned blocks carry a `/` in their idstr: `0000:00:02.0/vga.vram`, `/rom@etc/...`)
NOT_MAIN_MEMORY = {"pc.bios", "pc.rom", "vga.vram", "system.flash0", "system.flash1",
                   "virt.flash0", "virt.flash1", "virt.secure-ram", "mach-virt.tag",
                   "virt.secure-flash0", "virt.secure-flash1", "isa-bios"}


@dataclass
class PhysRange:
    gpa: int  # guest-physical start
    block_offset: int  # offset in the RAM block
    length: int


@dataclass
class PhysicalLayout:
    machine_type: str
    family: str  # "pc", "q35", "virt" or "base" (placed by --base)
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
_VIRT = re.compile(r"^virt(-(\d+)\.(\d+))?$")
_PC = re.compile(r"^(pc-i440fx-(\d+)\.(\d+)|pc-(\d+)\.(\d+)|pc)$")


def machine_family(machine_type: str | None) -> tuple[str, tuple[int, int] | None]:
    """('pc' | 'q35' | 'virt', (major, minor) or None for the unversioned alias)."""
    mt = machine_type or ""
    m = _VIRT.match(mt)
    if m:
        return "virt", (int(m.group(2)), int(m.group(3))) if m.group(2) else None
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
        f"guest-physical layout is known for x86 pc/q35 and aarch64 virt machines, not "
        f"{machine_type!r}: extract the RAMBlocks without --physical, or place one block "
        "with --ram-block NAME --base ADDR", None, "physical", code="physical-layout-unknown")


def below_4g_size(machine_type: str, ram_size: int,
                  max_ram_below_4g: int | None = None) -> tuple[int, str]:
    """(bytes of RAM below 4 GiB, the rule applied in words)."""
    family, ver = machine_family(machine_type)
    if family not in ("pc", "q35"):
        raise UnsupportedError(f"{machine_type!r} is not an x86 PC machine: no PCI-hole split",
                               None, "physical", code="physical-layout-unknown")
    if max_ram_below_4g is not None and not 0 < max_ram_below_4g <= FOUR_GIB:
        raise UsageError("max-ram-below-4g must be between 1 byte and 4 GiB", code="usage")
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
    if above and FOUR_GIB + above > AMD_HT_START:
        raise UnsupportedError(
            f"RAM above 4 GiB would end at 0x{FOUR_GIB + above:x}, past 0x{AMD_HT_START:x}: "
            "on AMD hosts QEMU then moves it to 1 TiB and the file does not record the CPU "
            "vendor", None, "physical", code="physical-layout-unknown")
    ranges = [PhysRange(0, 0, below)] if below else []
    if above:
        ranges.append(PhysRange(FOUR_GIB, below, above))
    return PhysicalLayout(machine_type or "", family, ram_block, ram_size, below, above, why,
                          ranges)


def _placed(machine_type: str | None, family: str, block: str, size: int, base: int,
            why: str) -> PhysicalLayout:
    below = max(0, min(size, FOUR_GIB - base)) if base < FOUR_GIB else 0
    return PhysicalLayout(machine_type or "", family, block, size, below, size - below, why,
                          [PhysRange(base, 0, size)] if size else [])


def main_memory_candidates(names: list[str]) -> list[str]:
    """RAM blocks that could hold guest main memory (not firmware, ROM or device memory)."""
    return [n for n in names if "/" not in n and n not in NOT_MAIN_MEMORY]


def physical_layout(machine_type: str | None, blocks: dict[str, int],
                    ram_block: str | None = None, base: int | None = None,
                    max_ram_below_4g: int | None = None) -> PhysicalLayout:
    """Where the main RAM block's bytes sit in guest-physical memory. `blocks` maps every
    RAM block name of the file to its used length (in file order). Refuses (UnsupportedError,
    with the reason and the overrides) where the file cannot tell."""
    if base is not None and base < 0:
        raise UsageError("--base must not be negative", code="usage")
    try:
        family: str | None = machine_family(machine_type)[0]
    except UnsupportedError:
        if base is None:
            raise
        family = None
    default = MAIN_RAM_BLOCKS.get(family or "")
    candidates = main_memory_candidates(list(blocks))
    block = ram_block
    if block is None:
        if default in blocks and candidates == [default]:
            block = default
        elif base is not None and len(candidates) == 1:
            block = candidates[0]
        else:
            raise UnsupportedError(_ambiguous(default, blocks, candidates), None, "physical",
                                   code="physical-layout-unknown")
    if block not in blocks:
        raise UsageError(f"no RAMBlock named {block!r} (blocks: {', '.join(blocks)})", code="usage")
    size = blocks[block]
    if base is not None:
        return _placed(machine_type, "base", block, size, base,
                       f"{block} placed whole at 0x{base:x} (--base)")
    if family == "virt":
        return _placed(machine_type, "virt", block, size, VIRT_MEM_BASE,
                       f"virt: RAM at 0x{VIRT_MEM_BASE:x}")
    return x86_layout(machine_type, size, block, max_ram_below_4g)


def _ambiguous(default: str | None, blocks: dict[str, int], candidates: list[str]) -> str:
    others = [n for n in candidates if n != default]
    listed = ", ".join(f"{n!r} ({blocks[n] >> 20} MiB)" for n in others[:8])
    if default not in blocks:
        return (f"no RAMBlock named {default!r}: guest memory comes from memory backends "
                f"({listed}; NUMA nodes or -machine memory-backend) whose guest-physical "
                "order the file does not record. Name the main memory with --ram-block NAME "
                "(laid out by the machine's rule) or place one block with --ram-block NAME "
                "--base ADDR")
    return (f"besides {default!r} the file holds RAM blocks that could be guest memory "
            f"({listed}: DIMMs, hotplugged memory or other memory backends) whose "
            f"guest-physical addresses it does not record. Extract {default!r} alone with "
            f"--ram-block {default}, or place one block with --ram-block NAME --base ADDR")
