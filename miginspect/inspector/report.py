"""Types every report shares: a note, why reading stopped, a send histogram.

Reports carry facts, never display strings: a `Note` is a finding with a stable code, an
offset and a place; a `Stop` is the error that ended reading early, with the same fields
as the JSON error object (`code`, `kind`, `message`, `offset`, `where`); a `SendHistogram`
counts pages by how many times they were sent. The renderers word them; `--json` prints
them field by field (`jsondata.jsonable`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import MigError

SEVERITY_WARNING = "warning"
SEVERITY_INFO = "info"

# Note codes of findings that are not problems of the file (problem codes, from
# inspector/problems.py, are used where a note repeats one).
NOTE_STOPPED = "stopped-early"  # the walk stopped: pages after it are missing
NOTE_BITMAP_UNTRUSTED = "bitmap-untrusted"  # mapped-ram bitmap read in another layout
NOTE_ROUND_WRAPS = "round-wraps"  # the stop-and-copy round wraps around the block list
NOTE_MAPPED_RAM_REWRITES = "mapped-ram-rewrites"  # no resend counts in a mapped-ram file
NOTE_INFLATED_HOLES = "inflated-holes"  # a decompressed mapped-ram file: no allocated size
NOTE_NO_BOUND = "no-bound"  # no ram START section: no bounds
NOTE_DEVICES_NOT_COMPARED = "devices-not-compared"
NOTE_MACHINE_TYPES_DIFFER = "machine-types-differ"
NOTE_SKIPPED_BLOCK = "skipped-block"  # x-ignore-shared: not in the file
NOTE_STALE_PAGES = "stale-pages"  # bytes under clear mapped-ram bitmap bits
NOTE_PHYSICAL_LAYOUT = "physical-layout"  # the guest-physical rule applied
NOTE_OTHER_BLOCKS = "other-blocks-left-out"  # only the main RAM block is in the image
NOTE_NO_CPU_NOTES = "no-cpu-notes"  # the ELF core has no CPU notes
NOTE_CPU_STATE = "cpu-state"  # a limit of the CPU state met (AArch32 vCPU, ...)
NOTE_OLDER_COPY = "older-copy-held"  # --partial: the cut record's page has an older copy
NOTE_UNLISTED = "blocks-not-listed"  # --partial, mapped-ram: list entries past the stop
NOTE_NO_BITMAP = "bitmaps-not-written"  # --partial, mapped-ram: no bit set (a killed save)


@dataclass
class Note:
    """Something a reader should know that did not stop the analysis."""

    severity: str  # "warning" or "info" ("error" for a failed verification)
    offset: int | None
    where: str  # section idstr, RAMBlock, "A" / "B" side, or ""
    message: str
    code: str  # a problem code (inspector/problems.py) or a NOTE_* code


def note(code: str, message: str, where: str = "", offset: int | None = None,
         severity: str = SEVERITY_INFO) -> Note:
    return Note(severity, offset, where, message, code)


@dataclass
class Stop:
    """Why reading stopped before the end: the error, as data."""

    code: str
    kind: str  # the error's kind: "truncated", "unsupported", ...
    message: str
    offset: int | None
    where: str

    @classmethod
    def of(cls, err: MigError) -> Stop:
        return cls(err.code, err.kind, err.message, err.offset, err.where)


def stop_of(err: MigError | None) -> Stop | None:
    return Stop.of(err) if err is not None else None


@dataclass
class PageCounts:
    """Pages of a block by final state, and the re-sent ones (sent >= 2 times, whatever
    their final state). JSON keys: the page-state vocabulary's (`never_sent`, `zero`,
    `data`, `resent`)."""

    never_sent: int
    zero: int
    data: int
    resent: int


@dataclass
class SendBucket:
    times: int  # sent this many times (0: never sent)
    pages: int


@dataclass
class SendHistogram:
    """Pages by times sent, in ascending order of `times`. JSON: {"times": pages}."""

    buckets: list[SendBucket] = field(default_factory=list)

    @classmethod
    def of(cls, counts: Any) -> SendHistogram:
        """From (times, pages) pairs (pages 0 left out)."""
        return cls([SendBucket(int(t), int(p)) for t, p in sorted(counts) if p])

    def pages(self, times: int) -> int:
        return next((b.pages for b in self.buckets if b.times == times), 0)

    @property
    def most(self) -> int:
        return max((b.pages for b in self.buckets), default=0)

    def __bool__(self) -> bool:
        return bool(self.buckets)

    def to_json(self) -> dict[str, int]:
        return {str(b.times): b.pages for b in self.buckets}


__all__ = ["Note", "note", "Stop", "stop_of", "PageCounts", "SendBucket", "SendHistogram",
           "SEVERITY_WARNING", "SEVERITY_INFO"]
