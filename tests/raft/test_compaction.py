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
import threading

from keyval.raft.core import Config, Role
from keyval.raft.node import Node
from keyval.raft.records import Entry
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
        self.data = json.loads(data)

    def snapshot_reader(self):
        fixed = dict(self.data)

        def encode() -> bytes:
            self.encoding.set()
            assert self.gate.wait(WAIT)
            return json.dumps(fixed).encode()

        return encode


def single_node(path, sm: GatedDict, wanted: threading.Event) -> tuple[Node, RaftStorage]:
    storage = RaftStorage(str(path))
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
    assert (snap.index, json.loads(snap.data)) == (fixed_index, fixed_state)
    assert storage.first_index == fixed_index + 1
    assert storage.last_index == fixed_index + 10
    assert not node.compact()  # under the bound now: nothing to do
    storage.close()

    # A restart restores the snapshot and replays the ten entries after it.
    sm2 = GatedDict()
    _, storage2 = single_node(tmp_path / "raft", sm2, threading.Event())
    assert sm2.data == sm.data
    storage2.close()
