"""Fixtures of the Raft scenario tests.

``seed``: every scenario is deterministic given its seed, derived from the test's name and the
``KEYVAL_RAFT_SEED`` environment variable (default 0), so ``KEYVAL_RAFT_SEED=7 pytest tests/raft``
runs the whole suite on other schedules and a failure message's ``seed=`` replays it exactly.

``storage_factory``: makes one node's storage; MemoryStorage now. When the durable RaftStorage
exists, add it to ``STORAGES`` (a factory taking the node id) and every scenario runs on it too.
"""

from __future__ import annotations

import os
import zlib

import pytest

from keyval.raft.memory import MemoryStorage

from .harness import Cluster

STORAGES = {"memory": lambda node_id: MemoryStorage()}


@pytest.fixture
def seed(request) -> int:
    base = int(os.environ.get("KEYVAL_RAFT_SEED", "0"))
    return zlib.crc32(f"{base}:{request.node.name}".encode())


@pytest.fixture(params=sorted(STORAGES))
def storage_factory(request):
    return STORAGES[request.param]


@pytest.fixture
def make_cluster(seed, storage_factory):
    """``make_cluster(n, **options)`` -> a :class:`Cluster` on this test's seed and storage."""

    def make(n: int, **options) -> Cluster:
        return Cluster(n, seed, storage_factory, **options)

    return make
