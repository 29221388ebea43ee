"""Cluster benchmarks: 3 real nodes on 127.0.0.1, keyval beside PySyncObj (issue 6, "Speed").

Throughput (groups ``cluster-put-1-client`` and ``cluster-put-64-clients``): ``T`` client threads
in the pytest process put ``OPS`` distinct keys with 100 B values (``OPS / T`` each, one op in
flight per thread), each put acknowledged only once the cluster has committed and applied it.
Each thread has its own connection(s); they are opened in a warm-up round that is not timed.
Every put's own time is recorded, and the suite reports p50/p99 put latency over all timed
rounds (``extra_info`` ``p50_ms``/``p99_ms`` and the case's ``detail``).

- ``keyval``: a :class:`~keyval.kv.local.LocalCluster` of 3 ``keyval serve`` processes (WAL
  ``sync=always``: an entry is fdatasync'ed on a majority before it is acknowledged); each
  thread has its own :class:`keyval.Client` (which finds the leader itself).
- ``pysyncobj``: 3 processes of :mod:`bench.peers.pysyncobj_node` (``SyncObj`` + ``ReplDict``,
  ``journalFile`` on). PySyncObj has no client library: an application embeds a node and calls
  ``set(..., sync=True)``. Running the 64 client threads inside a node process would spare
  PySyncObj the client round trip keyval pays and put the clients on the leader's GIL, so
  instead each node serves a minimal framed TCP protocol and calls ``set(key, value,
  sync=True)`` for each request: the same path as keyval (client -> TCP -> node -> Raft ->
  applied -> reply). Each thread connects to the leader (asked via the node's status), as
  keyval's client ends up doing. The nodes run with ``appendEntriesUseBatch=False`` (each
  command replicated at once): with the default (commands gathered for ``appendEntriesPeriod``,
  0.1 s) one client gets ~10 puts/s (p50 ~100 ms) and 64 clients ~570 puts/s on this machine,
  2-90x slower, so the default would not be a fair peer. PySyncObj's journal is *not durable*:
  it is an ``mmap`` never ``msync``'ed on the append path (see :mod:`bench.peers.pysyncobj_node`),
  so its numbers are not "while durable"; keyval's are.

The machine has 2 cores: 64 client threads share the pytest process's GIL with the two
clients' Python code, and the 3 servers share the cores with them; both systems pay that alike.

Restart (groups ``cluster-restart-replay``, ``cluster-restart``): a node whose Raft log holds
``KEYVAL_BENCH_SCALE``'s bytes of committed entries after a snapshot. Built by running a real
cluster, stopping it, snapshotting each node's KV state into its RaftStorage and then appending
the same committed entries (valid KV puts, 1,000 B values) to every node's RaftStorage directly
(a real cluster would take hours to write 1 GiB through the client). ``--max-raft-state`` is
raised so no node compacts the log away. Timed: from ``Popen`` of the node's ``keyval serve``
to its status showing a known leader and ``applied`` at the log's end, then a ``get`` through
the cluster succeeding.

- ``cluster-restart-replay``: the first start after the build: the node's ``kv.db`` is at the
  snapshot, so it replays the whole log into it (the worst case: a node whose state machine
  lags its whole log).
- ``cluster-restart``: the same node SIGKILLed and started again: the log is as big, ``kv.db``
  is current (up to the ~100 ms of unflushed batch), so it opens the log and replays little.

Sizes (``RESTART_LOG_BYTES``, bytes of entry data): tiny 4 MiB, quick 64 MiB, full 1 GiB. At
full size the two restart cases take ~2 minutes of the 15-minute ``--full`` budget on this
machine (building 3 logs, the two other nodes replaying theirs, the measured replay ~25 s:
the driver replays the log in 16 MiB chunks, one KV transaction each).

The goals are declared in ``BENCH_GOALS`` and reported, never asserted.
"""

from __future__ import annotations

import json
import os
import queue
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench import SCRATCH_ENV, Goal, by_scale, scale
from bench.peers.pysyncobj_node import put_request, read_frame, write_frame
from keyval.diskcheck import percentile
from keyval.kv.client import Client
from keyval.kv.local import LocalCluster, free_ports
from keyval.kv.state import PUT, Command, KVStateMachine, register_command
from keyval.raft.records import Entry, HardState, Snapshot
from keyval.raft.storage import RaftStorage

KEYVAL, PYSYNCOBJ = "keyval", "pysyncobj"
SYSTEMS = (KEYVAL, PYSYNCOBJ)
VALUE_SIZE = 100
CLIENTS = (1, 64)
# Puts per timed round, per client count (split evenly among the client threads).
OPS = {
    1: by_scale(tiny=30, quick=150, full=1_500),
    64: by_scale(tiny=128, quick=1_280, full=12_800),
}
ROUNDS = by_scale(tiny=1, quick=2, full=5)
WARMUP_OPS_PER_CLIENT = 2
START_TIMEOUT = 60.0  # seconds for a cluster to elect a leader and answer
OP_TIMEOUT = 30.0  # seconds one client op may take before the case fails

RESTART_LOG_BYTES = by_scale(tiny=4 << 20, quick=16 << 20, full=1 << 30)
RESTART_VALUE_SIZE = 1000
RESTART_ROUNDS = by_scale(tiny=1, quick=1, full=3)
RESTART_TIMEOUT = by_scale(tiny=60.0, quick=120.0, full=600.0)
BUILD_BATCH = 5_000  # entries per RaftStorage.append while building the log
NO_COMPACTION = str(1 << 40)  # --max-raft-state: keep the whole log (the thing measured)

GROUP_PUT = {1: "cluster-put-1-client", 64: "cluster-put-64-clients"}
GROUP_RESTART_REPLAY = "cluster-restart-replay"
GROUP_RESTART = "cluster-restart"

BENCH_GOALS = [
    Goal(
        f"Put throughput, {n} concurrent client{'s' if n > 1 else ''}, 3 nodes on 127.0.0.1, "
        f"{VALUE_SIZE} B values: keyval (fsync on) >= PySyncObj (journal file on), while durable",
        group=GROUP_PUT[n],
        baseline_system=PYSYNCOBJ,
        factor=1.0,
    )
    for n in CLIENTS
]

METHOD = {
    KEYVAL: "3 `keyval serve` processes (LocalCluster, WAL sync=always); one keyval.Client per "
    "client thread in the pytest process; put = committed on a fsynced majority and applied",
    PYSYNCOBJ: "3 processes of bench/peers/pysyncobj_node.py (SyncObj + ReplDict, "
    "appendEntriesUseBatch=False, journalFile on, which is an mmap never msync'ed: NOT "
    "durable); one TCP connection per client thread to the leader, which runs "
    "ReplDict.set(key, value, sync=True) per request",
}


def _scratch_root() -> Path:
    root = Path(os.environ.get(SCRATCH_ENV) or Path(__file__).resolve().parent / "results/scratch")
    root.mkdir(parents=True, exist_ok=True)
    return root


# ----------------------------------------------------------------------------------------------
# Client threads


class Workers:
    """``n`` long-lived threads, each with its own client (made by ``make_client`` on that
    thread), running one job per round: connections survive from round to round."""

    def __init__(self, n: int, make_client: Callable[[], object]) -> None:
        self._jobs: list[queue.Queue] = [queue.Queue() for _ in range(n)]
        self._results: queue.Queue = queue.Queue()
        self._make_client = make_client
        self._threads = [
            threading.Thread(target=self._loop, args=(q,), daemon=True, name=f"bench-client-{i}")
            for i, q in enumerate(self._jobs)
        ]
        for t in self._threads:
            t.start()

    def _loop(self, jobs: queue.Queue) -> None:
        client = None
        while True:
            job = jobs.get()
            if job is None:
                if client is not None and hasattr(client, "close"):
                    client.close()
                return
            try:
                if client is None:
                    client = self._make_client()
                self._results.put(job(client))
            except BaseException as exc:  # handed to the caller, which fails the case
                self._results.put(exc)

    def run(self, jobs: list[Callable[[object], list[float]]]) -> list[float]:
        """Runs ``jobs[i]`` on thread ``i``; every op's latency (s) of every job."""
        for q, job in zip(self._jobs, jobs, strict=True):
            q.put(job)
        latencies: list[float] = []
        for _ in jobs:
            result = self._results.get(timeout=OP_TIMEOUT * 10)
            if isinstance(result, BaseException):
                raise result
            latencies += result
        return latencies

    def close(self) -> None:
        for q in self._jobs:
            q.put(None)
        for t in self._threads:
            t.join(timeout=5)


def put_job(keys: list[bytes], value: bytes) -> Callable[[object], list[float]]:
    def job(client) -> list[float]:
        out = []
        for key in keys:
            started = time.perf_counter()
            client.put(key, value)
            out.append(time.perf_counter() - started)
        return out

    return job


# ----------------------------------------------------------------------------------------------
# The systems


class PeerError(Exception):
    pass


class PySyncObjClient:
    """One connection to a :mod:`bench.peers.pysyncobj_node`; one request at a time."""

    def __init__(self, address: tuple[str, int]) -> None:
        self._sock = socket.create_connection(address, timeout=OP_TIMEOUT)

    def put(self, key: bytes, value: bytes) -> None:
        write_frame(self._sock, put_request(key, value))
        reply = read_frame(self._sock)
        if reply != b"OK":
            raise PeerError(f"pysyncobj put failed: {reply!r}")

    def status(self) -> dict:
        write_frame(self._sock, b"S")
        reply = read_frame(self._sock)
        if reply is None:
            raise PeerError("pysyncobj node closed the connection")
        return json.loads(reply)

    def close(self) -> None:
        self._sock.close()


class PySyncObjCluster:
    """3 PySyncObj node processes on 127.0.0.1, journal files under ``root``."""

    def __init__(self, root: Path, size: int = 3) -> None:
        ports = free_ports(2 * size)
        self.raft = [f"127.0.0.1:{p}" for p in ports[:size]]
        self.serve = [("127.0.0.1", p) for p in ports[size:]]
        self.root = root
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        for i, (raft, serve) in enumerate(zip(self.raft, self.serve, strict=True)):
            partners = ",".join(a for a in self.raft if a != raft)
            self.procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "bench.peers.pysyncobj_node",
                        "--raft",
                        raft,
                        "--partners",
                        partners,
                        "--serve",
                        f"{serve[0]}:{serve[1]}",
                        "--dir",
                        str(self.root / f"node{i + 1}"),
                        "--no-batch",
                    ],
                    stdout=subprocess.DEVNULL,
                    cwd=Path(__file__).resolve().parent.parent,
                )
            )

    def leader(self, timeout: float = START_TIMEOUT) -> tuple[str, int]:
        """The serve address of the node every node agrees leads."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leaders = set()
            try:
                for addr in self.serve:
                    c = PySyncObjClient(addr)
                    try:
                        leaders.add(c.status()["leader"])
                    finally:
                        c.close()
            except (OSError, PeerError):
                leaders = set()
            if len(leaders) == 1 and None not in leaders:
                return self.serve[self.raft.index(leaders.pop())]
            time.sleep(0.1)
        raise AssertionError(f"pysyncobj: no agreed leader within {timeout} s")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _start_keyval(root: Path) -> tuple[Callable[[], object], Callable[[], None]]:
    cluster = LocalCluster(str(root))
    cluster.start()
    try:
        cluster.wait_for_leader(timeout=START_TIMEOUT)
        addresses = list(cluster.addresses.values())
        return (lambda: Client(addresses, timeout=OP_TIMEOUT)), cluster.stop
    except BaseException:
        cluster.stop()
        raise


def _start_pysyncobj(root: Path) -> tuple[Callable[[], object], Callable[[], None]]:
    pytest.importorskip("pysyncobj", reason="pysyncobj is not installed (pip install pysyncobj)")
    cluster = PySyncObjCluster(root)
    cluster.start()
    try:
        leader = cluster.leader()
        return (lambda: PySyncObjClient(leader)), cluster.stop
    except BaseException:
        cluster.stop()
        raise


STARTERS = {KEYVAL: _start_keyval, PYSYNCOBJ: _start_pysyncobj}


@pytest.fixture
def cluster_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cluster-", dir=_scratch_root()))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Throughput and latency


@pytest.mark.parametrize("clients", CLIENTS)
@pytest.mark.parametrize("system", SYSTEMS)
def test_put(benchmark, cluster_dir: Path, system: str, clients: int) -> None:
    benchmark.group = GROUP_PUT[clients]  # before pedantic(), which records it
    make_client, stop = STARTERS[system](cluster_dir)
    workers = None
    try:
        workers = Workers(clients, make_client)
        value = random.Random(0).randbytes(VALUE_SIZE)
        per_client = OPS[clients] // clients
        rounds = iter(range(1, ROUNDS + 2))

        def jobs(tag: str) -> list:
            count = WARMUP_OPS_PER_CLIENT if tag == "w" else per_client
            return [
                put_job([b"%s-%d-%d" % (tag.encode(), t, i) for i in range(count)], value)
                for t in range(clients)
            ]

        workers.run(jobs("w"))  # connections, leader discovery: not timed
        latencies: list[float] = []

        def setup():
            return (jobs(f"r{next(rounds)}"),), {}

        def round_(job_list) -> None:
            latencies.extend(workers.run(job_list))

        benchmark.pedantic(round_, setup=setup, rounds=ROUNDS, iterations=1)
    finally:
        if workers is not None:
            workers.close()
        stop()
    latencies.sort()
    p50, p99 = percentile(latencies, 50) * 1e3, percentile(latencies, 99) * 1e3
    benchmark.extra_info.update(
        system=system,
        ops=per_client * clients,
        op_name="puts",
        threads=clients,
        record_size=VALUE_SIZE,
        sync="fsync" if system == KEYVAL else "none (mmap, no msync)",
        p50_ms=round(p50, 3),
        p99_ms=round(p99, 3),
        detail=f"{VALUE_SIZE} B values, p50/p99 per put under Latency",
        method=METHOD[system],
        plot="cluster_throughput_vs_clients",
        plot_x="threads",
    )
    print(f"\n{system} {clients} clients: p50 {p50:.2f} ms p99 {p99:.2f} ms")


# ----------------------------------------------------------------------------------------------
# Restart with a large log


def _wait_all_applied(cluster: LocalCluster, timeout: float) -> int:
    """Waits until every node reports the same applied index as the others and as its own
    last index; returns it."""
    deadline = time.monotonic() + timeout
    with cluster.client(timeout=2.0) as c:
        while time.monotonic() < deadline:
            st = c.status()
            if all("error" not in s for s in st):
                applied = {s["applied"] for s in st} | {s["last_index"] for s in st}
                if len(applied) == 1:
                    return applied.pop()
            time.sleep(0.05)
    raise AssertionError(f"the nodes did not converge within {timeout} s")


def _grow_log(node_dir: str, log_bytes: int) -> tuple[int, int]:
    """Snapshot the node's KV state into its RaftStorage, then append ``log_bytes`` of
    committed KV puts after it (the same on every node). Returns (last index, entry bytes)."""
    kv = KVStateMachine(os.path.join(node_dir, "kv.db"))
    try:
        applied, snap_data = kv.applied_index, kv.snapshot()
    finally:
        kv.close()
    value = random.Random(1).randbytes(RESTART_VALUE_SIZE)
    with RaftStorage(os.path.join(node_dir, "raft")) as st:
        if st.last_index != applied:
            raise AssertionError(f"{node_dir}: log ends at {st.last_index}, kv at {applied}")
        term = st.term(st.last_index)
        hs = st.hard_state()
        st.save_snapshot(Snapshot(applied, term, snap_data))
        index, written, seq = applied + 1, 0, 0
        st.append([Entry(index, term, register_command().encode())])  # a client's session
        client = index  # a session's id is its REGISTER entry's index
        while written < log_bytes:
            batch = []
            for _ in range(BUILD_BATCH):
                index += 1
                seq += 1
                data = Command(PUT, client, seq, b"restart-%09d" % seq, value).encode()
                batch.append(Entry(index, term, data))
                written += len(data)
            st.append(batch)
        st.set_hard_state(HardState(hs.term, hs.vote, index))
        return index, written


@pytest.fixture(scope="module")
def big_log_cluster() -> Iterator[dict]:
    root = Path(tempfile.mkdtemp(prefix="cluster-restart-", dir=_scratch_root()))
    cluster = LocalCluster(str(root), extra_args=("--max-raft-state", NO_COMPACTION))
    state: dict = {"cluster": cluster, "restarted": cluster.ids[-1]}
    try:
        cluster.start()
        cluster.wait_for_leader(timeout=START_TIMEOUT)
        with cluster.client(timeout=OP_TIMEOUT) as c:
            for i in range(10):
                c.put(b"seed-%d" % i, b"x" * VALUE_SIZE)
        _wait_all_applied(cluster, START_TIMEOUT)
        cluster.stop()
        lasts = {_grow_log(cluster.dirs[i], RESTART_LOG_BYTES) for i in cluster.ids}
        assert len(lasts) == 1, lasts
        state["last_index"], written = lasts.pop()
        state["log_mib"] = written / 2**20
        wal = Path(cluster.dirs[state["restarted"]]) / "raft"
        state["dir_mib"] = sum(p.stat().st_size for p in wal.rglob("*") if p.is_file()) / 2**20
        # The other two replay their logs before the measured node starts (not timed).
        others = [i for i in cluster.ids if i != state["restarted"]]
        cluster.procs.clear()
        cluster.start(others)
        cluster.wait_for_leader(timeout=RESTART_TIMEOUT)
        yield state
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def _time_restart(state: dict) -> float:
    cluster: LocalCluster = state["cluster"]
    node = state["restarted"]
    target = state["last_index"]
    own = Client([cluster.addresses[node]], timeout=2.0)
    started = time.perf_counter()
    cluster.start([node])
    deadline = time.monotonic() + RESTART_TIMEOUT
    try:
        while time.monotonic() < deadline:
            if cluster.procs[node].poll() is not None:
                raise AssertionError(f"node {node} exited with {cluster.procs[node].returncode}")
            st = own.status()[0]
            if "error" not in st and st.get("leader") and st["applied"] >= target:
                with cluster.client(timeout=OP_TIMEOUT) as c:
                    c.get(b"seed-0")
                return time.perf_counter() - started
            time.sleep(0.01)
        raise AssertionError(f"node {node} not serving within {RESTART_TIMEOUT} s")
    finally:
        own.close()


def _restart_info(benchmark, state: dict, what: str) -> None:
    entries = state["last_index"]
    benchmark.extra_info.update(
        system=KEYVAL,
        sync="fsync",
        record_size=RESTART_VALUE_SIZE,
        detail=f"{state['log_mib']:.0f} MiB of entry data after a snapshot ({entries:,} entries; "
        f"raft/ dir {state['dir_mib']:.0f} MiB with preallocated segments), {what}; "
        f"scale {scale()}",
        method="SIGKILL one node of a 3-node LocalCluster, time from Popen of `keyval serve` to "
        "its status showing a leader and applied = last index, then a get",
    )


def test_restart_replaying_log(benchmark, big_log_cluster: dict) -> None:
    state = big_log_cluster
    benchmark.group = GROUP_RESTART_REPLAY
    benchmark.pedantic(lambda: _time_restart(state), rounds=1, iterations=1)
    _restart_info(benchmark, state, "kv.db at the snapshot: the whole log replayed")


def test_restart(benchmark, big_log_cluster: dict) -> None:
    state = big_log_cluster
    cluster: LocalCluster = state["cluster"]
    node = state["restarted"]
    if node not in cluster.procs or cluster.procs[node].poll() is not None:
        _time_restart(state)  # the replay case did not run: bring kv.db up to date first

    def kill():
        cluster.kill([node])
        return (), {}

    benchmark.group = GROUP_RESTART
    benchmark.pedantic(lambda: _time_restart(state), setup=kill, rounds=RESTART_ROUNDS)
    _restart_info(benchmark, state, "kv.db current (SIGKILL, restart)")
