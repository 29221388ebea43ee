"""Raft benchmarks: entries committed per second by three nodes in one process, and the CPU cost
of consensus itself.

Groups:

- ``raft commit, 3 nodes, batch N`` (N = 1, 16, 256): three :class:`~keyval.raft.node.Node`
  drivers on the deterministic :class:`~keyval.raft.simnet.SimNet` (reliable links, 0-2 ms of
  *simulated* delay, which costs no real time), a state machine that only counts. One round:
  ``propose_many`` of N entries of 100 B at the leader, then the network runs until the leader
  has applied the last of them (so a majority has made them durable). The rate is entries per
  second of wall-clock time. ``keyval`` is every node on its own
  :class:`~keyval.raft.storage.RaftStorage` (sync="always": every save is fdatasynced before
  the driver sends a message that promises it); ``MemoryStorage (no disk)`` is the same cluster
  on :class:`~keyval.raft.memory.MemoryStorage`, the ceiling without a disk (a reference, not a
  peer). One process and one thread: the nodes' fsyncs run one after another, never overlap.
- ``raft core alone, 3 nodes, batch N``: three :class:`~keyval.raft.core.RaftCore` wired by
  direct calls (no driver, no network, no clock), each ready batch "persisted" into
  MemoryStorage (a list extend). The round time is CPU time (``time.process_time``), so the
  rate is entries committed per CPU second and ``detail`` gives CPU microseconds per entry.
  MemoryStorage and the loop that carries messages are in the round too: about a fifth of it
  under cProfile, so the core's own cost is somewhat lower than reported.

The issue states no numeric goal for these, so none is declared. Sizes follow
``KEYVAL_BENCH_SCALE`` (tiny | quick | full).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from bench import by_scale
from keyval.raft.core import Config, RaftCore, Role
from keyval.raft.memory import MemoryStorage
from keyval.raft.messages import Message
from keyval.raft.simnet import SimNet
from keyval.raft.storage import RaftStorage

ENTRY_SIZE = 100
BATCH_SIZES = (1, 16, 256)
NODES = 3
SEED = 1
# Entries committed before timing starts: elections over, the log and caches warm.
WARMUP_ROUNDS = by_scale(tiny=1, quick=5, full=20)
# Rounds per case, scaled so that a round of N entries costs about the same in every group.
CLUSTER_ROUNDS = {
    1: by_scale(tiny=3, quick=100, full=500),
    16: by_scale(tiny=3, quick=50, full=250),
    256: by_scale(tiny=2, quick=10, full=50),
}
# The core alone commits this many entries per round (whole batches of the case's size).
CORE_ENTRIES_PER_ROUND = by_scale(tiny=256, quick=4096, full=16384)
CORE_ROUNDS = by_scale(tiny=2, quick=10, full=30)
# Simulated milliseconds a round may take before it counts as stuck (a reliable network
# commits in a few: 0-2 ms per message).
ROUND_TIMEOUT_MS = 10_000
ELECTION_TIMEOUT_MS = 5_000
# Longest wait for each WAL to pre-write its next segment after open (see _await_wal_ready).
STEADY_STATE_TIMEOUT = 30.0

KEYVAL, MEMORY = "keyval", "MemoryStorage (no disk)"
SYSTEMS = (KEYVAL, MEMORY)

METHOD = {
    KEYVAL: "3 Nodes on SimNet in one thread, each on RaftStorage (keyval.wal, sync=always; "
    "every ready batch durable before its messages go out); propose_many at the leader, run "
    "until the leader applied the batch; wall clock",
    MEMORY: "the same cluster and workload on MemoryStorage: no disk, the consensus CPU ceiling",
}
CORE_METHOD = (
    "3 RaftCores wired by direct step/ready/advance calls, no driver, network or clock; ready "
    "entries appended to MemoryStorage; propose N at the leader and exchange messages until "
    "quiet; CPU time (time.process_time), of which MemoryStorage and the message loop take "
    "about a fifth (cProfile)"
)


def group_cluster(batch: int) -> str:
    return f"raft commit, {NODES} nodes, batch {batch}"


def group_core(batch: int) -> str:
    return f"raft core alone, {NODES} nodes, batch {batch}"


def payloads(count: int) -> list[bytes]:
    """The same pseudo-random (incompressible) 100 B entries for every system."""
    rng = random.Random(0)
    return [rng.randbytes(ENTRY_SIZE) for _ in range(count)]


def params(system: str, batch: int, sync: str) -> dict:
    return {
        "system": system,
        "ops": batch,
        "op_name": "entries",
        "sync": sync,
        "batch": batch,
        "record_size": ENTRY_SIZE,
        "key_count": "-",
        "threads": 1,
    }


# ----------------------------------------------------------------------------------------------
# Three nodes on the simulated network


def _await_wal_ready(storage: RaftStorage) -> None:
    """Wait until the WAL under ``storage`` has pre-written its next segment.

    A new WAL zero-fills its next 64 MiB segment in the background; a long-running node pays
    that once per 64 MiB, while a case lasting seconds would measure three of them competing
    with its fsyncs (bench/test_raft_storage.py waits the same way). RaftStorage does not
    expose its WAL, hence the private attribute.
    """
    deadline = time.monotonic() + STEADY_STATE_TIMEOUT
    while time.monotonic() < deadline:
        if storage._wal.stats().get("next_segment_prepared", True):
            return
        time.sleep(0.001)


def _wal_fsyncs(net: SimNet) -> int:
    return sum(st._wal.stats()["fsyncs"] for st in net.storages.values())


def _start_cluster(system: str, directory: Path) -> SimNet:
    if system == KEYVAL:
        net = SimNet(
            NODES, seed=SEED, tick_ms=10, storage_factory=lambda i: RaftStorage(directory / f"{i}")
        )
        for st in net.storages.values():
            _await_wal_ready(st)
    else:
        net = SimNet(NODES, seed=SEED, tick_ms=10)
    if not net.run_until(lambda: net.leader() is not None, ELECTION_TIMEOUT_MS):
        raise AssertionError(f"no leader within {ELECTION_TIMEOUT_MS} simulated ms")
    return net


def _commit_batch(net: SimNet, lead: int, batch: list[bytes]) -> None:
    """Propose ``batch`` at ``lead`` and run the network until the leader applied all of it."""
    indexes = net.propose_many(lead, batch)
    if indexes is None:
        # A leader change would make the rest of the run measure elections, not commits.
        raise AssertionError(f"node {lead} lost leadership during the benchmark")
    node = net.nodes[lead]
    last = indexes[-1]
    if not net.run_until(lambda: node.applied >= last, ROUND_TIMEOUT_MS):
        raise AssertionError(f"entries up to {last} not applied on the leader in time")


@pytest.mark.parametrize("batch", BATCH_SIZES)
@pytest.mark.parametrize("system", SYSTEMS)
def test_cluster_commit(benchmark, bench_dir: Path, system: str, batch: int) -> None:
    """Entries of 100 B committed per second by 3 nodes (leader applied), N per proposal."""
    net = _start_cluster(system, bench_dir)
    lead = net.leader()
    entries = payloads(batch)
    rounds = CLUSTER_ROUNDS[batch]
    for _ in range(WARMUP_ROUNDS):
        _commit_batch(net, lead, entries)
    fsyncs_before = _wal_fsyncs(net) if system == KEYVAL else 0

    benchmark.group = group_cluster(batch)
    benchmark.extra_info.update(
        params(system, batch, "fdatasync per save" if system == KEYVAL else "none (memory)"),
        method=METHOD[system],
        reference=system == MEMORY,
        plot="raft_commit_vs_batch",
        plot_x="batch",
    )
    try:
        benchmark.pedantic(_commit_batch, args=(net, lead, entries), rounds=rounds)
        if system == KEYVAL:
            per_batch = (_wal_fsyncs(net) - fsyncs_before) / rounds
            benchmark.extra_info["fsyncs_per_batch"] = per_batch
            benchmark.extra_info["detail"] = f"{per_batch:.1f} fsyncs per batch, 3 nodes"
    finally:
        for st in net.storages.values():
            st.close()


# ----------------------------------------------------------------------------------------------
# The core alone


class DirectCluster:
    """Three cores passing messages by direct calls, each ready batch carried out as the driver
    would (persist, send, apply), with MemoryStorage as the disk and no state machine."""

    def __init__(self, n: int) -> None:
        ids = tuple(range(1, n + 1))
        self.storages = {i: MemoryStorage() for i in ids}
        self.cores = {
            i: RaftCore(Config(id=i, peers=ids), self.storages[i], random.Random(i)) for i in ids
        }
        self.applied = dict.fromkeys(ids, 0)
        self.cores[1].campaign()
        self.settle([m for i in ids for m in self.flush(i)])
        if self.cores[1].role is not Role.LEADER:
            raise AssertionError("node 1 did not win the election")
        self.leader = self.cores[1]

    def flush(self, i: int) -> list[Message]:
        core, st = self.cores[i], self.storages[i]
        out: list[Message] = []
        while core.has_ready():
            rd = core.ready()
            if rd.entries:
                st.append(list(rd.entries))
            if rd.hard_state is not None:
                st.set_hard_state(rd.hard_state)
            out.extend(rd.messages)
            if rd.committed_entries:
                self.applied[i] = rd.committed_entries[-1].index
            core.advance(rd)
        return out

    def settle(self, msgs: list[Message]) -> None:
        """Deliver ``msgs`` and everything they cause, until no message is left."""
        cores = self.cores
        while msgs:
            out = []
            for m in msgs:
                cores[m.to].step(m)
                out.extend(self.flush(m.to))
            msgs = out

    def commit(self, batch: list[bytes]) -> None:
        """Propose ``batch`` at the leader and exchange messages until it applied them."""
        propose = self.leader.propose
        for data in batch:
            last = propose(data)
        self.settle(self.flush(self.leader.id))
        if self.applied[self.leader.id] < last:
            raise AssertionError(f"entries up to {last} not committed after the exchange")


@pytest.mark.benchmark(timer=time.process_time)
@pytest.mark.parametrize("batch", BATCH_SIZES)
def test_core_alone(benchmark, batch: int) -> None:
    """CPU cost of consensus per committed entry: the core's step/ready/advance with the
    driver's duties reduced to list appends."""
    cluster = DirectCluster(NODES)
    entries = payloads(batch)
    batches = max(1, CORE_ENTRIES_PER_ROUND // batch)
    for _ in range(WARMUP_ROUNDS):
        cluster.commit(entries)

    def one_round() -> None:
        for _ in range(batches):
            cluster.commit(entries)

    benchmark.group = group_core(batch)
    benchmark.extra_info.update(
        params(KEYVAL, batches * batch, "none (memory)"),
        batch=batch,
        method=CORE_METHOD,
        plot="raft_core_cpu_vs_batch",
        plot_x="batch",
    )
    benchmark.pedantic(one_round, rounds=CORE_ROUNDS, warmup_rounds=1)
    us = benchmark.stats.stats.median * 1e6 / (batches * batch)
    benchmark.extra_info["cpu_us_per_entry"] = us
    benchmark.extra_info["detail"] = f"{us:.1f} µs CPU per entry, rate per CPU second"
