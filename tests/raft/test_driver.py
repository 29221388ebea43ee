"""The node driver persists before it sends.

Every message a node sends may promise something that must survive a crash of that node: a
vote, the term it speaks in, entries it acknowledges. Three real nodes (MemoryStorage; the
durable store has the same durability points) run elections and replication with messages
delivered in a seeded random order, and at the moment each message is sent the sender's
storage must already hold what the message promises.
"""

from __future__ import annotations

import contextlib
import random

import pytest

from keyval.errors import NotLeader
from keyval.raft.core import Config
from keyval.raft.memory import MemoryStorage
from keyval.raft.messages import Message, MsgType
from keyval.raft.node import Node
from keyval.raft.simnet import NullStateMachine

IDS = (1, 2, 3)


def broken_promise(m: Message, st: MemoryStorage) -> str | None:
    """Why ``m`` promises more than ``st`` holds, or None."""
    hs = st.hard_state()
    if m.type not in (MsgType.PRE_VOTE, MsgType.PRE_VOTE_RESP) and m.term > hs.term:
        return f"sent in term {m.term} with term {hs.term} on disk"
    if m.type == MsgType.VOTE_RESP and not m.reject and hs.vote != m.to:
        return f"granted a vote to {m.to} with vote {hs.vote} on disk"
    if m.type == MsgType.APP_RESP and not m.reject and st.last_index < m.index:
        return f"acknowledged index {m.index} with last index {st.last_index} on disk"
    return None


@pytest.mark.parametrize("seed", range(8))
def test_every_message_is_covered_by_what_its_sender_persisted(seed):
    rng = random.Random(seed)
    storages = {i: MemoryStorage() for i in IDS}
    queue: list[Message] = []
    violations: list[str] = []
    sent = {t: 0 for t in MsgType}

    def sender(i: int):
        def send(m: Message) -> None:
            why = broken_promise(m, storages[i])
            if why:
                violations.append(f"node {i} {m.type.name}: {why}")
            sent[m.type] += 1
            queue.append(m)

        return send

    nodes = {
        i: Node(
            Config(id=i, peers=IDS),
            storages[i],
            NullStateMachine(),
            send=sender(i),
            rng=random.Random(seed * 10 + i),
        )
        for i in IDS
    }
    down: set[int] = set()
    for step in range(3000):
        if rng.random() < 0.3:
            nodes[rng.choice(IDS)].tick()
        if queue:
            m = queue.pop(rng.randrange(len(queue)))  # any order: reordering is allowed
            if m.to not in down and rng.random() > 0.05:
                nodes[m.to].step(m)
        if step % 200 == 0:  # now and then a node is cut off for a while (a crash's view)
            down = {rng.choice(IDS)} if rng.random() < 0.5 else set()
        for node in nodes.values():
            if node.is_leader and rng.random() < 0.05:
                with contextlib.suppress(NotLeader):
                    node.propose(b"x" * rng.randrange(50))
    assert violations == [], f"seed={seed}: {violations[:5]}"
    # the run exercised every promise the check covers
    assert sent[MsgType.VOTE_RESP] and sent[MsgType.APP_RESP], sent
    assert max(st.last_index for st in storages.values()) > 10
