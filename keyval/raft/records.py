"""The values Raft stores durably: log entries, the hard state and snapshots.

Shared by :mod:`keyval.raft.storage` (which persists them) and the consensus core (which
produces and consumes them); they carry no behaviour. Immutable, so a value handed to storage
or to the network can never change under it.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    """The state machine as of log ``index`` (whose entry had ``term``), as opaque bytes."""

    index: int
    term: int
    data: bytes = b""
