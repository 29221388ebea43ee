"""RaftLog: the consensus core's view of the log, stable storage plus what is not yet persisted.

The core never writes storage. New entries (and a snapshot received from the leader) wait here,
*unstable*, until the driver has persisted them and acknowledged the ready batch; meanwhile
they shadow whatever storage holds at the same indexes. Reads go through the storage interface
of the SPEC (``first_index``, ``last_index``, ``term``, ``entries``) and never raise for a
compacted index: :meth:`term` answers ``None`` and :meth:`slice` raises :class:`Compacted`,
which the leader turns into a snapshot transfer.

Indexes: ``committed`` is known committed by a quorum; ``applied`` is the highest index handed
to the driver to apply (``applied <= committed``, except after a restart whose state machine
had applied entries its log lost: see ``__init__``). Both survive only through the hard state
and the snapshot; the driver replays ``applied+1 .. committed`` on restart.
"""

from __future__ import annotations

from keyval.raft.records import Entry, Snapshot, cut_to_bytes


class Compacted(Exception):
    """The entries asked for are gone from the log; only a snapshot covers them."""


class RaftLog:
    def __init__(self, storage, applied: int = 0) -> None:
        self.storage = storage
        # Unstable entries: _unstable[k] has index _offset + k.
        self._offset = storage.last_index + 1
        self._unstable: list[Entry] = []
        # A snapshot from the leader, not yet persisted; while set, storage is ignored entirely
        # (the snapshot replaces it when the driver saves it).
        self.pending_snapshot: Snapshot | None = None
        self.committed = storage.hard_state().commit
        snap_index = storage.first_index - 1
        self.applied = max(applied, snap_index)
        # The state machine may be ahead of the log: a leader applies entries that a quorum
        # of followers made durable before its own write of them, and may crash in between.
        # Those entries come back from the new leader; until then commit stays within the
        # log (a follower acknowledging past its last entry would mislead the leader).
        self.committed = max(self.committed, snap_index, min(self.applied, self.last_index()))

    # -- reading ------------------------------------------------------------------------------

    def first_index(self) -> int:
        if self.pending_snapshot is not None:
            return self.pending_snapshot.index + 1
        return self.storage.first_index

    def last_index(self) -> int:
        if self._unstable:
            return self._offset + len(self._unstable) - 1
        if self.pending_snapshot is not None:
            return self.pending_snapshot.index
        return self.storage.last_index

    def term(self, index: int) -> int | None:
        """The term of the entry at ``index``; ``None`` when compacted or past the end."""
        if self._unstable and index >= self._offset:
            k = index - self._offset
            return self._unstable[k].term if k < len(self._unstable) else None
        snap = self.pending_snapshot
        if snap is not None:
            return snap.term if index == snap.index else None
        st = self.storage
        if index < st.first_index - 1 or index > st.last_index:
            return None
        return st.term(index)

    def last_term(self) -> int:
        t = self.term(self.last_index())
        return t if t is not None else 0

    def match_term(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Whether a log ending at (``last_index``, ``last_term``) is at least as up to date as
        ours (the election restriction, Raft section 5.4.1)."""
        my_term = self.last_term()
        return last_term > my_term or (last_term == my_term and last_index >= self.last_index())

    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries ``[lo, hi)``, cut after the first entry that reaches ``max_bytes`` of data
        (at least one entry is returned when ``lo < hi``). Raises :class:`Compacted`."""
        if lo < self.first_index():
            raise Compacted(lo)
        hi = min(hi, self.last_index() + 1)
        if lo >= hi:
            return []
        out: list[Entry] = []
        if lo < self._offset and self.pending_snapshot is None:
            out.extend(self.storage.entries(lo, min(hi, self._offset)))
        if hi > self._offset:
            out.extend(self._unstable[max(lo, self._offset) - self._offset : hi - self._offset])
        return cut_to_bytes(out, max_bytes)

    def find_conflict(self, entries: tuple[Entry, ...] | list[Entry]) -> int:
        """Index of the first of ``entries`` that is missing or differs in term; 0 if none."""
        for e in entries:
            if not self.match_term(e.index, e.term):
                return e.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest index ``<= index`` whose term is ``<= term``, with its term.

        A follower that rejects an append at (index, term) answers with this; every entry after
        it has a term greater than the leader's entry at ``index``, so none can match, and the
        leader can skip a whole term of mismatches per round trip instead of one entry."""
        index = min(index, self.last_index())
        while index > 0:
            t = self.term(index)
            if t is None:  # compacted: the snapshot index is the best we can say
                break
            if t <= term:
                return index, t
            index -= 1
        return index, (self.term(index) or 0)

    # -- writing ------------------------------------------------------------------------------

    def append(self, entries: list[Entry] | tuple[Entry, ...]) -> int:
        """Add ``entries`` (consecutive), replacing any entries from the first one on."""
        if not entries:
            return self.last_index()
        first = entries[0].index
        if first <= self.committed:
            raise AssertionError(f"append at {first} would overwrite committed {self.committed}")
        if self._unstable and first >= self._offset:
            del self._unstable[first - self._offset :]
        else:
            # The new entries start at or before the unstable ones: storage from `first` on is
            # shadowed until the driver's append replaces that suffix.
            self._unstable = []
            self._offset = first
        self._unstable.extend(entries)
        return self.last_index()

    def maybe_append(
        self, index: int, log_term: int, commit: int, entries: tuple[Entry, ...]
    ) -> int | None:
        """A follower's AppendEntries: if our entry at ``index`` has ``log_term``, take the
        entries that are new or conflicting, advance commit and return the last index now known
        to match the leader's; ``None`` if the log does not match at ``index``."""
        if not self.match_term(index, log_term):
            return None
        last_new = index + len(entries)
        conflict = self.find_conflict(entries)
        if conflict:
            self.append(entries[conflict - index - 1 :])
        self.commit_to(min(commit, last_new))
        return last_new

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index():
                raise AssertionError(f"commit {index} beyond last index {self.last_index()}")
            self.committed = index

    def restore(self, snap: Snapshot) -> None:
        """Replace the log with ``snap`` (from the leader; not yet persisted)."""
        self.pending_snapshot = snap
        self._unstable = []
        self._offset = snap.index + 1
        self.committed = snap.index
        self.applied = max(self.applied, snap.index)

    # -- the ready batch ----------------------------------------------------------------------

    def unstable_entries(self) -> list[Entry]:
        return list(self._unstable)

    def has_unstable(self) -> bool:
        return bool(self._unstable)

    def stable_last(self) -> int:
        """The last index that is both durable and part of this log (what the leader may count
        as its own replica)."""
        if self._unstable or self.pending_snapshot is not None:
            return self._offset - 1
        return self.storage.last_index

    def has_next_committed(self) -> bool:
        return self.committed > self.applied

    def next_committed(self, max_bytes: int | None = None) -> list[Entry]:
        return self.slice(self.applied + 1, self.committed + 1, max_bytes)

    def stable_to(self, index: int, term: int) -> None:
        """The driver persisted entries up to (``index``, ``term``)."""
        if not self._unstable or index < self._offset:
            return
        k = index - self._offset
        if k < len(self._unstable) and self._unstable[k].term == term:
            # An entry replaced since the ready was taken is still unstable (term differs).
            del self._unstable[: k + 1]
            self._offset = index + 1

    def stable_snapshot_to(self, index: int) -> None:
        if self.pending_snapshot is not None and self.pending_snapshot.index == index:
            self.pending_snapshot = None

    def applied_to(self, index: int) -> None:
        if index > self.applied:
            self.applied = index
