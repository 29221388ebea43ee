"""Snapshots and log compaction on the simulated network (lab scenarios: basic, install to a
disconnected follower, install on an unreliable network, after a crash, crash of every node,
initialised from storage, Raft state under a bound)."""

from __future__ import annotations

import pytest

from keyval.raft.messages import MsgType
from keyval.raft.node import ENTRY_OVERHEAD_BYTES, HARD_STATE_BYTES

from .harness import ELECTION_TIMEOUT_MS

MAX_RAFT_STATE = 2000
# Small chunks and a padded state machine snapshot: every transfer takes many chunks.
SNAPSHOT_OPTIONS = dict(
    max_raft_state=MAX_RAFT_STATE,
    snapshot_pad=3000,
    config=dict(snapshot_chunk_bytes=256, max_msg_bytes=512),
)


def raft_state_size(storage) -> int:
    """Measured from the storage itself, not from the driver's own estimate."""
    entries = storage.entries(storage.first_index, storage.last_index + 1)
    return HARD_STATE_BYTES + sum(len(e.data) + ENTRY_OVERHEAD_BYTES for e in entries)


def snapshot_cluster(make_cluster, n: int = 3, **options):
    c = make_cluster(n, **(SNAPSHOT_OPTIONS | options))
    bound = 2 * MAX_RAFT_STATE
    observe = c.checker.observe

    def observe_with_bound(net) -> None:
        observe(net)
        for i, storage in net.storages.items():
            size = raft_state_size(storage)
            if size > bound:
                c.fail(f"node {i}: Raft state of {size} bytes exceeds {bound}")

    c.net.observer = observe_with_bound
    return c


def payload(c, k: int) -> bytes:
    return b"v%d-" % k + c.rng.randbytes(40)


def _snapcommon(c, iterations: int, disconnect: bool, crash: bool) -> None:
    """Each round: a follower goes away, the others commit enough to compact past it, it comes
    back and must catch up by InstallSnapshot."""
    k = 0
    c.one(payload(c, k), len(c.ids))
    for _ in range(iterations):
        leader = c.check_one_leader()
        victim = leader % len(c.ids) + 1
        if disconnect:
            c.disconnect(victim)
        if crash:
            c.crash(victim)
        for _ in range(60):
            k += 1
            c.one(payload(c, k), len(c.ids) - 1)
        if crash:
            c.restart(victim)
        if disconnect:
            c.connect(victim)
        k += 1
        index = c.one(payload(c, k), len(c.ids))
        c.wait_applied(index, list(c.ids))
    snaps = c.net.sent_by_type[MsgType.SNAP]
    if snaps < 2 * iterations:
        c.fail(f"only {snaps} snapshot chunks sent in {iterations} catch-ups")


def test_snapshots_compact_the_log(make_cluster):
    c = snapshot_cluster(make_cluster)
    for k in range(100):
        c.one(payload(c, k), 3)
    for i, st in c.net.storages.items():
        if st.snapshot() is None or st.first_index <= 1:
            c.fail(f"node {i} never compacted its log (first index {st.first_index})")
        if c.node(i).applied < st.snapshot().index:
            c.fail(f"node {i} snapshot beyond what it applied")


def test_snapshot_installed_on_disconnected_follower(make_cluster):
    _snapcommon(snapshot_cluster(make_cluster), 3, disconnect=True, crash=False)


def test_snapshot_installed_on_unreliable_network(make_cluster):
    c = snapshot_cluster(make_cluster, unreliable=True)
    _snapcommon(c, 3, disconnect=True, crash=False)


def test_snapshot_installed_after_follower_crash(make_cluster):
    _snapcommon(snapshot_cluster(make_cluster), 3, disconnect=False, crash=True)


def test_snapshot_installed_after_crash_on_unreliable_network(make_cluster):
    c = snapshot_cluster(make_cluster, unreliable=True)
    _snapcommon(c, 3, disconnect=False, crash=True)


@pytest.mark.torture
def test_snapshot_install_torture(make_cluster):
    c = snapshot_cluster(make_cluster, 5, unreliable=True, long_reordering=True)
    _snapcommon(c, 20, disconnect=True, crash=True)


def test_snapshots_survive_crash_of_every_node(make_cluster):
    c = snapshot_cluster(make_cluster)
    k = 0
    for _ in range(5):
        for _ in range(30):
            k += 1
            c.one(payload(c, k), 3)
        for i in c.ids:
            c.crash(i)
        for i in c.ids:
            c.restart(i)
        k += 1
        c.one(payload(c, k), 3)


def test_restarted_node_starts_from_its_snapshot_and_keeps_it(make_cluster):
    c = snapshot_cluster(make_cluster)
    for k in range(60):
        c.one(payload(c, k), 3)
    for i in c.ids:
        c.crash(i)
    snap_index = {i: c.net.storages[i].snapshot().index for i in c.ids}
    for i in c.ids:
        c.restart(i)
        # The state machine is the snapshot's before any message arrives.
        if c.net.state_machines[i].last < snap_index[i]:
            c.fail(f"node {i} restarted at {c.net.state_machines[i].last} below {snap_index[i]}")
    # One more entry, then crash again before any new compaction could happen: the old
    # snapshot must still be there, with the log after it.
    index = c.one(b"one more", 3)
    for i in c.ids:
        c.crash(i)
    for i in c.ids:
        st = c.net.storages[i]
        if st.snapshot() is None or st.snapshot().index < snap_index[i]:
            c.fail(f"node {i} lost its snapshot at {snap_index[i]}: {st.snapshot()}")
        if st.last_index < index:
            c.fail(f"node {i} lost entries: last index {st.last_index} < {index}")
    for i in c.ids:
        c.restart(i)
    c.one(b"and another", 3)


def test_raft_state_stays_under_bound_with_churn(make_cluster):
    c = snapshot_cluster(make_cluster, 5, unreliable=True)
    rnd = c.rng
    for k in range(150):
        c.net.propose(c.net.leader() or 1, payload(c, k))
        c.run_for(rnd.randrange(40))
        if k % 30 == 29:
            victim = rnd.choice(c.ids)
            c.crash(victim)
            c.run_for(ELECTION_TIMEOUT_MS // 2)
            c.restart(victim)
    c.one(b"end", 5, timeout_ms=30_000)
