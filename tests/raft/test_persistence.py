"""Crashes and restarts on the simulated network (lab scenarios: persist 1-3, Figure 8 reliable
and unreliable, churn), and the vote that must survive a restart."""

from __future__ import annotations

import pytest

from .harness import ELECTION_TIMEOUT_MS


def test_committed_entries_survive_crashes_of_every_node(make_cluster):
    c = make_cluster(3)
    c.one(b"11", 3)
    for i in c.ids:
        c.crash(i)
    for i in c.ids:
        c.restart(i)
    c.one(b"12", 3)

    leader1 = c.check_one_leader()
    c.crash(leader1)
    c.restart(leader1)
    c.one(b"13", 3)

    leader2 = c.check_one_leader()
    c.crash(leader2)
    c.one(b"14", 2)
    c.restart(leader2)
    index = c.one(b"14b", 3)

    i3 = c.check_one_leader() % 3 + 1
    c.crash(i3)
    c.one(b"15", 2)
    c.restart(i3)
    c.one(b"16", 3)
    if c.checker.data[index] != b"14b":
        c.fail("a committed entry changed")


def test_more_persistence_with_rotating_crashes(make_cluster):
    c = make_cluster(5)
    index = 1
    for iteration in range(5):
        c.one(b"%d" % (10 + index), 5)
        index += 1
        leader1 = c.check_one_leader()
        a, b = leader1 % 5 + 1, (leader1 + 1) % 5 + 1
        c.crash(a)
        c.crash(b)
        c.one(b"%d" % (10 + index), 3)
        index += 1
        c3, c4, c5 = ((leader1 + k) % 5 + 1 for k in (2, 3, 4))
        for i in (leader1, c3, c4):
            c.crash(i)
        c.restart(a)
        c.restart(b)
        c.run_for(ELECTION_TIMEOUT_MS)
        c.restart(c3)
        c.one(b"%d" % (10 + index), 3)
        index += 1
        c.restart(c4)
        c.restart(leader1)
        del c5, iteration
    c.one(b"1000", 5)


def test_partitioned_leader_and_follower_crash_then_recover(make_cluster):
    c = make_cluster(3)
    c.one(b"101", 3)
    leader = c.check_one_leader()
    c.disconnect((leader + 1) % 3 + 1)
    c.one(b"102", 2)
    c.crash(leader % 3 + 1)
    c.crash(leader)
    c.connect((leader + 1) % 3 + 1)
    c.restart(leader)
    c.one(b"103", 2)
    c.restart(leader % 3 + 1)
    c.one(b"104", 3)


def test_node_that_missed_a_committed_entry_cannot_win_after_restart(make_cluster):
    c = make_cluster(3)
    c.one(b"base", 3)
    leader = c.check_one_leader()
    laggard = leader % 3 + 1
    voter = laggard % 3 + 1
    c.disconnect(laggard)
    index = c.one(b"committed", 2, retry=False)
    # The leader, the one node besides the laggard that has the entry, goes away for good; the
    # laggard then must not win with a stale log, since the voter's persisted log refuses it.
    for i in c.ids:
        c.crash(i)
    c.connect(laggard)
    c.restart(laggard)
    c.restart(voter)
    new_leader = c.check_one_leader()
    if new_leader != voter:
        c.fail(f"node {new_leader} won without the committed entry {index}")
    c.one(b"after", 2)
    c.wait_applied(index, [laggard])
    if c.checker.data[index] != b"committed":
        c.fail(f"index {index} changed to {c.checker.data[index]!r}")


def _figure8(c, leader_losses: int, unreliable: bool) -> None:
    """Leaders come and go after short random lives while every leader is handed proposals,
    producing the logs of Figure 8: entries of old terms on a majority that must not be
    counted as committed. ``leader_losses`` leaders are crashed (reliable) or disconnected
    (unreliable, with long reordering of replies)."""
    rnd = c.rng
    c.one(b"start", 1)
    up = len(c.ids)
    losses = it = 0
    while losses < leader_losses:
        it += 1
        leader = None
        for i in c.ids:
            if c.net.propose(i, b"f%d" % it) is not None and c.net.connected[i]:
                leader = i
        if rnd.randrange(1000) < 100:
            c.run_for(rnd.randrange(ELECTION_TIMEOUT_MS // 2))
        else:
            c.run_for(rnd.randrange(13))
        if unreliable:
            if leader is not None and rnd.randrange(1000) < 500:
                c.disconnect(leader)
                losses += 1
                up -= 1
            if up < 3:
                s = rnd.choice(c.ids)
                if not c.net.connected[s]:
                    c.connect(s)
                    up += 1
        else:
            if leader is not None and c.node(leader) is not None:
                c.crash(leader)
                losses += 1
                up -= 1
            if up < 3:
                s = rnd.choice(c.ids)
                if c.node(s) is None:
                    c.restart(s)
                    up += 1
    for i in c.ids:
        if c.node(i) is None:
            c.restart(i)
        c.connect(i)
    # Repairing thousands of divergent entries over a lossy, reordering network takes a while.
    c.one(b"end", len(c.ids), timeout_ms=60_000 if unreliable else 30_000)
    # A leader reconnected before it noticed its isolation can be lost twice in one term.
    if len(c.checker.leader_of_term) < leader_losses // 2:
        c.fail(f"only {len(c.checker.leader_of_term)} terms had a leader")


# Few entries per append: old-term entries then reach followers ahead of the new leader's own
# entry, the situation where counting replicas of an old entry would commit it wrongly.
FIGURE8_CONFIG = dict(config=dict(max_msg_bytes=8))
# On the unreliable network the backlog of a disconnected leader's entries would take too long
# to replicate a few entries at a time.
FIGURE8_UNRELIABLE_CONFIG = dict(config=dict(max_msg_bytes=64))


def test_figure8(make_cluster):
    _figure8(make_cluster(5, **FIGURE8_CONFIG), 100, unreliable=False)


def test_figure8_unreliable_with_long_reordering(make_cluster):
    c = make_cluster(5, unreliable=True, long_reordering=True, **FIGURE8_UNRELIABLE_CONFIG)
    _figure8(c, 60, unreliable=True)


@pytest.mark.torture
def test_figure8_torture(make_cluster):
    _figure8(make_cluster(5, **FIGURE8_CONFIG), 1000, unreliable=False)


@pytest.mark.torture
def test_figure8_unreliable_torture(make_cluster):
    c = make_cluster(5, unreliable=True, long_reordering=True, **FIGURE8_UNRELIABLE_CONFIG)
    _figure8(c, 1000, unreliable=True)


def _churn(c, duration_ms: int, crashes: bool) -> None:
    """Three proposers keep proposing while nodes crash, restart and disconnect at random
    (the lab's rates: every 70 ms each of disconnect 20%, reconnect or restart 50%, crash 20%);
    afterwards everything heals, agreement resumes and every entry a proposer saw committed is
    still there."""
    rnd = c.rng
    proposed: list[tuple[int, bytes]] = []
    seen_committed: dict[int, bytes] = {}
    n = 0
    end = c.net.now + duration_ms
    while c.net.now < end:
        for _ in range(7):
            for _client in range(3):
                n += 1
                index = c.net.propose(rnd.choice(c.ids), b"churn%d" % n)
                if index is not None:
                    proposed.append((index, b"churn%d" % n))
            c.run_for(10)
        for index, data in proposed:
            if c.checker.data.get(index) == data:
                seen_committed[index] = data
        proposed = [(i, d) for i, d in proposed if i not in c.checker.data]
        if rnd.randrange(1000) < 200:
            c.disconnect(rnd.choice(c.ids))
        if rnd.randrange(1000) < 500:
            s = rnd.choice(c.ids)
            if c.node(s) is None:
                c.restart(s)
            c.connect(s)
        if crashes and rnd.randrange(1000) < 200:
            c.crash(rnd.choice(c.ids))
    for i in c.ids:
        if c.node(i) is None:
            c.restart(i)
        c.connect(i)
    c.run_for(ELECTION_TIMEOUT_MS)
    last = c.one(b"final", len(c.ids), timeout_ms=30_000)
    c.wait_applied(last, list(c.ids))
    for index, data in seen_committed.items():
        if c.checker.data[index] != data:
            c.fail(f"committed {data!r} at {index} was replaced")
    if len(seen_committed) < 10:
        c.fail(f"only {len(seen_committed)} proposals committed during churn")


def test_reliable_churn(make_cluster):
    _churn(make_cluster(5), 10_000, crashes=True)


def test_unreliable_churn(make_cluster):
    _churn(make_cluster(5, unreliable=True), 10_000, crashes=True)
