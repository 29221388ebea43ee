"""Log replication on the simulated network (lab scenarios: basic agreement, RPC bytes, follower
and leader failure, no commit without a majority, concurrent proposals, rejoin, backup, RPC
counts)."""

from __future__ import annotations

from keyval.raft.messages import MsgType

from .harness import ELECTION_TIMEOUT_MS


def test_basic_agreement(make_cluster):
    c = make_cluster(3)
    c.check_one_leader()
    prev = None
    for k in range(3):
        data = b"cmd%d" % k
        index = c.one(data, 3, retry=False)
        if prev is not None and index != prev + 1:
            c.fail(f"{data!r} got index {index}, expected {prev + 1}")
        prev = index
        count, got = c.n_committed(index)
        if count != 3 or got != data:
            c.fail(f"index {index}: {count} nodes applied {got!r}")


def test_each_entry_is_sent_once_per_peer(make_cluster):
    c = make_cluster(3)
    c.check_one_leader()
    c.one(b"warm-up", 3, retry=False)
    bytes0 = c.net.total_bytes()
    sent = 0
    for _ in range(10):
        data = c.rng.randbytes(5000)
        c.one(data, 3, retry=False)
        sent += len(data)
    used = c.net.total_bytes() - bytes0
    # Two followers each get every byte once; heartbeats and headers are small by comparison.
    if not 2 * sent <= used <= 2 * sent + 5000:
        c.fail(f"{used} bytes on the wire to replicate {sent} bytes to 2 followers")


def test_agreement_despite_follower_disconnection(make_cluster):
    c = make_cluster(3)
    c.one(b"101", 3)
    leader = c.check_one_leader()
    c.disconnect(leader % 3 + 1)
    c.one(b"102", 2)
    c.one(b"103", 2)
    c.run_for(ELECTION_TIMEOUT_MS)
    c.one(b"104", 2)
    c.one(b"105", 2)
    c.connect(leader % 3 + 1)
    # The follower catches up and takes part in new agreements.
    c.one(b"106", 3)
    c.run_for(ELECTION_TIMEOUT_MS)
    c.one(b"107", 3)


def test_follower_failure_then_no_commit_without_followers(make_cluster):
    c = make_cluster(3)
    c.one(b"101", 3)
    leader1 = c.check_one_leader()
    c.disconnect(leader1 % 3 + 1)
    c.one(b"102", 2)
    c.run_for(ELECTION_TIMEOUT_MS)
    c.one(b"103", 2)

    leader2 = c.check_one_leader()
    c.disconnect(leader2 % 3 + 1)
    c.disconnect((leader2 + 1) % 3 + 1)
    index = c.net.propose(leader2, b"104")
    if index is None:
        c.fail(f"leader {leader2} refused a proposal")
    c.run_for(2 * ELECTION_TIMEOUT_MS)
    count, _ = c.n_committed(index)
    if count:
        c.fail(f"{count} nodes applied index {index} with every follower disconnected")


def test_leader_failure_then_no_commit_without_quorum(make_cluster):
    c = make_cluster(3)
    c.one(b"101", 3)
    leader1 = c.check_one_leader()
    c.disconnect(leader1)
    c.one(b"102", 2)
    c.run_for(ELECTION_TIMEOUT_MS)
    c.one(b"103", 2)
    leader2 = c.check_one_leader()
    c.disconnect(leader2)
    indexes = [c.net.propose(i, b"104") for i in c.ids]
    c.run_for(2 * ELECTION_TIMEOUT_MS)
    for index in filter(None, indexes):
        _, got = c.n_committed(index)
        if got == b"104":
            c.fail(f"104 committed at {index} with only one node connected")


def test_no_commit_without_majority(make_cluster):
    c = make_cluster(5)
    first = c.one(b"10", 5)
    leader = c.check_one_leader()
    for k in (1, 2, 3):
        c.disconnect((leader + k - 1) % 5 + 1)
    index = c.net.propose(leader, b"20")
    if index != first + 1:
        c.fail(f"proposal got index {index}, expected {first + 1}")
    c.run_for(2 * ELECTION_TIMEOUT_MS)
    count, _ = c.n_committed(index)
    if count:
        c.fail(f"index {index} applied by {count} nodes without a majority")
    for k in (1, 2, 3):
        c.connect((leader + k - 1) % 5 + 1)
    # The minority's uncommitted entry may or may not survive; agreement resumes either way.
    leader2 = c.check_one_leader()
    index2 = c.net.propose(leader2, b"30")
    if index2 is None or not first + 1 <= index2 <= first + 3:
        c.fail(f"proposal after healing got index {index2}")
    c.one(b"1000", 5)


def test_concurrent_proposals_all_commit(make_cluster):
    c = make_cluster(3)
    leader = c.check_one_leader()
    c.one(b"start", 3)
    term = c.node(leader).term
    values = [b"c%d" % k for k in range(5)]
    indexes = [c.net.propose(leader, v) for v in values]
    if None in indexes:
        c.fail(f"leader {leader} refused proposals: {indexes}")
    c.wait_applied(max(indexes), list(c.ids))
    if c.node(leader).term != term:
        c.fail("term changed on a reliable network")
    got = [c.checker.data[i] for i in indexes]
    if got != values:
        c.fail(f"committed {got}, proposed {values}")


def test_partitioned_leader_rejoins_and_its_uncommitted_entries_are_overwritten(make_cluster):
    c = make_cluster(3)
    c.one(b"101", 3)
    leader1 = c.check_one_leader()
    c.disconnect(leader1)
    for v in (b"102", b"103", b"104"):
        c.net.propose(leader1, v)  # these can never commit
    c.one(b"103", 2)
    leader2 = c.check_one_leader()
    c.disconnect(leader2)
    c.connect(leader1)
    c.one(b"104", 2)
    c.connect(leader2)
    c.one(b"105", 3)
    applied = c.net.state_machines[leader1].values
    if b"102" in applied:
        c.fail(f"old leader {leader1} applied its uncommitted entry: {applied}")


def test_backup_repairs_long_divergent_logs_quickly(make_cluster):
    c = make_cluster(5)
    rnd = c.rng
    c.one(b"first", 5)
    leader1 = c.check_one_leader()

    # Leader and one follower in a minority; 50 entries that cannot commit.
    for k in (2, 3, 4):
        c.disconnect((leader1 + k - 1) % 5 + 1)
    for k in range(50):
        c.net.propose(leader1, b"lost-a%d" % k)
    c.run_for(ELECTION_TIMEOUT_MS // 2)
    c.disconnect(leader1 % 5 + 1)
    c.disconnect(leader1)

    # The other three elect a leader and commit 50 entries.
    for k in (2, 3, 4):
        c.connect((leader1 + k - 1) % 5 + 1)
    for _ in range(50):
        c.one(b"ok-b%d" % rnd.randrange(10**9), 3)

    # That leader loses a follower; 50 more entries that cannot commit.
    leader2 = c.check_one_leader()
    other = next(i for k in (2, 3, 4) if (i := (leader1 + k - 1) % 5 + 1) != leader2)
    c.disconnect(other)
    for k in range(50):
        c.net.propose(leader2, b"lost-c%d" % k)
    c.run_for(ELECTION_TIMEOUT_MS // 2)

    # The first minority plus `other` must now overwrite 50+ divergent entries.
    for i in c.ids:
        c.disconnect(i)
    for i in (leader1, leader1 % 5 + 1, other):
        c.connect(i)
    rejects0 = c.net.rejects
    for _ in range(50):
        c.one(b"ok-d%d" % rnd.randrange(10**9), 3)
    for i in c.ids:
        c.connect(i)
    c.one(b"last", 5)
    # Conflict-term hints: a rejected append skips a whole term, not one entry.
    rejects = c.net.rejects - rejects0
    if rejects > 20:
        c.fail(f"{rejects} rejected appends to repair logs diverging in a few terms")


def test_rpc_counts_stay_bounded(make_cluster):
    c = make_cluster(3)
    c.check_one_leader()
    total1 = c.net.total_rpcs()
    if not 1 <= total1 <= 30:
        c.fail(f"{total1} messages to elect the initial leader")

    t0 = c.net.now
    c.one(b"first", 3)
    iters = 10
    for k in range(iters):
        c.one(b"x%d" % k, 3)
    total2 = c.net.total_rpcs()
    elapsed = c.net.now - t0
    # Per command: one append and its ack per follower; the rest is heartbeats (two followers,
    # request and response, every 100 ms).
    bound = (iters + 1) * 4 + (elapsed // 100 + 2) * 4
    if total2 - total1 > bound:
        c.fail(f"{total2 - total1} messages for {iters + 1} commands in {elapsed} ms (> {bound})")

    c.run_for(1000)
    idle = c.net.total_rpcs() - total2
    if idle > 3 * 20:
        c.fail(f"{idle} messages in one idle second")
    if c.net.sent_by_type[MsgType.VOTE] > 4:
        c.fail(f"{c.net.sent_by_type[MsgType.VOTE]} vote requests on a healthy network")
