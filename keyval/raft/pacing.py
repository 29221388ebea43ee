"""QuorumPacer: a leader sends at once only to the followers it needs for a quorum.

A leader needs ``quorum - 1`` followers' acknowledgements (its own durable log is the rest) to
commit an entry. Every further follower must get every entry too, but not at once: an entry it
receives right away costs it (and the machine it shares, on a small cluster on one host) a
wake-up, a step, an fsync and an acknowledgement per write, while the commit does not wait
for it. So the pacer sends a leader's messages at once to the ``quorum - 1`` followers with
the highest match index (the most up to date, which are the ones answering), ties to the lower
id, and holds the messages for the others until :meth:`flush`, which the node calls on every
tick: those followers get all the entries of a tick in one read, one fsync and one round of
acknowledgements. A follower that stops answering falls behind in match index and so is
replaced among the immediate ones by one that answers, within a tick or two. A follower that
is only late (a busy machine) is covered sooner: the node's owner calls
:meth:`~keyval.raft.node.Node.nudge` every few milliseconds between ticks, and a leader whose
entries stayed uncommitted from one nudge to the next flushes what it holds.

What it keeps (Raft's safety never depends on when a message arrives; this is only about when
it leaves): messages to one follower go out in the order the core made them (a follower's
held messages are flushed before anything newer goes to it); anything but an append or a
plain heartbeat (a snapshot chunk, a read index answer, the heartbeat of a ReadIndex round,
which a read waits for) goes at once, after what is held for that follower; a node that is
not the leader holds nothing. Messages are held at most one tick.

On :meth:`flush`, consecutive held appends to one follower that continue each other (the next
one's previous entry is the last entry of the one before, in the same term) go out as one
append carrying all their entries and the newest commit index, up to ``merge_bytes`` of entry
data: what the core would have sent had it made them together, and the follower takes the
same log from it. A tick's worth of single-entry appends (one client's puts) then costs the
leader one encode and one write instead of one each, and the follower one decode and one step.

Thread safety: none of its own; the node calls it under its lock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from keyval.raft.core import RaftCore, Role
from keyval.raft.messages import Message, MsgType

_PACED = frozenset({MsgType.APP, MsgType.HEARTBEAT})


class QuorumPacer:
    """Routes the messages of ``core`` to ``send``, holding some (see the module docstring)."""

    def __init__(
        self,
        core: Callable[[], RaftCore],
        send: Callable[[Message], None],
        merge_bytes: int = 64 * 1024,
    ) -> None:
        self._core = core  # the node creates its core after this: look it up each time
        self._send = send
        self._merge_bytes = merge_bytes
        self._held: dict[int, list[Message]] = {}

    @property
    def held(self) -> int:
        """How many messages wait for :meth:`flush`."""
        return sum(len(msgs) for msgs in self._held.values())

    def send(self, m: Message) -> None:
        core = self._core()
        paced = m.type in _PACED and not m.context  # a ReadIndex round's heartbeat goes now
        if core.role is Role.LEADER and paced and not self._immediate(core, m.to):
            self._held.setdefault(m.to, []).append(m)
            return
        held = self._held.pop(m.to, None)
        if held:
            for h in held:
                self._send(h)
        self._send(m)

    def flush(self) -> None:
        """Sends everything held, in order per follower, consecutive appends merged."""
        if self._held:
            held, self._held = self._held, {}
            for msgs in held.values():
                for m in merge_appends(msgs, self._merge_bytes):
                    self._send(m)

    @staticmethod
    def _immediate(core: RaftCore, to: int) -> bool:
        """Whether ``to`` is among the ``quorum - 1`` followers with the highest match."""
        prs = core.prs
        mine = prs[to].match
        ahead = 0
        for p, pr in prs.items():
            if p != core.id and p != to and (pr.match > mine or (pr.match == mine and p < to)):
                ahead += 1
        return ahead < core.quorum - 1


def merge_appends(msgs: list[Message], max_bytes: int) -> list[Message]:
    """``msgs`` (to one follower, in the order made) with each run of appends that continue
    one another merged into one, of at most ``max_bytes`` of entry data (see the module
    docstring). Anything else, and an append that does not continue the one before it (a
    probe, another term), stays as it is, in its place."""
    if len(msgs) < 2:
        return msgs
    out: list[Message] = []
    size = 0  # entry data in out[-1], when it is an append that may grow
    for m in msgs:
        prev = out[-1] if out else None
        if m.type is MsgType.APP and m.entries:
            more = sum(len(e.data) for e in m.entries)
            if (
                prev is not None
                and prev.type is MsgType.APP
                and prev.entries
                and prev.term == m.term
                and prev.entries[-1].index == m.index
                and prev.entries[-1].term == m.log_term
                and size + more <= max_bytes
            ):
                out[-1] = dataclasses.replace(
                    prev, entries=prev.entries + m.entries, commit=max(prev.commit, m.commit)
                )
                size += more
                continue
            size = more
        out.append(m)
    return out
