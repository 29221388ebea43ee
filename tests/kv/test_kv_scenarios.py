"""The KV lab scenarios (issue 6, "Proven by") on the simulated network, seeded.

Each scenario runs KVServices on SimNet with simulated clients (tests/kv/kvsim.py), checks its
own property (exactly-once appends in per-client order, a minority leader never answering,
bounded Raft state, ...) and hands the history of simulated call/return times to the
linearizability checker. Every scenario is deterministic for its seed, derived from the test's
name and ``KEYVAL_KV_SEED`` (default 0); a failure names ``seed=`` and the simulated time.

Heavier variants (more rounds, more seeds, durable Raft storage) are marked ``torture``.

Timing is SimNet's default: a 50 ms tick, heartbeats every 2 ticks (100 ms, the lab's limit of
ten a second) and election timeouts of 10-20 ticks (0.5-1 s); messages take 0-2 ms, or 0-26 ms
with 10% loss each way on an unreliable network, and clients' requests and replies likewise.
"""

from __future__ import annotations

import itertools

import pytest

from keyval.kv.linearizability import APPEND, GET, PUT
from keyval.raft.messages import MsgType

from .kvsim import (
    ELECTION_TIMEOUT_MS,
    NOT_FOUND,
    OK,
    Cluster,
    appender,
    check_appends,
    parse_appends,
    scenario_seed,
)

SPEED_LIMIT_MS = 33  # the lab's bound on one operation when nothing fails: a third of a heartbeat


@pytest.fixture
def seed(request) -> int:
    return scenario_seed(request.node.name)


@pytest.fixture
def make(seed, tmp_path):
    """``make(n, **options)`` -> a Cluster on this test's seed, closed after the test."""
    made: list[Cluster] = []

    def make(n: int, **options) -> Cluster:
        c = Cluster(n, seed, tmp_path / f"cluster{len(made)}", **options)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def start_appenders(c: Cluster, clients, think_ms: int = 10) -> None:
    """Each client appends to its own key ``k<id>`` and reads it back (the lab's loop)."""
    c.start_workers({ck: appender(ck, b"k%d" % ck.id) for ck in clients}, think_ms=think_ms)


def finish_and_check_appends(c: Cluster, clients) -> None:
    """Heal everything, let each client's last request complete, check that each client's key
    holds its appends exactly once and in order, then that the history is linearizable."""
    c.net.heal()
    c.stop_workers()
    reader = c.client()
    for ck in clients:
        tag = b"%d" % ck.id
        check_appends(c, c.get(reader, b"k%d" % ck.id), {tag: ck.appended.get(tag, 0)})
    if sum(ck.appended.get(b"%d" % ck.id, 0) for ck in clients) < 5 * len(clients):
        c.fail(f"too little progress: {[ck.appended for ck in clients]}")
    c.check_linearizable()


# -- basic ------------------------------------------------------------------------------------


def test_basic_operations_of_one_client(make):
    c = make(3)
    c.wait_leader()
    ck = c.client()
    assert c.get(ck, b"a") is None
    assert c.put(ck, b"a", b"1") == OK
    assert c.get(ck, b"a") == b"1"
    assert c.append(ck, b"a", b"2") == OK
    assert c.append(ck, b"new", b"x") == OK
    assert c.get(ck, b"a") == b"12"
    assert c.get(ck, b"new") == b"x"
    assert c.put(ck, b"a", b"3") == OK
    assert c.delete(ck, b"a") == OK
    assert c.delete(ck, b"a") == NOT_FOUND
    assert c.get(ck, b"a") is None
    c.start_workers({ck: appender(ck, b"k")})
    c.run_for(2_000)
    c.stop_workers()
    check_appends(c, c.get(ck, b"k"), {b"1": ck.appended[b"1"]})
    c.check_linearizable()


@pytest.mark.parametrize("paced", [False, True], ids=["unpaced", "paced"])
def test_one_client_is_fast(make, paced):
    """1,000 sequential appends, each well under 33 ms of simulated time: a write must not
    wait for a heartbeat (100 ms) to be replicated or committed. Paced (as the TCP server
    runs its nodes), a write must not wait for a tick either."""
    c = make(3, pace_followers=paced)
    c.wait_leader()
    ck = c.client()
    c.put(ck, b"k", b"")
    start, worst = c.net.now, 0
    for j in range(1_000):
        t = c.net.now
        c.append(ck, b"k", b"x 1 %d y" % j)
        worst = max(worst, c.net.now - t)
    per_op = (c.net.now - start) / 1_000
    if worst >= SPEED_LIMIT_MS or per_op >= SPEED_LIMIT_MS / 3:
        c.fail(f"appends took {per_op:.1f} ms on average, {worst} ms at worst")
    got = c.get(ck, b"k")
    check_appends(c, got, {b"1": 1_000})
    c.check_linearizable()


# -- many clients, faults -----------------------------------------------------------------------


def test_concurrent_clients(make):
    c = make(5)
    c.wait_leader()
    clients = [c.client() for _ in range(5)]
    start_appenders(c, clients)
    c.run_for(5_000)
    finish_and_check_appends(c, clients)


def test_concurrent_clients_on_an_unreliable_network(make):
    c = make(5, unreliable=True)
    c.wait_leader()
    clients = [c.client() for _ in range(5)]
    start_appenders(c, clients)
    c.run_for(20_000)
    finish_and_check_appends(c, clients)


def test_one_key_appended_by_five_clients_at_once(make):
    """Unreliable network, five clients appending ten values each to one key at the same
    time: every value lands exactly once, each client's in its order. (Each client reads the
    key after each append: with appends alone, the checker would have to try every
    interleaving of the concurrent appends against the one final read.)"""
    c = make(5, unreliable=True)
    c.wait_leader()
    clients = [c.client() for _ in range(5)]
    c.start_workers({ck: appender(ck, b"k", count=10, get_every=1, shared=True) for ck in clients})
    c.run_until(lambda: not any(ck.working for ck in clients), 60_000, "appends not done")
    got = c.get(c.client(), b"k")
    check_appends(c, got, {b"%d" % ck.id: 10 for ck in clients})
    if len({tag for tag, _ in parse_appends(got)[:10]}) < 2:
        c.fail(f"the clients did not interleave: {got!r}")
    c.check_linearizable()


def test_a_leader_in_a_minority_does_not_answer(make):
    """The leader cut off with one follower must answer neither a put nor a get; the put it
    took completes after the partition heals (retried with the same sequence number)."""
    c = make(5)
    lead = c.wait_leader()
    ck = c.client()
    assert c.put(ck, b"1", b"13") == OK
    others = [i for i in c.net.ids if i != lead]
    minority, majority = {lead, others[0]}, set(others[1:])
    c.net.partition(majority, minority)
    ck1 = c.client(reach=majority)
    assert c.put(ck1, b"1", b"14") == OK
    assert c.get(ck1, b"1") == b"14"

    ck2a, ck2b = c.client(reach=minority), c.client(reach=minority)
    ck2a.target = ck2b.target = lead  # straight to the old leader, which still thinks it leads
    put_done: list[object] = []
    get_done: list[object] = []
    put = ck2a.start(PUT, b"1", b"15", put_done.append)
    got = ck2b.start(GET, b"1", None, get_done.append)

    def check_silent() -> None:
        if put_done or get_done or put.served_by or got.served_by:
            c.fail(f"the minority answered: put {put_done}, get {get_done}")

    c.run_for(5)
    check_silent()
    if c.services[lead].pending < 2 or not c.net.nodes[lead].is_leader:
        c.fail("the minority leader did not take the requests (the scenario did not happen)")
    c.run_for(3 * ELECTION_TIMEOUT_MS)
    check_silent()

    c.net.heal()
    ck2a.reach = ck2b.reach = None
    c.run_until(lambda: put_done and get_done, 10 * ELECTION_TIMEOUT_MS, "no answer after heal")
    assert put_done == [OK]
    if get_done[0] not in (b"14", b"15"):
        c.fail(f"get after heal returned {get_done[0]!r}")
    if c.get(ck, b"1") != b"15":
        c.fail("the put taken in the minority was not applied after healing")
    c.check_linearizable()


def many_partitions(c: Cluster, clients: int, rounds: int) -> None:
    """The lab's partitioner under load: a random split of the servers every election
    timeout or so, healed for a moment in between."""
    c.wait_leader()
    cks = [c.client() for _ in range(clients)]
    start_appenders(c, cks)
    for _ in range(rounds):
        c.partition_randomly()
        c.run_for(ELECTION_TIMEOUT_MS + c.rng.randrange(200))
        c.net.heal()
        c.run_for(c.rng.randrange(400))
    finish_and_check_appends(c, cks)


def test_many_partitions(make):
    many_partitions(make(5), clients=5, rounds=10)


def test_many_partitions_paced(make):
    """As the TCP server runs its nodes: leaders send to the followers beyond a quorum once a
    tick (keyval.raft.pacing)."""
    many_partitions(make(5, unreliable=True, pace_followers=True), clients=5, rounds=10)


@pytest.mark.torture
@pytest.mark.parametrize("run", range(8))
def test_many_partitions_unreliable_torture(make, run):
    many_partitions(make(5, unreliable=True), clients=7, rounds=30)


def crash_rounds(c: Cluster, rounds: int, load_ms: int) -> None:
    """Under load, crash every server, keep them down a while, restart them all."""
    for _ in range(rounds):
        c.run_for(load_ms + c.rng.randrange(load_ms))
        c.crash_all()
        c.run_for(c.rng.randrange(ELECTION_TIMEOUT_MS))
        c.restart_all()


def crash_under_load(c: Cluster, clients: int, rounds: int) -> None:
    c.wait_leader()
    cks = [c.client() for _ in range(clients)]
    start_appenders(c, cks)
    crash_rounds(c, rounds=rounds, load_ms=1_000)
    c.run_for(500)
    finish_and_check_appends(c, cks)


def test_crash_of_every_server_during_load(make):
    crash_under_load(make(5), clients=5, rounds=5)


def test_crash_of_every_server_during_load_paced(make):
    crash_under_load(make(3, durable_raft=True, pace_followers=True), clients=5, rounds=5)


@pytest.mark.torture
@pytest.mark.parametrize("run", range(8))
def test_crash_of_every_server_during_load_torture(make, run):
    crash_under_load(make(5, unreliable=run % 2 == 1), clients=5, rounds=20)


def test_crash_of_every_server_on_durable_raft_storage(make):
    """As above, with each node's Raft log in a RaftStorage directory that a restart reopens,
    so the Raft log's recovery (not an in-memory object) brings the writes back."""
    c = make(3, durable_raft=True)
    c.wait_leader()
    clients = [c.client() for _ in range(3)]
    start_appenders(c, clients, think_ms=20)
    crash_rounds(c, rounds=3, load_ms=500)
    finish_and_check_appends(c, clients)


def random_keys_worker(ck, keys: int, seen: dict):
    """Appends of unique values and gets on random keys (the lab's "random keys" client);
    ``seen`` collects each completed append's (key, value)."""
    rng = ck.cluster.rng
    j = 0
    while True:
        key = b"r%d" % rng.randrange(keys)
        if rng.random() < 0.5:
            value = b"x %d %d y" % (ck.id, j)
            yield (APPEND, key, value)
            seen.setdefault(key, []).append((b"%d" % ck.id, j))
            j += 1
        else:
            yield (GET, key, None)


def check_random_keys(c: Cluster, seen: dict, keys: int) -> None:
    """Each completed append is in its key's value exactly once, each client's in order."""
    reader = c.client()
    for k in range(keys):
        key = b"r%d" % k
        present = parse_appends(c.get(reader, key) or b"")
        done = seen.get(key, [])
        if len(set(present)) != len(present):
            c.fail(f"{key!r}: an append applied twice: {present}")
        missing = set(done) - set(present)
        if missing:
            c.fail(f"{key!r}: acknowledged appends missing: {sorted(missing)}")
        for tag in {t for t, _ in present}:
            js = [j for t, j in present if t == tag]
            if js != sorted(js):
                c.fail(f"{key!r}: client {tag!r}'s appends out of order: {js}")


def all_faults_combined(c: Cluster, rounds: int) -> None:
    """Unreliable network, partitions and crashes of every server, 15 clients on 5 random
    keys: each acknowledged append exactly once, in its client's order; linearizable."""
    c.wait_leader()
    keys, seen = 5, {}
    clients = [c.client() for _ in range(15)]
    c.start_workers({ck: random_keys_worker(ck, keys, seen) for ck in clients}, think_ms=40)
    for _ in range(rounds):
        c.partition_randomly()
        c.run_for(ELECTION_TIMEOUT_MS + c.rng.randrange(200))
        c.net.heal()
        c.run_for(500)
        c.crash_all()
        c.run_for(c.rng.randrange(ELECTION_TIMEOUT_MS))
        c.restart_all()
    c.stop_workers()
    appends = sum(len(v) for v in seen.values())
    if appends < 5 * rounds:
        c.fail(f"too little progress: {appends} appends in {rounds} rounds")
    check_random_keys(c, seen, keys)
    c.check_linearizable()


def test_all_faults_combined_15_clients_7_servers_random_keys(make):
    all_faults_combined(make(7, unreliable=True), rounds=4)


def test_all_faults_combined_paced(make):
    all_faults_combined(make(7, unreliable=True, pace_followers=True), rounds=4)


@pytest.mark.torture
@pytest.mark.parametrize("run", range(8))
def test_all_faults_combined_torture(make, run):
    all_faults_combined(
        make(7, unreliable=True, durable_raft=run % 2 == 1, pace_followers=run % 4 >= 2),
        rounds=10,
    )


# -- snapshots ----------------------------------------------------------------------------------

MAX_RAFT_STATE = 1_000


def test_small_max_raft_state_keeps_the_log_and_the_snapshot_small(make):
    """200 puts on one key with max_raft_state of 1,000 bytes: the Raft state never exceeds
    8x that, and the snapshot (one key and one client's session) stays under 500 bytes."""
    c = make(3, max_raft_state=MAX_RAFT_STATE)
    c.wait_leader()
    ck = c.client()
    for j in range(200):
        c.put(ck, b"x", b"%d" % (j % 2))
        c.snapshot_sizes()
    assert c.get(ck, b"x") == b"1"
    sizes = c.snapshot_sizes()
    if min(sizes.values()) == 0:
        c.fail(f"a node never took a snapshot: {sizes}")
    if c.max_snapshot_seen > 500:
        c.fail(f"a snapshot of {c.max_snapshot_seen} bytes for one key and one client")
    c.check_linearizable()


def dedup_through_snapshots(c: Cluster, rounds: int) -> None:
    """20 clients appending under crashes of every server, unreliable, with a small
    max_raft_state: retried requests hit snapshotted, restarted nodes and followers brought
    up to date by InstallSnapshot, and every append still lands exactly once; the Raft state
    stays within 8x of the bound."""
    c.wait_leader()
    clients = [c.client() for _ in range(20)]
    start_appenders(c, clients, think_ms=50)
    crash_rounds(c, rounds=rounds, load_ms=1_000)
    finish_and_check_appends(c, clients)
    sizes = c.snapshot_sizes()
    if min(sizes.values()) == 0:
        c.fail(f"a node never took a snapshot: {sizes}")
    if not c.net.sent_by_type[MsgType.SNAP]:
        c.fail("no snapshot was ever sent: the de-duplication table never travelled in one")
    if c.max_raft_state_seen == 0:
        c.fail("the Raft state was never measured")


def test_deduplication_survives_snapshots_and_restarts_with_20_clients(make):
    dedup_through_snapshots(make(5, unreliable=True, max_raft_state=MAX_RAFT_STATE), rounds=5)


@pytest.mark.torture
@pytest.mark.parametrize("run", range(8))
def test_deduplication_survives_snapshots_and_restarts_torture(make, run):
    c = make(5, unreliable=True, max_raft_state=MAX_RAFT_STATE, durable_raft=run % 2 == 1)
    dedup_through_snapshots(c, rounds=15)


# -- the harness itself ---------------------------------------------------------------------------


def test_a_seed_replays_the_same_history(seed, tmp_path):
    """Same seed, same calls: the same operations with the same results at the same simulated
    times, so a failure's seed replays it exactly."""

    def run(where) -> list:
        c = Cluster(5, seed, tmp_path / where, unreliable=True)
        try:
            c.wait_leader()
            clients = [c.client() for _ in range(3)]
            start_appenders(c, clients)
            crash_rounds(c, rounds=1, load_ms=1_500)
            c.stop_workers()
            return c.history.operations()
        finally:
            c.close()

    first, second = run("a"), run("b")
    assert len(first) > 20
    assert first == second, f"seed={seed}: two runs differ"


# -- sessions -----------------------------------------------------------------------------------


def puts_and_gets_worker(ck, keys: int):
    """Puts of unique values and gets on random keys; a put's outcome may end up unknown (an
    expired session after retries), which the linearizability check allows for."""
    rng = ck.cluster.rng
    for j in itertools.count():
        key = b"r%d" % rng.randrange(keys)
        if rng.random() < 0.6:
            yield (PUT, key, b"%d.%d" % (ck.id, j))
        else:
            yield (GET, key, None)


def sessions_expire_alike_on_every_node(c: Cluster, clients: int, rounds: int) -> None:
    """More clients than any node's session limit, nodes started with different limits,
    crashes of every server, snapshots: sessions expire constantly, and every node expires
    them at the same entries (the leader's limit is in the log), so at the end every node
    holds the same sessions and the same data; the history is linearizable."""
    c.wait_leader()
    keys = 5
    cks = [c.client() for _ in range(clients)]
    c.start_workers({ck: puts_and_gets_worker(ck, keys) for ck in cks}, think_ms=30)
    crash_rounds(c, rounds=rounds, load_ms=800)
    c.net.heal()
    c.stop_workers()
    leader = c.wait_leader()
    reader = c.client()
    c.put(reader, b"last", b"write")  # commits in the last leader's term, past all the others
    commit = c.net.nodes[leader].commit_index
    nodes = c.net.nodes
    c.run_until(
        lambda: all(n is not None and n.applied >= commit for n in nodes.values()),
        10 * ELECTION_TIMEOUT_MS,
        f"every node applying {commit}",
    )
    ids = sorted({sid for ck in [*cks, reader] for sid in ck.sessions})
    views = {
        i: (
            m.max_sessions,
            [m.session(sid) for sid in ids],
            [m.get(b"r%d" % k) for k in range(keys)],
        )
        for i, m in c.machines.items()
    }
    if len({repr(v) for v in views.values()}) != 1:
        c.fail(f"nodes differ after applying {commit}: {views}")
    limit, sessions, _ = views[leader]
    if limit != c.max_sessions[leader] or sum(s is not None for s in sessions) > limit:
        c.fail(f"limit {limit} with {sessions}")
    if len(ids) <= clients + 1:
        c.fail("no session ever expired")
    c.check_linearizable()


def test_sessions_expire_alike_on_every_node(make):
    limits = {1: 4, 2: 5, 3: 6, 4: 7, 5: 8}
    c = make(5, unreliable=True, max_raft_state=MAX_RAFT_STATE, max_sessions=limits)
    sessions_expire_alike_on_every_node(c, clients=12, rounds=3)


@pytest.mark.torture
@pytest.mark.parametrize("run", range(6))
def test_sessions_expire_alike_on_every_node_torture(make, run):
    limits = {1: 3, 2: 9, 3: 4, 4: 8, 5: 5}
    c = make(
        5,
        unreliable=True,
        max_raft_state=MAX_RAFT_STATE,
        max_sessions=limits,
        durable_raft=run % 2 == 1,
    )
    sessions_expire_alike_on_every_node(c, clients=12, rounds=8)
