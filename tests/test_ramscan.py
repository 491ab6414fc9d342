"""The fast scanner against the construct grammar, on the same bytes, damaged included."""

from __future__ import annotations

import random

import pytest
from ramstreams import build_records, fast_scan, reference_scan

from miginspect.formats import ram as R


@pytest.mark.parametrize("seed", range(20))
def test_scanner_equals_grammar_on_valid_streams(seed):
    buf = build_records(seed)
    ref_rows, ref_end = reference_scan(buf)
    rows, end = fast_scan(buf)
    assert ref_end == ("end", len(buf))
    assert end == ref_end
    assert rows == ref_rows


@pytest.mark.parametrize("seed", range(40))
def test_scanner_equals_grammar_on_damaged_streams(seed):
    rnd = random.Random(1000 + seed)
    buf = bytearray(build_records(seed, n=120))
    how = seed % 4
    if how == 0:  # truncation anywhere
        buf = buf[: rnd.randrange(1, len(buf))]
    elif how == 1:  # one random bit flipped
        i = rnd.randrange(len(buf))
        buf[i] ^= 1 << rnd.randrange(8)
    elif how == 2:  # CONTINUE flipped on the first record (no block named yet)
        buf[7] ^= R.RAM_SAVE_FLAG_CONTINUE
    else:  # an unknown flag bit on some record header: flip bit 0x200>>1 of a word
        rows, _ = reference_scan(bytes(buf))
        off = rows[rnd.randrange(len(rows))][0]
        buf[off + 6] ^= 0x01  # 0x100 bit -> COMPRESS_PAGE combination or page offset
    ref_rows, ref_end = reference_scan(bytes(buf))
    rows, end = fast_scan(bytes(buf))
    assert rows == ref_rows
    assert end[0] == ref_end[0]
    if end[0] == "error":
        assert end[1] == ref_end[1]


def test_scanner_reports_offset_of_truncated_page():
    buf = build_records(3)
    rows, _ = reference_scan(buf)
    page = [r for r in rows if r[3] == R.RAM_SAVE_FLAG_PAGE][10]
    cut = page[0] + 100  # inside that PAGE record's payload
    got, end = fast_scan(buf[:cut])
    assert end == ("error", page[0])
    assert got == [r for r in rows if r[0] < page[0]]


def test_memory_is_per_record_not_per_byte():
    from miginspect.inspector.ramscan import RamScanner

    buf = build_records(5, n=400)
    sc = RamScanner(buf, 4096, ["pc.ram", "vga.vram", "/rom@etc/acpi/tables"],
                    [64 * 4096, 16 * 4096, 4 * 4096])
    sc.scan(0, len(buf))
    t = sc.table()
    assert t.nbytes <= 32 * len(t)
