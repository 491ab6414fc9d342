"""XBZRLE delta decoding (migration/xbzrle.c, util/cutils.c uleb128).

The payload after the 3-byte header is a run of (zrun, nzrun) pairs, each an
unsigned LEB128 count of at most two bytes (14 bits): zrun bytes are left as
they are, then nzrun new bytes follow verbatim. The trailing unchanged run is
not encoded.
"""

from __future__ import annotations

from ..errors import FormatError


def _uleb(data: bytes, i: int) -> tuple[int, int]:
    if i >= len(data):
        raise ValueError("count runs past the end")
    b0 = data[i]
    if b0 < 0x80:
        return b0, i + 1
    if i + 1 >= len(data):
        raise ValueError("count runs past the end")
    b1 = data[i + 1]
    if b1 & 0x80:
        raise ValueError("count longer than two bytes")
    return (b0 & 0x7F) | (b1 << 7), i + 2


def xbzrle_apply(page: bytearray, delta: bytes, offset: int | None = None) -> None:
    """Apply an XBZRLE `delta` (payload without its 3-byte header) to `page` in place."""
    i = 0
    d = 0
    n = len(page)
    slen = len(delta)
    try:
        while i < slen:
            if slen - i < 2:
                raise ValueError("a run count with nothing after it")
            zrun, i = _uleb(delta, i)
            if zrun == 0 and i > 1:
                raise ValueError("zero-length unchanged run after the first pair")
            d += zrun
            if d > n:
                raise ValueError("unchanged run past the end of the page")
            if slen - i < 2:
                raise ValueError("a changed run with no bytes")
            nzrun, i = _uleb(delta, i)
            if nzrun == 0:
                raise ValueError("zero-length changed run")
            if d + nzrun > n or i + nzrun > slen:
                raise ValueError("run past the end of the page or the delta")
            page[d : d + nzrun] = delta[i : i + nzrun]
            i += nzrun
            d += nzrun
    except ValueError as e:
        raise FormatError(f"bad XBZRLE delta: {e} (Failed to load XBZRLE page - decode error!)",
                          offset, "ram") from e
