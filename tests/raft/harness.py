"""The scenario harness: a SimNet cluster plus a safety checker that runs after every event.

Safety properties checked continuously (any violation raises AssertionError naming the seed):

- election safety: at most one leader per term, ever (not just at one instant);
- state machine safety: all nodes apply the same entry at each index (a hash chain over the
  applied sequence is compared per index, so every node's applied sequence is a prefix of every
  other's, across crashes and snapshot restores);
- applied indexes increase by one (a restored snapshot moves them to its index).

Helpers follow the Raft lab's vocabulary: :meth:`Cluster.check_one_leader`, :meth:`Cluster.one`,
:meth:`Cluster.n_committed`.
"""

from __future__ import annotations

import hashlib
import struct

from keyval.raft.records import Entry
from keyval.raft.simnet import SimNet

SNAP_HEADER = struct.Struct(">Q32s")
ELECTION_TIMEOUT_MS = 1000  # the longest randomized election timeout with the defaults


def chain_after(chain: bytes, entry: Entry) -> bytes:
    """The running hash of an applied sequence after ``entry``: two nodes applied the same
    entries in the same order exactly when their chains at an index are equal."""
    h = hashlib.sha256(chain)
    h.update(struct.pack(">QQ", entry.index, entry.term))
    h.update(entry.data)
    return h.digest()


class Checker:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.chain: dict[int, bytes] = {0: b"\0" * 32}  # index -> hash of applied prefix
        self.data: dict[int, bytes] = {}  # index -> applied data
        self.leader_of_term: dict[int, int] = {}

    def fail(self, what: str) -> None:
        raise AssertionError(f"seed={self.seed}: {what}")

    def applied(self, node: int, entry: Entry, chain: bytes) -> None:
        known = self.chain.get(entry.index)
        if known is None:
            self.chain[entry.index] = chain
            self.data[entry.index] = entry.data
        elif known != chain:
            self.fail(
                f"node {node} applied {entry.data!r} at {entry.index}, "
                f"others applied {self.data[entry.index]!r} (or differ before it)"
            )

    def restored(self, node: int, index: int, chain: bytes) -> None:
        known = self.chain.get(index)
        if known is not None and known != chain:
            self.fail(f"node {node} restored a snapshot at {index} that differs from the log")
        self.chain.setdefault(index, chain)

    def observe(self, net: SimNet) -> None:
        for i, node in net.nodes.items():
            if node is not None and node.is_leader:
                other = self.leader_of_term.setdefault(node.term, i)
                if other != i:
                    self.fail(f"two leaders in term {node.term}: {other} and {i}")


class Recorder:
    """Test state machine: a hash chain over what it applied, plus the last applied index.
    Its snapshot carries both (and ``pad`` bytes, to make snapshots span many chunks)."""

    def __init__(self, node: int, checker: Checker, pad: int = 0) -> None:
        self.node = node
        self.checker = checker
        self.pad = pad
        self.last = 0
        self.chain = b"\0" * 32
        self.values: list[bytes] = []  # data applied in this incarnation, since any restore

    def apply(self, entry: Entry) -> None:
        if entry.index != self.last + 1:
            self.checker.fail(f"node {self.node} applied {entry.index} after {self.last}")
        self.chain = chain_after(self.chain, entry)
        self.last = entry.index
        self.values.append(entry.data)
        self.checker.applied(self.node, entry, self.chain)

    def snapshot(self) -> bytes:
        return SNAP_HEADER.pack(self.last, self.chain) + b"p" * self.pad

    def restore(self, data: bytes) -> None:
        last, chain = SNAP_HEADER.unpack(data[: SNAP_HEADER.size])
        if last < self.last:
            self.checker.fail(f"node {self.node} restored {last} after applying {self.last}")
        self.checker.restored(self.node, last, chain)
        self.last, self.chain = last, chain
        self.values = []


class Cluster:
    def __init__(
        self,
        n: int,
        seed: int,
        storage_factory=None,
        *,
        unreliable: bool = False,
        long_reordering: bool = False,
        snapshot_pad: int = 0,
        **kwargs,
    ) -> None:
        self.seed = seed
        self.checker = Checker(seed)
        self.net = SimNet(
            n,
            seed,
            unreliable=unreliable,
            long_reordering=long_reordering,
            storage_factory=storage_factory,
            state_machine_factory=lambda i: Recorder(i, self.checker, snapshot_pad),
            observer=self.checker.observe,
            **kwargs,
        )
        self.ids = self.net.ids
        self._next_start = 0

    def fail(self, what: str) -> None:
        self.checker.fail(what)

    # -- faults -------------------------------------------------------------------------------

    def disconnect(self, i: int) -> None:
        self.net.disconnect(i)

    def connect(self, i: int) -> None:
        self.net.connect(i)

    def crash(self, i: int) -> None:
        self.net.crash(i)

    def restart(self, i: int) -> None:
        self.net.restart(i)

    def run_for(self, ms: int) -> None:
        self.net.run_for(ms)

    @property
    def rng(self):
        return self.net.rng

    # -- observations -------------------------------------------------------------------------

    def node(self, i: int):
        return self.net.nodes[i]

    def live_connected(self) -> list[int]:
        return [i for i in self.ids if self.net.nodes[i] is not None and self.net.connected[i]]

    def connected_leaders(self) -> list[int]:
        return [i for i in self.live_connected() if self.net.nodes[i].is_leader]

    def check_one_leader(self, timeout_ms: int = 5000) -> int:
        """Within ``timeout_ms``, a connected node leads in the highest term any connected
        leader has, and a quorum of connected nodes is in that term; returns it."""

        def settled() -> bool:
            return self._settled_leader() is not None

        if not self.net.run_until(settled, timeout_ms):
            self.fail(f"no leader within {timeout_ms} ms among {self.live_connected()}")
        return self._settled_leader()

    def _settled_leader(self) -> int | None:
        leaders = self.connected_leaders()
        if not leaders:
            return None
        lead = max(leaders, key=lambda i: self.net.nodes[i].term)
        term = self.net.nodes[lead].term
        same = [i for i in self.live_connected() if self.net.nodes[i].term == term]
        return lead if len(same) >= len(self.ids) // 2 + 1 else None

    def check_no_leader(self) -> None:
        leaders = self.connected_leaders()
        if leaders:
            self.fail(f"connected nodes {leaders} lead, expected no leader")

    def terms(self) -> dict[int, int]:
        return {i: n.term for i, n in self.net.nodes.items() if n is not None}

    def check_terms(self) -> int:
        terms = {self.net.nodes[i].term for i in self.live_connected()}
        if len(terms) != 1:
            self.fail(f"connected nodes disagree on the term: {self.terms()}")
        return terms.pop()

    def n_committed(self, index: int) -> tuple[int, bytes | None]:
        """How many running nodes have applied ``index``, and the data applied there."""
        count = sum(
            1
            for i in self.ids
            if self.net.nodes[i] is not None and self.net.state_machines[i].last >= index
        )
        return count, self.checker.data.get(index)

    def one(self, data: bytes, expected: int, retry: bool = True, timeout_ms: int = 10_000) -> int:
        """Get ``data`` committed on at least ``expected`` nodes; its index. Like the lab:
        tries each connected leader in turn, and (with ``retry``) proposes again when a
        leader lost the entry."""
        deadline = self.net.now + timeout_ms
        while self.net.now < deadline:
            index = None
            for _ in self.ids:
                self._next_start = self._next_start % len(self.ids) + 1
                i = self._next_start
                if self.net.connected[i]:
                    index = self.net.propose(i, data)
                    if index is not None:
                        break
            if index is None:
                self.net.run_for(50)
                continue

            def done(index=index) -> bool:
                count, got = self.n_committed(index)
                return count >= expected and got == data

            if self.net.run_until(done, 2000):
                return index
            if not retry:
                self.fail(f"{data!r} at {index} not committed on {expected} nodes")
        self.fail(f"one({data!r}) failed to reach agreement on {expected} nodes")
        raise AssertionError  # unreachable

    def wait_applied(self, index: int, nodes: list[int], timeout_ms: int = 10_000) -> None:
        def done() -> bool:
            return all(self.net.state_machines[i].last >= index for i in nodes)

        if not self.net.run_until(done, timeout_ms):
            lasts = {i: self.net.state_machines[i].last for i in nodes}
            self.fail(f"nodes did not apply {index} in {timeout_ms} ms: {lasts}")
