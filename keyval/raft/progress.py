"""Progress: what a leader knows about one follower's log, and how it feeds it.

A follower is in one of three states:

``PROBE``
    The leader does not know where the logs match. It sends one append at a time and waits for
    the answer (or the next heartbeat response) before sending again; a reject moves ``next``
    back using the follower's conflict hint.
``REPLICATE``
    The logs match up to ``match``. The leader streams appends optimistically (``next`` moves
    on send), at most ``max_inflight`` unacknowledged messages at once.
``SNAPSHOT``
    The entries the follower needs are compacted; the leader sends the snapshot in chunks
    (a window of them, acknowledged by offset), and resends from the last acknowledged offset
    when no acknowledgement came for a while (its own timer, not the heartbeat's).
"""

from __future__ import annotations

import enum
from collections import deque

from keyval.raft.records import Snapshot


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """The last indexes of appends sent but not acknowledged, oldest first, bounded."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._queue: deque[int] = deque()

    def add(self, last_index: int) -> None:
        self._queue.append(last_index)

    def free_le(self, index: int) -> None:
        q = self._queue
        while q and q[0] <= index:
            q.popleft()

    def free_first(self) -> None:
        if self._queue:
            self._queue.popleft()

    def full(self) -> bool:
        return len(self._queue) >= self.capacity

    def reset(self) -> None:
        self._queue.clear()

    def __len__(self) -> int:
        return len(self._queue)


class Progress:
    def __init__(self, next_index: int, max_inflight: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        # PROBE: an append is out and unanswered; no other until a response or heartbeat.
        self.probe_sent = False
        self.inflights = Inflights(max_inflight)
        # Heard from since the last CheckQuorum round, and in the round before it: just after
        # a round begins, recent_active alone says "silent" of every follower.
        self.recent_active = False
        self.was_active = False
        # SNAPSHOT state: the snapshot being sent, bytes acknowledged and bytes sent.
        self.snapshot: Snapshot | None = None
        self.snap_acked = 0
        self.snap_sent = 0
        self.snap_idle_ticks = 0

    def answered_lately(self) -> bool:
        """Heard from within the last one or two CheckQuorum rounds (election timeouts)."""
        return self.recent_active or self.was_active

    def __repr__(self) -> str:
        return f"Progress({self.state.value} match={self.match} next={self.next})"

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT and self.snapshot is not None:
            self.next = max(self.match + 1, self.snapshot.index + 1)
        else:
            self.next = self.match + 1
        self._reset(ProgressState.PROBE)

    def become_replicate(self) -> None:
        self.next = self.match + 1
        self._reset(ProgressState.REPLICATE)

    def become_snapshot(self, snap: Snapshot) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.snapshot = snap

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.inflights.reset()
        self.snapshot = None
        self.snap_acked = self.snap_sent = self.snap_idle_ticks = 0

    def is_paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True

    def maybe_update(self, index: int) -> bool:
        """The follower's log matches ours up to ``index``; whether that is news."""
        updated = index > self.match
        if updated:
            self.match = index
            self.probe_sent = False
        self.next = max(self.next, index + 1)
        return updated

    def sent_entries(self, last_index: int) -> None:
        if self.state is ProgressState.REPLICATE:
            self.next = last_index + 1
            self.inflights.add(last_index)
        else:
            self.probe_sent = True

    def maybe_decrease_to(self, rejected: int, hint: int) -> bool:
        """The follower rejected an append after index ``rejected``; ``hint`` is where the logs
        may match. Whether this changes anything (a reject of an old message does not)."""
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        decreased = max(min(rejected, hint + 1), self.match + 1, 1)
        if decreased == self.next:
            return False  # resending the same append would be rejected the same way
        self.next = decreased
        self.probe_sent = False
        return True
