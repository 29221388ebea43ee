"""Fixtures of the Raft scenario tests.

``seed``: every scenario is deterministic given its seed, derived from the test's name and the
``KEYVAL_RAFT_SEED`` environment variable (default 0), so ``KEYVAL_RAFT_SEED=7 pytest tests/raft``
runs the whole suite on other schedules and a failure message's ``seed=`` replays it exactly.

``storage_kind``: every scenario runs on MemoryStorage; the persistence and snapshot scenarios
(except the torture variants) also run on the durable RaftStorage, one directory per node,
closed and reopened from disk whenever the simulated network restarts a node.
"""

from __future__ import annotations

import os
import zlib

import pytest

from keyval.raft.memory import MemoryStorage
from keyval.raft.storage import RaftStorage

from .harness import Cluster

DISK_MODULES = ("test_persistence", "test_snapshot")
DISK_SEGMENT = 64 * 1024  # small WAL segments: compaction deletes whole segments in these runs


def pytest_generate_tests(metafunc):
    if "storage_kind" not in metafunc.fixturenames:
        return
    kinds = ["memory"]
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    if module in DISK_MODULES and metafunc.definition.get_closest_marker("torture") is None:
        kinds.append("disk")
    metafunc.parametrize("storage_kind", kinds)


@pytest.fixture
def seed(request) -> int:
    base = int(os.environ.get("KEYVAL_RAFT_SEED", "0"))
    # The storage kind must not change the schedule: both kinds replay the same seed.
    name = request.node.name.replace("[disk]", "").replace("[memory]", "")
    return zlib.crc32(f"{base}:{name}".encode())


@pytest.fixture
def storage_options(storage_kind, tmp_path):
    """SimNet options that give each node the storage of this run."""
    if storage_kind == "memory":
        yield {"storage_factory": lambda node_id: MemoryStorage()}
        return
    opened = []

    def open_node(node_id: int) -> RaftStorage:
        st = RaftStorage(str(tmp_path / f"node{node_id}"), segment_size=DISK_SEGMENT)
        opened.append(st)
        return st

    def reopen(node_id: int, old: RaftStorage) -> RaftStorage:
        old.close()
        return open_node(node_id)

    yield {"storage_factory": open_node, "storage_reopen": reopen}
    for st in opened:
        st.close()


@pytest.fixture
def make_cluster(seed, storage_options):
    """``make_cluster(n, **options)`` -> a :class:`Cluster` on this test's seed and storage."""

    def make(n: int, **options) -> Cluster:
        storage_factory = storage_options["storage_factory"]
        extra = {k: v for k, v in storage_options.items() if k != "storage_factory"}
        return Cluster(n, seed, storage_factory, **extra, **options)

    return make
