"""Node: drives a :class:`~keyval.raft.core.RaftCore` against storage and a state machine.

The driver is the only part of keyval.raft that touches storage and the state machine; it
knows no transport and no clock. Whoever owns it (the simulated network in tests, a TCP server
later) calls :meth:`Node.tick` at a fixed interval, :meth:`Node.step` for each message that
arrives and :meth:`Node.propose` / :meth:`Node.read_index` for clients; outgoing messages are
handed to the ``send`` callback given at construction.

Every call processes all ready work before it returns, in this order (the crash-safety
argument): the snapshot, then the new entries and the hard state are made durable (one
``save(hard_state, entries)`` when the storage has it, so they land together with one fsync;
else ``append`` then ``set_hard_state``), *then* messages are sent (a leader's AppendEntries
excepted: they go out first, see ``_process``) (they may promise a vote
or acknowledge entries, which must survive a crash), then the snapshot is restored and the
committed entries are applied in order. After applying, if the Raft state (log plus hard state)
exceeds ``max_raft_state`` bytes, the state machine is snapshotted at the applied index and
the log compacted.

On construction the node restores the stored snapshot into the state machine and replays the
committed log entries after it; a state machine that persists itself (it has an
``applied_index``) is restored only from a snapshot newer than what it holds.

Thread safety: every public method takes the node's lock, so a threaded transport may call
them concurrently; ``send`` and the callbacks run under that lock and must not block on this
node (queue the message instead).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Protocol

from keyval.raft.core import Config, RaftCore, Ready, Role
from keyval.raft.messages import Message, MsgType
from keyval.raft.readindex import ReadState
from keyval.raft.records import Entry, Snapshot

# Bytes a stored entry costs beyond its data (index, term, length, framing), for the size
# estimate that triggers compaction.
ENTRY_OVERHEAD_BYTES = 24
HARD_STATE_BYTES = 24


class StateMachine(Protocol):
    def apply(self, entry: Entry) -> object:
        """Apply one committed entry (``entry.data`` may be empty: a leader's no-op)."""

    def snapshot(self) -> bytes:
        """The whole state as of the last applied entry."""

    def restore(self, data: bytes) -> None:
        """Replace the whole state with one made by :meth:`snapshot`."""


class DurableStateMachine(StateMachine, Protocol):
    """A state machine that keeps its own state on disk, as of :attr:`applied_index`.

    On start the driver resumes after that index instead of restoring an older Raft snapshot
    over it, and replays only the log entries after it."""

    @property
    def applied_index(self) -> int: ...


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
    ) -> None:
        """``storage`` has the SPEC RaftStorage API (MemoryStorage or RaftStorage);
        ``on_apply(entry, result)`` runs after each applied entry; ``on_read(state)`` once a
        ReadIndex read may be served (the state machine has applied ``state.index``)."""
        self.storage = storage
        self.state_machine = state_machine
        self._send = send
        self.max_raft_state = max_raft_state
        self.on_apply = on_apply
        self.on_read = on_read
        # Called (under the lock) after a call in which this node's role or known leader
        # changed: a service waiting on requests learns that they will not complete here.
        self.on_change: Callable[[], None] | None = None
        self._seen: tuple[Role, int] | None = None
        self._durable_hs = storage.hard_state()  # what storage holds
        self._newest_hs = self._durable_hs  # what the core last asked to persist
        self._lock = threading.RLock()
        self._waiting_reads: list[ReadState] = []
        snap = storage.snapshot()
        self.applied = getattr(state_machine, "applied_index", 0)
        if snap is not None and snap.index > self.applied:
            state_machine.restore(snap.data)
            self.applied = snap.index
        self.core = RaftCore(config, storage, rng or random.Random(), applied=self.applied)
        self._log_bytes = self._measure_log()
        with self._lock:
            self._process()

    # -- inputs -------------------------------------------------------------------------------

    def tick(self) -> None:
        with self._lock:
            self.core.tick()
            self._process()

    def step(self, msg: Message) -> None:
        with self._lock:
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
        served. Raises :class:`~keyval.errors.NotLeader` when no leader is known."""
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

    def _process(self) -> None:
        core = self.core
        while core.has_ready():
            rd = core.ready()
            # A leader's appends go out before its own fsync, so that its disk write and its
            # followers' overlap (Raft thesis 10.2.1): they promise nothing about the leader's
            # disk (it counts its own entries only once persisted, and the term they carry was
            # made durable before it could lead). Everything else waits for the disk.
            early = [m for m in rd.messages if m.type is MsgType.APP] if self.is_leader else []
            for m in early:
                self._send(m)
            self._persist(rd)
            for m in rd.messages:
                if not early or m.type is not MsgType.APP:
                    self._send(m)
            self._apply(rd)
            core.advance(rd)
            self._maybe_compact()
        seen = (core.role, core.lead)
        if seen != self._seen:
            self._seen = seen
            if self.on_change is not None:
                self.on_change()

    def _persist(self, rd: Ready) -> None:
        st = self.storage
        if rd.snapshot is not None:
            st.save_snapshot(rd.snapshot)
            self._log_bytes = self._measure_log()
        truncates = bool(rd.entries) and rd.entries[0].index <= st.last_index
        if rd.hard_state is not None:
            self._newest_hs = rd.hard_state
        hs = self._newest_hs if self._newest_hs != self._durable_hs else None
        # A change of the commit index alone is not made durable by itself: Raft's commit
        # index is volatile (a restarted node learns it again, and never below what its state
        # machine applied), so it rides along with the next entries or term/vote change
        # instead of costing every node an fsync per commit. Term and vote always go to disk
        # before any message is sent: those are what messages promise.
        commit_only = hs is not None and (hs.term, hs.vote) == (
            self._durable_hs.term,
            self._durable_hs.vote,
        )
        if rd.entries or (hs is not None and not commit_only):
            save = getattr(st, "save", None)
            if save is not None:
                # One durable write for the batch: entries and hard state land together.
                save(hard_state=hs, entries=list(rd.entries))
            else:
                if rd.entries:
                    st.append(list(rd.entries))
                if hs is not None:
                    st.set_hard_state(hs)
            if hs is not None:
                self._durable_hs = hs
        if truncates:
            self._log_bytes = self._measure_log()
        elif rd.entries:
            self._log_bytes += sum(len(e.data) + ENTRY_OVERHEAD_BYTES for e in rd.entries)

    def _apply(self, rd: Ready) -> None:
        sm = self.state_machine
        if rd.snapshot is not None and rd.snapshot.index > self.applied:
            sm.restore(rd.snapshot.data)
            self.applied = rd.snapshot.index
        for e in rd.committed_entries:
            if e.index <= self.applied:
                continue
            if e.index != self.applied + 1:
                raise AssertionError(f"apply {e.index} after {self.applied}: a gap")
            result = sm.apply(e)
            self.applied = e.index
            if self.on_apply is not None:
                self.on_apply(e, result)
        self._waiting_reads.extend(rd.read_states)
        if self._waiting_reads:
            ready = [rs for rs in self._waiting_reads if rs.index <= self.applied]
            self._waiting_reads = [rs for rs in self._waiting_reads if rs.index > self.applied]
            if self.on_read is not None:
                for rs in ready:
                    self.on_read(rs)

    def _maybe_compact(self) -> None:
        if self.max_raft_state is None or self.raft_state_size <= self.max_raft_state:
            return
        st = self.storage
        if self.applied <= st.first_index - 1 or self.applied > st.last_index:
            return
        snap = Snapshot(self.applied, st.term(self.applied), self.state_machine.snapshot())
        st.save_snapshot(snap)
        self._log_bytes = self._measure_log()

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
