"""Tiny fuzz bases cut from real captures, and mutators aimed at their structure.

A base is a real capture cut down to a few KiB-100 KiB that is still a valid
stream: header + configuration + the ram START (full RAMBlock list) + the first
few page records of the first PART + an END holding only EOS + every device
section + EOF (+ the vmdescription trailer). A mapped-ram base keeps every
block's header but shrinks each block to a few pages with page-aligned (not
1 MiB-aligned) regions. A libvirt base wraps a legacy base in a hand-built
virQEMUSaveHeader. Each base carries its "interesting" offsets (record and
section headers, length fields) so the mutators hit structure, not page data.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

import zstandard

from miginspect.formats import libvirt as lv
from miginspect.formats import mapped_ram as M
from miginspect.formats import ram as R
from miginspect.formats import stream as S
from miginspect.inspector.stream import walk_stream


@dataclass
class Base:
    name: str
    data: bytes
    #: offset -> width of a length/offset/id field worth inflating (1, 2, 4, 8; <0: LE)
    fields: dict[int, int] = field(default_factory=dict)
    #: offsets where a structure starts (good places to cut or flip)
    marks: list[int] = field(default_factory=list)


def _u64(v: int) -> bytes:
    return struct.pack(">Q", v)


def _footer(sid: int) -> bytes:
    return bytes([S.QEMU_VM_SECTION_FOOTER]) + struct.pack(">I", sid)


def shrink_legacy(raw: bytes, records: int = 6, keep_trailer: bool = True) -> Base:
    """A valid legacy stream cut from the real capture `raw` (see module doc)."""
    w = walk_stream(raw)
    if w.error is not None or w.mapped_ram or w.records is None:
        raise ValueError(f"not a clean legacy capture: {w.error}")
    rt = w.records
    out = bytearray()
    b = Base("legacy" + ("" if keep_trailer else "-notrailer"), b"")
    start = next(s for s in w.sections if s.kind == S.KIND_START and s.idstr == "ram")
    first_part = next((s for s in w.sections if s.kind == S.KIND_PART and s.section_id ==
                       start.section_id and len(rt) and s.offset < int(rt.rec_off[0]) < s.end),
                      None)
    out += raw[: start.end]  # header, configuration, early sections, ram START
    b.marks += [0, 4, 8]
    b.fields[4] = 4
    if w.configuration is not None:
        b.fields[w.configuration.offset + 1] = 4
        b.marks.append(w.configuration.offset)
    b.marks.append(start.offset)
    b.fields[start.offset + 1] = 4
    b.fields[start.payload_offset] = 8  # MEM_SIZE total
    for blk in w.blocks:
        b.fields[blk.entry_offset] = 1  # idstr length
        b.fields[blk.entry_offset + 1 + len(blk.name.encode("latin-1"))] = 8  # used_length
        b.marks.append(blk.entry_offset)
    if first_part is not None:
        # PART: its own header, the first `records` records, EOS, footer
        hdr_end = first_part.payload_offset
        recs = [int(x) for x in rt.rec_off if first_part.offset < x < first_part.end]
        n = min(records, len(recs))
        body_end = recs[n] if n < len(recs) else first_part.payload_end - 8
        base_off = len(out)
        out += raw[first_part.offset: hdr_end]
        for r in recs[:n]:
            b.marks.append(base_off + (r - first_part.offset))
            b.fields[base_off + (r - first_part.offset)] = 8
        out += raw[hdr_end: body_end]
        out += _u64(R.RAM_SAVE_FLAG_EOS)
        if first_part.footer:
            out += _footer(first_part.section_id)
        # END with only EOS
        b.marks.append(len(out))
        out += bytes([S.QEMU_VM_SECTION_END]) + struct.pack(">I", start.section_id)
        out += _u64(R.RAM_SAVE_FLAG_EOS)
        if first_part.footer:
            out += _footer(start.section_id)
    for s in w.sections:
        live = s.kind in (S.KIND_START, S.KIND_PART, S.KIND_END)
        if s.kind in (S.KIND_FULL, S.KIND_COMMAND) or (live and s.section_id != start.section_id):
            b.marks.append(len(out))
            if s.kind == S.KIND_COMMAND:
                b.fields[len(out) + 3] = 2
            else:
                b.fields[len(out) + 1] = 4
                if s.kind in (S.KIND_START, S.KIND_FULL):
                    b.fields[len(out) + 5] = 1
            out += raw[s.offset: s.end]
    b.marks.append(len(out))
    out.append(S.QEMU_VM_EOF)
    if keep_trailer and w.trailer is not None and w.trailer.data is not None:
        t = w.trailer
        b.marks.append(len(out))
        b.fields[len(out) + 1] = 4
        out += raw[t.offset: t.json_offset + t.length]
    b.data = bytes(out)
    return b


def shrink_mapped_ram(raw: bytes, pages: int = 3) -> Base:
    """A valid mapped-ram stream with every block shrunk to <= `pages` pages."""
    w = walk_stream(raw)
    if w.error is not None or not w.mapped_ram:
        raise ValueError(f"not a clean mapped-ram capture: {w.error}")
    ps = w.page_size
    start = next(s for s in w.sections if s.kind == S.KIND_START and s.idstr == "ram")
    b = Base("mapped-ram", b"")
    out = bytearray(raw[: start.payload_offset])
    b.marks += [0, 8, start.offset]
    lens = [min(blk.used_length, pages * ps) for blk in w.blocks]
    b.fields[len(out)] = 8
    out += _u64(sum(lens) | R.RAM_SAVE_FLAG_MEM_SIZE)
    for blk, ln in zip(w.blocks, lens, strict=True):
        m = blk.mapped_ram
        assert m is not None
        name = blk.name.encode("latin-1")
        b.marks.append(len(out))
        b.fields[len(out)] = 1
        out += bytes([len(name)]) + name
        b.fields[len(out)] = 8
        out += _u64(ln)
        if w.ignore_shared:
            out += _u64(blk.mr_addr or 0)
        hoff = len(out)
        n = ln // ps
        nbytes = M.bitmap_size(n)
        bm_off = hoff + M.MAPPED_RAM_HEADER_SIZE
        pg_off = (bm_off + nbytes + ps - 1) // ps * ps
        for k, wd in ((0, 4), (4, 8), (12, 8), (20, 8)):
            b.fields[hoff + k] = wd
        b.marks.append(hoff)
        out += struct.pack(">IQQQ", m.version, ps, bm_off, pg_off)
        src_bm = raw[m.bitmap_offset: m.bitmap_offset + m.bitmap_bytes]
        bits = int.from_bytes(src_bm, "little") & ((1 << n) - 1)
        out += bits.to_bytes(nbytes, "little")
        out += bytes(pg_off - len(out))
        b.marks.append(pg_off)
        out += raw[m.pages_offset: m.pages_offset + ln]
    # rest of the START payload (EOS) and everything after it, verbatim
    last = w.blocks[-1].mapped_ram
    assert last is not None
    tail_from = last.pages_offset + w.blocks[-1].used_length
    b.marks.append(len(out))
    out += raw[tail_from:]
    b.data = bytes(out)
    return b


def wrap_libvirt(inner: Base, xml: bytes = b"<domain type='kvm'><name>fuzz</name></domain>",
                 fmt: int = lv.QEMU_SAVE_FORMAT_RAW, pad: int = 256) -> Base:
    """`inner` behind a little-endian libvirt header (format raw or sparse)."""
    data_len = len(xml) + 1 + pad
    hdr = lv.virQEMUSaveHeader_le.build(dict(magic=lv.QEMU_SAVE_MAGIC, version=2,
                                             data_len=data_len, was_running=1, format=fmt,
                                             cookieOffset=0))
    body = xml + b"\0" * (1 + pad)
    off = len(hdr) + len(body)
    b = Base("libvirt-" + inner.name, hdr + body + inner.data)
    b.fields.update({16: -4, 20: -4, 28: -4, 32: -4})
    b.marks += [0, 16, 92]
    b.fields.update({k + off: v for k, v in inner.fields.items()})
    b.marks += [m + off for m in inner.marks]
    if inner.name == "mapped-ram":
        raise ValueError("mapped-ram offsets are absolute: wrap a legacy base")
    return b


def compress_base(inner: Base) -> Base:
    """zstd of a base: exercises the inflating path (cuts, flips in compressed data)."""
    z = zstandard.ZstdCompressor(level=3).compress(inner.data)
    return Base("zstd-" + inner.name, z, {}, [0, len(z) // 2, len(z) - 4])


# ---------------------------------------------------------------------------
_BIG = [0xFFFFFFFFFFFFFFFF, 1 << 63, 1 << 40, 0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, 1 << 32,
        0xFFFF, 0xFF, 0, 1]


def _put(buf: bytearray, off: int, width: int, value: int) -> None:
    le = width < 0
    width = abs(width)
    if off < 0 or off + width > len(buf):
        return
    value &= (1 << (8 * width)) - 1
    buf[off: off + width] = value.to_bytes(width, "little" if le else "big")


def mutate(base: Base, rnd: random.Random) -> tuple[bytes, str]:
    """One mutated copy of `base` and a short description of what was done."""
    data = bytearray(base.data)
    n = len(data)
    ops = []
    for _ in range(1 if rnd.random() < 0.7 else rnd.randint(2, 4)):
        kind = rnd.choices(["truncate", "flip", "inflate", "byte", "delete", "insert", "dup"],
                           [3, 3, 4, 2, 1, 1, 1])[0]
        near = rnd.random() < 0.75 and (base.marks or base.fields)
        if near:
            anchors = base.marks + list(base.fields)
            pos = rnd.choice(anchors) + rnd.choice([0, 0, 0, 1, -1, rnd.randint(-16, 16)])
        else:
            pos = rnd.randrange(max(1, len(data)))
        pos = max(0, min(pos, max(0, len(data) - 1)))
        if kind == "truncate":
            cut = pos if rnd.random() < 0.8 else rnd.randrange(len(data) + 1)
            del data[cut:]
            ops.append(f"truncate@{cut}")
        elif kind == "flip" and data:
            bit = rnd.randrange(8)
            data[pos] ^= 1 << bit
            ops.append(f"flip@{pos}.{bit}")
        elif kind == "inflate" and base.fields:
            off, width = rnd.choice(list(base.fields.items()))
            if off >= len(data):
                continue
            old = int.from_bytes(data[off: off + abs(width)], "little" if width < 0 else "big")
            choice = rnd.random()
            if choice < 0.4:
                v = rnd.choice(_BIG)
            elif choice < 0.7:
                v = old + rnd.choice([1, -1, 4096, -4096, n, 2 * n, 1 << 20, 1 << 30])
            else:
                v = rnd.getrandbits(8 * abs(width))
            _put(data, off, width, v)
            ops.append(f"field@{off}/{width}={v:#x}")
        elif kind == "byte" and data:
            v = rnd.choice([0, 0xFF, 0x7E, 0x05, 0x06, 0x08, rnd.randrange(256)])
            data[pos] = v
            ops.append(f"byte@{pos}={v:#x}")
        elif kind == "delete" and data:
            k = rnd.randint(1, 16)
            del data[pos: pos + k]
            ops.append(f"delete@{pos}+{k}")
        elif kind == "insert":
            k = rnd.randint(1, 16)
            data[pos:pos] = bytes(rnd.randrange(256) for _ in range(k))
            ops.append(f"insert@{pos}+{k}")
        elif kind == "dup" and data:
            k = rnd.randint(1, 64)
            data[pos:pos] = data[pos: pos + k]
            ops.append(f"dup@{pos}+{k}")
    return bytes(data), " ".join(ops) or "unchanged"


# -- issue 17: mutations of the fields QEMU looks sections up by ------------------------
@dataclass
class Structure:
    """Where a base keeps the fields issue 17's campaign mutated, found by walking it."""

    strings: list[int] = field(default_factory=list)  # length byte of a counted idstr
    section_ids: list[int] = field(default_factory=list)  # be32 section id fields
    instance_ids: list[int] = field(default_factory=list)  # be32 instance id fields
    payloads: list[tuple[int, int]] = field(default_factory=list)  # device state spans
    command_lens: list[int] = field(default_factory=list)  # be16 command length fields

    def __bool__(self) -> bool:
        return bool(self.strings or self.payloads)


def structure(base: Base) -> Structure:
    """The idstr, id and length fields and device payloads of `base` (a legacy or
    mapped-ram stream, bare or behind a libvirt header; compressed bases have none)."""
    data = base.data
    start = 0
    if data[:16] in (lv.QEMU_SAVE_MAGIC, lv.QEMU_SAVE_PARTIAL):
        start = lv.QEMU_SAVE_HEADER_SIZE + int.from_bytes(data[20:24], "little")
    w = walk_stream(data, start)
    st = Structure()
    if w.version is None:
        return st
    for s in w.sections:
        if s.kind in (S.KIND_START, S.KIND_FULL):
            n = data[s.offset + 5]
            st.strings.append(s.offset + 5)
            st.section_ids.append(s.offset + 1)
            st.instance_ids.append(s.offset + 6 + n)
        elif s.kind in (S.KIND_PART, S.KIND_END):
            st.section_ids.append(s.offset + 1)
        elif s.kind == S.KIND_COMMAND:
            st.command_lens.append(s.offset + 3)
        if s.idstr != "ram" and s.payload_offset is not None and s.payload_end is not None \
                and s.payload_end > s.payload_offset and s.kind != S.KIND_COMMAND:
            st.payloads.append((s.payload_offset, s.payload_end))
    st.strings += [b.entry_offset for b in w.blocks]
    rt = w.records
    if rt is not None:
        for off in rt.rec_off.tolist():
            if not data[off + 7] & R.RAM_SAVE_FLAG_CONTINUE:
                st.strings.append(off + 8)
    return st


def mutate_structure(base: Base, st: Structure, rnd: random.Random) -> tuple[bytes, str]:
    """One copy of `base` with an idstr, a length byte, an id, a command length changed
    or bytes inserted inside a device section, as issue 17's campaign did."""
    data = bytearray(base.data)
    kinds = [k for k, have in (("idstr", st.strings), ("idstr-len", st.strings),
                               ("section-id", st.section_ids),
                               ("instance-id", st.instance_ids), ("insert", st.payloads),
                               ("command-len", st.command_lens)) if have]
    kind = rnd.choice(kinds)
    if kind == "idstr":
        at = rnd.choice(st.strings)
        n = data[at]
        pos = at + 1 + (rnd.randrange(n) if n else 0)
        v = rnd.choice([0, 0x1B, 0x5B, 0x2F, 0xFF, 0x7E, rnd.randrange(32, 127),
                        rnd.randrange(256)])
        data[pos] = v
        return bytes(data), f"idstr@{pos}={v:#x}"
    if kind == "idstr-len":
        at = rnd.choice(st.strings)
        v = rnd.choice([0, 1, 255, data[at] + 1, max(0, data[at] - 1), rnd.randrange(256)])
        data[at] = v & 0xFF
        return bytes(data), f"idstr-len@{at}={v & 0xFF}"
    if kind in ("section-id", "instance-id"):
        at = rnd.choice(st.section_ids if kind == "section-id" else st.instance_ids)
        old = int.from_bytes(data[at:at + 4], "big")
        v = rnd.choice([old + 1, old - 1, 0, 1, 3, 0xFFFFFFFF, rnd.getrandbits(32)]) & 0xFFFFFFFF
        data[at:at + 4] = v.to_bytes(4, "big")
        return bytes(data), f"{kind}@{at}={v:#x}"
    if kind == "insert":
        a, b = rnd.choice(st.payloads)
        pos = rnd.randrange(a, b + 1)
        blob = bytes(rnd.randrange(256) for _ in range(rnd.choice([1, 2, 4, 8, 64])))
        data[pos:pos] = blob
        return bytes(data), f"insert@{pos}+{len(blob)}"
    at = rnd.choice(st.command_lens)
    v = rnd.choice([1, 4, 16, 0xFFFF, rnd.getrandbits(16)])
    data[at:at + 2] = v.to_bytes(2, "big")
    return bytes(data), f"command-len@{at}={v}"
