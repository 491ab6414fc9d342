"""Page contents: the final bytes of any page, in bulk or one at a time.

Legacy pages whose final record is a delta (XBZRLE) or compressed
(COMPRESS_PAGE) are rebuilt by replaying that page's records in stream order
from zero. Hashes are xxh3-64 of the final page content; zero and never-sent
pages hash like a page of zeros.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator

import numpy as np
import xxhash

from ..errors import FormatError
from ..formats import ram as R
from .pagemap import PAGE_DATA, BlockMap
from .ramscan import RecordTable
from .xbzrle import xbzrle_apply


def zero_hash(page_size: int) -> int:
    return xxhash.xxh3_64_intdigest(bytes(page_size))


class PageReader:
    """Reads final page contents of one capture."""

    def __init__(self, buf, page_size: int, records: RecordTable | None) -> None:  # noqa: ANN001
        self.buf = buf
        self.ps = page_size
        self.rt = records
        self._zero = bytes(page_size)
        self._replayed: dict[tuple[int, int], bytes] = {}
        self._by_page_cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        #: Source.release: drop pages already read from the resident set
        self.release: Callable[[int, int], None] | None = None

    def page(self, bm: BlockMap, index: int) -> bytes:
        if bm.state[index] != PAGE_DATA:
            return self._zero
        if bm.replay_pages is not None and len(bm.replay_pages) and bm.final_kind[index] in (
            R.RAM_SAVE_FLAG_XBZRLE, R.RAM_SAVE_FLAG_COMPRESS_PAGE
        ):
            return self._replay(bm, index)
        off = int(bm.offset[index])
        return bytes(self.buf[off : off + self.ps])

    def _replay(self, bm: BlockMap, index: int) -> bytes:
        key = (bm.block.index, index)
        hit = self._replayed.get(key)
        if hit is not None:
            return hit
        assert self.rt is not None
        sel, pages = self._by_page(bm.block.index)
        lo, hi = np.searchsorted(pages, [index, index + 1])
        out = self._replay_records(sel[lo:hi])
        if len(self._replayed) < 4096:
            self._replayed[key] = out
        return out

    def _by_page(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        """The block's record indices sorted by page (stream order kept within a page),
        and their pages: built once per block so single-page replays stay cheap."""
        cache = self._by_page_cache
        if block not in cache:
            rt = self.rt
            assert rt is not None
            sel = np.flatnonzero(rt.block == block)
            order = np.argsort(rt.page[sel], kind="stable")
            sel = sel[order]
            cache[block] = (sel, rt.page[sel])
        return cache[block]

    def _replay_records(self, recs: np.ndarray) -> bytes:
        rt = self.rt
        assert rt is not None
        page = bytearray(self.ps)
        for r in recs:
            kind = int(rt.kind[r])
            off = int(rt.data_off[r])
            if kind == R.RAM_SAVE_FLAG_PAGE:
                page[:] = self.buf[off : off + self.ps]
            elif kind == R.RAM_SAVE_FLAG_ZERO:
                page[:] = self._zero
            elif kind == R.RAM_SAVE_FLAG_XBZRLE:
                ln = int.from_bytes(self.buf[off + 1 : off + 3], "big")
                xbzrle_apply(page, bytes(self.buf[off + 3 : off + 3 + ln]), int(rt.rec_off[r]))
            elif kind == R.RAM_SAVE_FLAG_COMPRESS_PAGE:
                ln = int.from_bytes(self.buf[off : off + 4], "big")
                try:
                    data = zlib.decompress(bytes(self.buf[off + 4 : off + 4 + ln]))
                except zlib.error as e:
                    raise FormatError(f"COMPRESS_PAGE data does not inflate: {e}",
                                      int(rt.rec_off[r]), "ram") from e
                if len(data) != self.ps:
                    raise FormatError(f"COMPRESS_PAGE inflates to {len(data)} bytes",
                                      int(rt.rec_off[r]), "ram")
                page[:] = data
        return bytes(page)

    def replay_all(self, bm: BlockMap) -> dict[int, bytes]:
        """Final content of every page of `bm` that needs replaying, in one pass."""
        out: dict[int, bytes] = {}
        if bm.replay_pages is None or not len(bm.replay_pages) or self.rt is None:
            return out
        sel, pages = self._by_page(bm.block.index)
        want = np.isin(pages, bm.replay_pages)
        sel, pages = sel[want], pages[want]
        bounds = np.flatnonzero(np.diff(pages)) + 1
        for group in np.split(sel, bounds):
            if len(group):
                out[int(self.rt.page[group[0]])] = self._replay_records(group)
        return out

    def iter_data_pages(
        self, bm: BlockMap, progress: Callable[[int], None] | None = None
    ) -> Iterator[tuple[int, memoryview | bytes]]:
        """(page index, content) of every data page, ascending."""
        replayed = self.replay_all(bm)
        idx = np.flatnonzero(bm.state == PAGE_DATA)
        offs = bm.offset[idx]
        buf = memoryview(self.buf) if not isinstance(self.buf, bytes) else self.buf
        ps = self.ps
        lo, hi = None, 0
        for n, (i, o) in enumerate(zip(idx.tolist(), offs.tolist(), strict=True)):
            if replayed and i in replayed:
                yield i, replayed[i]
            else:
                yield i, buf[o : o + ps]
                lo = o if lo is None or o < lo else lo
                hi = o + ps if o + ps > hi else hi
            if n % 8192 == 8191:
                if progress:
                    progress(n + 1)
                if self.release and lo is not None:
                    self.release(lo, hi)
                    lo, hi = None, 0

    def hashes(self, bm: BlockMap, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """xxh3-64 of every page's final content (zero/absent pages: hash of zeros)."""
        out = np.full(bm.pages, zero_hash(self.ps), np.uint64)
        h = xxhash.xxh3_64_intdigest
        idx = np.flatnonzero(bm.state == PAGE_DATA)
        buf = memoryview(self.buf) if not isinstance(self.buf, bytes) else self.buf
        ps = self.ps
        # chunks of pages hashed in a tight loop (no generator: ~2.5x faster)
        for s in range(0, len(idx), _HASH_CHUNK):
            part = idx[s : s + _HASH_CHUNK]
            offs = bm.offset[part]
            out[part] = np.array([h(buf[o : o + ps]) for o in offs.tolist()], np.uint64)
            if progress:
                progress(s + len(part))
            if self.release:
                self.release(int(offs.min()), int(offs.max()) + ps)
        # pages rebuilt from deltas: the offset above pointed at their last record
        for i, data in self.replay_all(bm).items():
            out[i] = h(data)
        return out


#: Data pages hashed per step of `PageReader.hashes` (progress and RSS release).
_HASH_CHUNK = 8192
