"""MemoryStorage: the Raft storage API of the SPEC, held in memory.

Used by tests and the simulated network, and the reference model for the durable
:class:`keyval.raft.storage.RaftStorage`: both must answer every call identically. "Durable on
return" is trivially true here; a simulated crash keeps this object and hands it to the
restarted node, which is exactly what a disk would do.

Semantics (SPEC ``keyval.raft.storage``):

- Empty: ``first_index == 1``, ``last_index == 0``, ``term(0) == 0``, hard state all zeros.
- ``append(entries)``: consecutive entries; the first may start anywhere in
  ``[first_index, last_index + 1]``; every stored entry at or after it is replaced.
- ``save_snapshot(s)``: entries ``<= s.index`` are dropped and ``first_index == s.index + 1``.
  Entries after ``s.index`` are kept only when the log holds ``s.index`` with ``s.term``: a
  snapshot that does not match the log (a follower installing its leader's snapshot over a
  divergent log) replaces the whole log, since by the Log Matching property no entry after a
  mismatching index can belong to the leader's log.
- ``entries(lo, hi)`` and ``term(i)`` raise :class:`LogCompacted` below what is kept and
  :class:`LogUnavailable` beyond ``last_index``.

Not thread-safe; the node driver serialises access.
"""

from __future__ import annotations

from itertools import pairwise

from keyval.errors import ClosedError, LogCompacted, LogUnavailable
from keyval.raft.records import Entry, HardState, Snapshot, cut_to_bytes
from keyval.raft.validation import check_hard_state

__all__ = ["LogCompacted", "LogUnavailable", "MemoryStorage"]


class MemoryStorage:
    """In-memory Raft storage: hard state, log entries after a snapshot, the snapshot."""

    def __init__(self) -> None:
        self._hard_state = HardState()
        self._snapshot: Snapshot | None = None
        # _entries[k] holds index _offset + k; _offset - 1 is the snapshot index (0 when none).
        self._entries: list[Entry] = []
        self._offset = 1
        self._closed = False

    # -- hard state ---------------------------------------------------------------------------

    def set_hard_state(self, hs: HardState) -> None:
        """Refused like RaftStorage's: None, a term going back, a vote changed in a term."""
        self._check_open()
        check_hard_state(hs, self._hard_state)
        self._hard_state = hs

    def hard_state(self) -> HardState:
        self._check_open()
        return self._hard_state

    # -- log ----------------------------------------------------------------------------------

    @property
    def first_index(self) -> int:
        return self._offset

    @property
    def last_index(self) -> int:
        return self._offset + len(self._entries) - 1

    def term(self, index: int) -> int:
        self._check_open()
        snap_index = self._offset - 1
        if index == snap_index:
            return self._snapshot.term if self._snapshot is not None else 0
        if index < snap_index:
            raise LogCompacted(f"index {index} is compacted (first index {self._offset})")
        if index > self.last_index:
            raise LogUnavailable(f"index {index} is past the last index {self.last_index}")
        return self._entries[index - self._offset].term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries ``[lo, hi)``; ``lo`` must be >= ``first_index`` and ``hi <= last_index + 1``.
        With ``max_bytes``, stops once the data passes that many bytes (at least one entry)."""
        self._check_open()
        if lo < self._offset:
            raise LogCompacted(f"index {lo} is compacted (first index {self._offset})")
        if hi > self.last_index + 1:
            raise LogUnavailable(f"index {hi - 1} is past the last index {self.last_index}")
        if lo >= hi:
            return []
        return cut_to_bytes(self._entries[lo - self._offset : hi - self._offset], max_bytes)

    def save(self, hard_state: HardState | None = None, entries: list[Entry] = ()) -> None:
        """Entries then hard state, as one call (the durable store makes it one fsync)."""
        if entries:
            self.append(list(entries))
        if hard_state is not None:
            self.set_hard_state(hard_state)

    def append(self, entries: list[Entry]) -> None:
        self._check_open()
        if not entries:
            return
        first = entries[0].index
        for prev, e in pairwise(entries):
            if e.index != prev.index + 1:
                raise ValueError(f"entries not consecutive: {prev.index} then {e.index}")
        if first < self._offset:
            raise LogCompacted(f"append at {first} below the first index {self._offset}")
        if first > self.last_index + 1:
            raise ValueError(f"append at {first} leaves a gap after {self.last_index}")
        del self._entries[first - self._offset :]
        self._entries.extend(entries)

    # -- snapshots ----------------------------------------------------------------------------

    def size_bytes(self) -> int:
        """Bytes of entry data in the log after the snapshot."""
        return sum(len(e.data) for e in self._entries)

    def save_snapshot(self, snap: Snapshot) -> None:
        self._check_open()
        if self._snapshot is not None and snap.index < self._snapshot.index:
            raise ValueError(
                f"snapshot at {snap.index} is older than the stored one at {self._snapshot.index}"
            )
        keep: list[Entry] = []
        if self._offset - 1 <= snap.index <= self.last_index and self.term(snap.index) == snap.term:
            keep = self._entries[snap.index + 1 - self._offset :]
        self._entries = keep
        self._offset = snap.index + 1
        self._snapshot = snap

    def snapshot(self) -> Snapshot | None:
        self._check_open()
        return self._snapshot

    def close(self) -> None:
        self._closed = True

    def reopen(self) -> None:
        """What opening the same directory again does for a disk store (after a crash)."""
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("storage is closed")
