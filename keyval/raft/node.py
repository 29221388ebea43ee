"""Node: drives a :class:`~keyval.raft.core.RaftCore` against storage and a state machine.

The driver is the only part of keyval.raft that touches storage and the state machine; it
knows no transport and no clock. Whoever owns it (the simulated network in tests, a TCP server
later) calls :meth:`Node.tick` at a fixed interval, :meth:`Node.step` for each message that
arrives and :meth:`Node.propose` / :meth:`Node.read_index` for clients; outgoing messages are
handed to the ``send`` callback given at construction.

Every call processes the ready work before it returns. Crash safety rests on one rule: a
message goes out only once what it promises is durable (a vote, the term it speaks in, the
entries it acknowledges). So a follower or candidate handles a ready in this order: the
snapshot, then the new entries and the hard state are made durable (one ``save(hard_state,
entries)`` when the storage has it, so they land together with one fsync; else ``append`` then
``set_hard_state``), *then* messages are sent, then the snapshot is restored and the committed
entries are applied in order.

A leader whose term and vote are durable promises nothing about its own disk in what it sends
(it counts its own entries towards a quorum only once they are persisted, and appends promise
nothing), so it sends first and applies committed entries (which a quorum of disks already
holds), then persists its new entries, so that its disk write and its followers' overlap (Raft
thesis 10.2.1). With ``on_persist_needed`` given, it does not even wait for its disk: a call
that leaves new entries unpersisted calls ``on_persist_needed()``, and the owner then calls
:meth:`Node.persist` from a thread of its own, which holds the lock only before and after the
write. Meanwhile acknowledgements are stepped, entries committed by the followers' disks are
applied and answered, and new proposals are sent on; a ready that must write anything else (a
new term, a snapshot, entries as a follower) waits until that write has landed, so writes
reach storage in the order the core asked for them.

With ``pace_followers``, a leader's appends and heartbeats go at once only to the followers a
quorum needs and to the others on the next tick, a tick's worth in one go
(:mod:`keyval.raft.pacing`): the commit never waited for those, and each write they take
separately costs the machine a wake-up, a step and an fsync.

After applying, if the Raft state (log plus hard state) exceeds ``max_raft_state`` bytes, the
state machine is snapshotted at the applied index and the log compacted; a leader holds that
back while a follower that answers still needs entries up to the applied index (it would
otherwise need the whole snapshot), until the state passes twice ``max_raft_state``. With
``on_compact_needed`` given, that is not done under the lock, where encoding and writing a large
state would stall the node (hundreds of milliseconds for a few hundred thousand keys): the
node calls ``on_compact_needed()`` and the owner calls :meth:`Node.compact` from a thread of
its own, which holds the lock only to fix the state (a state machine with
``snapshot_reader()`` fixes it at once and is read afterwards) and to put the written snapshot
in force; meanwhile the node goes on stepping, applying and persisting.

On construction the node restores the stored snapshot into the state machine and replays the
committed log entries after it, in chunks (``apply_many`` when the state machine has it); a
state machine that persists itself (it has an ``applied_index``) is restored only from a
snapshot newer than what it holds.

Thread safety: every public method takes the node's lock, so a threaded transport may call
them concurrently; ``send`` and the callbacks run under that lock and must not block on this
node (queue the message instead). :meth:`persist` and :meth:`compact` must not be called
with the lock held.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Protocol

from keyval.raft.core import Config, RaftCore, Ready, Role
from keyval.raft.entrycache import EntryCache
from keyval.raft.messages import Message, MsgType
from keyval.raft.pacing import QuorumPacer
from keyval.raft.progress import ProgressState
from keyval.raft.readindex import ReadState
from keyval.raft.records import Entry, HardState, Snapshot
from keyval.raft.snapdata import SnapshotData

# Bytes a stored entry costs beyond its data (index, term, length, framing), for the size
# estimate that triggers compaction.
ENTRY_OVERHEAD_BYTES = 24
HARD_STATE_BYTES = 24
REPLAY_CHUNK_BYTES = 16 * 2**20  # entry data read and applied at a time on start


class StateMachine(Protocol):
    def apply(self, entry: Entry) -> object:
        """Apply one committed entry (``entry.data`` may be empty: a leader's no-op)."""

    def snapshot(self) -> SnapshotData:
        """The whole state as of the last applied entry (bytes, or file-backed when large)."""

    def restore(self, data: SnapshotData) -> None:
        """Replace the whole state with one made by :meth:`snapshot`. ``data`` may be
        file-backed (a snapshot from storage or from the leader): stream it
        (:func:`~keyval.raft.snapdata.open_reader`) or read it whole with ``bytes(data)``."""


class SnapshotReader(Protocol):
    def snapshot_reader(self) -> Callable[[], SnapshotData]:
        """Optional on a state machine: fixes the state as of the last applied entry and
        returns a call that encodes it later (once, on the same thread) while entries go on
        being applied; what :meth:`Node.compact` uses to encode outside the node's lock."""


class DurableStateMachine(StateMachine, Protocol):
    """A state machine that keeps its own state on disk, as of :attr:`applied_index`.

    On start the driver resumes after that index instead of restoring an older Raft snapshot
    over it, and replays only the log entries after it."""

    @property
    def applied_index(self) -> int: ...


def _coalesce_acks(msgs: tuple[Message, ...]) -> tuple[Message, ...] | list[Message]:
    """``msgs`` with, of the accepting append responses to one leader in one term, only the
    one with the highest index (where it stood). A follower that stepped a batch of appends
    (a paced one gets a tick's worth at once) acknowledges each; within a term the leader's
    log only grows, so the highest acknowledgement says all the others do, and the leader
    steps one message instead of many. Dropping the others is what losing them would do."""
    best: dict[tuple[int, int], Message] = {}
    acks = 0
    for m in msgs:
        if m.type is MsgType.APP_RESP and not m.reject:
            acks += 1
            key = (m.to, m.term)
            if key not in best or m.index > best[key].index:
                best[key] = m
    if acks == len(best):
        return msgs
    keep = {id(m) for m in best.values()}
    return [m for m in msgs if m.type is not MsgType.APP_RESP or m.reject or id(m) in keep]


class Node:
    def __init__(
        self,
        config: Config,
        storage,
        state_machine: StateMachine,
        send: Callable[[Message], None],
        rng: random.Random | None = None,
        max_raft_state: int | None = None,
        on_apply: Callable[[Entry, object], None] | None = None,
        on_read: Callable[[ReadState], None] | None = None,
        on_persist_needed: Callable[[], None] | None = None,
        pace_followers: bool = False,
        on_compact_needed: Callable[[], None] | None = None,
    ) -> None:
        """``storage`` has the SPEC RaftStorage API (MemoryStorage or RaftStorage);
        ``on_apply(entry, result)`` runs after each applied entry; ``on_read(state)`` once a
        ReadIndex read may be served (the state machine has applied ``state.index``);
        ``on_persist_needed()`` (under the lock), if given, when a leader left new entries for
        :meth:`persist` (see the module docstring); ``pace_followers``: a leader sends at once
        only to the followers a quorum needs, to the others on the next tick
        (:mod:`keyval.raft.pacing`); ``on_compact_needed()`` (under the lock), if given, when
        the Raft state passed ``max_raft_state``: the owner then calls :meth:`compact`."""
        self.storage = storage
        self.state_machine = state_machine
        self._pacer = (
            QuorumPacer(lambda: self.core, send, merge_bytes=config.max_msg_bytes)
            if pace_followers
            else None
        )
        self._send = self._pacer.send if self._pacer is not None else send
        self._stall_mark = 0  # see nudge()
        self.max_raft_state = max_raft_state
        self.on_apply = on_apply
        self.on_read = on_read
        self.on_persist_needed = on_persist_needed
        self.on_compact_needed = on_compact_needed
        self._compacting = False  # compact() is encoding or writing a snapshot
        # Called (under the lock) after a call in which this node's role or known leader
        # changed: a service waiting on requests learns that they will not complete here.
        self.on_change: Callable[[], None] | None = None
        self._seen: tuple[Role, int] | None = None
        self._durable_hs = storage.hard_state()  # what storage holds
        self._newest_hs = self._durable_hs  # what the core last asked to persist
        self._lock = threading.RLock()
        # Set while persist() writes a leader's entries outside the lock; any other write
        # waits on _persisted until it has landed.
        self._persisting = False
        self._persisted = threading.Condition(self._lock)
        self._waiting_reads: list[ReadState] = []
        snap = storage.snapshot()
        self.applied = getattr(state_machine, "applied_index", 0)
        if snap is not None and snap.index > self.applied:
            state_machine.restore(snap.data)
            self.applied = snap.index
        self._replay()
        # The core reads the log through a cache of what this node wrote last: it applies
        # (and sends) those entries moments later, and a WAL read each time is on the path
        # of every write.
        self._cache = EntryCache(storage)
        buffer = getattr(storage, "snapshot_buffer", None)  # else in memory (MemoryStorage)
        self.core = RaftCore(
            config,
            self._cache,
            rng or random.Random(),
            applied=self.applied,
            **({"snapshot_buffer": buffer} if buffer is not None else {}),
        )
        self._log_bytes = self._measure_log()
        with self._lock:
            self._process()

    # -- inputs -------------------------------------------------------------------------------

    def tick(self) -> None:
        with self._lock:
            self.core.tick()
            self._process()
            if self._pacer is not None:
                self._pacer.flush()
                self._stall_mark = 0

    def nudge(self) -> None:
        """With ``pace_followers``: called by the owner between ticks, every few milliseconds.
        A leader whose entries that were uncommitted at the previous call still are sends at
        once what it holds for the paced followers: the followers a quorum needed are late
        (a busy machine, a slow disk), and a paced one can stand in for them without waiting
        for the next tick."""
        if self._pacer is None:
            return
        with self._lock:
            if not self._pacer.held:
                self._stall_mark = 0
                return
            committed = self.core.log.committed
            if self._stall_mark and committed < self._stall_mark:
                self._pacer.flush()
                self._stall_mark = 0
            else:
                last = self.core.log.last_index()
                self._stall_mark = last if last > committed else 0

    def step(self, msg: Message) -> None:
        with self._lock:
            self.core.step(msg)
            self._process()

    def step_many(self, msgs: list[Message]) -> None:
        """Steps every message, then processes the ready work once: appends that arrived
        together are written with one fsync and acknowledged together."""
        with self._lock:
            for msg in msgs:
                self.core.step(msg)
            self._process()

    def propose(self, data: bytes) -> int:
        """Append ``data`` to the log if this node leads; its log index. Raises
        :class:`~keyval.errors.NotLeader` otherwise. Committed once ``on_apply`` sees it."""
        with self._lock:
            index = self.core.propose(data)
            self._process()
            return index

    def propose_many(self, items: list[bytes]) -> list[int]:
        """Propose several entries at once; they go out in as few appends as the message size
        allows, with one storage append. Their indexes; raises like :meth:`propose`."""
        with self._lock:
            indexes = [self.core.propose(data) for data in items]
            self._process()
            return indexes

    def read_index(self, context: bytes) -> None:
        """Start a linearizable read; ``on_read`` is called with ``context`` when it may be
        served. Raises :class:`~keyval.errors.NotLeader` when no leader is known, ValueError
        for an empty ``context``."""
        with self._lock:
            self.core.read_index(context)
            self._process()

    def campaign(self) -> None:
        with self._lock:
            self.core.campaign()
            self._process()

    # -- state --------------------------------------------------------------------------------

    @property
    def id(self) -> int:
        return self.core.id

    @property
    def term(self) -> int:
        return self.core.term

    @property
    def role(self) -> Role:
        return self.core.role

    @property
    def is_leader(self) -> bool:
        return self.core.role is Role.LEADER

    @property
    def leader(self) -> int:
        return self.core.lead

    @property
    def lock(self):
        """The node's (reentrant) lock: hold it to make several calls one atomic step."""
        return self._lock

    @property
    def next_index(self) -> int:
        """The index the next proposal gets (if this node leads)."""
        return self.core.log.last_index() + 1

    @property
    def commit_index(self) -> int:
        return self.core.log.committed

    @property
    def raft_state_size(self) -> int:
        """Estimated bytes of durable Raft state: the log after the snapshot plus hard state."""
        return self._log_bytes + HARD_STATE_BYTES

    # -- the ready loop -----------------------------------------------------------------------

    def persist(self) -> bool:
        """Persists the new entries a leader left unwritten (see ``on_persist_needed``),
        holding the lock only before and after the storage write; whether there were any.
        Call it without holding the lock."""
        with self._lock:
            if self._persisting or not self._leads_durably() or not self.core.has_ready():
                return False
            rd = self.core.ready()
            self._send_and_apply(rd)
            if not rd.entries:
                self.core.advance(rd)
                self._process()
                return False
            hs = self._hard_state_to_write(rd)
            replaces = rd.entries[0].index <= self.storage.last_index
            self._persisting = True
        try:
            self._write(hs, rd.entries)
        except BaseException:
            with self._lock:
                self._persisting = False
                self._persisted.notify_all()
            raise
        with self._lock:
            # In one step with the bookkeeping: no other thread may see the flag cleared
            # while these entries still look unwritten (it would write them again).
            self._persisting = False
            self._persisted.notify_all()
            self._wrote(hs, rd.entries, replaces)
            self.core.advance(rd)
            self._maybe_compact()
            self._process()
        return True

    def _leads_durably(self) -> bool:
        """Whether this node leads in a term (and with a vote) its storage holds: then nothing
        it sends depends on its own disk."""
        core, hs = self.core, self._durable_hs
        return (
            core.role is Role.LEADER
            and core.term == hs.term
            and core.vote == hs.vote
            and core.log.pending_snapshot is None
        )

    def _process(self) -> None:
        core = self.core
        while core.has_ready():
            if self._leads_durably():
                if not self._process_as_leader():
                    break
            elif self._persisting:
                self._persisted.wait()  # then look again: the write has landed
            else:
                self._process_in_order(core.ready())
        seen = (core.role, core.lead)
        if seen != self._seen:
            self._seen = seen
            if self.on_change is not None:
                self.on_change()

    def _process_as_leader(self) -> bool:
        """One ready of a leader that leads durably; False when it left its entries for
        :meth:`persist` (nothing more to do now)."""
        core = self.core
        rd = core.ready()
        self._send_and_apply(rd)
        if rd.entries and self.on_persist_needed is None and not self._persisting:
            self._persist(rd)  # a single-threaded driver: write now
        elif rd.entries:
            # (Built directly: dataclasses.replace costs more than the rest of this call.)
            core.advance(
                Ready(
                    soft_state=rd.soft_state,
                    hard_state=rd.hard_state,
                    snapshot=rd.snapshot,
                    committed_entries=rd.committed_entries,
                    messages=rd.messages,
                    read_states=rd.read_states,
                )
            )
            # While persist() writes, these entries are (some of) the ones it writes; it looks
            # again once its write has landed, and asks for a persist if any are left.
            if self.on_persist_needed is not None and not self._persisting:
                self.on_persist_needed()
            # Nothing else can be ready: the core changes only when it is called, and this
            # ready's messages, commits and reads are done. Looking again would only build a
            # ready of the same unwritten entries (a propose's cost, on its critical path).
            return False
        core.advance(rd)
        self._maybe_compact()
        return True

    def _send_and_apply(self, rd: Ready) -> None:
        if rd.hard_state is not None:
            self._newest_hs = rd.hard_state
        for m in rd.messages:
            self._send(m)
        self._apply(rd)

    def _process_in_order(self, rd: Ready) -> None:
        """A ready of a follower or candidate (or a leader whose term is not yet durable):
        durable first, then sent, then applied."""
        # A leader's appends still go out before its own fsync (Raft thesis 10.2.1).
        early = [m for m in rd.messages if m.type is MsgType.APP] if self.is_leader else []
        for m in early:
            self._send(m)
        self._persist(rd)
        for m in _coalesce_acks(rd.messages):
            if not early or m.type is not MsgType.APP:
                self._send(m)
        self._apply(rd)
        self.core.advance(rd)
        self._maybe_compact()

    def _persist(self, rd: Ready) -> None:
        st = self.storage
        if rd.snapshot is not None:
            st.save_snapshot(rd.snapshot)
            self._cache.clear()
            self._log_bytes = self._measure_log()
        if rd.hard_state is not None:
            self._newest_hs = rd.hard_state
        hs = self._hard_state_to_write(rd)
        replaces = bool(rd.entries) and rd.entries[0].index <= st.last_index
        if rd.entries or hs is not None:
            self._write(hs, rd.entries)
        self._wrote(hs, rd.entries, replaces)

    def _hard_state_to_write(self, rd: Ready) -> HardState | None:
        """The hard state to write with ``rd``'s entries, or None.

        A change of the commit index alone is not made durable by itself: Raft's commit index
        is volatile (a restarted node learns it again, and never below what its state machine
        applied), so it rides along with the next entries or term/vote change instead of
        costing every node an fsync per commit. Term and vote always go to disk before any
        message is sent: those are what messages promise."""
        hs = self._newest_hs if self._newest_hs != self._durable_hs else None
        if hs is None or rd.entries:
            return hs
        commit_only = (hs.term, hs.vote) == (self._durable_hs.term, self._durable_hs.vote)
        return None if commit_only else hs

    def _write(self, hs: HardState | None, entries: tuple[Entry, ...]) -> None:
        st = self.storage
        save = getattr(st, "save", None)
        if save is not None:
            # One durable write for the batch: entries and hard state land together.
            save(hard_state=hs, entries=list(entries))
        else:
            if entries:
                st.append(list(entries))
            if hs is not None:
                st.set_hard_state(hs)

    def _wrote(self, hs: HardState | None, entries: tuple[Entry, ...], replaces: bool) -> None:
        """Bookkeeping after a write; ``replaces``: the entries replaced a suffix of the log."""
        self._cache.wrote(entries)
        if hs is not None:
            self._durable_hs = hs
        if replaces:
            self._log_bytes = self._measure_log()
        elif entries:
            self._log_bytes += sum(len(e.data) + ENTRY_OVERHEAD_BYTES for e in entries)

    def _apply(self, rd: Ready) -> None:
        sm = self.state_machine
        if rd.snapshot is not None and rd.snapshot.index > self.applied:
            sm.restore(rd.snapshot.data)
            self.applied = rd.snapshot.index
        if rd.committed_entries:
            self._apply_entries(rd.committed_entries)
        self._waiting_reads.extend(rd.read_states)
        if self._waiting_reads:
            ready = [rs for rs in self._waiting_reads if rs.index <= self.applied]
            self._waiting_reads = [rs for rs in self._waiting_reads if rs.index > self.applied]
            if self.on_read is not None:
                for rs in ready:
                    self.on_read(rs)

    def _apply_entries(self, entries) -> None:
        """Applies the consecutive ``entries`` after ``applied`` (those at or below it were
        applied already), in one call when the state machine has ``apply_many``."""
        fresh = [e for e in entries if e.index > self.applied]
        if not fresh:
            return
        if fresh[0].index != self.applied + 1:
            raise AssertionError(f"apply {fresh[0].index} after {self.applied}: a gap")
        apply_many = getattr(self.state_machine, "apply_many", None)
        if apply_many is not None:
            results = apply_many(fresh)
            self.applied = fresh[-1].index
        else:
            results = []
            for e in fresh:
                results.append(self.state_machine.apply(e))
                self.applied = e.index
        if self.on_apply is not None:
            for e, result in zip(fresh, results, strict=True):
                self.on_apply(e, result)

    def _replay(self) -> None:
        """Applies the committed log after what the state machine holds, a chunk of at most
        REPLAY_CHUNK_BYTES at a time: a node restarted behind a long log (say 1 GiB) must not
        read all of it into memory, and each chunk is one call (one DB transaction for a
        state machine that batches)."""
        st = self.storage
        end = min(st.hard_state().commit, st.last_index)
        while self.applied < end:
            lo = max(self.applied + 1, st.first_index)
            entries = st.entries(lo, end + 1, REPLAY_CHUNK_BYTES)
            self._apply_entries(entries)

    def _compaction_due(self) -> bool:
        st = self.storage
        size = self.raft_state_size
        return (
            self.max_raft_state is not None
            and size > self.max_raft_state
            and st.first_index - 1 < self.applied <= st.last_index
            and (size > 2 * self.max_raft_state or not self._follower_needs_applied())
        )

    def _follower_needs_applied(self) -> bool:
        """Whether this node leads and a follower that answers still needs entries up to the
        applied index sent: compacting now would cost it a whole snapshot where a few appends
        do (a paced follower, or one whose window of appends is full, is often a tick
        behind). Compaction waits for it while the Raft state stays under twice
        ``max_raft_state``; one that does not answer does not hold it back."""
        core = self.core
        if core.role is not Role.LEADER:
            return False
        applied = self.applied
        return any(
            pr.answered_lately() and pr.next <= applied and pr.state is not ProgressState.SNAPSHOT
            for peer, pr in core.prs.items()
            if peer != core.id
        )

    def _maybe_compact(self) -> None:
        if self._persisting or self._compacting or not self._compaction_due():
            return  # persist() compacts once its write has landed; compact() is under way
        if self.on_compact_needed is not None:
            self.on_compact_needed()
            return
        st = self.storage
        snap = Snapshot(self.applied, st.term(self.applied), self.state_machine.snapshot())
        st.save_snapshot(snap)
        self._log_bytes = self._measure_log()

    def compact(self) -> bool:
        """Snapshots the state machine at the applied index and compacts the log, if the Raft
        state passed ``max_raft_state`` (see ``on_compact_needed``); whether it did. Holds the
        lock only to fix the state and to put the snapshot in force: encoding it (with a
        state machine that has ``snapshot_reader``) and writing its file happen without it.
        Call it without holding the lock, from one thread at a time."""
        st = self.storage
        with self._lock:
            while self._persisting:
                self._persisted.wait()
            if self._compacting or not self._compaction_due():
                return False
            index = self.applied
            term = st.term(index)
            reader = getattr(self.state_machine, "snapshot_reader", None)
            if reader is not None:
                encode = reader()
            else:  # encoded here: the state machine may change as soon as the lock is free
                data = self.state_machine.snapshot()
                encode = lambda: data  # noqa: E731
            self._compacting = True
        try:
            snap = Snapshot(index, term, encode())
            stage = getattr(st, "stage_snapshot", None)
            if stage is not None:  # else save_snapshot writes the snapshot under the lock
                try:
                    stage(snap)
                except ValueError:
                    with self._lock:  # one as new or newer is in force already (installed)
                        if st.first_index - 1 >= index:
                            return False
                    raise
            with self._lock:
                while self._persisting:
                    self._persisted.wait()
                # A snapshot installed meanwhile (a follower's) may have passed this one.
                saved = st.first_index - 1 < index <= st.last_index
                if saved:
                    if stage is not None:
                        st.save_snapshot(snap, staged=True)
                    else:
                        st.save_snapshot(snap)
                    self._log_bytes = self._measure_log()
                elif stage is not None:
                    st.discard_staged(snap)
            return saved
        finally:
            with self._lock:
                self._compacting = False

    def _measure_log(self) -> int:
        st = self.storage
        entries = st.last_index - st.first_index + 1
        size_bytes = getattr(st, "size_bytes", None)
        if size_bytes is not None:  # kept by the storage: no need to read the log back
            return size_bytes() + ENTRY_OVERHEAD_BYTES * entries
        return sum(
            len(e.data) + ENTRY_OVERHEAD_BYTES
            for e in st.entries(st.first_index, st.last_index + 1)
        )

    def __repr__(self) -> str:
        return f"Node({self.core!r} applied={self.applied})"
