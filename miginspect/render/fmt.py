"""Small formatting helpers shared by the renderers (one unit system: IEC, KiB/MiB/GiB).
Strings from files go through `render.text` instead."""

from __future__ import annotations


def size(n: int | float | None) -> str:
    """1,234,567 -> '1.18 MiB' (bytes below 1 KiB stay exact)."""
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def short_size(n: int | None) -> str:
    """Compact size for table cells: '128 MiB', '4 KiB', '1.5 GiB'."""
    if n is None:
        return "-"
    v = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(v) < 1024 or unit == "TiB":
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
        v /= 1024
    return f"{v:.1f} TiB"


def hexoff(n: int | None) -> str:
    return "-" if n is None else f"0x{n:x}"


def num(n: int | None) -> str:
    return "-" if n is None else f"{n:,}"
