"""Leader election on the simulated network (lab scenarios: initial election, re-election,
many elections), and PreVote/CheckQuorum at cluster level."""

from __future__ import annotations

from .harness import ELECTION_TIMEOUT_MS


def test_initial_election_finds_a_leader_and_keeps_the_term_stable(make_cluster):
    c = make_cluster(3)
    c.check_one_leader(timeout_ms=5000)
    c.run_for(50)
    term1 = c.check_terms()
    if term1 < 1:
        c.fail(f"term {term1} after an election")
    # Nothing fails, so nobody has a reason to start another election.
    c.run_for(2 * ELECTION_TIMEOUT_MS)
    term2 = c.check_terms()
    if term2 != term1:
        c.fail(f"term moved from {term1} to {term2} without failures")
    c.check_one_leader()


def test_reelection_after_leader_loss_and_no_leader_without_quorum(make_cluster):
    c = make_cluster(3)
    leader1 = c.check_one_leader()

    c.disconnect(leader1)
    c.check_one_leader()

    # The old leader rejoining must not disturb the new one.
    c.connect(leader1)
    leader2 = c.check_one_leader()

    # Two of three gone: nobody may lead.
    other = leader2 % 3 + 1
    c.disconnect(leader2)
    c.disconnect(other)
    c.run_for(2 * ELECTION_TIMEOUT_MS)
    c.check_no_leader()

    c.connect(other)
    c.check_one_leader()
    c.connect(leader2)
    c.check_one_leader()


def test_many_elections_with_three_of_seven_disconnected(make_cluster):
    c = make_cluster(7)
    c.check_one_leader()
    for _ in range(10):
        gone = c.rng.sample(c.ids, 3)
        for i in gone:
            c.disconnect(i)
        # Four of seven is a quorum: someone leads within the deadline.
        c.check_one_leader()
        for i in gone:
            c.connect(i)
    c.check_one_leader()


def test_rejoining_node_does_not_depose_a_healthy_leader(make_cluster):
    c = make_cluster(5)
    leader = c.check_one_leader()
    c.one(b"before", 5)
    term = c.node(leader).term
    loner = leader % 5 + 1
    c.disconnect(loner)
    # Long enough for the loner to time out many times; PreVote keeps its term where it was.
    c.run_for(5 * ELECTION_TIMEOUT_MS)
    if c.node(loner).term != term:
        c.fail(f"isolated node {loner} raised its term to {c.node(loner).term} (was {term})")
    c.connect(loner)
    c.run_for(3 * ELECTION_TIMEOUT_MS)
    if c.check_one_leader() != leader or c.node(leader).term != term:
        c.fail(f"leader {leader} of term {term} deposed: {c.terms()}")
    c.one(b"after", 5)


def test_isolated_leader_steps_down_by_check_quorum(make_cluster):
    c = make_cluster(3)
    leader = c.check_one_leader()
    c.disconnect(leader)
    # CheckQuorum: one election timeout without hearing from a quorum ends its leadership.
    c.run_for(2 * ELECTION_TIMEOUT_MS)
    if c.node(leader).is_leader:
        c.fail(f"leader {leader} kept leading for 2 s cut off from everyone")
