"""The rules every Raft storage enforces on what it is asked to store.

One place for them, so that the durable stores refuse exactly the same calls, before anything
is written: wrong types raise ``TypeError``; values that break a Raft invariant raise
``ValueError`` (or :class:`~keyval.errors.LogCompacted` for an append below the first index).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from keyval.errors import LogCompacted
from keyval.raft.records import Entry, HardState, Snapshot
from keyval.raft.snapdata import FileData

# Indexes, terms, votes and commit indexes are stored as u64.
MAX_U64 = 2**64 - 1


def check_hard_state(new: HardState, current: HardState) -> None:
    """A term never goes back, and a vote once cast in a term is never changed."""
    if not isinstance(new, HardState):
        raise TypeError(f"expected a HardState, not {type(new).__name__}")
    for name in ("term", "vote", "commit"):
        value = getattr(new, name)
        if type(value) is not int or not 0 <= value <= MAX_U64:
            raise ValueError(f"hard state {name} must be an int in 0..2**64-1, not {value!r}")
    if new.term < current.term:
        raise ValueError(f"term cannot go back from {current.term} to {new.term}")
    if new.term == current.term and current.vote and new.vote != current.vote:
        raise ValueError(f"already voted for {current.vote} in term {current.term}, not {new.vote}")


def check_entries(
    entries: Sequence[Entry], first_index: int, last_index: int, term: Callable[[int], int]
) -> None:
    """Consecutive entries with terms that never go back, starting within ``first_index ..
    last_index + 1`` at a term no lower than the entry before; ``term(i)`` gives stored terms."""
    prev_index, prev_term = None, None
    for e in entries:
        if not isinstance(e, Entry):
            raise TypeError(f"expected an Entry, not {type(e).__name__}")
        if type(e.data) is not bytes:
            raise TypeError(f"entry {e.index}: data must be bytes")
        if (
            type(e.index) is not int
            or type(e.term) is not int
            or not 1 <= e.index <= MAX_U64
            or not 1 <= e.term <= MAX_U64
        ):
            raise ValueError(
                f"entry index and term must be ints in 1..2**64-1, not {e.index}, {e.term}"
            )
        if prev_index is None:
            prev_index = e.index - 1
        if e.index != prev_index + 1:
            raise ValueError(f"entries not consecutive: {prev_index} then {e.index}")
        if prev_term is not None and e.term < prev_term:
            raise ValueError(f"term goes back from {prev_term} to {e.term} at entry {e.index}")
        prev_index, prev_term = e.index, e.term
    first = entries[0]
    if first.index < first_index:
        raise LogCompacted(f"append at {first.index} below the first index {first_index}")
    if first.index > last_index + 1:
        raise ValueError(f"append at {first.index} leaves a gap after {last_index}")
    before = term(first.index - 1)
    if first.term < before:
        raise ValueError(
            f"entry {first.index} has term {first.term}, below the term {before} before it"
        )


def check_snapshot(snap: Snapshot, current_index: int) -> None:
    """A snapshot of bytes (or file-backed data), at index and term >= 1, never older than the
    one stored."""
    if not isinstance(snap, Snapshot):
        raise TypeError(f"expected a Snapshot, not {type(snap).__name__}")
    if type(snap.data) is not bytes and not isinstance(snap.data, FileData):
        raise TypeError("snapshot data must be bytes")
    if type(snap.index) is not int or type(snap.term) is not int:
        raise TypeError("snapshot index and term must be ints")
    if not (1 <= snap.index <= MAX_U64 and 1 <= snap.term <= MAX_U64):
        raise ValueError(
            f"snapshot index and term must be in 1..2**64-1, not {snap.index}, {snap.term}"
        )
    if snap.index < current_index:
        raise ValueError(
            f"snapshot at {snap.index} is older than the stored one at {current_index}"
        )
