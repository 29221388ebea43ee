"""The values Raft stores durably: log entries, the hard state and snapshots.

Shared by :mod:`keyval.raft.storage` (which persists them) and the consensus core (which
produces and consumes them); they carry no behaviour. Immutable, so a value handed to storage
or to the network can never change under it. ``cut_to_bytes`` is the one size rule every log
applies to a read of entries.
"""

from __future__ import annotations

from dataclasses import dataclass

from keyval.raft.snapdata import SnapshotData


@dataclass(frozen=True, slots=True)
class Entry:
    """One Raft log entry. ``index`` >= 1, ``term`` >= 1; ``data`` is opaque to Raft
    (an empty ``data`` is the no-op a new leader appends to commit its term)."""

    index: int
    term: int
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class HardState:
    """What a node must remember across a crash: current term, vote in it (0 = none), commit."""

    term: int = 0
    vote: int = 0
    commit: int = 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The state machine as of log ``index`` (whose entry had ``term``), as opaque data:
    bytes, or a file-backed :class:`~keyval.raft.snapdata.FileData` read on demand (what
    RaftStorage hands out, so a large snapshot never sits in memory whole)."""

    index: int
    term: int
    data: SnapshotData = b""


def cut_to_bytes(entries: list[Entry], max_bytes: int | None) -> list[Entry]:
    """``entries`` up to and including the one whose data brings the total to ``max_bytes``
    (so at least one entry, however big); all of them when ``max_bytes`` is None."""
    if max_bytes is not None:
        size = 0
        for n, e in enumerate(entries, 1):
            size += len(e.data)
            if size >= max_bytes:
                return entries[:n]
    return entries
