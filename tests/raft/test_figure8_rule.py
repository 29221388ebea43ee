"""Figure 8 of the Raft paper, scripted step by step on the simulated network.

The randomized Figure 8 scenarios (test_persistence.py) almost never reach the dangerous state:
a new leader sends its own empty entry in the same append as the old entries a follower lacks,
so they reach a majority together and committing them is then right. Here partitions and
crashes are timed by the script so the paper's situation arises exactly, with five nodes S1..S5:

(a) S1 leads; its entry ``OLD`` at index 2 reaches S2 only.
(b) S1 crashes; S5 is elected by S3 and S4 and writes its own entry at index 2, which reaches
    nobody before S5 crashes.
(c) S1 restarts and is elected; it copies ``OLD`` to S3 and S4, so a majority (S1-S4) holds it
    and S1 knows that, but S1's own-term entry at index 3 is on S1 alone when S1 crashes.
(d) S5 restarts and is elected (its last term is higher than S2's, S3's and S4's), and
    overwrites index 2 on all of them with its own entry.

A leader that counted replicas of ``OLD`` in (c) would commit and apply it, and (d) would then
apply a different entry at index 2 on the other nodes: the harness's checker stops the run with
a state machine safety violation. The correct rule (only an entry of the leader's current term
is committed by counting replicas) leaves ``OLD`` uncommitted, and its loss in (d) is allowed.
(e) is the other branch: once S1's own entry is on a majority, both are committed and S5 can
no longer be elected.

Elections are the script's, not the timers': the election timeout is longer than any test, and
CheckQuorum is off, since its lease makes a follower ignore candidates for a while after its
leader's last message and the script elects the next leader right after a crash. PreVote stays
on. An append carries the data of at most one entry (``max_msg_bytes=1``), as when a backlog
spans several appends, so ``OLD`` and S1's own entry travel in separate messages and the script
can let the first through and cut the link before the second.
"""

from __future__ import annotations

from .harness import Cluster

OLD = b"old: term of S1's first leadership"
NEVER = 10**9  # election ticks: no node times out during a test
CONFIG = dict(config=dict(election_ticks=NEVER, check_quorum=False, max_msg_bytes=1))
STEP_MS = 100  # simulated time a scripted step may take (a message takes 0-2 ms)


def elect(c: Cluster, i: int) -> None:
    """Node ``i`` campaigns until it leads. A PreVote rejected by a node of a higher term
    brings the candidate to that term, so a second attempt may be needed."""
    for _ in range(3):
        c.node(i).campaign()
        if c.net.run_until(lambda: c.node(i).is_leader, STEP_MS):
            return
    c.fail(f"node {i} was not elected; terms {c.terms()}")


def last(c: Cluster, i: int) -> tuple[int, int]:
    """(last index, its term) in node ``i``'s storage: what survives a crash."""
    st = c.net.storages[i]
    return st.last_index, st.term(st.last_index)


def run(c: Cluster, predicate, what: str) -> None:
    if not c.net.run_until(predicate, STEP_MS):
        c.fail(f"not reached within {STEP_MS} ms: {what}")


def figure8_a_to_c(c: Cluster) -> tuple[int, int]:
    """Panels (a) and (b), then S1 elected again with ``OLD`` on S1 and S2 only. Returns the
    terms of S1's first and second leaderships."""
    net = c.net
    elect(c, 1)
    c.wait_applied(1, list(c.ids))  # S1's empty entry at index 1: committed everywhere
    t1 = c.node(1).term

    # (a) OLD at index 2 reaches S2 only.
    for i in (3, 4, 5):
        net.set_link(1, i, False)
    assert net.propose(1, OLD) == 2
    run(c, lambda: last(c, 2) == (2, t1), "S2 stores OLD")

    # (b) S1 crashes; S2 is cut off (with OLD it could win). S5 campaigns; the moment S3 and
    # S4 have voted, its links to them go down, so its own entry at index 2 reaches nobody.
    c.crash(1)
    c.disconnect(2)
    c.node(5).campaign()
    run(c, lambda: c.node(3).core.vote == c.node(4).core.vote == 5, "S3 and S4 vote for S5")
    net.set_link(5, 3, False)
    net.set_link(5, 4, False)
    run(c, lambda: c.node(5).is_leader, "S5 elected")
    t5 = c.node(5).term
    assert t5 > t1
    assert last(c, 5) == (2, t5)
    assert last(c, 3) == last(c, 4) == (1, t1)
    c.crash(5)

    # S1 back, S2 still cut off: S1 wins with S3 and S4 (its log is longer than theirs).
    net.heal()
    c.disconnect(2)
    c.restart(1)
    elect(c, 1)
    assert c.node(1).term > t5
    return t1, c.node(1).term


def copy_old_entry_only(c: Cluster) -> None:
    """(c): S1 sends S3 and S4 ``OLD`` and then its own entry in separate appends; each link is
    cut as soon as the first has arrived, and the run goes on until S1 has both acks."""
    net, leader = c.net, c.node(1).core
    pending = {3, 4}

    def old_copied_and_acked() -> bool:
        # Runs after every event: cut a link the moment its follower holds index 2.
        for f in sorted(pending):
            if net.storages[f].last_index >= 2:
                net.set_link(1, f, False)
                pending.discard(f)
        return not pending and leader.prs[3].match >= 2 and leader.prs[4].match >= 2

    run(c, old_copied_and_acked, "S3 and S4 acknowledge OLD")


def test_entry_of_an_old_term_on_a_majority_is_not_committed_and_may_be_overwritten(
    make_cluster,
):
    """Panels (a)-(d): the leader of a later term knows its predecessor's entry is on a
    majority, yet does not commit it while its own entry is not; a node lacking the entry then
    leads and replaces it, and every node applies the same log (no node ever applies OLD)."""
    c = make_cluster(5, **CONFIG)
    t1, t3 = figure8_a_to_c(c)

    copy_old_entry_only(c)
    # The dangerous state: OLD on a majority, S1 knows it, and S1's own entry on S1 alone.
    assert [last(c, i) for i in (1, 2, 3, 4)] == [(3, t3), (2, t1), (2, t1), (2, t1)]
    assert all(c.node(1).core.prs[f].match == 2 for f in (3, 4))
    # A leader that counts replicas of OLD has committed and applied it by now; the checker
    # then stops the run in (d). The correct one keeps it uncommitted.
    c.run_for(STEP_MS)
    c.crash(1)

    # (d) S5 is elected over S2, S3 and S4 and replaces OLD with its own entry at index 2.
    c.net.heal()
    c.restart(5)
    t5 = c.net.storages[5].term(2)
    elect(c, 5)
    c.wait_applied(3, [2, 3, 4, 5])
    for i in (2, 3, 4, 5):
        assert c.net.storages[i].term(2) == t5
    assert c.checker.data[2] == b""  # S5's empty entry, never OLD

    # S1 comes back and drops OLD too: every node applies the same log.
    c.restart(1)
    index = c.one(b"after", 5)
    c.wait_applied(index, list(c.ids))
    assert all(OLD not in c.net.state_machines[i].values for i in c.ids)


def test_old_entry_is_committed_with_the_leaders_own_entry_and_survives(make_cluster):
    """Panel (e): once the leader's own entry reaches a majority, the old entry before it is
    committed with it, applied, and kept: the node that could have replaced it is never
    elected again."""
    c = make_cluster(5, **CONFIG)
    t1, t3 = figure8_a_to_c(c)

    # (e) S1's own entry follows OLD to S3 and S4: both are on a majority, both committed.
    c.wait_applied(3, [1, 3, 4])
    assert c.checker.data[2] == OLD
    assert [last(c, i) for i in (1, 3, 4)] == [(3, t3)] * 3
    c.crash(1)

    # S5 cannot be elected now: S3 and S4 hold an entry of a later term than its last.
    c.net.heal()
    c.restart(5)
    for _ in range(3):
        c.node(5).campaign()
        c.run_for(STEP_MS)
        assert not c.node(5).is_leader
    assert c.net.storages[3].term(2) == t1

    elect(c, 3)
    index = c.one(b"after", 4)
    c.wait_applied(index, [2, 3, 4, 5])
    c.restart(1)
    c.wait_applied(index, list(c.ids))
    assert all(c.net.state_machines[i].values[1] == OLD for i in c.ids)
