"""Compaction off the node's lock (``on_compact_needed`` + ``Node.compact``), on real storage.

Encoding a large state and writing its snapshot file take long enough (hundreds of
milliseconds for a few hundred thousand keys) that a node doing them under its lock stops
stepping, applying and answering meanwhile. With ``on_compact_needed`` the node only fixes the
state under the lock; these tests hold the encoding at a gate and show that the node goes on
committing while it waits, and that the snapshot saved is the state at the index it was fixed
at, with the log after it kept, across a restart too.
"""

from __future__ import annotations

import json
import os
import threading

import pytest

from keyval.raft import snapfile
from keyval.raft.core import Config, Role
from keyval.raft.node import Node
from keyval.raft.records import Entry, Snapshot
from keyval.raft.storage import RaftStorage

WAIT = 10.0  # generous deadline for what takes milliseconds


class GatedDict:
    """A dict state machine (``key=value`` entries) whose snapshot encoding waits at a gate."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.encoding = threading.Event()  # set once encoding has started (the lock is free)
        self.gate = threading.Event()  # encoding finishes once this is set
        self.gate.set()

    def apply(self, entry: Entry) -> None:
        if entry.data:
            key, value = entry.data.decode().split("=")
            self.data[key] = value

    def snapshot(self) -> bytes:
        return json.dumps(self.data).encode()

    def restore(self, data: bytes) -> None:
        self.data = json.loads(bytes(data))

    def snapshot_reader(self):
        fixed = dict(self.data)

        def encode() -> bytes:
            self.encoding.set()
            assert self.gate.wait(WAIT)
            return json.dumps(fixed).encode()

        return encode


def single_node(
    path, sm: GatedDict, wanted: threading.Event, storage_class: type = RaftStorage
) -> tuple[Node, RaftStorage]:
    storage = storage_class(str(path))
    node = Node(
        Config(id=1, peers=(1,)),
        storage,
        sm,
        send=lambda m: None,
        max_raft_state=4096,
        on_compact_needed=wanted.set,
    )
    node.campaign()
    assert node.role is Role.LEADER
    return node, storage


def test_the_node_commits_while_a_snapshot_is_encoded_and_written(tmp_path):
    sm, wanted = GatedDict(), threading.Event()
    node, storage = single_node(tmp_path / "raft", sm, wanted)
    n = 0
    while not wanted.is_set():
        n += 1
        node.propose(b"k%d=%d" % (n % 20, n))
    assert storage.snapshot() is None  # asked for, not done under the lock
    fixed_index, fixed_state = node.applied, dict(sm.data)

    sm.gate.clear()
    result: list[bool] = []
    compactor = threading.Thread(target=lambda: result.append(node.compact()))
    compactor.start()
    assert sm.encoding.wait(WAIT)
    # The compactor is inside encode(): these take the node's lock and commit at once.
    for k in range(10):
        node.propose(b"late%d=%d" % (k, k))
    assert node.applied == fixed_index + 10 and sm.data["late9"] == "9"
    sm.gate.set()
    compactor.join(WAIT)
    assert result == [True]

    snap = storage.snapshot()
    assert (snap.index, json.loads(bytes(snap.data))) == (fixed_index, fixed_state)
    assert storage.first_index == fixed_index + 1
    assert storage.last_index == fixed_index + 10
    assert not node.compact()  # under the bound now: nothing to do
    storage.close()

    # A restart restores the snapshot and replays the ten entries after it.
    sm2 = GatedDict()
    _, storage2 = single_node(tmp_path / "raft", sm2, threading.Event())
    assert sm2.data == sm.data
    storage2.close()


class GatedStorage(RaftStorage):
    """RaftStorage that waits at a gate once it has staged a snapshot file."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.staged = threading.Event()
        self.gate = threading.Event()
        self.gate.set()

    def stage_snapshot(self, snap: Snapshot) -> None:
        super().stage_snapshot(snap)
        self.staged.set()
        assert self.gate.wait(WAIT)


@pytest.mark.parametrize("when", ["while encoding", "once staged"])
def test_a_snapshot_put_in_force_meanwhile_wins_and_nothing_of_the_older_is_left(tmp_path, when):
    """While the compactor works, a newer snapshot is put in force (as a follower's install
    is): the compactor's older one must not replace it, its file must not stay behind, and the
    node must not stop (the compactor returns False, it does not raise)."""
    sm, wanted = GatedDict(), threading.Event()
    node, storage = single_node(tmp_path / "raft", sm, wanted, GatedStorage)
    n = 0
    while not wanted.is_set():
        n += 1
        node.propose(b"k%d=%d" % (n, n))
    (sm.gate if when == "while encoding" else storage.gate).clear()
    result: list[bool] = []
    compactor = threading.Thread(target=lambda: result.append(node.compact()))
    compactor.start()
    assert (sm.encoding if when == "while encoding" else storage.staged).wait(WAIT)
    node.propose(b"late=1")
    with node.lock:
        newer = Snapshot(node.applied, storage.term(node.applied), sm.snapshot())
        storage.save_snapshot(newer)
    sm.gate.set()
    storage.gate.set()
    compactor.join(WAIT)
    assert result == [False]
    assert storage.snapshot() == newer
    assert os.listdir(tmp_path / "raft" / "snap") == [snapfile.file_name(newer.index, newer.term)]
    storage.close()
