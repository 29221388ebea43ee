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
import threading

import pytest

from keyval.errors import NotLeader
from keyval.raft import node as node_module
from keyval.raft.core import Config
from keyval.raft.memory import MemoryStorage
from keyval.raft.messages import Message, MsgType
from keyval.raft.node import Node
from keyval.raft.records import Entry, HardState
from keyval.raft.simnet import NullStateMachine

IDS = (1, 2, 3)
WAIT = 10.0  # generous deadline for anything that should take milliseconds


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


def quorum_holds(storages: dict[int, MemoryStorage], index: int, term: int) -> bool:
    """Whether a majority of the storages hold the entry (index, term)."""
    held = sum(
        1
        for st in storages.values()
        if st.first_index <= index <= st.last_index and st.term(index) == term
    )
    return held > len(storages) // 2


@pytest.mark.parametrize("seed", range(8))
def test_a_leader_persisting_later_still_applies_only_what_a_quorum_holds(seed):
    """With ``on_persist_needed``, a leader leaves its own writes to ``persist()``, called here
    at random later moments, as a server's persist thread would. Every message still keeps its
    promise, and an entry is applied (a client answered) only once a quorum holds it."""
    rng = random.Random(seed)
    storages = {i: MemoryStorage() for i in IDS}
    queue: list[Message] = []
    violations: list[str] = []
    wanted: set[int] = set()
    applied = 0

    def sender(i: int):
        def send(m: Message) -> None:
            why = broken_promise(m, storages[i])
            if why:
                violations.append(f"node {i} {m.type.name}: {why}")
            queue.append(m)

        return send

    def on_apply(i: int):
        def check(entry, result) -> None:
            nonlocal applied
            applied += 1
            if not quorum_holds(storages, entry.index, entry.term):
                violations.append(f"node {i} applied {entry.index} before a quorum held it")

        return check

    nodes = {
        i: Node(
            Config(id=i, peers=IDS),
            storages[i],
            NullStateMachine(),
            send=sender(i),
            rng=random.Random(seed * 10 + i),
            on_apply=on_apply(i),
            on_persist_needed=lambda i=i: wanted.add(i),
        )
        for i in IDS
    }
    for _ in range(3000):
        if rng.random() < 0.3:
            nodes[rng.choice(IDS)].tick()
        if queue:
            m = queue.pop(rng.randrange(len(queue)))
            if rng.random() > 0.05:
                nodes[m.to].step(m)
        if wanted and rng.random() < 0.2:
            i = rng.choice(sorted(wanted))
            wanted.discard(i)
            nodes[i].persist()
        for node in nodes.values():
            if node.is_leader and rng.random() < 0.05:
                with contextlib.suppress(NotLeader):
                    node.propose(b"x" * rng.randrange(50))
    assert violations == [], f"seed={seed}: {violations[:5]}"
    assert applied > 10


class GatedStorage(MemoryStorage):
    """MemoryStorage whose next write of entries after :meth:`hold` waits until
    :meth:`release`: a slow disk. Later writes go through at once."""

    def __init__(self) -> None:
        super().__init__()
        self._held = False
        self._gate = threading.Event()
        self.waiting = threading.Event()  # the held write has started
        self.writes: list[tuple[tuple[int, ...], int | None]] = []  # (indexes, hard state term)

    def hold(self) -> None:
        self._held = True
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def save(self, hard_state=None, entries=()) -> None:
        if entries and self._held:
            self._held = False
            self.waiting.set()
            assert self._gate.wait(WAIT), "the held write was never released"
        self.writes.append((tuple(e.index for e in entries), hard_state and hard_state.term))
        super().save(hard_state=hard_state, entries=entries)


class ThreeNodes:
    """Three nodes whose messages the test delivers one by one; node 1 leads and leaves its
    own writes to ``persist()``."""

    def __init__(self) -> None:
        self.storages = {1: GatedStorage(), 2: MemoryStorage(), 3: MemoryStorage()}
        self.outbox: list[Message] = []
        self.applied: list[int] = []
        self.nodes = {
            i: Node(
                Config(id=i, peers=IDS),
                self.storages[i],
                NullStateMachine(),
                send=self.outbox.append,
                rng=random.Random(i),
                on_apply=(lambda e, r: self.applied.append(e.index)) if i == 1 else None,
                on_persist_needed=(lambda: None) if i == 1 else None,
            )
            for i in IDS
        }
        self.leader = self.nodes[1]
        self.leader.campaign()
        self.deliver_all()
        assert self.leader.is_leader
        self.leader.persist()  # its no-op entry
        self.deliver_all()

    def deliver(self, to: int, mtype: MsgType) -> None:
        m = next(m for m in self.outbox if m.to == to and m.type is mtype)
        self.outbox.remove(m)
        self.nodes[to].step(m)

    def deliver_all(self) -> None:
        while self.outbox:
            m = self.outbox.pop(0)
            self.nodes[m.to].step(m)


def test_a_leader_whose_disk_is_slow_commits_on_its_followers_disks():
    """While the leader's own write is under way (its lock released), the followers' acks are
    stepped; one follower's disk is not a quorum, both followers' disks are, and the entry is
    applied before the leader's write lands."""
    c = ThreeNodes()
    st = c.storages[1]
    st.hold()
    index = c.leader.propose(b"put")
    persisting = threading.Thread(target=c.leader.persist)
    persisting.start()
    assert st.waiting.wait(WAIT)
    c.deliver(2, MsgType.APP)
    c.deliver(1, MsgType.APP_RESP)  # the leader's lock is free while its disk works
    assert index not in c.applied  # follower 2 alone is not a quorum: the leader's disk counts
    c.deliver(3, MsgType.APP)
    c.deliver(1, MsgType.APP_RESP)
    assert index in c.applied  # followers 2 and 3 hold it: committed, applied, answered
    assert st.last_index < index  # ... while the leader's own write has not landed
    st.release()
    persisting.join(WAIT)
    assert st.last_index == index


def test_a_leader_answers_after_its_own_write_and_one_follower():
    c = ThreeNodes()
    index = c.leader.propose(b"put")
    c.deliver(2, MsgType.APP)
    c.deliver(1, MsgType.APP_RESP)
    assert index not in c.applied  # its own write has not been made yet
    c.leader.persist()
    assert index in c.applied


class ReportingCondition(threading.Condition):
    """A condition that says when a thread first waits on it."""

    def __init__(self, lock) -> None:
        super().__init__(lock)
        self.waiting = threading.Event()

    def wait(self, timeout=None):
        self.waiting.set()
        return super().wait(timeout)


def test_a_new_term_is_written_only_after_the_entries_being_written():
    """Deposed while its write is under way, the leader must not write its new term (or
    anything else) before that write lands: storage sees writes in the order the core made
    them."""
    c = ThreeNodes()
    st = c.storages[1]
    landed = c.leader._persisted = ReportingCondition(c.leader._lock)
    st.hold()
    index = c.leader.propose(b"put")
    persisting = threading.Thread(target=c.leader.persist)
    persisting.start()
    assert st.waiting.wait(WAIT)
    newer = Message(MsgType.HEARTBEAT, 1, 2, c.leader.term + 1)
    stepping = threading.Thread(target=c.leader.step, args=(newer,))
    stepping.start()
    # The step has got as far as it may: it waits for the write under way to land (a step
    # that wrote out of order would be stuck in the held storage instead, and fail here).
    assert landed.waiting.wait(WAIT)
    st.release()
    persisting.join(WAIT)
    stepping.join(WAIT)
    assert not stepping.is_alive() and not persisting.is_alive()
    entries_write = next(k for k, (idx, _) in enumerate(st.writes) if index in idx)
    term_write = next(k for k, (_, term) in enumerate(st.writes) if term == newer.term)
    assert entries_write < term_write
    assert not c.leader.is_leader


class CountingStorage(MemoryStorage):
    def __init__(self) -> None:
        super().__init__()
        self.saves = 0

    def save(self, hard_state=None, entries=()) -> None:
        self.saves += 1
        super().save(hard_state=hard_state, entries=entries)


def test_appends_stepped_together_are_written_once_and_all_acknowledged():
    storages = {1: MemoryStorage(), 2: CountingStorage(), 3: MemoryStorage()}
    outbox: list[Message] = []
    nodes = {
        i: Node(Config(id=i, peers=IDS), storages[i], NullStateMachine(), send=outbox.append)
        for i in IDS
    }
    nodes[1].campaign()
    while outbox:
        m = outbox.pop(0)
        nodes[m.to].step(m)
    assert nodes[1].is_leader
    first = nodes[1].propose(b"a")
    second = nodes[1].propose(b"b")
    appends = [m for m in outbox if m.to == 2 and m.type is MsgType.APP]
    assert len(appends) == 2  # one append per proposal, as a busy leader sends them
    outbox.clear()
    before = storages[2].saves
    nodes[2].step_many(appends)
    assert storages[2].saves == before + 1
    assert storages[2].last_index == second
    acked = [m.index for m in outbox if m.type is MsgType.APP_RESP and not m.reject]
    assert max(acked) == second and first <= min(acked)


class BatchRecorder(NullStateMachine):
    """Records the entries it is given, and how many per apply_many call."""

    def __init__(self) -> None:
        super().__init__()
        self.indexes: list[int] = []
        self.calls: list[int] = []
        self.applied_index = 0

    def apply_many(self, entries):
        self.calls.append(len(entries))
        self.indexes += [e.index for e in entries]
        self.applied_index = entries[-1].index
        return [b""] * len(entries)


def test_a_restart_replays_the_committed_log_in_bounded_chunks(monkeypatch):
    st = MemoryStorage()
    st.append([Entry(i, 1, b"x" * 100) for i in range(1, 201)])
    st.set_hard_state(HardState(term=1, vote=1, commit=150))
    monkeypatch.setattr(node_module, "REPLAY_CHUNK_BYTES", 1_000)
    sm = BatchRecorder()
    node = Node(Config(id=1, peers=IDS), st, sm, send=lambda m: None)
    assert sm.indexes == list(range(1, 151))  # every committed entry, in order, once
    assert node.applied == 150
    assert len(sm.calls) == 15 and max(sm.calls) == 10  # 1,000 bytes of entry data at a time


class DurableAppliedMachine(NullStateMachine):
    """A state machine whose applied index survives a crash (the KV state after a flush)."""

    def __init__(self) -> None:
        super().__init__()
        self.applied_index = 0

    def apply(self, entry: Entry) -> None:
        self.applied_index = entry.index


def test_a_node_whose_state_machine_is_ahead_of_its_log_catches_up_after_restart():
    """A leader may apply entries a quorum of followers made durable before its own write of
    them (on_persist_needed), then crash before that write: after the restart its state
    machine is ahead of its log. It must neither acknowledge entries it lacks (the leader
    would take them as matched and the two would bounce rejects forever) nor apply them
    twice: it gets them back from the new leader and then follows as any node."""
    ids = (1, 2, 3)
    queue: list[Message] = []
    storages = {i: MemoryStorage() for i in ids}
    machines = {i: DurableAppliedMachine() for i in ids}

    def make(i: int, persist_later: bool) -> Node:
        return Node(
            Config(id=i, peers=ids),
            storages[i],
            machines[i],
            send=queue.append,
            rng=random.Random(i),
            on_persist_needed=(lambda: None) if persist_later else None,
        )

    nodes = {i: make(i, i == 1) for i in ids}

    def pump(limit: int = 5_000) -> int:
        n = 0
        while queue and n < limit:
            m = queue.pop(0)
            n += 1
            if nodes.get(m.to) is not None:
                nodes[m.to].step(m)
        return n

    nodes[1].campaign()
    pump()
    nodes[1].persist()
    pump()
    assert nodes[1].is_leader
    for k in range(5):
        nodes[1].propose(b"x%d" % k)  # node 1's own write is left for a persist() never made
    pump()
    assert machines[1].applied_index > storages[1].last_index  # applied what it lacks
    queue.clear()  # node 1 crashes; it restarts on what it had made durable
    nodes[1] = make(1, False)
    for _ in range(40):
        for n in nodes.values():
            n.tick()
        last_round = pump()
    assert last_round < 100  # no storm of appends and rejects
    leader = next(i for i in ids if nodes[i].is_leader)
    for k in range(3):
        nodes[leader].propose(b"y%d" % k)
        pump()
    lasts = {i: storages[i].last_index for i in ids}
    assert len(set(lasts.values())) == 1, lasts  # node 1 has the whole log again
