"""Hand-built RAM record sequences (built with the construct grammars) and a
reference decoder that uses only the grammar, to check the fast scanner."""

from __future__ import annotations

import io
import random

from miginspect.errors import MigError
from miginspect.formats import ram as R

PS = 4096
BLOCKS = [("pc.ram", 64 * PS), ("vga.vram", 16 * PS), ("/rom@etc/acpi/tables", 4 * PS)]


def build_records(seed: int, n: int = 300) -> bytes:
    """A random, valid run of page records ending with EOS, CONTINUE used as QEMU does."""
    rnd = random.Random(seed)
    out = []
    cur = None
    for _ in range(n):
        bi = rnd.randrange(len(BLOCKS)) if rnd.random() < 0.1 or cur is None else cur
        name, length = BLOCKS[bi]
        page = rnd.randrange(length // PS)
        kind = rnd.choice([R.RAM_SAVE_FLAG_PAGE] * 3 + [R.RAM_SAVE_FLAG_ZERO] * 2
                          + [R.RAM_SAVE_FLAG_XBZRLE])
        cont = bi == cur
        word = page * PS | kind | (R.RAM_SAVE_FLAG_CONTINUE if cont else 0)
        if kind == R.RAM_SAVE_FLAG_PAGE:
            payload = bytes([rnd.randrange(256)]) * PS
        elif kind == R.RAM_SAVE_FLAG_ZERO:
            payload = 0
        else:
            payload = {"encoding": 1, "length": 3, "data": bytes([0, 1, rnd.randrange(256)])}
        out.append(R.ram_page_record.build(
            {"word": word, "idstr": None if cont else name, "payload": payload}, page_size=PS))
        cur = bi
        # runs of identical CONTINUE records exercise the vector path
        if kind in (R.RAM_SAVE_FLAG_PAGE, R.RAM_SAVE_FLAG_ZERO) and rnd.random() < 0.2:
            for p in range(page + 1, min(length // PS, page + rnd.randrange(2, 40))):
                w = p * PS | kind | R.RAM_SAVE_FLAG_CONTINUE
                out.append(R.ram_page_record.build(
                    {"word": w, "idstr": None,
                     "payload": b"\x11" * PS if kind == R.RAM_SAVE_FLAG_PAGE else 0},
                    page_size=PS))
    out.append(R.ram_page_record.build({"word": R.RAM_SAVE_FLAG_EOS, "idstr": None,
                                        "payload": None}, page_size=PS))
    return b"".join(out)


def reference_scan(buf: bytes, pos: int = 0):
    """Decode with the grammar only: rows (rec_off, block, page, kind) until EOS, and
    the offset after EOS; or ("error", offset of the failing record)."""
    names = {n: i for i, (n, _) in enumerate(BLOCKS)}
    rows = []
    cur = -1
    while True:
        if pos + 8 > len(buf):
            return rows, ("error", pos)
        stream = io.BytesIO(buf[pos:])
        try:
            rec = R.ram_page_record.parse_stream(stream, page_size=PS)
        except Exception:  # noqa: BLE001 - any grammar failure is a record error
            return rows, ("error", pos)
        size = stream.tell()
        ptype = rec.flags & ~R.RAM_SAVE_FLAG_CONTINUE
        if ptype == R.RAM_SAVE_FLAG_EOS and not rec.flags & R.RAM_SAVE_FLAG_CONTINUE:
            return rows, ("end", pos + 8)
        if ptype not in (R.RAM_SAVE_FLAG_PAGE, R.RAM_SAVE_FLAG_ZERO, R.RAM_SAVE_FLAG_XBZRLE):
            return rows, ("error", pos)
        if rec.idstr is not None:
            if rec.idstr not in names:
                return rows, ("error", pos)
            cur = names[rec.idstr]
        if cur < 0 or rec.addr + PS > BLOCKS[cur][1]:
            return rows, ("error", pos)
        if ptype == R.RAM_SAVE_FLAG_ZERO and rec.payload != 0:
            return rows, ("error", pos)
        if ptype == R.RAM_SAVE_FLAG_XBZRLE and (rec.payload.encoding != 1
                                                or rec.payload.length > PS):
            return rows, ("error", pos)
        rows.append((pos, cur, rec.addr // PS, ptype))
        pos += size


def fast_scan(buf: bytes, pos: int = 0):
    from miginspect.inspector.ramscan import RamScanner

    sc = RamScanner(buf, PS, [n for n, _ in BLOCKS], [n for _, n in BLOCKS])
    try:
        end = sc.scan(pos, len(buf))
        result = ("end", end)
    except MigError as e:
        result = ("error", e.offset)
    t = sc.table()
    rows = list(zip(t.rec_off.tolist(), t.block.tolist(), t.page.tolist(), t.kind.tolist(),
                    strict=True))
    return rows, result
