"""What a --partial report says about a cut file, the same in extract, map and devices:
the stop line (`stopped at offset N: code`) and the missing pages by reason."""

from __future__ import annotations

from rich.text import Text

from ..inspector.report import Stop
from ..inspector.salvage import MISSING_NOT_REACHED, BlockExtent, MissingRange, Salvage
from . import vocab as V
from .fmt import hexoff, num
from .text import line


def stop_line(s: Stop | None, read_to: int | None = None) -> Text:
    """'stopped at offset 0x1f (31): truncated-ram [ram]: the data ends ...'."""
    if s is None:
        return line(("read to the end of the stream", V.GOOD))
    off = s.offset if s.offset is not None else read_to
    at = f" at offset {hexoff(off)} ({off})" if off is not None else ""
    return line((f"stopped{at}: {s.code}", V.BAD), f" [{s.where}]" if s.where else None,
                ": ", s.message)


def reason_counts(ranges: list[MissingRange]) -> list[tuple[str, int, MissingRange]]:
    """(reason, pages, its first range) per reason, in the order they first appear."""
    out: dict[str, list] = {}
    for m in ranges:
        e = out.setdefault(m.reason, [m.reason, 0, m])
        e[1] += m.pages
    return [(r, n, first) for r, n, first in out.values()]


def missing_text(ranges: list[MissingRange], pages: int | None = None) -> Text:
    """'255,048 pages missing: 1 cut inside its record (page 7,096), 255,047 never sent
    before the stop (from page 7,097)'; guest-physical addresses where the ranges have
    them."""
    total = sum(m.pages for m in ranges) if pages is None else pages
    parts = []
    for reason, n, first in reason_counts(ranges):
        if reason == MISSING_NOT_REACHED and len(ranges) == 1 and first.first_page == 0:
            parts.append("the block was not reached")
            continue
        where = f"page {num(first.first_page)}" if first.pages == 1 else \
            f"from page {num(first.first_page)}"
        if first.gpa is not None:
            where += f", address {hexoff(first.gpa)}"
        parts.append(f"{num(n)} {V.MISSING_WORDS.get(reason, reason)} ({where})")
    return line((f"{num(total)} page{'s' if total != 1 else ''} missing", V.MISSING.style),
                ": " if parts else "", "; ".join(parts))


def block_missing(ext: BlockExtent) -> Text:
    return line((ext.name, "bold"), ": ", missing_text(ext.missing, ext.missing_pages))


def salvage_lines(s: Salvage) -> list[Text]:
    """The stop, then the blocks that miss pages (whole blocks not reached on one line)."""
    out = [stop_line(s.stopped, s.read_to)]
    if s.cut_record is not None and s.cut_record.page is None:
        out.append(line(f"the data ends inside the header of a page record at "
                        f"{hexoff(s.cut_record.offset)}: its page is not known"))
    unreached = [b for b in s.blocks if b.missing and not b.held_pages and
                 all(m.reason == MISSING_NOT_REACHED for m in b.missing)]
    for b in s.blocks:
        if b.missing_pages and b not in unreached:
            out.append(block_missing(b))
    if unreached:
        n = sum(b.missing_pages for b in unreached)
        out.append(line((f"{len(unreached)} block{'s' if len(unreached) != 1 else ''} not "
                         f"reached ({num(n)} pages missing)", V.MISSING.style), ": ",
                        ", ".join(b.name for b in unreached)))
    if s.unlisted_ram_bytes:
        out.append(line((f"{num(s.unlisted_ram_bytes)} B of RAM in blocks listed after the "
                         "stop", V.MISSING.style), " (their names are not in the file)"))
    return out
