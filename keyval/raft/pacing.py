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

Thread safety: none of its own; the node calls it under its lock.
"""

from __future__ import annotations

from collections.abc import Callable

from keyval.raft.core import RaftCore, Role
from keyval.raft.messages import Message, MsgType

_PACED = frozenset({MsgType.APP, MsgType.HEARTBEAT})


class QuorumPacer:
    """Routes the messages of ``core`` to ``send``, holding some (see the module docstring)."""

    def __init__(self, core: Callable[[], RaftCore], send: Callable[[Message], None]) -> None:
        self._core = core  # the node creates its core after this: look it up each time
        self._send = send
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
        """Sends everything held, in order per follower."""
        if self._held:
            held, self._held = self._held, {}
            for msgs in held.values():
                for m in msgs:
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
