"""ReadIndex: linearizable reads that write nothing to the log (Raft thesis section 6.4).

The leader records its commit index as the read's index, then confirms it is still the leader
by a heartbeat round carrying the read's context; once a quorum has answered, every read queued
up to that one is safe to serve as soon as the state machine has applied its index. A leader
that has not yet committed an entry of its own term does not know the true commit index, so
reads wait (:attr:`ReadOnly.deferred`) until it has.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ReadState:
    """Serve the read identified by ``context`` once the applied index reaches ``index``."""

    index: int
    context: bytes


@dataclass(slots=True)
class ReadRequest:
    context: bytes
    index: int
    origin: int  # node that asked (the leader itself, or a follower that forwarded it)
    acks: set[int] = field(default_factory=set)


class ReadOnly:
    def __init__(self) -> None:
        self.pending: OrderedDict[bytes, ReadRequest] = OrderedDict()
        # (context, origin) of reads waiting for the leader's first commit in its term.
        self.deferred: list[tuple[bytes, int]] = []

    def add(self, context: bytes, index: int, origin: int, self_id: int) -> None:
        if context not in self.pending:
            self.pending[context] = ReadRequest(context, index, origin, {self_id})

    def ack(self, context: bytes, voter: int) -> set[int] | None:
        """Record that ``voter`` answered the round of ``context``; its acknowledgers."""
        req = self.pending.get(context)
        if req is None:
            return None
        req.acks.add(voter)
        return req.acks

    def release(self, context: bytes) -> list[ReadRequest]:
        """Every request queued up to and including ``context``, removed from the queue: a
        quorum confirming a later round confirms the earlier ones too."""
        if context not in self.pending:
            return []
        out = []
        while self.pending:
            ctx, req = self.pending.popitem(last=False)
            out.append(req)
            if ctx == context:
                break
        return out

    def last_context(self) -> bytes | None:
        return next(reversed(self.pending)) if self.pending else None

    def reset(self) -> None:
        self.pending.clear()
        self.deferred.clear()
