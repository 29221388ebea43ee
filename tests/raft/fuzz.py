"""A randomized, seeded checker of Raft's invariants on real :class:`Node` drivers.

Unlike :class:`~keyval.raft.simnet.SimNet`, which moves time forward and lets the network pick
delays, this drives every choice itself from one ``random.Random(seed)``: which message is
delivered next (any one in flight: reordering), dropped or delivered twice, which node ticks,
crashes (losing everything its storage does not hold) or restarts, how the nodes are
partitioned, when a leader that writes its log outside the lock (``on_persist_needed``) gets
to write it, when a compaction asked for (``on_compact_needed``) puts its snapshot in force.
Those two run on real threads held inside their storage call until the checker lets them go,
so steps, other writes and crashes interleave with them deterministically: a crash can fall
between a leader's sends and its own write, which a single-threaded SimNet never shows.
Storage is MemoryStorage or RaftStorage on files (reopened from disk after a crash); the
state machine either keeps nothing or keeps what it flushed (``applied_index``, as keyval's
KV store), so a node may restart with its state machine ahead of its log.

After every action it checks:

- election safety: one leader per term, ever;
- every (index, term) names one entry, in every log, ever (Log Matching's premise);
- a committed entry never changes, and is on a quorum of disks (log or snapshot) as soon as
  any node counts it committed;
- leader completeness: a new leader's log holds every entry committed before it was elected;
- state machine safety: all applied sequences are prefixes of one another (a hash chain);
- a node's applied index never goes back (within a run of its state machine);
- ReadIndex: a read is answered with an index at least the highest commit index any node
  knew when it was asked (linearizable), and only once that index is applied.

Then it heals everything, restarts every node and requires a new entry to commit and reach
every state machine within a bounded number of steps (liveness).
"""

from __future__ import annotations

import contextlib
import random
import struct
import threading
from dataclasses import dataclass, field

from keyval.errors import NotLeader
from keyval.raft.core import Config
from keyval.raft.memory import MemoryStorage
from keyval.raft.messages import Message
from keyval.raft.node import Node
from keyval.raft.readindex import ReadState
from keyval.raft.records import Entry
from tests.raft.harness import chain_after

_HEAD = struct.Struct(">Q32s")


class Violation(AssertionError):
    pass


class _Crashed(Exception):
    """The node crashed while its write was under way: the write never happened."""


class _Gate:
    """Holds one Node.persist() thread in its storage write until the checker lets it land
    (or crashes the node: then the write never happens)."""

    def __init__(self) -> None:
        self.thread: threading.Thread | None = None
        self.arrived = threading.Event()
        self.release = threading.Event()
        self.abort = False


class GatedStorage:
    """A storage whose ``save`` from a gated persist thread, and ``stage_snapshot`` from a
    gated compaction thread, wait for the checker. MemoryStorage gets a staging step that
    writes nothing, so that its compactions too run partly outside the node's lock."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.gate: _Gate | None = None  # a persist() under way
        self.cgate: _Gate | None = None  # a compact() under way

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    @property
    def first_index(self) -> int:
        return self.inner.first_index

    @property
    def last_index(self) -> int:
        return self.inner.last_index

    def save(self, hard_state=None, entries=()) -> None:
        g = self.gate
        if g is not None and threading.current_thread() is g.thread:
            g.arrived.set()
            g.release.wait()
            if g.abort:
                raise _Crashed
        self.inner.save(hard_state, entries)

    def stage_snapshot(self, snap) -> None:
        g = self.cgate
        if g is not None and threading.current_thread() is g.thread:
            g.arrived.set()
            g.release.wait()
            if g.abort:
                raise _Crashed
        stage = getattr(self.inner, "stage_snapshot", None)
        if stage is not None:
            stage(snap)
        elif self.inner.first_index - 1 >= snap.index:
            raise ValueError("not newer than the snapshot in force")

    def save_snapshot(self, snap, *, staged: bool = False) -> None:
        if staged and hasattr(self.inner, "stage_snapshot"):
            self.inner.save_snapshot(snap, staged=True)
        else:
            self.inner.save_snapshot(snap)

    def discard_staged(self, snap) -> None:
        discard = getattr(self.inner, "discard_staged", None)
        if discard is not None:
            discard(snap)


class _PersistedProxy:
    """Stands for Node._persisted: a wait for the write under way first lets it land (the
    checker's thread would otherwise wait for itself)."""

    def __init__(self, cond: threading.Condition, world: World, node: int) -> None:
        self.cond = cond
        self.world = world
        self.node = node

    def wait(self, timeout: float | None = None) -> bool:
        g = self.world.storages[self.node].gate
        if g is not None:
            g.release.set()
        return self.cond.wait(timeout)

    def notify_all(self) -> None:
        self.cond.notify_all()


class ChainSM:
    """State machine: a hash chain over the applied entries; its snapshot is the chain."""

    def __init__(self, world: World, node: int) -> None:
        self.world = world
        self.node = node
        self.last = 0
        self.chain = b"\0" * 32
        self.durable = world.opts.durable_sm
        if self.durable:  # resumes where its last flush left it, as keyval's KV store does
            self.last, self.chain = world.sm_disk.get(node, (0, self.chain))

    @property
    def applied_index(self) -> int:
        # Read by the Node only at start, when memory and disk agree. (A class attribute
        # lookup would find the property on every ChainSM: only durable ones have it.)
        return self.last

    def flush(self) -> None:
        if self.durable:
            self.world.sm_disk[self.node] = (self.last, self.chain)

    def apply(self, entry: Entry) -> None:
        if entry.index != self.last + 1:
            self.world.fail(f"node {self.node} applied {entry.index} after {self.last}")
        self.chain = chain_after(self.chain, entry)
        self.last = entry.index
        self.world.applied(self.node, entry.index, self.chain)

    def snapshot(self) -> bytes:
        return _HEAD.pack(self.last, self.chain)

    def restore(self, data) -> None:
        last, chain = _HEAD.unpack(bytes(data)[: _HEAD.size])
        if last < self.last:
            self.world.fail(f"node {self.node} restored {last} after applying {self.last}")
        self.world.applied(self.node, last, chain)
        self.last, self.chain = last, chain
        self.flush()  # a restore is durable on return


class VolatileChainSM(ChainSM):
    """A ChainSM that keeps nothing: the Node replays the log into it on start."""

    applied_index = None  # type: ignore[assignment]

    def __getattribute__(self, name: str):
        if name == "applied_index":
            raise AttributeError(name)
        return super().__getattribute__(name)


@dataclass
class Options:
    n: int = 3
    steps: int = 1500
    async_persist: bool = False
    async_compact: bool = False
    pace: bool = False
    max_raft_state: int | None = None
    max_msg_bytes: int = 24  # 1: one entry with data per append, so that a follower can hold
    # an old term's entry without the new leader's no-op after it (Figure 8's setting)
    durable_sm: bool = False  # the state machine keeps its state (flushed now and then)
    disk: str | None = None  # a directory: RaftStorage under it instead of MemoryStorage
    pre_vote: bool = True
    check_quorum: bool = True
    weights: dict[str, float] = field(default_factory=dict)


DEFAULT_WEIGHTS = {
    "deliver": 40.0,
    "batch": 6.0,
    "drop": 3.0,
    "dup": 3.0,
    "tick": 25.0,
    "propose": 8.0,
    "read": 3.0,
    "crash": 0.6,
    "restart": 2.0,
    "partition": 0.8,
    "heal": 0.8,
    "persist": 8.0,
    "land": 8.0,
    "compact": 3.0,
    "settle_compact": 3.0,
    "nudge": 1.0,
    "flush": 3.0,
}


ROUGH = ("drop", "dup", "crash", "partition")


class World:
    def __init__(self, seed: int, opts: Options) -> None:
        self.seed = seed
        self.opts = opts
        self.rng = random.Random(seed)
        self.ids = tuple(range(1, opts.n + 1))
        self.quorum = opts.n // 2 + 1
        self.weights = DEFAULT_WEIGHTS | opts.weights
        self.sm_disk: dict[int, tuple[int, bytes]] = {}
        self.storages = {i: GatedStorage(self.open_storage(i)) for i in self.ids}
        self.nodes: dict[int, Node | None] = {i: None for i in self.ids}
        self.sms: dict[int, ChainSM] = {}
        self.inflight: list[Message] = []
        self.blocked: set[tuple[int, int]] = set()
        self.want_persist: set[int] = set()
        self.want_compact: set[int] = set()
        self.step_no = 0
        self.log: list[str] = []  # the actions so far, for a failure's message
        # Checker state.
        self.leader_of_term: dict[int, int] = {}
        self.entries_seen: dict[tuple[int, int], bytes] = {}
        self.committed: dict[int, tuple[int, bytes]] = {}  # index -> (term, data)
        self.max_commit = 0
        self.chain: dict[int, bytes] = {0: b"\0" * 32}
        self.last_applied: dict[int, int] = {}
        self.seen_commit: dict[int, int] = {}
        self.reads: dict[bytes, int] = {}  # context -> highest commit known when asked
        self.reads_served = 0
        self.next_value = 0
        self.next_read = 0
        for i in self.ids:
            self.start(i)

    # -- failure ------------------------------------------------------------------------------

    def fail(self, what: str) -> None:
        tail = "; ".join(self.log[-25:])
        raise Violation(f"seed={self.seed} step={self.step_no}: {what}\n  last actions: {tail}")

    # -- nodes --------------------------------------------------------------------------------

    def open_storage(self, i: int):
        if self.opts.disk is None:
            return MemoryStorage()
        from keyval.raft.storage import RaftStorage

        return RaftStorage(f"{self.opts.disk}/node{i}", segment_size=4096)

    def close(self) -> None:
        for i in self.ids:
            self.crash(i)
            if self.opts.disk is not None:
                self.storages[i].inner.close()

    def start(self, i: int) -> None:
        o = self.opts
        cfg = Config(
            id=i,
            peers=self.ids,
            election_ticks=5,
            heartbeat_ticks=1,
            max_msg_bytes=o.max_msg_bytes,
            max_inflight=3,
            pre_vote=o.pre_vote,
            check_quorum=o.check_quorum,
            snapshot_chunk_bytes=16,
            snapshot_window=2,
            snapshot_retry_ticks=3,
        )
        sm = ChainSM(self, i) if self.opts.durable_sm else VolatileChainSM(self, i)
        self.sms[i] = sm
        self.last_applied[i] = sm.last
        self.seen_commit[i] = 0
        node = Node(
            cfg,
            self.storages[i],
            sm,
            send=self.inflight.append,
            rng=random.Random(self.rng.getrandbits(64)),
            max_raft_state=o.max_raft_state,
            on_read=lambda rs, i=i: self.read_served(i, rs),
            on_persist_needed=(lambda i=i: self.want_persist.add(i)) if o.async_persist else None,
            pace_followers=o.pace,
            on_compact_needed=(lambda i=i: self.want_compact.add(i)) if o.async_compact else None,
        )
        node._persisted = _PersistedProxy(node._persisted, self, i)
        self.nodes[i] = node

    def crash(self, i: int) -> None:
        st = self.storages[i]
        for name in ("gate", "cgate"):
            g = getattr(st, name)
            if g is not None:  # its write was under way: it never lands
                g.abort = True
                g.release.set()
                g.thread.join()
                setattr(st, name, None)
        self.nodes[i] = None
        self.want_persist.discard(i)
        self.want_compact.discard(i)

    def live(self) -> list[int]:
        return [i for i in self.ids if self.nodes[i] is not None]

    # -- observations fed by the state machines and reads ------------------------------------

    def applied(self, node: int, index: int, chain: bytes) -> None:
        known = self.chain.setdefault(index, chain)
        if known != chain:
            self.fail(f"node {node} applied a different sequence up to {index}")
        if index < self.last_applied.get(node, 0):
            self.fail(f"node {node} applied index went back to {index}")
        self.last_applied[node] = index

    def read_served(self, node: int, rs: ReadState) -> None:
        bound = self.reads.pop(rs.context, None)
        if bound is None:
            return  # answered already (a read may be answered once per asking)
        self.reads_served += 1
        if rs.index < bound:
            self.fail(
                f"stale read {rs.context!r} at node {node}: index {rs.index} < commit {bound} "
                "known when it was asked"
            )
        if self.sms[node].last < rs.index:
            self.fail(f"read {rs.context!r} served at {node} before applying {rs.index}")

    # -- the invariants -----------------------------------------------------------------------

    def check(self) -> None:
        for i in self.live():
            node = self.nodes[i]
            core = node.core
            log = core.log
            if core.role.value == "leader":
                other = self.leader_of_term.setdefault(core.term, i)
                if other != i:
                    self.fail(f"two leaders in term {core.term}: {other} and {i}")
                if other == i and getattr(core, "_fz_checked_term", None) != core.term:
                    core._fz_checked_term = core.term
                    self.check_complete(i)
            # Every entry the node's log holds: one entry per (index, term), ever. Only the
            # newest part changes, so look at the last few.
            first, last = log.first_index(), log.last_index()
            lo = max(first, last - 8, 1)
            if lo <= last:
                for e in log.slice(lo, last + 1):
                    known = self.entries_seen.setdefault((e.index, e.term), e.data)
                    if known != e.data:
                        self.fail(f"two entries at ({e.index}, {e.term}) on node {i}")
            c = log.committed
            if c < self.seen_commit[i]:
                self.fail(f"node {i} commit went back from {self.seen_commit[i]} to {c}")
            if c > self.seen_commit[i]:
                for idx in range(max(self.seen_commit[i] + 1, first), c + 1):
                    t = log.term(idx)
                    e = log.slice(idx, idx + 1)[0]
                    rec = self.committed.setdefault(idx, (t, e.data))
                    if rec != (t, e.data):
                        self.fail(f"node {i} commits {(t, e.data)} at {idx}, committed {rec}")
                self.seen_commit[i] = c
                self.max_commit = max(self.max_commit, c)
                self.check_durable(c, i)

    def check_durable(self, index: int, who: int) -> None:
        rec = self.committed.get(index)
        if rec is None:
            return
        term = rec[0]
        holders = []
        for j in self.ids:
            st = self.storages[j]
            covered = st.first_index - 1 >= index  # by its snapshot
            if covered or (index <= st.last_index and st.term(index) == term):
                holders.append(j)
        if len(holders) < self.quorum:
            self.fail(f"node {who} counts {index} committed but only {holders} hold it durably")

    def check_complete(self, leader: int) -> None:
        log = self.nodes[leader].core.log
        first, last = log.first_index(), log.last_index()
        for idx, (t, _data) in self.committed.items():
            if idx < first - 1:
                continue
            if idx > last or log.term(idx) != t:
                self.fail(
                    f"new leader {leader} (term {self.nodes[leader].term}) lacks committed "
                    f"entry {idx} (term {t})"
                )

    # -- actions ------------------------------------------------------------------------------

    def action(self) -> None:
        rng = self.rng
        names = list(self.weights)
        name = rng.choices(names, [self.weights[k] for k in names])[0]
        getattr(self, "_do_" + name)()

    def _deliver_one(self, k: int, keep: bool = False) -> None:
        m = self.inflight[k] if keep else self.inflight.pop(k)
        node = self.nodes[m.to]
        if node is None or (m.frm, m.to) in self.blocked:
            self.log.append(f"lost {m.type.name} {m.frm}->{m.to}")
            return
        self.log.append(
            f"{'dup ' if keep else ''}{m.type.name} {m.frm}->{m.to} t{m.term} i{m.index} "
            f"c{m.commit} n{len(m.entries)}{' rej' if m.reject else ''}"
        )
        node.step(m)

    def _do_deliver(self) -> None:
        if self.inflight:
            # Mostly the oldest few (near-FIFO), sometimes any (reordering).
            n = len(self.inflight)
            k = self.rng.randrange(min(n, 3)) if self.rng.random() < 0.8 else self.rng.randrange(n)
            self._deliver_one(k)

    def _do_batch(self) -> None:
        """Several messages to one node stepped before one ready (Node.step_many)."""
        if not self.inflight:
            return
        to = self.rng.choice(self.inflight).to
        ks = [k for k, m in enumerate(self.inflight) if m.to == to][: self.rng.randint(2, 6)]
        msgs = [self.inflight[k] for k in ks]
        for k in reversed(ks):
            del self.inflight[k]
        node = self.nodes[to]
        msgs = [m for m in msgs if (m.frm, m.to) not in self.blocked]
        if node is None or not msgs:
            return
        self.log.append(f"batch of {len(msgs)} to {to}: " + ",".join(m.type.name for m in msgs))
        node.step_many(msgs)

    def _do_drop(self) -> None:
        if self.inflight:
            m = self.inflight.pop(self.rng.randrange(len(self.inflight)))
            self.log.append(f"drop {m.type.name} {m.frm}->{m.to}")

    def _do_dup(self) -> None:
        if self.inflight:
            self._deliver_one(self.rng.randrange(len(self.inflight)), keep=True)

    def _do_tick(self) -> None:
        live = self.live()
        if live:
            i = self.rng.choice(live)
            self.log.append(f"tick {i}")
            self.nodes[i].tick()

    def _do_propose(self) -> None:
        for i in self.live():
            node = self.nodes[i]
            if node.is_leader:
                k = self.rng.randint(1, 3)
                values = []
                for _ in range(k):
                    self.next_value += 1
                    values.append(b"v%d" % self.next_value)
                self.log.append(f"propose {len(values)} at {i}")
                node.propose_many(values)
                return

    def _do_read(self) -> None:
        live = self.live()
        if not live:
            return
        i = self.rng.choice(live)
        self.next_read += 1
        ctx = b"r%d" % self.next_read
        self.reads[ctx] = self.max_commit
        try:
            self.nodes[i].read_index(ctx)
            self.log.append(f"read {ctx!r} at {i}")
        except NotLeader:
            self.reads.pop(ctx, None)

    def _do_crash(self) -> None:
        live = self.live()
        if live:
            i = self.rng.choice(live)
            self.log.append(f"crash {i}")
            self.crash(i)

    def _do_restart(self) -> None:
        down = [i for i in self.ids if self.nodes[i] is None]
        if down:
            i = self.rng.choice(down)
            self.log.append(f"restart {i}")
            self.restart(i)

    def restart(self, i: int) -> None:
        if self.opts.disk is not None:  # recovery from the files, as after a real crash
            self.storages[i].inner.close()
            self.storages[i].inner = self.open_storage(i)
        self.start(i)

    def _do_partition(self) -> None:
        ids = list(self.ids)
        if len(ids) < 2:
            return
        self.rng.shuffle(ids)
        cut = self.rng.randint(1, len(ids) - 1)
        a, b = set(ids[:cut]), set(ids[cut:])
        self.blocked = {(x, y) for x in a for y in b} | {(y, x) for x in a for y in b}
        if self.rng.random() < 0.3:  # sometimes one way only
            self.blocked = {(x, y) for x in a for y in b}
        self.log.append(f"partition {sorted(a)}|{sorted(b)}")

    def _do_heal(self) -> None:
        self.blocked = set()
        self.log.append("heal")

    def _do_persist(self) -> None:
        """Starts a leader's write outside the lock; it lands at a later ``land``."""
        ready = [i for i in sorted(self.want_persist) if self.storages[i].gate is None]
        if ready:
            i = self.rng.choice(ready)
            self.want_persist.discard(i)
            self.log.append(f"persist {i}")
            self.start_persist(i)

    def start_persist(self, i: int) -> None:
        node = self.nodes[i]
        g = _Gate()

        def run() -> None:
            with contextlib.suppress(_Crashed):  # the node crashed during its write
                node.persist()

        g.thread = threading.Thread(target=run, daemon=True)
        self.storages[i].gate = g
        g.thread.start()
        while g.thread.is_alive() and not g.arrived.wait(0.0005):
            pass
        if not g.arrived.is_set():  # nothing to write after all
            g.thread.join()
            self.storages[i].gate = None

    def _do_land(self) -> None:
        busy = [i for i in self.ids if self.storages[i].gate is not None]
        if busy:
            i = self.rng.choice(busy)
            self.log.append(f"land {i}")
            self.land(i)

    def land(self, i: int) -> None:
        g = self.storages[i].gate
        if g is None:
            return
        g.release.set()
        g.thread.join()
        self.storages[i].gate = None

    def _do_compact(self) -> None:
        """Starts a compaction outside the lock; its snapshot is put in force at ``settle``."""
        ready = [i for i in sorted(self.want_compact) if self.storages[i].cgate is None]
        if ready:
            i = self.rng.choice(ready)
            self.want_compact.discard(i)
            self.log.append(f"compact {i}")
            self.start_compact(i)

    def start_compact(self, i: int) -> None:
        node = self.nodes[i]
        g = _Gate()

        def run() -> None:
            with contextlib.suppress(_Crashed):  # the node crashed during its write
                node.compact()

        g.thread = threading.Thread(target=run, daemon=True)
        self.storages[i].cgate = g
        g.thread.start()
        while g.thread.is_alive() and not g.arrived.wait(0.0005):
            pass
        if not g.arrived.is_set():
            g.thread.join()
            self.storages[i].cgate = None

    def _do_settle_compact(self) -> None:
        busy = [i for i in self.ids if self.storages[i].cgate is not None]
        if busy:
            i = self.rng.choice(busy)
            self.log.append(f"compacted {i}")
            self.finish_compact(i)

    def finish_compact(self, i: int) -> None:
        g = self.storages[i].cgate
        if g is None:
            return
        g.release.set()
        g.thread.join()
        self.storages[i].cgate = None

    def _do_flush(self) -> None:
        live = self.live()
        if live:
            i = self.rng.choice(live)
            self.log.append(f"flush sm {i} at {self.sms[i].last}")
            self.sms[i].flush()

    def _do_nudge(self) -> None:
        live = self.live()
        if live:
            self.nodes[self.rng.choice(live)].nudge()

    # -- runs ---------------------------------------------------------------------------------

    def run(self) -> None:
        for _ in range(self.opts.steps):
            self.step_no += 1
            self.action()
            self.check()
        self.settle()

    def settle(self, rounds: int = 400) -> None:
        """Heal, restart everyone, and require progress: liveness."""
        self.blocked = set()
        self.log.append("settle")
        for i in self.ids:
            if self.nodes[i] is None:
                self.restart(i)
        target = None
        for r in range(rounds):
            self.step_no += 1
            # Deliver everything in flight (FIFO), then one tick for everyone.
            for _ in range(len(self.inflight) + 50):
                if not self.inflight:
                    break
                self._deliver_one(0)
                self.check()
                self._drain()
            for i in self.ids:
                self.nodes[i].tick()
                self.check()
                self._drain()
            leaders = [i for i in self.ids if self.nodes[i].is_leader]
            if target is None and leaders and r > 5:
                lead = max(leaders, key=lambda i: self.nodes[i].term)
                self.next_value += 1
                target = self.nodes[lead].propose(b"final%d" % self.next_value)
                self.check()
                self._drain()
            if target is not None and all(self.sms[i].last >= target for i in self.ids):
                if self.committed.get(target, (0, b""))[1].startswith(b"final"):
                    return
                target = None  # that proposal was lost with its leader: propose again
        states = {i: repr(self.nodes[i]) for i in self.ids}
        self.fail(f"no progress after healing: target {target}, {states}")

    def _drain(self) -> None:
        for i in self.ids:
            self.land(i)
            self.finish_compact(i)
        while self.want_persist or self.want_compact:
            for i in sorted(self.want_persist):
                self.want_persist.discard(i)
                self.start_persist(i)
                self.land(i)
            for i in sorted(self.want_compact):
                self.want_compact.discard(i)
                self.start_compact(i)
                self.finish_compact(i)
            self.check()


def options_for(seed: int, steps: int = 1500) -> Options:
    """A mix of driver modes and cluster sizes chosen by the seed."""
    r = random.Random(seed * 7919 + 1)
    return Options(
        n=r.choice((3, 3, 5)),
        steps=steps,
        async_persist=r.random() < 0.5,
        async_compact=r.random() < 0.5,
        pace=r.random() < 0.5,
        max_raft_state=r.choice((None, 120, 300)),
        max_msg_bytes=r.choice((1, 24)),
        durable_sm=r.random() < 0.5,
        pre_vote=r.random() < 0.8,
        check_quorum=r.random() < 0.8,
        # Some seeds are much rougher: more crashes, partitions, losses and elections.
        # (Ticks stay within a small factor of deliveries: an election timeout shorter than a
        # message's trip elects nobody, in any Raft.)
        weights={k: DEFAULT_WEIGHTS[k] * r.choice((1, 1, 3, 8)) for k in ROUGH}
        | {"tick": DEFAULT_WEIGHTS["tick"] * r.choice((0.5, 1, 1, 2))},
    )


def run_seed(seed: int, steps: int = 1500, **overrides) -> World:
    opts = options_for(seed, steps)
    for k, v in overrides.items():
        setattr(opts, k, v)
    w = World(seed, opts)
    try:
        w.run()
    finally:
        w.close()
    return w


if __name__ == "__main__":
    import sys
    import tempfile
    import time

    lo, hi = int(sys.argv[1]), int(sys.argv[2])
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 1500
    disk = len(sys.argv) > 4 and sys.argv[4] == "disk"
    fails = 0
    t0 = time.time()
    for s in range(lo, hi):
        try:
            if disk:
                with tempfile.TemporaryDirectory() as d:
                    run_seed(s, steps, disk=d)
            else:
                run_seed(s, steps)
        except Violation as e:
            fails += 1
            print(f"FAIL seed {s} {options_for(s, steps)}: {e}".split("\n  last")[0], flush=True)
        except Exception as e:  # a crash of the code under test is a finding too
            fails += 1
            print(f"ERROR seed {s} {options_for(s, steps)}: {type(e).__name__}: {e}", flush=True)
    print(f"{hi - lo} seeds, {fails} failures, {time.time() - t0:.1f}s")
