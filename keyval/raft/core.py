"""The Raft consensus algorithm as a pure, deterministic state machine.

:class:`RaftCore` does no I/O, keeps no clock and starts no thread. Its inputs are
:meth:`~RaftCore.tick` (one unit of logical time), :meth:`~RaftCore.step` (a message from a
peer), :meth:`~RaftCore.propose` and :meth:`~RaftCore.read_index`; its only output is the
:class:`Ready` batch from :meth:`~RaftCore.ready`, which the driver must carry out in this
order and then acknowledge with :meth:`~RaftCore.advance`:

1. persist ``snapshot``, then ``entries`` (one append; it replaces any suffix from the first
   entry on), then ``hard_state``;
2. send ``messages`` (they may promise what step 1 persisted: votes, acknowledged entries);
3. restore ``snapshot`` into the state machine, apply ``committed_entries`` in order, serve
   ``read_states`` once the applied index reaches theirs.

The durable log is read through the storage interface of the SPEC (``first_index``,
``last_index``, ``term``, ``entries``, ``hard_state``, ``snapshot``); see
:mod:`keyval.raft.log`. All randomness (the election timeout) comes from the ``random.Random``
passed in, so a run is a function of its inputs and seed.

Implemented: leader election with randomized timeouts, PreVote and CheckQuorum (a node back
from a partition cannot depose a healthy leader), log replication with conflict-term hints in
rejects, batching and pipelining with a bound on messages in flight, a probe state for
followers whose log position is unknown, the current-term commit rule (Raft paper Figure 8),
InstallSnapshot in acknowledged chunks with its own retry timer, and ReadIndex reads.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass

from keyval.errors import NotLeader
from keyval.raft.log import Compacted, RaftLog
from keyval.raft.messages import Message, MsgType, SnapshotChunk
from keyval.raft.progress import Progress, ProgressState
from keyval.raft.readindex import ReadOnly, ReadRequest, ReadState
from keyval.raft.records import Entry, HardState, Snapshot
from keyval.raft.snapdata import MemoryBuffer, SnapshotBuffer


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class Config:
    """Tuning of one node. Times are in ticks; the driver decides how long a tick is."""

    id: int
    peers: tuple[int, ...]  # every voting member, this node included
    election_ticks: int = 10  # followers wait a random time in [this, 2 * this) before voting
    heartbeat_ticks: int = 1
    max_msg_bytes: int = 64 * 1024  # entry data per append (at least one entry is sent)
    max_inflight: int = 64  # unacknowledged appends per follower in REPLICATE state
    pre_vote: bool = True
    check_quorum: bool = True
    snapshot_chunk_bytes: int = 64 * 1024
    snapshot_window: int = 4  # unacknowledged chunks in flight per follower
    snapshot_retry_ticks: int = 5  # resend from the last acknowledged offset after this


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state the driver may want to show or act on; never persisted."""

    leader: int
    role: Role
    term: int


@dataclass(frozen=True, slots=True)
class Ready:
    """One batch of work for the driver (see the module docstring for the order)."""

    soft_state: SoftState
    hard_state: HardState | None = None  # None: unchanged since the last batch
    entries: tuple[Entry, ...] = ()
    snapshot: Snapshot | None = None
    committed_entries: tuple[Entry, ...] = ()
    messages: tuple[Message, ...] = ()
    read_states: tuple[ReadState, ...] = ()


@dataclass(slots=True)
class _SnapshotReceipt:
    """A snapshot a follower is receiving in chunks."""

    index: int
    term: int
    total: int
    data: SnapshotBuffer


class RaftCore:
    """One Raft peer's consensus state. Not thread-safe; the driver serialises every call."""

    def __init__(
        self,
        config: Config,
        storage,
        rng: random.Random,
        applied: int = 0,
        snapshot_buffer: Callable[[], SnapshotBuffer] = MemoryBuffer,
    ) -> None:
        """``storage`` holds this node's durable state (read only here); ``applied`` is the
        index the driver's state machine has applied already (at least the snapshot's);
        ``snapshot_buffer()`` makes what a snapshot sent by the leader is gathered in (the
        driver may give one backed by a file, so that no snapshot needs to fit in memory)."""
        if config.id not in config.peers:
            raise ValueError(f"node {config.id} is not among the peers {config.peers}")
        self.config = config
        self.id = config.id
        self.peers = tuple(sorted(config.peers))
        self.quorum = len(self.peers) // 2 + 1
        self.rng = rng
        self._snapshot_buffer = snapshot_buffer
        self.log = RaftLog(storage, applied)
        hs = storage.hard_state()
        self.term = hs.term
        self.vote = hs.vote
        self.lead = 0
        self.role = Role.FOLLOWER
        self.prs: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}
        self.msgs: list[Message] = []
        self.read_states: list[ReadState] = []
        self.read_only = ReadOnly()
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = config.election_ticks
        self._snap_receipt: _SnapshotReceipt | None = None
        # Proposals since the last ready batch: appends go out once per batch, not per entry.
        self._append_pending = False
        self._prev_hard_state = hs
        self._prev_soft_state = SoftState(0, Role.FOLLOWER, hs.term)
        self._become_follower(self.term, 0)

    # -- inputs -------------------------------------------------------------------------------

    def tick(self) -> None:
        """One unit of logical time: election timeout, heartbeats, CheckQuorum, snapshot resend."""
        if self.role is Role.LEADER:
            self._tick_leader()
            return
        self.election_elapsed += 1
        if self.election_elapsed >= self.randomized_timeout:
            self.election_elapsed = 0
            self.campaign()

    def campaign(self) -> None:
        """Start an election now (a PreVote round first when enabled)."""
        if self.role is Role.LEADER:
            return
        self._campaign(pre=self.config.pre_vote)

    def propose(self, data: bytes) -> int:
        """Append ``data`` to the leader's log; returns its index. The entry may still be lost
        (if leadership is); it is committed once it shows up in ``committed_entries``.
        Raises :class:`~keyval.errors.NotLeader` on any other node."""
        if self.role is not Role.LEADER:
            raise NotLeader(leader_hint=str(self.lead) if self.lead else None)
        index = self.log.last_index() + 1
        self.log.append([Entry(index, self.term, data)])
        self._append_pending = True
        return index

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read identified by ``context`` (unique per request). A
        :class:`ReadState` with that context comes out in a later ready batch, unless
        leadership changes first (then nothing does: the caller retries after a timeout).
        Raises :class:`~keyval.errors.NotLeader` when no leader is known, and ValueError for
        an empty ``context`` (a heartbeat with none is not a read round, so it would wait
        for a later read to be answered)."""
        if not context:
            raise ValueError("a read's context must not be empty")
        if self.role is Role.LEADER:
            self._leader_read(context, self.id)
        elif self.lead:
            self._send(MsgType.READ_INDEX, self.lead, context=context)
        else:
            raise NotLeader()

    def step(self, m: Message) -> None:
        """Process one message from a peer. Messages for another node are a bug."""
        if m.to != self.id:
            raise ValueError(f"message for {m.to} stepped into node {self.id}")
        if m.term > self.term:
            if m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
                # CheckQuorum's lease: having heard from a live leader within the minimum
                # election timeout, ignore campaigns (a node back from a partition must not
                # depose a leader that a quorum still follows).
                in_lease = (
                    self.config.check_quorum
                    and self.lead != 0
                    and self.election_elapsed < self.config.election_ticks
                )
                if in_lease:
                    return
            if m.type is MsgType.PRE_VOTE or (m.type is MsgType.PRE_VOTE_RESP and not m.reject):
                pass  # a PreVote round changes nobody's term
            elif m.type in (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP):
                self._become_follower(m.term, m.frm)
            else:
                self._become_follower(m.term, 0)
        elif m.term < self.term:
            if m.type in (MsgType.APP, MsgType.HEARTBEAT):
                # A stale leader (e.g. back from a partition) learns our term from this and
                # steps down; without it, with PreVote, it could stay leader of a stale term.
                self._send(MsgType.APP_RESP, m.frm)
            elif m.type is MsgType.PRE_VOTE:
                self._send(MsgType.PRE_VOTE_RESP, m.frm, reject=True)
            return

        if m.type in (MsgType.VOTE, MsgType.PRE_VOTE):
            self._handle_vote_request(m)
        elif self.role is Role.LEADER:
            self._step_leader(m)
        elif self.role is Role.FOLLOWER:
            self._step_follower(m)
        else:
            self._step_candidate(m)

    # -- the ready batch ----------------------------------------------------------------------

    def has_ready(self) -> bool:
        self._flush_appends()
        hs, ss = self._prev_hard_state, self._prev_soft_state
        # Field by field rather than comparing new HardState/SoftState values: the driver
        # asks this several times per message, on the path of every write.
        return bool(
            self.msgs
            or self.read_states
            or self.log.has_unstable()
            or self.log.pending_snapshot is not None
            or self.log.has_next_committed()
            or self.term != hs.term
            or self.vote != hs.vote
            or self.log.committed != hs.commit
            or self.lead != ss.leader
            or self.role is not ss.role
            or self.term != ss.term
        )

    def ready(self) -> Ready:
        """The work to do now; call :meth:`advance` with it once done, before the next."""
        self._flush_appends()
        hs = self._hard_state()
        rd = Ready(
            soft_state=self._soft_state(),
            hard_state=hs if hs != self._prev_hard_state else None,
            entries=tuple(self.log.unstable_entries()),
            snapshot=self.log.pending_snapshot,
            committed_entries=tuple(self.log.next_committed()),
            messages=tuple(self.msgs),
            read_states=tuple(self.read_states),
        )
        self.msgs = []
        self.read_states = []
        self._prev_soft_state = rd.soft_state
        return rd

    def advance(self, rd: Ready) -> None:
        """The driver persisted, sent and applied everything in ``rd``."""
        if rd.hard_state is not None:
            self._prev_hard_state = rd.hard_state
        if rd.snapshot is not None:
            self.log.stable_snapshot_to(rd.snapshot.index)
        if rd.entries:
            last = rd.entries[-1]
            self.log.stable_to(last.index, last.term)
        if rd.committed_entries:
            self.log.applied_to(rd.committed_entries[-1].index)
        # The leader counts its own log towards a quorum only once it is durable, so a
        # committed entry is always on a quorum of disks.
        leader = self.role is Role.LEADER
        if leader and rd.entries and self.prs[self.id].maybe_update(self.log.stable_last()):
            self._maybe_commit()

    # -- state transitions --------------------------------------------------------------------

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = 0
            self._drop_snapshot_receipt()  # a new term's leader resends what it wants
        self.lead = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = self.rng.randrange(
            self.config.election_ticks, 2 * self.config.election_ticks
        )
        self.votes = {}
        self.read_only.reset()
        last = self.log.last_index()
        self.prs = {p: Progress(last + 1, self.config.max_inflight) for p in self.peers}
        self.prs[self.id].match = self.log.stable_last()
        self._append_pending = False

    def _become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.lead = lead

    def _campaign(self, pre: bool) -> None:
        if pre:
            # Keep term and vote: only a won PreVote round may raise the term.
            self.role = Role.PRE_CANDIDATE
            self.votes = {}
            self.lead = 0
            vote_term, mtype = self.term + 1, MsgType.PRE_VOTE
        else:
            self._reset(self.term + 1)
            self.role = Role.CANDIDATE
            self.vote = self.id
            vote_term, mtype = self.term, MsgType.VOTE
        if self._poll(self.id, True) == "won":
            self._won_election(pre)
            return
        last, last_term = self.log.last_index(), self.log.last_term()
        for p in self.peers:
            if p != self.id:
                self.msgs.append(
                    Message(mtype, p, self.id, vote_term, log_term=last_term, index=last)
                )

    def _won_election(self, pre: bool) -> None:
        if pre:
            self._campaign(pre=False)
        else:
            self._become_leader()

    def _poll(self, voter: int, granted: bool) -> str:
        self.votes.setdefault(voter, granted)
        yes = sum(1 for v in self.votes.values() if v)
        if yes >= self.quorum:
            return "won"
        if len(self.votes) - yes > len(self.peers) - self.quorum:
            return "lost"
        return "pending"

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = Role.LEADER
        self.lead = self.id
        self.prs[self.id].become_replicate()
        # An empty entry of the new term: only entries of the current term are committed by
        # counting replicas (Figure 8), and it commits everything before it.
        self.log.append([Entry(self.log.last_index() + 1, self.term)])
        self._append_pending = True
        self._flush_appends()

    # -- votes --------------------------------------------------------------------------------

    def _handle_vote_request(self, m: Message) -> None:
        pre = m.type is MsgType.PRE_VOTE
        can_vote = (
            self.vote == m.frm
            or (self.vote == 0 and self.lead == 0)
            or (pre and m.term > self.term)
        )
        resp = MsgType.PRE_VOTE_RESP if pre else MsgType.VOTE_RESP
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            # A granted PreVote carries the term asked about, so the pre-candidate counts it.
            self.msgs.append(Message(resp, m.frm, self.id, m.term))
            if not pre:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(resp, m.frm, reject=True)

    def _step_candidate(self, m: Message) -> None:
        if m.type in (MsgType.APP, MsgType.HEARTBEAT, MsgType.SNAP):
            self._become_follower(self.term, m.frm)
            self._step_follower(m)
            return
        pre = self.role is Role.PRE_CANDIDATE
        want = MsgType.PRE_VOTE_RESP if pre else MsgType.VOTE_RESP
        if m.type is not want:
            return
        result = self._poll(m.frm, not m.reject)
        if result == "won":
            self._won_election(pre)
        elif result == "lost":
            self._become_follower(self.term, 0)

    # -- follower -----------------------------------------------------------------------------

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t is MsgType.APP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_append(m)
            self._drop_stale_receipt()
        elif t is MsgType.HEARTBEAT:
            self.election_elapsed = 0
            self.lead = m.frm
            # The leader sends at most what this node acknowledged; more means this node
            # lost entries it had made durable (or the leader is wrong): commit nothing on
            # its word, rather than stop (committing up to our last entry would be unsafe).
            if m.commit <= self.log.last_index():
                self.log.commit_to(m.commit)
                self._drop_stale_receipt()
            self._send(MsgType.HEARTBEAT_RESP, m.frm, index=m.index, context=m.context)
        elif t is MsgType.SNAP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_snapshot_chunk(m)
        elif t is MsgType.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context))

    def _handle_append(self, m: Message) -> None:
        log = self.log
        if m.index < log.committed:
            self._send(MsgType.APP_RESP, m.frm, index=log.committed)
            return
        last = log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last is not None:
            self._send(MsgType.APP_RESP, m.frm, index=last)
            return
        hint_index, hint_term = log.find_conflict_by_term(
            min(m.index, log.last_index()), m.log_term
        )
        self._send(
            MsgType.APP_RESP,
            m.frm,
            index=m.index,
            reject=True,
            hint_index=hint_index,
            log_term=hint_term,
        )

    def _handle_snapshot_chunk(self, m: Message) -> None:
        c = m.chunk
        if c is None:
            return
        if c.index <= self.log.committed:
            # Already have it, or something newer: a duplicate or late chunk. Report where we
            # are so the leader leaves the snapshot state.
            self._drop_stale_receipt()
            self._send(MsgType.APP_RESP, m.frm, index=self.log.committed)
            return
        rc = self._snap_receipt
        same = rc is not None and (rc.index, rc.term) == (c.index, c.term)
        if c.offset + len(c.data) > c.total or (same and rc.total != c.total):
            return  # no leader sends this (the decoder refuses it): dropped, as if lost
        if not same:
            if c.offset != 0:
                # The start of this snapshot was received by a previous incarnation of this
                # node (or a lost chunk): ask for it from the beginning.
                self._send(
                    MsgType.SNAP_RESP,
                    m.frm,
                    reject=True,
                    chunk=SnapshotChunk(c.index, c.term, 0, c.total),
                )
                return
            self._drop_snapshot_receipt()
            rc = self._snap_receipt = _SnapshotReceipt(
                c.index, c.term, c.total, self._snapshot_buffer()
            )
        if c.offset == len(rc.data):
            rc.data.append(c.data)
        # A chunk before the received offset is a duplicate; one after it follows a lost chunk
        # and is dropped: the leader resends from the offset we acknowledge.
        if len(rc.data) < rc.total:
            self._send(
                MsgType.SNAP_RESP,
                m.frm,
                chunk=SnapshotChunk(c.index, c.term, len(rc.data), c.total),
            )
            return
        self._snap_receipt = None
        snap = Snapshot(rc.index, rc.term, rc.data.finish())
        if self.log.match_term(snap.index, snap.term):
            # Our log already has the snapshot's last entry, so it holds everything the
            # snapshot does: commit up to it rather than throw the log away.
            self.log.commit_to(snap.index)
            self._send(MsgType.APP_RESP, m.frm, index=self.log.committed)
        else:
            self.log.restore(snap)
            self._send(MsgType.APP_RESP, m.frm, index=self.log.last_index())

    def _drop_stale_receipt(self) -> None:
        """Forgets a snapshot being received once the log has committed past it."""
        rc = self._snap_receipt
        if rc is not None and rc.index <= self.log.committed:
            self._drop_snapshot_receipt()

    def _drop_snapshot_receipt(self) -> None:
        """Forgets a snapshot being received (and frees its buffer: a file, perhaps)."""
        if self._snap_receipt is not None:
            self._snap_receipt.data.discard()
            self._snap_receipt = None

    # -- leader -------------------------------------------------------------------------------

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.config.election_ticks:
            self.election_elapsed = 0
            if self.config.check_quorum:
                active = sum(1 for p, pr in self.prs.items() if p == self.id or pr.recent_active)
                for pr in self.prs.values():
                    pr.was_active, pr.recent_active = pr.recent_active, False
                if active < self.quorum:
                    # Cut off from a quorum: stop serving (reads, proposals) rather than
                    # pretend; the majority side elects a new leader anyway.
                    self._become_follower(self.term, 0)
                    return
        for p, pr in self.prs.items():
            if p != self.id and pr.state is ProgressState.SNAPSHOT:
                pr.snap_idle_ticks += 1
                if pr.snap_idle_ticks >= self.config.snapshot_retry_ticks:
                    pr.snap_sent = pr.snap_acked
                    self._send_snapshot_chunks(p)
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._broadcast_heartbeat(self.read_only.last_context() or b"")

    def _broadcast_heartbeat(self, context: bytes) -> None:
        for p, pr in self.prs.items():
            if p != self.id:
                commit = min(pr.match, self.log.committed)
                # index: the last entry sent before this heartbeat, which its answer echoes.
                self._send(MsgType.HEARTBEAT, p, index=pr.next - 1, commit=commit, context=context)

    def _step_leader(self, m: Message) -> None:
        pr = self.prs.get(m.frm)
        t = m.type
        if t is MsgType.READ_INDEX:
            self._leader_read(m.context, m.frm)
            return
        if pr is None:
            return
        if t is MsgType.APP_RESP:
            pr.recent_active = True
            self._handle_append_response(m, pr)
        elif t is MsgType.HEARTBEAT_RESP:
            pr.recent_active = True
            if pr.match < self.log.last_index():
                if pr.state is ProgressState.PROBE:
                    # The probe or its answer may be lost: probe again.
                    pr.probe_sent = False
                    self._send_append(m.frm)
                elif pr.state is ProgressState.REPLICATE and pr.match < m.index:
                    # Entries sent before the heartbeat this answers (its index) are
                    # unacknowledged although the heartbeat made the round trip: appends or
                    # acks were lost. Resend from the last known match. (Not the latest
                    # heartbeat's: an answer to an older one may arrive after newer appends.)
                    pr.become_probe()
                    self._send_append(m.frm)
            if m.context:
                acks = self.read_only.ack(m.context, m.frm)
                if acks is not None and len(acks) >= self.quorum:
                    for req in self.read_only.release(m.context):
                        self._answer_read(req)
        elif t is MsgType.SNAP_RESP:
            pr.recent_active = True
            self._handle_snapshot_response(m, pr)

    def _handle_append_response(self, m: Message, pr: Progress) -> None:
        if m.index > self.log.last_index():
            # About entries this leader never had, so never sent: not an answer to any append
            # of its (a peer cannot match past the leader's log). Taken, it set the peer's next
            # index past the log, and the next append to it failed: one such frame, spoofed
            # by anything that can reach the port, stopped the leader. Dropped, as if lost.
            return
        if m.reject:
            if pr.state is ProgressState.SNAPSHOT:
                return
            if m.hint_index > pr.match and m.log_term and self.log.term(m.hint_index) == m.log_term:
                # Same term at the same index: by Log Matching the follower's log equals ours
                # up to its hint, and it rejected only because an earlier append is missing
                # (overtaken or lost). Take the match; keep the pipeline (a lost append is
                # caught by the heartbeat stall check).
                pr.maybe_update(m.hint_index)
                if pr.state is ProgressState.PROBE:
                    pr.become_replicate()
                else:
                    pr.inflights.free_le(m.hint_index)
                self._maybe_commit()
                while self._send_append(m.frm, send_if_empty=False):
                    pass
                return
            next_probe = m.hint_index
            if m.log_term > 0:
                # Skip every entry of ours whose term the follower cannot have at that place.
                next_probe, _ = self.log.find_conflict_by_term(m.hint_index, m.log_term)
            if pr.maybe_decrease_to(m.index, next_probe):
                if pr.state is ProgressState.REPLICATE:
                    pr.become_probe()
                self._send_append(m.frm)
            return
        updated = pr.maybe_update(m.index)
        if pr.state is ProgressState.SNAPSHOT:
            if pr.match + 1 >= self.log.first_index():
                pr.become_probe()
                pr.become_replicate()
            elif m.index >= pr.snapshot.index:
                # The follower holds everything this snapshot does, but the log was compacted
                # further meanwhile: a newer snapshot is needed (the next send starts it).
                pr.become_probe()
            else:
                return
        elif not updated:
            return
        elif pr.state is ProgressState.PROBE:
            pr.become_replicate()
        else:
            pr.inflights.free_le(m.index)
        self._maybe_commit()
        while self._send_append(m.frm, send_if_empty=False):
            pass

    def _handle_snapshot_response(self, m: Message, pr: Progress) -> None:
        c = m.chunk
        snap = pr.snapshot
        if pr.state is not ProgressState.SNAPSHOT or snap is None or c is None:
            return
        if (c.index, c.term) != (snap.index, snap.term):
            return
        if m.reject:
            pr.snap_acked = pr.snap_sent = 0
        elif c.offset > pr.snap_acked:
            pr.snap_acked = c.offset
            pr.snap_sent = max(pr.snap_sent, c.offset)
        else:
            return  # a duplicate acknowledgement: wait for progress or the retry timer
        pr.snap_idle_ticks = 0
        self._send_snapshot_chunks(m.frm)

    def _maybe_commit(self) -> bool:
        matches = sorted((pr.match for pr in self.prs.values()), reverse=True)
        index = matches[self.quorum - 1]
        # Figure 8: replicas of an entry from an earlier term do not make it committed; only
        # an entry of the current term does, and with it everything before it.
        if index <= self.log.committed or self.log.term(index) != self.term:
            return False
        self.log.commit_to(index)
        if self.read_only.deferred:
            deferred, self.read_only.deferred = self.read_only.deferred, []
            for context, origin in deferred:
                self._leader_read(context, origin)
        return True

    def _flush_appends(self) -> None:
        if not self._append_pending:
            return
        self._append_pending = False
        if self.role is not Role.LEADER:
            return
        for p in self.peers:
            if p != self.id:
                while self._send_append(p, send_if_empty=False):
                    pass

    def _send_append(self, to: int, send_if_empty: bool = True) -> bool:
        """Send ``to`` the entries it needs next (or start a snapshot transfer); whether
        anything was sent."""
        pr = self.prs[to]
        if pr.is_paused():
            return False
        if not send_if_empty and pr.next == self.log.last_index() + 1:
            return False  # nothing new (the usual second look of _flush_appends's loop)
        prev = pr.next - 1
        prev_term = self.log.term(prev)
        try:
            entries = self.log.slice(pr.next, self.log.last_index() + 1, self.config.max_msg_bytes)
        except Compacted:
            prev_term = None
        if prev_term is None:
            snap = self.log.storage.snapshot()
            if snap is None:
                raise AssertionError(f"entries before {pr.next} compacted but no snapshot")
            pr.become_snapshot(snap)
            self._send_snapshot_chunks(to)
            return True
        if not entries and not send_if_empty:
            return False
        self._send(
            MsgType.APP,
            to,
            index=prev,
            log_term=prev_term,
            entries=tuple(entries),
            commit=self.log.committed,
        )
        if entries:
            pr.sent_entries(entries[-1].index)
        elif pr.state is ProgressState.PROBE:
            pr.probe_sent = True
        return True

    def _send_snapshot_chunks(self, to: int) -> None:
        pr = self.prs[to]
        snap = pr.snapshot
        assert snap is not None
        size = self.config.snapshot_chunk_bytes
        total = len(snap.data)
        window_end = pr.snap_acked + size * self.config.snapshot_window
        first = True
        while pr.snap_sent < window_end and (pr.snap_sent < total or (total == 0 and first)):
            first = False
            off = pr.snap_sent
            data = snap.data[off : off + size]
            chunk = SnapshotChunk(snap.index, snap.term, off, total, data)
            self._send(MsgType.SNAP, to, chunk=chunk, commit=self.log.committed)
            pr.snap_sent = off + len(data)
        pr.snap_idle_ticks = 0

    # -- reads --------------------------------------------------------------------------------

    def _leader_read(self, context: bytes, origin: int) -> None:
        if self.log.term(self.log.committed) != self.term:
            # Until an entry of this term commits, our commit index may lag the true one.
            self.read_only.deferred.append((context, origin))
            return
        if len(self.peers) == 1:
            self._answer_read(ReadRequest(context, self.log.committed, origin))
            return
        self.read_only.add(context, self.log.committed, origin, self.id)
        self._broadcast_heartbeat(context)

    def _answer_read(self, req: ReadRequest) -> None:
        if req.origin == self.id:
            self.read_states.append(ReadState(req.index, req.context))
        else:
            self._send(MsgType.READ_INDEX_RESP, req.origin, index=req.index, context=req.context)

    # -- small pieces -------------------------------------------------------------------------

    def _send(self, mtype: MsgType, to: int, **fields) -> None:
        self.msgs.append(Message(mtype, to, self.id, self.term, **fields))

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def _soft_state(self) -> SoftState:
        return SoftState(self.lead, self.role, self.term)

    def __repr__(self) -> str:
        return (
            f"RaftCore(id={self.id} {self.role.value} term={self.term} lead={self.lead} "
            f"last={self.log.last_index()} commit={self.log.committed})"
        )
