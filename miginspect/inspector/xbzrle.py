"""XBZRLE delta decoding (migration/xbzrle.c, util/cutils.c uleb128).

The payload after the 3-byte header is a run of (zrun, nzrun) pairs, each an
unsigned LEB128 count of at most two bytes (14 bits; a second byte with its top
bit set is invalid): zrun bytes are left as they are, then nzrun new bytes
follow verbatim. The trailing unchanged run is not encoded. QEMU's decoder
rules, mirrored here: each pair needs at least two bytes left before each
count; a zero zrun is allowed only as the very first count; nzrun must be at
least 1; neither run may pass the end of the page or of the delta. An empty
delta (length 0) leaves the page unchanged (QEMU's loader accepts it, its
encoder never sends one).
"""

from __future__ import annotations

from ..errors import FormatError


def _bad(why: str, offset: int | None) -> FormatError:
    return FormatError(f"bad XBZRLE delta: {why} (Failed to load XBZRLE page - decode error!)",
                       offset, "ram", code="xbzrle")


def xbzrle_apply(page: bytearray, delta: bytes, offset: int | None = None) -> None:
    """Apply an XBZRLE `delta` (payload without its 3-byte header) to `page` in place.

    `offset` (the record's file offset) only goes into the error."""
    src = bytes(delta)
    slen = len(src)
    n = len(page)
    i = 0
    d = 0
    while i < slen:
        if slen - i < 2:
            raise _bad("a run count with nothing after it", offset)
        b = src[i]
        if b < 0x80:
            if b == 0 and i:
                raise _bad("zero-length unchanged run after the first pair", offset)
            zrun = b
            i += 1
        else:
            b1 = src[i + 1]
            if b1 & 0x80:
                raise _bad("count longer than two bytes", offset)
            zrun = (b & 0x7F) | (b1 << 7)
            if zrun == 0 and i:
                raise _bad("zero-length unchanged run after the first pair", offset)
            i += 2
        d += zrun
        if d > n:
            raise _bad("unchanged run past the end of the page", offset)
        if slen - i < 2:
            raise _bad("a changed run with no bytes", offset)
        b = src[i]
        if b < 0x80:
            nzrun = b
            i += 1
        else:
            b1 = src[i + 1]
            if b1 & 0x80:
                raise _bad("count longer than two bytes", offset)
            nzrun = (b & 0x7F) | (b1 << 7)
            i += 2
        if nzrun == 0:
            raise _bad("zero-length changed run", offset)
        e = d + nzrun
        j = i + nzrun
        if e > n or j > slen:
            raise _bad("run past the end of the page or the delta", offset)
        page[d:e] = src[i:j]
        i = j
        d = e
