"""Randomized runs of the invariant checker in :mod:`tests.raft.fuzz`.

Each seed picks its own mix (3 or 5 nodes, the leader writing its log outside the lock or not,
paced followers, compaction asked for or done inline, a state machine that keeps its state,
PreVote and CheckQuorum on or off, how rough the network is) and replays exactly. A failure
names its seed; ``python -m tests.raft.fuzz SEED SEED+1 STEPS`` replays it. ``KEYVAL_RAFT_SEED``
shifts the seeds, as for the other scenario tests.
"""

from __future__ import annotations

import os

import pytest

from .fuzz import run_seed

BASE = int(os.environ.get("KEYVAL_RAFT_SEED", "0")) * 100_000


@pytest.mark.parametrize("block", range(4))
def test_random_schedules_keep_raft_invariants(block: int) -> None:
    for seed in range(BASE + block * 10, BASE + block * 10 + 10):
        run_seed(seed, steps=1500)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_random_schedules_other_cluster_sizes(n: int) -> None:
    for seed in range(BASE + 1000 + n * 10, BASE + 1000 + n * 10 + 4):
        run_seed(seed, steps=1000, n=n)


def test_random_schedules_on_disk(tmp_path) -> None:
    for seed in range(BASE + 2000, BASE + 2003):
        d = tmp_path / str(seed)
        d.mkdir()
        run_seed(seed, steps=800, disk=str(d))


@pytest.mark.torture
@pytest.mark.parametrize("block", range(20))
def test_random_schedules_torture(block: int) -> None:
    for seed in range(BASE + 10_000 + block * 100, BASE + 10_000 + block * 100 + 100):
        run_seed(seed, steps=3000)


@pytest.mark.torture
def test_random_schedules_on_disk_torture(tmp_path) -> None:
    for seed in range(BASE + 20_000, BASE + 20_100):
        d = tmp_path / str(seed)
        d.mkdir()
        run_seed(seed, steps=2000, disk=str(d))
