"""EntryCache: the consensus core's read view of a node's log, with the newest entries in memory.

A node writes an entry to its log and, a moment later, reads it back: the leader to apply it
once a quorum holds it, a follower to apply it once the leader's commit index says so, the
leader again to send it to a follower that fell behind. Read from :class:`RaftStorage` each of
those is a WAL read (a syscall, a checksum, a decode) on the path of every write. The driver
(:class:`~keyval.raft.node.Node`) therefore hands the core this view instead of the storage
itself and tells it what it wrote (:meth:`wrote`, after the write returned) and when a
snapshot was saved (:meth:`clear`); reads of the newest entries are then served from memory.

Contract: every read answers exactly what the storage would answer at that moment. The cache
mirrors a suffix of the storage's log: it holds the entries of the last writes in order,
applies a write that replaces a suffix of the log as the storage does, keeps at most
``max_entries`` entries / ``max_bytes`` of data (the oldest go first), and is consulted only
for indexes that are still in the storage (at or after ``first_index``, at or before
``last_index``); anything else is read from the storage. It writes nothing itself.

Thread safety: none of its own. The node calls it under its lock, as it calls the core.
"""

from __future__ import annotations

from collections.abc import Sequence

from keyval.raft.records import Entry, HardState, Snapshot, cut_to_bytes

DEFAULT_MAX_ENTRIES = 4096
DEFAULT_MAX_BYTES = 8 * 2**20


class EntryCache:
    """A read view of ``storage`` (the SPEC's RaftStorage API) serving recent entries from
    memory. Writes go to the storage itself; the caller reports them with :meth:`wrote`."""

    def __init__(
        self,
        storage,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.storage = storage
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: list[Entry] = []  # _entries[k] has index _first + k
        self._first = 0
        self._bytes = 0

    # -- what the driver reports ---------------------------------------------------------------

    def wrote(self, entries: Sequence[Entry]) -> None:
        """``entries`` (consecutive) are now in the storage, replacing any entries from the
        first one on, as :meth:`RaftStorage.append` does."""
        if not entries:
            return
        first = entries[0].index
        cached = self._entries
        if cached and self._first <= first <= self._first + len(cached):
            dropped = cached[first - self._first :]
            if dropped:
                self._bytes -= sum(len(e.data) for e in dropped)
                del cached[first - self._first :]
        else:
            cached.clear()
            self._first, self._bytes = first, 0
        cached.extend(entries)
        self._bytes += sum(len(e.data) for e in entries)
        excess = len(cached) - self.max_entries
        while cached and (excess > 0 or self._bytes > self.max_bytes):
            cut = max(excess, 1)
            self._bytes -= sum(len(e.data) for e in cached[:cut])
            del cached[:cut]
            self._first += cut
            excess = len(cached) - self.max_entries

    def clear(self) -> None:
        """Forget everything (a snapshot was saved: the log may have been cut anywhere)."""
        self._entries = []
        self._first = self._bytes = 0

    # -- the read interface of the storage ------------------------------------------------------

    @property
    def first_index(self) -> int:
        return self.storage.first_index

    @property
    def last_index(self) -> int:
        return self.storage.last_index

    def hard_state(self) -> HardState:
        return self.storage.hard_state()

    def snapshot(self) -> Snapshot | None:
        return self.storage.snapshot()

    def term(self, index: int) -> int:
        k = index - self._first
        if 0 <= k < len(self._entries) and self._in_storage(index, index):
            return self._entries[k].term
        return self.storage.term(index)

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """As :meth:`RaftStorage.entries`: ``[lo, hi)``, cut once the data reaches
        ``max_bytes`` (at least one entry)."""
        k = lo - self._first
        cached = lo < hi and k >= 0 and hi - self._first <= len(self._entries)
        if cached and self._in_storage(lo, hi - 1):
            return cut_to_bytes(self._entries[k : hi - self._first], max_bytes)
        return self.storage.entries(lo, hi, max_bytes)

    def _in_storage(self, lo: int, hi: int) -> bool:
        st = self.storage
        return st.first_index <= lo and hi <= st.last_index
