"""The freelist: which pages can be reused, which wait for readers, and how it is persisted.

On disk (format in :mod:`keyval.db.page`) the freelist is a bitmap cut into chunk pages plus a
root page listing them. In memory it is the same bitmap (``bits``: every page that is not part
of the newest committed tree) split into two sets: ``free`` (reusable now; a second bitmap,
:class:`~keyval.db.freeset.FreeSet`) and ``pending`` (freed by a transaction that some open
reader may predate). Moving a page from pending to free
does not change the bitmap, so a commit rewrites only the chunks in which pages were really
allocated or freed, plus the small root: its cost does not grow with the number of free pages
(bbolt rewrites its whole freelist on every commit).

Allocation (see :meth:`Freelist.allocate`): a commit's single pages are the free pages of one
128-page window after another, so that they lie side by side and go out in few writes; runs
and shrink()'s commits take the lowest free pages, so that the tail of the file empties out.

Not thread-safe by itself: the database calls it only from the one writer, and reads
``pending`` for statistics under its own lock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from keyval.errors import CorruptionError

from .freeset import FreeSet, set_bits
from .page import (
    CHUNK_SLOT,
    HEADER_SIZE,
    PGID,
    TYPE_CHUNK,
    TYPE_FREELIST,
    build_page,
    chunk_bits,
    pgid_array,
    span_for,
)

# Single pages come from windows of this many pages (see allocate): the freest first (in
# levels, lowest first within one), down to half as free as the freest, and WINDOW_MIN_FREE
# free at least. Each window's count of free (or pending) pages is kept in a byte as bits
# change, so it must stay below 256.
WINDOW_SHIFT = 7
WINDOW_PAGES = 1 << WINDOW_SHIFT
WINDOW_MIN_FREE = 8
# The floors, in eighths of the freest window's count, that windows are taken at in turn.
WINDOW_LEVELS = (7, 6, 4)
_WINDOW_MARKS: dict[int, bytes] = {}  # floor -> bytes.translate table: 1 for counts >= floor


class Freelist:
    def __init__(self, page_size: int):
        self.page_size = page_size
        self.chunk_bits = chunk_bits(page_size)
        self.chunk_bytes = self.chunk_bits // 8
        self.bits = bytearray()
        # Free-or-pending pages per window of WINDOW_PAGES (one byte each), kept by _set/_clear.
        self.window_counts = bytearray()
        self.free = FreeSet()
        self.pending: dict[int, list[int]] = {}
        self.chunk_pgids: list[int] = []
        self.root = 0
        self.root_span = 0
        self.dirty: set[int] = set()
        # shrink(): the free run set aside for the multi-page moves a round planned (see
        # reserve_run_below), as [first page, pages left].
        self._reserved: list[list[int]] = []
        # This commit's window search: the lowest count a window needs (None: not fixed yet)
        # and the first window still to look at. lowest_first: shrink()'s commits, which want
        # the tail emptied instead.
        self._window_floor: int | None = None
        self._window_levels: list[int] = []
        self._window_seen: set[int] = set()
        self._window_from = self._window_end = 0
        self._taken: list[int] = []  # pages out of free and bits, for allocate (_take_window)
        self.lowest_first = False

    # -- loading ---------------------------------------------------------------------------

    def load(
        self,
        root: int,
        hwm: int,
        read_run: Callable[[int, int], tuple[bytes, int, int]],
        path: str | None = None,
    ):
        """Read the persisted freelist; every free page is reusable (no reader exists yet).

        ``read_run(pgid, expected_type)`` returns a verified run as (buffer, count, overflow);
        ``path`` names the file in a CorruptionError.
        """
        self.root = root
        self.bits = bytearray(-(-hwm // 8))
        self.window_counts = bytearray(-(-hwm // WINDOW_PAGES))
        if root == 0:
            return
        buf, count, overflow = read_run(root, TYPE_FREELIST)
        if HEADER_SIZE + 8 * count > len(buf):  # checked before a table that size is built
            raise CorruptionError(
                f"freelist root {root} claims {count} slots, more than fit",
                path,
                root * self.page_size,
            )
        self.root_span = overflow + 1
        self.chunk_pgids = list(pgid_array(count).unpack_from(buf, HEADER_SIZE)) if count else []
        for slot, pgid in enumerate(self.chunk_pgids):
            if pgid == 0:
                continue
            chunk, _, _ = read_run(pgid, TYPE_CHUNK)
            (stored_slot,) = CHUNK_SLOT.unpack_from(chunk, HEADER_SIZE)
            if stored_slot != slot:
                raise CorruptionError(
                    f"freelist chunk page {pgid} says slot {stored_slot}, listed as {slot}",
                    path,
                    pgid * self.page_size,
                )
            start = slot * self.chunk_bytes
            first = HEADER_SIZE + CHUNK_SLOT.size
            body = chunk[first : first + self.chunk_bytes]
            if start + len(body) > len(self.bits):
                self.bits.extend(bytes(start + len(body) - len(self.bits)))
            self.bits[start : start + len(body)] = body
        # Bits at or past the high-water mark mean nothing; keeping them would mark pages free
        # once the file grows over them.
        whole = -(-hwm // 8)
        del self.bits[whole:]
        if hwm % 8 and len(self.bits) == whole:
            self.bits[-1] &= (1 << (hwm % 8)) - 1
        step = WINDOW_PAGES // 8
        bits = self.bits
        self.window_counts = bytearray(
            int.from_bytes(bits[i : i + step], "little").bit_count()
            for i in range(0, len(bits), step)
        )
        self.free = FreeSet.from_bitmap(self.bits)  # no reader yet: every page is free

    # -- bits ------------------------------------------------------------------------------

    def _set(self, pgid: int) -> None:
        bits = self.bits
        byte = pgid >> 3
        if byte >= len(bits):
            bits.extend(bytes(byte + 1 - len(bits)))
        mask = 1 << (pgid & 7)
        if not bits[byte] & mask:
            bits[byte] |= mask
            w = pgid >> WINDOW_SHIFT
            counts = self.window_counts
            if w >= len(counts):
                counts.extend(bytes(w + 1 - len(counts)))
            counts[w] += 1
        self.dirty.add(pgid // self.chunk_bits)

    def _clear(self, pgid: int) -> None:
        bits = self.bits
        byte = pgid >> 3
        if byte < len(bits):
            mask = 1 << (pgid & 7)
            if bits[byte] & mask:
                bits[byte] &= ~mask & 0xFF
                self.window_counts[pgid >> WINDOW_SHIFT] -= 1
            self.dirty.add(pgid // self.chunk_bits)

    def _chunk_body(self, slot: int) -> bytes:
        start = slot * self.chunk_bytes
        body = bytes(self.bits[start : start + self.chunk_bytes])
        return body + bytes(self.chunk_bytes - len(body))

    # -- allocation ------------------------------------------------------------------------

    def allocate(self, span: int, hwm: int, by_window: bool = True) -> tuple[int, int]:
        """A run of ``span`` pages as (first page id, new hwm).

        Single pages (nearly all of a commit's) are every free page of one window after
        another (see _next_window), so that a commit's pages lie side by side; runs and
        shrink()'s commits (``lowest_first``) take the lowest ids, so that the tail of the
        file empties out and shrink() can return it. The file grows only when nothing is
        free."""
        free = self.free
        if span == 1:
            taken = self._taken
            if taken:
                return taken.pop(), hwm
            if not free:
                return hwm, hwm + 1
            if by_window and not self.lowest_first and self._take_window():
                return self._taken.pop(), hwm
            pgid = free.pop_first()
            self._clear(pgid)
            return pgid, hwm
        for run in self._reserved:
            if run[1] >= span:
                first = run[0]
                run[0] += span
                run[1] -= span
                for p in range(first, first + span):
                    self._clear(p)
                return first, hwm
        first = free.find_run(span)
        if first is None:
            return hwm, hwm + span
        free.remove_run(first, span)
        for p in range(first, first + span):
            self._clear(p)
        return first, hwm

    def reserve_run_below(self, span: int, pgid: int) -> bool:
        """shrink(): set aside the lowest run of ``span`` free pages, if it lies below page
        ``pgid``, for the multi-page allocations of this commit; whether there was one.

        Set aside, not only found: the single pages a shrink commit also allocates are the
        lowest free ones, and took pages of the run before the moves planned on it came to
        allocate theirs; those then went to the end of the file. Whatever the commit does not
        use goes back (release_reserved)."""
        first = self.free.find_run(span)
        if first is None or first >= pgid:
            return False
        self.free.remove_run(first, span)
        self._reserved.append([first, span])
        return True

    def reserved_runs(self) -> int:
        """How many runs are set aside now (see release_reserved's ``keep``)."""
        return len(self._reserved)

    def release_reserved(self, keep: int = 0) -> None:
        """Give back what is left of the runs set aside, all but the first ``keep``."""
        for first, left in self._reserved[keep:]:
            self.free.update(range(first, first + left))
        del self._reserved[keep:]

    def chunks_in_use(self, hwm: int) -> int:
        """How many chunks would hold a free or pending page were the file ``hwm`` pages long:
        what a rewrite of the whole freelist of such a file writes, besides its root."""
        bits, step = self.bits, self.chunk_bytes
        whole, rest = hwm >> 3, hwm & 7
        used = 0
        for start in range(0, min(len(bits), whole + 1), step):
            body = bits[start : min(start + step, whole)]
            partial = start <= whole < start + step and whole < len(bits)
            if body.count(0) != len(body) or (partial and bits[whole] & ((1 << rest) - 1)):
                used += 1
        return used

    def free_tail(self, hwm: int) -> int:
        """How many reusable pages end the file (what trim_tail would cut)."""
        return self.free.tail_run(hwm)

    def _take_window(self) -> bool:
        """Take every free page of the next window at once (see _next_window) into
        ``_taken``, highest first, for allocate to hand out one by one; False when no window
        is left. In bulk, at the speed of bytes: a page at a time, taking ~1,500 pages cost a
        tenth of a 1,000-put commit. What the commit does not use goes back (give_back_taken)."""
        while (w := self._next_window()) is not None:
            lo = w << WINDOW_SHIFT
            taken = self.free.take_range(lo, lo + WINDOW_PAGES)
            pages = set_bits(int.from_bytes(taken, "little"), lo)
            if not pages:
                continue  # its count is pending pages
            # Off the bitmap of free-or-pending pages too, a byte at a time.
            bits = self.bits
            start = lo >> 3
            for i, byte in enumerate(taken):
                if byte:
                    bits[start + i] &= ~byte & 0xFF
            self.window_counts[w] -= len(pages)
            self.dirty.add(pages[0] // self.chunk_bits)
            self.dirty.add(pages[-1] // self.chunk_bits)
            pages.reverse()
            self._taken = pages
            return True
        return False

    def give_back_taken(self) -> None:
        """Return the pages _take_window took that no allocation used."""
        for pgid in self._taken:
            self.free.add(pgid)
            self._set(pgid)
        self._taken = []

    def _next_window(self) -> int | None:
        """This commit's next window with free pages (its index), None when none is left.

        Why windows: a commit taking the lowest free page each time scattered its ~1,500
        pages (1,000 random puts over 1M keys) over ~1,470 places in the file, so it made
        that many writes and its fsync had to reach them all. Taking every free page of a
        window with many puts them side by side: half as many writes in the steady state.
        The freest windows go first (those at 7/8 of the freest's count, then 3/4, then 1/2):
        their free pages lie in the longest runs. That took the same commit from a median of
        794 writes to 634 over 100 commits (433 to 304 over the first ten). Finding a window
        costs two C-speed passes over the window counts, a byte per 128 pages.

        The free tail of the file (the windows past its last page in use) is left alone, as
        lowest-first allocation leaves it: that is what shrink() gives back."""
        counts = self.window_counts
        floor = self._window_floor
        if floor is None:
            # The tail: the windows from the one holding the last page in use (a bit not set).
            in_use = len(self.bits.rstrip(b"\xff"))  # bytes up to the last one with a 0 bit
            self._window_end = min(len(counts), max(0, in_use * 8 - 1) // WINDOW_PAGES)
            most = max(counts[: self._window_end], default=0)
            # Freest windows first, level by level: their free pages lie in the longest runs.
            levels = sorted({max(WINDOW_MIN_FREE, most * k // 8) for k in WINDOW_LEVELS})
            self._window_levels = levels
            floor = self._window_floor = levels.pop()
            self._window_from = 0
            self._window_seen = set()
        while True:
            if self._window_from < self._window_end:
                marks = _WINDOW_MARKS.get(floor)
                if marks is None:
                    marks = _WINDOW_MARKS[floor] = bytes(int(c >= floor) for c in range(256))
                w = counts.translate(marks).find(1, self._window_from, self._window_end)
                if w >= 0:
                    self._window_from = w + 1
                    if w in self._window_seen:
                        continue  # emptied at a higher level (its count holds pending pages)
                    self._window_seen.add(w)
                    return w
            if not self._window_levels:
                self._window_from = self._window_end
                return None  # none left this commit: do not search again for every page
            floor = self._window_floor = self._window_levels.pop()
            self._window_from = 0

    def _end_commit(self) -> None:
        self.give_back_taken()
        self.release_reserved()
        self._window_floor = None
        self.lowest_first = False

    def unallocate(self, pgid: int, span: int) -> None:
        """Give back a run that was allocated in this commit and never written."""
        for p in range(pgid, pgid + span):
            self.free.add(p)
            self._set(p)

    def release_to(self, txid: int) -> None:
        """Pages freed by transactions up to ``txid`` become reusable: no open reader can
        reach them any more (the caller guarantees every open reader started at ``>= txid``)."""
        for t in [t for t in self.pending if t <= txid]:
            self.free.update(self.pending.pop(t))

    def release_all(self) -> None:
        for pages in self.pending.values():
            self.free.update(pages)
        self.pending.clear()

    def pend(self, txid: int, pgid: int, span: int) -> None:
        """Pages of the tree before ``txid`` that ``txid`` no longer uses."""
        self.pend_runs(txid, ((pgid, span),))

    def pend_runs(self, txid: int, runs: Sequence[tuple[int, int]]) -> None:
        """pend() for each (first page, span) of ``runs``, in one pass: a commit frees
        ~1,500 pages, and a call of _set for each was a tenth of its CPU."""
        pages = [pgid for pgid, span in runs if span == 1]
        for pgid, span in runs:
            if span > 1:
                pages.extend(range(pgid, pgid + span))
        if not pages:
            return
        self.pending.setdefault(txid, []).extend(pages)
        bits, counts = self.bits, self.window_counts
        top = max(pages)
        if top >> 3 >= len(bits):
            bits.extend(bytes((top >> 3) + 1 - len(bits)))
        if top >> WINDOW_SHIFT >= len(counts):
            counts.extend(bytes((top >> WINDOW_SHIFT) + 1 - len(counts)))
        for p in pages:
            byte, mask = p >> 3, 1 << (p & 7)
            if not bits[byte] & mask:
                bits[byte] |= mask
                counts[p >> WINDOW_SHIFT] += 1
        chunk_bits = self.chunk_bits
        self.dirty.update({p // chunk_bits for p in pages})

    def trim_tail(self, hwm: int) -> int:
        """Drop reusable pages at the end of the file; returns the new hwm."""
        n = self.free.tail_run(hwm)
        self.free.remove_run(hwm - n, n)
        for p in range(hwm - n, hwm):
            self._clear(p)
        return hwm - n

    # -- persisting ------------------------------------------------------------------------

    def write(self, txid: int, hwm: int) -> tuple[list[tuple[int, int, list]], int]:
        """Allocate and encode the chunk pages that changed and a new root.

        Returns (runs to write as (pgid, span, buffers), new hwm). Replaced freelist pages are
        freed under ``txid`` like any other page of the previous tree.
        """
        # The pages the last window gave spill that it did not use go back first: the chunks
        # written below must show them free. This method's own pages are the lowest free ones,
        # not a new window's (whose leftovers would go back after the chunks were encoded).
        self.give_back_taken()
        if not self.dirty:
            self._end_commit()
            return [], hwm
        new: dict[int, int] = {}
        replaced: set[int] = set()
        root_new: tuple[int, int] | None = None
        root_replaced = False
        slots = list(self.chunk_pgids)
        while True:
            progress = False
            for slot in sorted(self.dirty):
                nonzero = any(self._chunk_body(slot))
                if slot in new and (new[slot] != 0 or not nonzero):
                    continue
                if slot not in replaced:
                    replaced.add(slot)
                    old = slots[slot] if slot < len(slots) else 0
                    if old:
                        self.pend(txid, old, 1)
                if nonzero:
                    new[slot], hwm = self.allocate(1, hwm, by_window=False)
                else:
                    new[slot] = 0
                progress = True
            merged = list(slots)
            for slot, pgid in new.items():
                if slot >= len(merged):
                    merged.extend([0] * (slot + 1 - len(merged)))
                merged[slot] = pgid
            while merged and merged[-1] == 0:
                merged.pop()
            want = span_for(HEADER_SIZE + PGID.size * len(merged), self.page_size) if merged else 0
            if not root_replaced:
                root_replaced = True
                if self.root:
                    self.pend(txid, self.root, self.root_span)
                progress = True
            if want == 0:
                if root_new is not None:
                    self.unallocate(*root_new)
                    root_new = None
                    progress = True
            elif root_new is None or root_new[1] < want:
                if root_new is not None:
                    self.unallocate(*root_new)
                pgid, hwm = self.allocate(want, hwm, by_window=False)
                root_new = (pgid, want)
                progress = True
            if not progress:
                break
        runs: list[tuple[int, int, list]] = []
        for slot, pgid in sorted(new.items()):
            if pgid:
                body = self._chunk_body(slot)
                count = int.from_bytes(body, "little").bit_count()
                page = build_page(
                    pgid, TYPE_CHUNK, count, CHUNK_SLOT.pack(slot) + body, self.page_size
                )
                runs.append((pgid, 1, [page]))
        self.chunk_pgids = merged
        if root_new is None:
            self.root, self.root_span = 0, 0
        else:
            pgid, span = root_new
            body = pgid_array(len(merged)).pack(*merged)
            # The run was sized before the last slots were known; it may be longer than needed.
            page = build_page(pgid, TYPE_FREELIST, len(merged), body, self.page_size, span)
            runs.append((pgid, span, [page]))
            self.root, self.root_span = pgid, span
        self.dirty.clear()
        self._end_commit()
        return runs, hwm

    def reusable_pages(self) -> int:
        return len(self.free)

    def pending_pages(self) -> int:
        return sum(len(p) for p in self.pending.values())
