"""A leader paces the followers a quorum does not need (keyval.raft.pacing).

Unit level: which follower gets a message at once, that held messages go out on flush (and
before anything newer to the same follower) in the order they were made, that only appends
and heartbeats are held, and only by a leader. Node level: three real nodes with
``pace_followers`` whose messages the test delivers; the paced follower gets every entry on
the next tick, and when the immediate follower stops answering the other one takes its place
and entries keep committing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from keyval.raft.core import Config, Role
from keyval.raft.memory import MemoryStorage
from keyval.raft.messages import Message, MsgType
from keyval.raft.node import Node
from keyval.raft.pacing import QuorumPacer, merge_appends
from keyval.raft.records import Entry
from keyval.raft.simnet import NullStateMachine, SimNet

IDS = (1, 2, 3)


@dataclass
class _Pr:
    match: int


@dataclass
class _Core:
    """What the pacer reads of a core: its id, role, quorum and the followers' matches."""

    id: int = 1
    role: Role = Role.LEADER
    quorum: int = 2
    prs: dict = field(default_factory=lambda: {1: _Pr(10), 2: _Pr(5), 3: _Pr(5)})


def _app(to: int, index: int, mtype: MsgType = MsgType.APP) -> Message:
    return Message(mtype, to, 1, 1, index=index)


def test_only_the_quorums_follower_gets_it_at_once():
    core, sent = _Core(), []
    pacer = QuorumPacer(lambda: core, sent.append)
    pacer.send(_app(2, 1))  # equal matches: the lower id is the immediate one
    pacer.send(_app(3, 1))
    pacer.send(_app(3, 2, MsgType.HEARTBEAT))
    assert sent == [_app(2, 1)]
    assert pacer.held == 2
    pacer.flush()
    assert sent == [_app(2, 1), _app(3, 1), _app(3, 2, MsgType.HEARTBEAT)]
    assert pacer.held == 0


def test_a_follower_that_moves_ahead_gets_what_was_held_first():
    core, sent = _Core(), []
    pacer = QuorumPacer(lambda: core, sent.append)
    pacer.send(_app(3, 1))
    pacer.send(_app(3, 2))
    core.prs[3].match = 7  # follower 3 is now the most up to date: immediate
    pacer.send(_app(3, 3))
    pacer.send(_app(2, 3))  # and follower 2 is paced
    assert sent == [_app(3, 1), _app(3, 2), _app(3, 3)]
    assert pacer.held == 1


def test_other_messages_go_at_once_after_what_is_held():
    core, sent = _Core(), []
    pacer = QuorumPacer(lambda: core, sent.append)
    pacer.send(_app(3, 1))
    answer = Message(MsgType.READ_INDEX_RESP, 3, 1, 1, index=1, context=b"r1")
    pacer.send(answer)
    round_ = Message(MsgType.HEARTBEAT, 3, 1, 1, context=b"r2")  # a read waits for its acks
    pacer.send(round_)
    assert sent == [_app(3, 1), answer, round_]


def test_a_node_that_does_not_lead_holds_nothing():
    core, sent = _Core(role=Role.FOLLOWER), []
    pacer = QuorumPacer(lambda: core, sent.append)
    pacer.send(_app(3, 1))
    assert sent == [_app(3, 1)]


class PacedCluster:
    """Three nodes with ``pace_followers``; the test delivers what they send."""

    def __init__(self, max_msg_bytes: int = 64 * 1024) -> None:
        self.storages = {i: MemoryStorage() for i in IDS}
        self.outbox: list[Message] = []
        self.down: set[int] = set()
        self.nodes = {
            i: Node(
                Config(id=i, peers=IDS, max_msg_bytes=max_msg_bytes),
                self.storages[i],
                NullStateMachine(),
                send=self.outbox.append,
                rng=random.Random(i),
                pace_followers=True,
            )
            for i in IDS
        }
        self.leader = self.nodes[1]
        self.leader.campaign()
        self.deliver_all()
        assert self.leader.is_leader
        self.tick_leader()  # the paced follower gets the no-op entry

    def deliver_all(self) -> None:
        while self.outbox:
            m = self.outbox.pop(0)
            if m.to not in self.down and m.frm not in self.down:
                self.nodes[m.to].step(m)

    def tick_leader(self) -> None:
        self.leader.tick()
        self.deliver_all()


def test_the_paced_follower_gets_every_entry_on_the_next_tick():
    c = PacedCluster()
    indexes = [c.leader.propose(b"put %d" % k) for k in range(5)]
    c.deliver_all()
    assert c.leader.commit_index == indexes[-1]  # the leader and one follower: committed
    behind = [i for i in (2, 3) if c.storages[i].last_index < indexes[-1]]
    assert len(behind) == 1  # the other follower has not been sent them yet
    c.tick_leader()
    assert all(c.storages[i].last_index == indexes[-1] for i in IDS)


def test_commits_go_on_when_the_immediate_follower_stops_answering():
    c = PacedCluster()
    c.leader.propose(b"first")
    c.deliver_all()
    immediate = next(i for i in (2, 3) if c.storages[i].last_index == c.leader.commit_index)
    other = 5 - immediate
    c.down.add(immediate)
    index = c.leader.propose(b"second")
    c.deliver_all()
    assert c.leader.commit_index < index  # its quorum's follower is gone
    for _ in range(3):  # within a few ticks the other follower takes its place
        c.tick_leader()
        if c.leader.commit_index >= index:
            break
    assert c.leader.commit_index >= index
    later = c.leader.propose(b"third")
    c.deliver_all()  # and is now sent to at once: committed without a tick
    assert c.leader.commit_index == later
    assert c.storages[other].last_index == later


def test_a_paced_follower_acknowledges_a_ticks_worth_once():
    """The appends of one tick, stepped together (as one read brings them), are written with
    one fsync and acknowledged with one message: the highest. (Appends too big to merge, so
    that the tick's worth is several.)"""
    c = PacedCluster(max_msg_bytes=len(b"put 0"))
    last = 0
    for k in range(5):
        last = c.leader.propose(b"put %d" % k)
    c.deliver_all()
    paced = next(i for i in (2, 3) if c.storages[i].last_index < last)
    c.leader.tick()
    batch = [m for m in c.outbox if m.to == paced]
    assert len([m for m in batch if m.type is MsgType.APP]) > 1
    c.outbox[:] = [m for m in c.outbox if m.to != paced]
    c.nodes[paced].step_many(batch)
    acks = [m for m in c.outbox if m.frm == paced and m.type is MsgType.APP_RESP]
    assert [(a.index, a.reject) for a in acks] == [(last, False)]
    c.deliver_all()
    assert c.storages[paced].last_index == last


def test_a_ticks_worth_of_appends_goes_out_as_one():
    c = PacedCluster()
    last = 0
    for k in range(5):
        last = c.leader.propose(b"put %d" % k)
    c.deliver_all()
    paced = next(i for i in (2, 3) if c.storages[i].last_index < last)
    first = c.storages[paced].last_index + 1
    c.leader.tick()
    apps = [m for m in c.outbox if m.to == paced and m.type is MsgType.APP]
    assert len(apps) == 1
    assert [e.index for e in apps[0].entries] == list(range(first, last + 1))
    c.deliver_all()
    assert c.storages[paced].last_index == last
    assert c.storages[paced].entries(first, last + 1) == c.storages[1].entries(first, last + 1)


def _entry_app(to, prev, prev_term, entries, term=2, commit=0):
    """An append after (``prev``, ``prev_term``) of ``entries`` ((index, term, data) each)."""
    return Message(
        MsgType.APP,
        to,
        1,
        term,
        log_term=prev_term,
        index=prev,
        entries=tuple(Entry(i, t, d) for i, t, d in entries),
        commit=commit,
    )


def test_merge_appends_only_merges_appends_that_continue_each_other():
    a = _entry_app(3, 4, 1, [(5, 2, b"a")], commit=4)
    b = _entry_app(3, 5, 2, [(6, 2, b"b"), (7, 2, b"c")], commit=5)
    c = _entry_app(3, 7, 2, [(8, 2, b"d")], commit=6)
    merged = _entry_app(3, 4, 1, [(5, 2, b"a"), (6, 2, b"b"), (7, 2, b"c"), (8, 2, b"d")], commit=6)
    assert merge_appends([a, b, c], 64) == [merged]
    heartbeat = Message(MsgType.HEARTBEAT, 3, 1, 2, commit=5)
    assert merge_appends([a, heartbeat, b], 64) == [a, heartbeat, b]  # order kept
    gap = _entry_app(3, 6, 2, [(7, 2, b"c")])  # does not continue a (a probe's retry)
    assert merge_appends([a, gap], 64) == [a, gap]
    newer = _entry_app(3, 5, 2, [(6, 3, b"b")], term=3)  # another term
    assert merge_appends([a, newer], 64) == [a, newer]
    probe = _entry_app(3, 5, 2, [])
    assert merge_appends([probe, b], 64) == [probe, b]
    # At most max_bytes of entry data per append: the rest starts a new one.
    assert merge_appends([a, b, c], 3) == [
        _entry_app(3, 4, 1, [(5, 2, b"a"), (6, 2, b"b"), (7, 2, b"c")], commit=5),
        c,
    ]
    assert merge_appends([a, b, c], 1) == [a, b, c]


def test_coalesced_acks_keep_rejects_and_other_terms():
    from keyval.raft.node import _coalesce_acks

    def ack(index, term=2, reject=False, to=1):
        return Message(MsgType.APP_RESP, to, 3, term, index=index, reject=reject)

    heartbeat = Message(MsgType.HEARTBEAT_RESP, 1, 3, 2, context=b"r")
    msgs = (ack(5), ack(7), ack(4, reject=True), heartbeat, ack(6), ack(3, term=1))
    assert list(_coalesce_acks(msgs)) == [ack(7), ack(4, reject=True), heartbeat, ack(3, term=1)]
    single = (ack(5),)
    assert _coalesce_acks(single) is single


def test_a_nudge_sends_what_is_held_when_the_quorum_is_late():
    """Entries still uncommitted from one nudge to the next: the paced follower gets them at
    once (it stands in for the late one) instead of on the next tick; entries that commit in
    time are not flushed by a nudge."""
    c = PacedCluster()
    first = c.leader.propose(b"in time")
    c.deliver_all()
    c.leader.nudge()
    c.leader.nudge()
    assert c.leader.commit_index == first
    paced = next(i for i in (2, 3) if c.storages[i].last_index < first)
    c.down.add(5 - paced)  # the immediate follower stops answering
    index = c.leader.propose(b"late")
    c.deliver_all()
    c.leader.nudge()  # marks the uncommitted entries
    c.deliver_all()
    assert c.leader.commit_index < index
    c.leader.nudge()  # still uncommitted: flush
    c.deliver_all()
    assert c.leader.commit_index == index
    assert c.storages[paced].last_index == index


# -- compaction with a paced follower -------------------------------------------------------

MAX_STATE = 100_000  # bytes: about 800 of these entries


def _loaded_net(seed: int, down: int | None = None) -> tuple[SimNet, list[int]]:
    """A paced 3-node cluster taking 20 proposals every 5 ms for 5 simulated seconds: far
    more appends per tick than a follower's window, so the paced follower is often a tick and
    a full window behind. ``down``: which follower (1 = the first that is not the leader) is
    crashed throughout. Returns the net and the leader's Raft state size after each step."""
    net = SimNet(3, seed, pace_followers=True, max_raft_state=MAX_STATE)
    assert net.run_until(lambda: net.leader() is not None, 5000)
    leader = net.leader()
    if down is not None:
        net.crash([i for i in net.ids if i != leader][down - 1])
    sizes = []
    for _ in range(1000):
        assert net.leader() == leader
        for _ in range(20):
            net.propose(leader, b"x" * 100)
        net.run_for(5)
        sizes.append(net.nodes[leader].raft_state_size)
    return net, sizes


def test_a_leader_does_not_compact_away_what_an_answering_follower_still_needs():
    # Seed 1 sent 22 snapshots here when compaction ignored the followers.
    net, sizes = _loaded_net(seed=1)
    leader = net.leader()
    assert net.storages[leader].first_index > 15_000  # compacted about 20 times
    assert max(sizes) <= 2 * MAX_STATE + 5_000  # + one step's entries
    assert net.sent_by_type[MsgType.SNAP] == 0


def test_a_follower_that_does_not_answer_holds_compaction_back_only_so_far():
    net, sizes = _loaded_net(seed=1, down=1)
    leader = net.leader()
    assert net.storages[leader].first_index > 15_000
    assert max(sizes) <= 2 * MAX_STATE + 5_000
    # The crashed follower is past the log's start now: it catches up from a snapshot.
    silent = next(i for i in net.ids if net.nodes[i] is None)
    net.restart(silent)
    assert net.run_until(lambda: len(set(net.applied())) == 1, 10_000)
    assert net.sent_by_type[MsgType.SNAP] > 0
