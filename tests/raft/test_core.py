"""The consensus core driven by scripted messages, one edge case per test.

No network and no driver: :class:`Peers` holds a few cores over MemoryStorage, persists each
ready batch the way the driver does, and lets the test decide which messages arrive.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyval.errors import NotLeader
from keyval.raft.core import Config, RaftCore, Role
from keyval.raft.memory import MemoryStorage
from keyval.raft.messages import Message, MsgType, SnapshotChunk
from keyval.raft.records import Entry, HardState, Snapshot
from keyval.raft.snapdata import MemoryBuffer

ELECTION = 10


class Peers:
    def __init__(self, n: int = 3, storages: dict[int, MemoryStorage] | None = None, **cfg):
        self.ids = tuple(range(1, n + 1))
        self.cfg = cfg
        self.storages = storages or {i: MemoryStorage() for i in self.ids}
        self.cores = {i: self.boot(i) for i in self.ids}
        self.applied: dict[int, list[Entry]] = {i: [] for i in self.ids}
        self.reads: dict[int, list] = {i: [] for i in self.ids}
        self.snapshots: dict[int, list[Snapshot]] = {i: [] for i in self.ids}

    def boot(self, i: int) -> RaftCore:
        cfg = Config(id=i, peers=self.ids, election_ticks=ELECTION, **self.cfg)
        return RaftCore(cfg, self.storages[i], random.Random(i))

    def __getitem__(self, i: int) -> RaftCore:
        return self.cores[i]

    def flush(self, i: int) -> list[Message]:
        """Carry out node ``i``'s ready batches as the driver would; the messages to send."""
        core, st, out = self.cores[i], self.storages[i], []
        while core.has_ready():
            rd = core.ready()
            if rd.snapshot is not None:
                st.save_snapshot(rd.snapshot)
                self.snapshots[i].append(rd.snapshot)
            if rd.entries:
                st.append(list(rd.entries))
            if rd.hard_state is not None:
                st.set_hard_state(rd.hard_state)
            out.extend(rd.messages)
            self.applied[i].extend(rd.committed_entries)
            self.reads[i].extend(rd.read_states)
            core.advance(rd)
        return out

    def deliver(self, msgs: list[Message]) -> list[Message]:
        """Step each message into its receiver; everything they send in return."""
        out = []
        for m in msgs:
            self.cores[m.to].step(m)
            out.extend(self.flush(m.to))
        return out

    def stabilize(self, cut: set[int] = frozenset()) -> None:
        """Exchange messages until quiet; messages to or from nodes in ``cut`` are lost."""
        msgs = [m for i in self.ids for m in self.flush(i)]
        while msgs:
            msgs = self.deliver([m for m in msgs if m.to not in cut and m.frm not in cut])

    def elect(self, i: int) -> None:
        self.cores[i].campaign()
        self.stabilize()
        assert self.cores[i].role is Role.LEADER

    def run(self, msgs: list[Message]) -> None:
        """Deliver ``msgs`` and everything they cause, until quiet."""
        while msgs:
            msgs = self.deliver(msgs)

    def win(self, i: int) -> list[Message]:
        """Node ``i`` campaigns and wins (PreVote and Vote rounds delivered); the messages it
        sends as the new leader, not yet delivered."""
        self.cores[i].campaign()
        msgs = self.flush(i)
        while self.cores[i].role is not Role.LEADER:
            msgs = self.deliver(msgs)
        return msgs + self.flush(i)

    def tick(self, i: int, times: int = 1) -> list[Message]:
        out = []
        for _ in range(times):
            self.cores[i].tick()
            out.extend(self.flush(i))
        return out


def types(msgs: list[Message]) -> list[tuple[MsgType, int]]:
    return [(m.type, m.to) for m in msgs]


# -- PreVote and CheckQuorum --------------------------------------------------------------------


def test_partitioned_node_prevotes_without_raising_any_term():
    p = Peers(3)
    p.elect(1)
    assert {c.term for c in p.cores.values()} == {1}

    # Node 3 is cut off: it times out again and again; its PreVotes go nowhere.
    out = p.tick(3, 5 * ELECTION)
    assert {m.type for m in out} == {MsgType.PRE_VOTE}
    assert all(m.term == 2 for m in out)  # it asks about term 2 ...
    assert p[3].term == 1  # ... but stays in term 1
    assert p[3].role is Role.PRE_CANDIDATE

    # Back in touch while 1 leads: followers in the leader's lease ignore the PreVotes.
    p.tick(1)  # a heartbeat round keeps the lease fresh
    p.stabilize(cut={3})
    replies = p.deliver([m for m in out[-2:]])
    assert replies == []
    assert [c.term for c in p.cores.values()] == [1, 1, 1]
    assert p[1].role is Role.LEADER


def test_prevote_rejected_for_a_stale_log_and_terms_stay():
    p = Peers(3)
    p.elect(1)
    p[1].propose(b"x")
    p.stabilize(cut={3})  # 3 misses the entry
    # Leader gone; 3 and 2 time out. 3's log is behind, so 2 refuses it even before any term.
    p.cores[1] = None  # type: ignore[assignment]
    p[2].election_elapsed = ELECTION  # out of the lease
    p[3].campaign()
    out = p.flush(3)
    assert types(out) == [(MsgType.PRE_VOTE, 1), (MsgType.PRE_VOTE, 2)]
    replies = p.deliver([m for m in out if m.to == 2])
    assert [(m.type, m.reject, m.term) for m in replies] == [(MsgType.PRE_VOTE_RESP, True, 1)]
    p.deliver(replies)
    assert (p[2].term, p[3].term) == (1, 1)


def test_check_quorum_leader_steps_down_when_no_follower_answers():
    p = Peers(3)
    p.elect(1)
    # The first check counts the followers' answers during the election.
    p.tick(1, ELECTION)
    assert p[1].role is Role.LEADER
    out = p.tick(1, ELECTION)  # then a whole election timeout with no answer
    assert p[1].role is Role.FOLLOWER
    assert p[1].term == 1  # stepping down raises no term
    assert all(m.type is MsgType.HEARTBEAT for m in out)
    with pytest.raises(NotLeader):
        p[1].propose(b"x")


def test_stale_leader_learns_the_new_term_from_an_append_response():
    p = Peers(3)
    p.elect(1)
    # 2 and 3 stop hearing from 1 for an election timeout (1's lease ends) and elect 2.
    for i in (2, 3):
        p[i].election_elapsed = ELECTION
    p[2].campaign()
    p.stabilize(cut={1})
    assert (p[2].role, p[2].term) == (Role.LEADER, 2)
    heartbeat = [m for m in p.tick(1) if m.to == 2]
    replies = p.deliver(heartbeat)
    assert [(m.type, m.term) for m in replies] == [(MsgType.APP_RESP, 2)]
    p.deliver(replies)
    assert (p[1].role, p[1].term) == (Role.FOLLOWER, 2)


# -- replication --------------------------------------------------------------------------------


def storage_with(terms: list[int], hard_term: int) -> MemoryStorage:
    st = MemoryStorage()
    st.append([Entry(i, t, b"%d" % i) for i, t in enumerate(terms, 1)])
    st.set_hard_state(HardState(term=hard_term, commit=0))
    return st


def test_reject_hints_skip_a_term_per_round_trip():
    # Leader: 1-3 in term 1, 4-6 in term 2, 7-10 in term 4. Follower: 1-3 term 1, then 4-8
    # from a deposed leader of term 3.
    leader_st = storage_with([1, 1, 1, 2, 2, 2, 4, 4, 4, 4], hard_term=4)
    follower_st = storage_with([1, 1, 1, 3, 3, 3, 3, 3], hard_term=4)
    p = Peers(2, storages={1: leader_st, 2: follower_st})
    out = p.win(1)
    assert p[1].term == 5
    # The leader probes after its last entry (11, its new empty entry, follows).
    app = [m for m in out if m.type is MsgType.APP]
    assert [(m.index, m.log_term) for m in app] == [(10, 4)]

    reject = p.deliver(app)
    # Follower: the last index <= 8 whose term is <= 4: its 8, of term 3.
    assert [(m.reject, m.index, m.hint_index, m.log_term) for m in reject] == [(True, 10, 8, 3)]
    app = p.deliver(reject)
    # Leader: its last entry of term <= 3 is 6, so it probes there.
    assert [(m.index, m.log_term) for m in app] == [(6, 2)]

    reject = p.deliver(app)
    assert [(m.hint_index, m.log_term) for m in reject] == [(3, 1)]
    app = p.deliver(reject)
    assert [(m.index, m.log_term, len(m.entries)) for m in app] == [(3, 1, 8)]
    p.run(app)
    assert p.storages[2].last_index == 11
    assert [p.storages[2].term(i) for i in range(1, 12)] == [1, 1, 1, 2, 2, 2, 4, 4, 4, 4, 5]


def test_entries_of_an_old_term_on_a_majority_are_not_committed_by_counting():
    # Figure 8: 1 and 2 hold index 2 of term 2; 1 becomes leader of term 3.
    st = {1: storage_with([1, 2], 2), 2: storage_with([1, 2], 2), 3: storage_with([1], 2)}
    p = Peers(3, storages=st)
    p.win(1)  # its appends are lost
    assert p[1].term == 3
    # Node 2 acknowledges index 2 only: a majority (1 and 2) holds it, yet it is of term 2.
    p[1].step(Message(MsgType.APP_RESP, 1, 2, 3, index=2))
    p.flush(1)
    assert p[1].log.committed == 0
    # Once the leader's own empty entry (index 3, term 3) is on a majority, both commit.
    p[1].step(Message(MsgType.APP_RESP, 1, 2, 3, index=3))
    p.flush(1)
    assert p[1].log.committed == 3
    assert [e.index for e in p.applied[1]] == [1, 2, 3]


def test_follower_commits_only_what_it_knows_matches_the_leader():
    # Follower 2 has a stale index 3 (term 2) from a deposed leader; the leader of term 3
    # commits its own index 3 and probes at index 1 without entries.
    p = Peers(3, storages={1: MemoryStorage(), 2: storage_with([1, 1, 2], 3), 3: MemoryStorage()})
    p[2].step(Message(MsgType.APP, 2, 1, 3, log_term=1, index=1, commit=3))
    out = p.flush(2)
    assert [(m.type, m.reject, m.index) for m in out] == [(MsgType.APP_RESP, False, 1)]
    # Only index 1 is known to match: the leader's commit of 3 says nothing about our 3.
    assert p[2].log.committed == 1
    assert [e.index for e in p.applied[2]] == [1]


def test_heartbeat_commit_past_the_log_commits_nothing_and_is_answered():
    # A leader sends at most what this node acknowledged; a commit past our log means we lost
    # entries (or the leader errs): commit nothing on its word, keep running, answer the beat.
    p = Peers(3, storages={1: MemoryStorage(), 2: storage_with([1, 1], 1), 3: MemoryStorage()})
    p[2].step(Message(MsgType.HEARTBEAT, 2, 1, 1, commit=9))
    out = p.flush(2)
    assert [(m.type, m.to) for m in out] == [(MsgType.HEARTBEAT_RESP, 1)]
    assert p[2].log.committed == 0 and p.applied[2] == []
    p[2].step(Message(MsgType.HEARTBEAT, 2, 1, 1, commit=2))
    p.flush(2)
    assert p[2].log.committed == 2


def test_leader_counts_its_own_entry_only_once_persisted():
    p = Peers(1)
    p[1].campaign()
    rd = p[1].ready()
    assert p[1].role is Role.LEADER
    assert [e.index for e in rd.entries] == [1]
    assert rd.committed_entries == ()  # not durable yet, so not on a quorum of disks
    p.storages[1].append(list(rd.entries))
    p[1].advance(rd)
    rd = p[1].ready()
    assert [e.index for e in rd.committed_entries] == [1]


def test_appends_are_pipelined_up_to_the_inflight_bound():
    p = Peers(2, max_inflight=3, max_msg_bytes=1)
    p.elect(1)
    for k in range(10):
        p[1].propose(b"e%d" % k)
    out = p.flush(1)
    apps = [m for m in out if m.type is MsgType.APP]
    # One entry per message (max_msg_bytes), at most three unacknowledged.
    assert [len(m.entries) for m in apps] == [1, 1, 1]
    more = p.deliver(p.deliver(apps[:1]))
    assert [m.type for m in more] == [MsgType.APP]  # one ack frees one slot
    p.run(apps[1:] + more)
    assert p[1].log.committed == p[2].log.last_index() == 11
    p.run(p.tick(1))  # followers learn the commit index from the next append or heartbeat
    assert p[2].log.committed == 11


def test_vote_is_persisted_and_kept_across_a_restart():
    p = Peers(3)
    p[2].step(Message(MsgType.VOTE, 2, 1, 5, log_term=0, index=0))
    out = p.flush(2)
    assert [(m.type, m.reject) for m in out] == [(MsgType.VOTE_RESP, False)]
    assert p.storages[2].hard_state() == HardState(term=5, vote=1, commit=0)
    p.cores[2] = p.boot(2)  # crash and restart on the same storage
    p[2].step(Message(MsgType.VOTE, 2, 3, 5, log_term=0, index=0))
    out = p.flush(2)
    assert [(m.type, m.reject) for m in out] == [(MsgType.VOTE_RESP, True)]


# -- ReadIndex ----------------------------------------------------------------------------------


def test_read_index_waits_until_the_leader_committed_in_its_term():
    p = Peers(3)
    msgs = p.win(1)  # its empty entry is on the way, not acknowledged
    assert p[1].log.committed == 0
    p[1].read_index(b"r1")
    assert p.flush(1) == []  # no heartbeat round yet: the commit index may be stale
    assert p.reads[1] == []
    # The appends arrive and are acknowledged: the empty entry commits, the read proceeds.
    acks = p.deliver([m for m in msgs if m.type is MsgType.APP])
    rounds = p.deliver(acks)
    assert p[1].log.committed == 1
    beats = [m for m in rounds if m.type is MsgType.HEARTBEAT]
    assert {m.context for m in beats} == {b"r1"}
    p.deliver(p.deliver(beats))
    assert [(r.index, r.context) for r in p.reads[1]] == [(1, b"r1")]


def test_read_index_needs_a_quorum_to_confirm_leadership():
    p = Peers(3)
    p.elect(1)
    p[1].read_index(b"r")
    beats = p.flush(1)
    assert [m.context for m in beats] == [b"r", b"r"]
    p.deliver(beats)  # the responses are lost
    assert p.reads[1] == []
    p.deliver(p.deliver(beats[:1]))  # one follower answers: with the leader, a quorum
    assert [(r.index, r.context) for r in p.reads[1]] == [(1, b"r")]


def test_read_index_forwarded_by_a_follower():
    p = Peers(3)
    p.elect(1)
    p[3].read_index(b"f")
    p.stabilize()
    assert [(r.index, r.context) for r in p.reads[3]] == [(1, b"f")]
    assert p.reads[1] == []


def test_read_index_refuses_an_empty_context_and_changes_nothing():
    p = Peers(3)
    p.elect(1)
    for node in (1, 3):
        with pytest.raises(ValueError, match="context"):
            p[node].read_index(b"")
        assert p.flush(node) == []
    assert p.reads[1] == [] and p.reads[3] == []


# -- InstallSnapshot chunks ---------------------------------------------------------------------


def chunk(offset: int, data: bytes, total: int = 300) -> Message:
    return Message(MsgType.SNAP, 2, 1, 2, chunk=SnapshotChunk(50, 2, offset, total, data))


def test_snapshot_chunks_are_idempotent_and_restored_once():
    p = Peers(3)
    data = bytes(range(100)) * 3

    def send(m: Message) -> list[tuple]:
        p[2].step(m)
        return [
            (r.type, r.reject, r.chunk.offset if r.chunk else r.index)
            for r in p.flush(2)
            if r.to == 1
        ]

    assert send(chunk(0, data[:100])) == [(MsgType.SNAP_RESP, False, 100)]
    assert send(chunk(0, data[:100])) == [(MsgType.SNAP_RESP, False, 100)]  # duplicate
    assert send(chunk(200, data[200:])) == [(MsgType.SNAP_RESP, False, 100)]  # after a gap
    assert send(chunk(100, data[100:200])) == [(MsgType.SNAP_RESP, False, 200)]
    assert send(chunk(100, data[100:200])) == [(MsgType.SNAP_RESP, False, 200)]
    assert p.snapshots[2] == []
    assert send(chunk(200, data[200:])) == [(MsgType.APP_RESP, False, 50)]
    assert p.snapshots[2] == [Snapshot(50, 2, data)]
    assert (p.storages[2].first_index, p[2].log.committed) == (51, 50)
    # Late duplicates of any chunk change nothing and tell the leader where we are.
    assert send(chunk(100, data[100:200])) == [(MsgType.APP_RESP, False, 50)]
    assert send(chunk(0, data[:100])) == [(MsgType.APP_RESP, False, 50)]
    assert len(p.snapshots[2]) == 1


def test_snapshot_chunk_after_restart_asks_to_start_over():
    p = Peers(3)
    p[2].step(chunk(0, b"a" * 100))
    p.flush(2)
    p.cores[2] = p.boot(2)  # the partial snapshot was only in memory
    p[2].step(chunk(100, b"b" * 100))
    out = p.flush(2)
    assert [(m.type, m.reject, m.chunk.offset) for m in out] == [(MsgType.SNAP_RESP, True, 0)]


def test_snapshot_matching_the_log_only_advances_commit():
    st = storage_with([1, 1, 2, 2], hard_term=2)
    p = Peers(3, storages={1: MemoryStorage(), 2: st, 3: MemoryStorage()})
    p[2].step(Message(MsgType.SNAP, 2, 1, 2, chunk=SnapshotChunk(3, 2, 0, 1, b"s")))
    out = p.flush(2)
    assert [(m.type, m.index) for m in out] == [(MsgType.APP_RESP, 3)]
    assert p.snapshots[2] == []  # the log already holds it: no restore
    assert [e.index for e in p.applied[2]] == [1, 2, 3]
    assert p.storages[2].last_index == 4


def test_leader_sends_snapshot_in_a_window_of_chunks_and_resends_on_its_own_timer():
    p = Peers(3, snapshot_chunk_bytes=10, snapshot_window=2, snapshot_retry_ticks=3)
    p.elect(1)
    for k in range(5):
        p[1].propose(b"%d" % k)
    p.stabilize(cut={3})
    st = p.storages[1]
    applied = p.applied[1][-1].index
    st.save_snapshot(Snapshot(applied, st.term(applied), b"S" * 35))
    # Follower 3 is far behind (it saw only index 1). A heartbeat round trip shows that the
    # appends sent before it are lost; resending from its match finds the entries compacted.
    beats = [m for m in p.tick(1) if m.to == 3]
    out = p.deliver(p.deliver(beats))
    assert [(m.type, m.chunk.offset) for m in out] == [(MsgType.SNAP, 0), (MsgType.SNAP, 10)]
    # Both chunks lost. No acknowledgement for 3 ticks: resend from offset 0.
    resent = [m for m in p.tick(1, 3) if m.type is MsgType.SNAP]
    assert [m.chunk.offset for m in resent] == [0, 10]
    acks = p.deliver(resent)
    more = p.deliver(acks)
    assert [m.chunk.offset for m in more if m.type is MsgType.SNAP] == [20, 30]
    p.run(more)
    assert p.snapshots[3] == [Snapshot(applied, 1, b"S" * 35)]
    p.run(p.tick(1))
    assert p[3].log.committed == p[1].log.committed


class TrackedBuffer(MemoryBuffer):
    """A receive buffer that knows whether it is still held (FileBuffer holds a file)."""

    def __init__(self, live: set) -> None:
        super().__init__()
        self.live = live
        live.add(self)

    def discard(self) -> None:
        super().discard()
        self.live.discard(self)

    def finish(self) -> bytes:
        self.live.discard(self)
        return super().finish()


def tracked_follower(p: Peers, live: set) -> None:
    cfg = Config(id=2, peers=p.ids, election_ticks=ELECTION)
    buffers = lambda: TrackedBuffer(live)  # noqa: E731
    p.cores[2] = RaftCore(cfg, p.storages[2], random.Random(2), snapshot_buffer=buffers)


def test_a_partly_received_snapshot_is_let_go_once_a_new_term_begins():
    p, live = Peers(3), set()
    tracked_follower(p, live)
    p[2].step(chunk(0, b"a" * 100))
    p.flush(2)
    assert len(live) == 1
    p[2].step(chunk(100, b"b" * 250))  # past the total: no leader sends it; dropped as if lost
    assert p.flush(2) == [] and len(p[2]._snap_receipt.data) == 100
    p[2].step(Message(MsgType.HEARTBEAT, 2, 3, 3))  # another leader, a later term
    p.flush(2)
    assert live == set() and p[2]._snap_receipt is None


def test_a_partly_received_snapshot_is_let_go_once_the_log_commits_past_it():
    st = storage_with([2] * 60, hard_term=2)
    p, live = Peers(3, storages={1: MemoryStorage(), 2: st, 3: MemoryStorage()}), set()
    tracked_follower(p, live)
    p[2].step(chunk(0, b"a" * 100))  # the snapshot at index 50, from leader 1 in term 2
    p.flush(2)
    assert len(live) == 1
    p[2].step(Message(MsgType.HEARTBEAT, 2, 1, 2, commit=49))
    p.flush(2)
    assert len(live) == 1  # still needed: it covers more than the log has committed
    p[2].step(Message(MsgType.HEARTBEAT, 2, 1, 2, commit=55))
    p.flush(2)
    assert live == set() and p[2]._snap_receipt is None


# -- messages no honest peer sends ----------------------------------------------------------------


def test_an_append_response_past_the_leaders_log_is_dropped():
    # Nothing authenticates a peer: anything that reaches the port can send a HELLO with a
    # peer's id and then any Raft message. One acknowledging an index past the leader's log
    # set that peer's next index past it, and the next append to it raised: the leader
    # process stopped, and the same frame to the next leader stopped that one too.
    p = Peers(3)
    p.elect(1)
    p[1].propose(b"a")
    p.stabilize()
    last = p[1].log.last_index()
    for index in (last + 1, 10**6):
        p[1].step(Message(MsgType.APP_RESP, 1, 2, p[1].term, index=index))
        assert p.flush(1) == []
        assert (p[1].prs[2].match, p[1].prs[2].next) == (last, last + 1)
    p[1].propose(b"b")  # and replication to 2 goes on
    p.stabilize()
    assert p.applied[1][-1].data == b"b"
    assert p[2].log.last_index() == last + 1


@st.composite
def hostile_messages(draw, core, target: int):
    """Messages that decode (every field in range) but that no honest peer need send."""
    last, term = core.log.last_index(), core.term
    index = st.sampled_from([0, 1, max(0, last - 1), last, last + 1, last + 5, 10**6])
    kind = draw(st.sampled_from(list(MsgType)))
    at = draw(index)
    entry_term = draw(st.sampled_from([1, term, term + 1]))
    entries = tuple(Entry(at + 1 + j, entry_term, b"e") for j in range(draw(st.integers(0, 3))))
    chunk = None
    if kind in (MsgType.SNAP, MsgType.SNAP_RESP):
        chunk = SnapshotChunk(
            draw(index),
            draw(st.sampled_from([0, 1, term])),
            draw(st.integers(0, 400)),
            draw(st.sampled_from([0, 300, 400])),
            bytes(draw(st.integers(0, 120))),
        )
    return Message(
        kind,
        to=target,
        frm=draw(st.sampled_from([i for i in (1, 2, 3) if i != target] * 3 + [99])),
        term=draw(st.sampled_from([max(0, term - 1), term, term, term + 1])),
        log_term=draw(st.sampled_from([0, 1, term, term + 1])),
        index=at,
        entries=entries,
        commit=draw(index),
        reject=draw(st.booleans()),
        hint_index=draw(index),
        chunk=chunk,
        context=draw(st.sampled_from([b"", b"ctx", bytes(8)])),
    )


@settings(max_examples=500, deadline=None)
@given(st.data(), st.sampled_from([1, 2, 3]), st.integers(0, 6), st.booleans())
def test_no_message_that_decodes_makes_a_core_raise(data, target, proposals, lagging):
    # Leader, follower or a follower left behind, each handed a few messages built to be
    # wrong (indexes past the log, terms from the past and future, stray chunks and
    # responses, unknown senders): each is handled or dropped, never an exception, which
    # the node driver treats as a storage failure and stops the node for.
    p = Peers(3)
    p.elect(1)
    for k in range(proposals):
        p[1].propose(b"x%d" % k)
    p.stabilize(cut={3} if lagging else set())
    core = p[target]
    for _ in range(data.draw(st.integers(1, 4))):
        core.step(data.draw(hostile_messages(core, target)))
        p.flush(target)


# -- heartbeats as a check on the append pipeline -----------------------------------------------


def _replicating_leader() -> tuple[Peers, int]:
    p = Peers(3)
    p.elect(1)
    p.stabilize()
    last = p[1].log.last_index()
    assert p[1].prs[2].match == last
    return p, last


def _to(msgs: list[Message], node: int, type_: MsgType) -> list[Message]:
    return [m for m in msgs if m.to == node and m.type is type_]


def test_a_late_answer_to_an_older_heartbeat_keeps_the_pipeline():
    # The answer to a heartbeat sent before the latest append, arriving after a newer
    # heartbeat went out, is no sign that append was lost: it was not yet due.
    p, last = _replicating_leader()
    first_beat = _to(p.tick(1), 2, MsgType.HEARTBEAT)
    p[1].propose(b"x")
    append = _to(p.flush(1), 2, MsgType.APP)
    assert append  # on its way, not delivered yet
    answer = _to(p.deliver(first_beat), 1, MsgType.HEARTBEAT_RESP)
    p.tick(1)  # a newer heartbeat, sent after the append
    p[1].step(answer[0])
    assert _to(p.flush(1), 2, MsgType.APP) == []  # nothing resent
    assert p[1].prs[2].state.name == "REPLICATE"
    p.run(append)
    assert p[1].prs[2].match == last + 1


def test_a_heartbeat_answered_while_an_earlier_append_is_unacknowledged_resends_it():
    # The append (or its ack) was lost: the heartbeat sent after it made the round trip.
    p, last = _replicating_leader()
    p[1].propose(b"x")
    assert _to(p.flush(1), 2, MsgType.APP)  # lost
    beat = _to(p.tick(1), 2, MsgType.HEARTBEAT)
    answer = _to(p.deliver(beat), 1, MsgType.HEARTBEAT_RESP)
    p[1].step(answer[0])
    resent = _to(p.flush(1), 2, MsgType.APP)
    assert [e.index for m in resent for e in m.entries] == [last + 1]
