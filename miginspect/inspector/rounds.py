"""Precopy rounds of a legacy stream, found from the order of its page records.

What QEMU does (migration/ram.c, 7.2 to 10.x):

* A dirty-bitmap sync (counted by query-migrate's `dirty-sync-count`) sets a
  bit for every page dirtied since the previous sync. The first sync happens in
  setup, before any page is sent, with every page dirty.
* The page scan walks the RAMBlocks in list order (the MEM_SIZE list order)
  and each block's pages in ascending order, sending each dirty page and
  clearing its bit. At the end of the list it wraps to the first block. The
  scan position is *not* reset by a sync: after a sync the scan goes on from
  where it stopped, reaches the end of the list and wraps to pick up the newly
  dirtied pages behind it.
* While iterating, a sync happens only when few dirty pages remain (the
  pending estimate falls below bandwidth x downtime-limit), i.e. when the
  previous round is (nearly) drained. The iteration that decides to complete
  has just synced (pending_exact); completion then syncs once more
  (ram_save_complete) with the VM stopped and sends every page still dirty in
  the ram END section. Those last two syncs are back to back: no page record
  lies between them.

How a round boundary shows in the stream: the (block order, page) position of
a page record is not greater than the previous record's (the scan wrapped to
pick up pages re-dirtied behind it), or the ram END section begins
(stop-and-copy). Rounds are therefore:

* round 1: from the first page record (the bulk pass sending every page);
* one more round at each wrap before the END section (each follows one
  iteration sync);
* the final round: the END section's records (stop-and-copy), which may wrap
  once more inside the section without a sync.

Relation to QEMU's figure, checked on real QEMU 7.2 and 10.0 live, XBZRLE and
paused captures and on libvirt save images (tests/test_size.py):
**rounds == dirty-sync-count - 1**, the missing sync being the pending_exact
sync right before completion, which sends nothing of its own. A paused capture
has dirty-sync-count 3 and two rounds: the bulk pass, cut when the pending
estimate fell below the threshold, and the END section, which sends the rest of
the bulk pass (or nothing). For live captures the stop-and-copy round's bytes
equal query-migrate's `downtime-bytes` exactly.

One exception, invisible in the stream: QEMU takes the pending_exact sync only
when the estimate is below its threshold (bandwidth x downtime-limit), and the
threshold is 0 until the first bandwidth measurement (~100 ms in). A save that
sends everything before that completes on "nothing pending" without the
pending_exact sync: then rounds == dirty-sync-count (seen on a libvirt
managedsave of a paused 128 MiB guest: bulk pass + empty END, count 2). Every
mid-migration sync is a pending_exact sync, so this can only happen with no
iteration rounds.

The detection is a property of the record order only; it needs no timing. It
can miss a sync when the re-dirtied pages all lie ahead of the scan position
(no wrap), which did not happen in any real capture we have.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ramscan import RecordTable

ROUND_BULK = "bulk"
ROUND_ITERATION = "iteration"
ROUND_STOP_AND_COPY = "stop-and-copy"


@dataclass
class RoundSpans:
    """Round boundaries as record indexes into the RecordTable (numpy, no per-page objects)."""

    start: np.ndarray  # int64 first record index of each round
    stop: np.ndarray  # int64 one past the last record index
    kind: list[str]
    wraps_in_final: int  # wraps inside the stop-and-copy round (no sync behind them)

    def __len__(self) -> int:
        return len(self.start)


def scan_position(rt: RecordTable) -> np.ndarray:
    """(block order, page) of every record as one sortable int64."""
    return (rt.block.astype(np.int64) << 32) | rt.page.astype(np.int64)


def wrap_indexes(rt: RecordTable) -> np.ndarray:
    """Record indexes where the scan position does not advance (the scan wrapped)."""
    if len(rt) < 2:
        return np.empty(0, np.int64)
    pos = scan_position(rt)
    return (np.flatnonzero(pos[1:] <= pos[:-1]) + 1).astype(np.int64)


def find_rounds(rt: RecordTable, end_section_offset: int | None) -> RoundSpans:
    """Split the page records into precopy rounds (see the module docstring).

    `end_section_offset` is the offset of the ram END section, or None when the
    stream has none (cut short); then there is no stop-and-copy round."""
    n = len(rt)
    wraps = wrap_indexes(rt)
    if end_section_offset is not None:
        end_idx = int(np.searchsorted(rt.rec_off, end_section_offset))
    else:
        end_idx = n
    before = wraps[wraps < end_idx]
    before = before[before > 0]
    starts = [0] + before.tolist()
    kinds = [ROUND_BULK] + [ROUND_ITERATION] * len(before)
    stops = before.tolist() + [end_idx]
    if end_section_offset is not None:
        starts.append(end_idx)
        stops.append(n)
        kinds.append(ROUND_STOP_AND_COPY)
        in_final = int(np.count_nonzero(wraps > end_idx))
    else:
        in_final = 0
    if n == 0 and end_section_offset is None:
        return RoundSpans(np.empty(0, np.int64), np.empty(0, np.int64), [], 0)
    return RoundSpans(np.asarray(starts, np.int64), np.asarray(stops, np.int64), kinds,
                      in_final)


__all__ = ["RoundSpans", "find_rounds", "wrap_indexes", "scan_position", "ROUND_BULK",
           "ROUND_ITERATION", "ROUND_STOP_AND_COPY"]
