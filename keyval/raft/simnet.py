"""SimNet: a deterministic simulated network of Raft nodes on a fake clock.

Everything happens in one thread from one event queue ordered by simulated time (then by
insertion), and every random choice comes from one ``random.Random(seed)``: the same seed and the
same calls replay the same run exactly, and a run of many simulated seconds takes a fraction of
that in real time, since the clock jumps to the next event.

Faults, in the style of the well-known Raft lab network:

- reliable (the default): nothing lost, 0-2 ms delays, each link FIFO;
- per-node connect/disconnect and per-link enable (:meth:`SimNet.partition`); a message is
  dropped if its link is down when sent or when it would arrive;
- ``unreliable``: 10% of requests and 10% of replies dropped, each message delayed 0-26 ms;
- ``long_reordering``: about two thirds of replies held back 200-2,200 ms;
- :meth:`SimNet.crash` forgets a node and every message in flight to it but keeps its storage
  object, which :meth:`SimNet.restart` hands to a fresh node (anything not persisted is lost).

Counts of messages ("RPCs") and bytes (their :func:`~keyval.raft.messages.encode` size) are kept
per sending node.

For a throughput benchmark, three nodes in one process::

    net = SimNet(3, seed=1, tick_ms=10)          # reliable, 0-2 ms delays
    net.run_until(lambda: net.leader() is not None, 5_000)
    lead = net.leader()
    for _ in range(100):
        net.propose_many(lead, [b"x" * 100] * 100)  # one append message per follower
        net.run_for(5)                              # let it replicate and commit
    net.run_until(lambda: min(net.applied()) >= net.nodes[lead].commit_index, 60_000)

Real time spent is the cost of consensus (core, driver, MemoryStorage) in Python; pass
``storage_factory`` to measure a durable storage.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Callable

from keyval.raft.core import Config
from keyval.raft.memory import MemoryStorage
from keyval.raft.messages import RESPONSES, Message, MsgType, encode
from keyval.raft.node import Node, StateMachine
from keyval.raft.records import Entry

DROP_RATE = 0.1
MAX_DELAY_MS = 26
RELIABLE_MAX_DELAY_MS = 2
LONG_REORDER_RATE = 2 / 3
LONG_REORDER_MIN_MS = 200
LONG_REORDER_MAX_EXTRA_MS = 2000


class NullStateMachine:
    """Applies nothing; its snapshot is empty. For benchmarks of consensus alone."""

    def __init__(self) -> None:
        self.applied = 0

    def apply(self, entry: Entry) -> None:
        self.applied = entry.index

    def snapshot(self) -> bytes:
        return b""

    def restore(self, data: bytes) -> None:
        pass


class SimNet:
    def __init__(
        self,
        n: int,
        seed: int,
        *,
        unreliable: bool = False,
        long_reordering: bool = False,
        tick_ms: int = 50,
        config: dict | None = None,
        storage_factory: Callable[[int], object] | None = None,
        storage_reopen: Callable[[int, object], object] | None = None,
        state_machine_factory: Callable[[int], StateMachine] | None = None,
        max_raft_state: int | None = None,
        observer: Callable[[SimNet], None] | None = None,
        on_start: Callable[[int, Node], None] | None = None,
        pace_followers: bool = False,
    ) -> None:
        """``n`` nodes with ids 1..n. ``config`` holds :class:`~keyval.raft.core.Config` fields
        (besides id and peers); ``storage_factory(id)`` makes a node's storage (default
        :class:`MemoryStorage`); ``storage_reopen(id, old)`` gives the storage a restarted node
        uses (default: the same object, which is what an in-memory store models; a durable
        store closes ``old`` and opens its directory again, so recovery really runs);
        ``observer(net)`` runs after every event (safety checkers); ``on_start(id, node)``
        after each (re)start of a node (to attach a service to it); ``pace_followers`` as for
        :class:`~keyval.raft.node.Node` (the TCP server runs its nodes with it)."""
        self.seed = seed
        self.rng = random.Random(seed)
        self.ids = tuple(range(1, n + 1))
        self.unreliable = unreliable
        self.long_reordering = long_reordering
        self.tick_ms = tick_ms
        self.config = dict(heartbeat_ticks=2, election_ticks=10) | (config or {})
        self.storage_factory = storage_factory or (lambda i: MemoryStorage())
        self.storage_reopen = storage_reopen
        self.state_machine_factory = state_machine_factory or (lambda i: NullStateMachine())
        self.max_raft_state = max_raft_state
        self.observer = observer
        self.on_start = on_start
        self.pace_followers = pace_followers
        self.now = 0  # simulated milliseconds
        self._queue: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = 0
        self.storages = {i: self.storage_factory(i) for i in self.ids}
        self.state_machines: dict[int, StateMachine] = {}
        self.nodes: dict[int, Node | None] = {i: None for i in self.ids}
        self.incarnation = {i: 0 for i in self.ids}
        self.connected = {i: True for i in self.ids}
        self._blocked: set[tuple[int, int]] = set()
        self._link_clock: dict[tuple[int, int], int] = {}
        self.rpcs = {i: 0 for i in self.ids}
        self.bytes = {i: 0 for i in self.ids}
        self.sent_by_type: Counter[MsgType] = Counter()
        self.rejects = 0  # rejected appends, to measure log repair
        for i in self.ids:
            self.restart(i)

    # -- membership and faults ----------------------------------------------------------------

    def restart(self, i: int) -> None:
        """Start node ``i`` (again) on its kept storage, with a fresh state machine."""
        if self.nodes[i] is not None:
            self.crash(i)
        self.incarnation[i] += 1
        inc = self.incarnation[i]
        if inc > 1 and self.storage_reopen is not None:
            self.storages[i] = self.storage_reopen(i, self.storages[i])
        sm = self.state_machine_factory(i)
        self.state_machines[i] = sm
        cfg = Config(id=i, peers=self.ids, **self.config)
        node_rng = random.Random(self.rng.getrandbits(64))
        self.nodes[i] = Node(
            cfg,
            self.storages[i],
            sm,
            send=self._transmit,
            rng=node_rng,
            max_raft_state=self.max_raft_state,
            pace_followers=self.pace_followers,
        )
        if self.on_start is not None:
            self.on_start(i, self.nodes[i])
        # A random phase, so that nodes' ticks do not all line up.
        self._schedule(self.rng.randrange(self.tick_ms), lambda: self._tick(i, inc))

    def crash(self, i: int) -> None:
        """Node ``i`` stops; its volatile state and messages on their way to it are lost."""
        self.nodes[i] = None
        self.incarnation[i] += 1

    def disconnect(self, i: int) -> None:
        self.connected[i] = False

    def connect(self, i: int) -> None:
        self.connected[i] = True

    def partition(self, *groups: set[int] | list[int] | tuple[int, ...]) -> None:
        """Only nodes in the same group can talk; nodes in no group are cut off entirely."""
        group_of = {i: k for k, g in enumerate(groups) for i in g}
        self._blocked = {
            (a, b)
            for a in self.ids
            for b in self.ids
            if a != b and (a not in group_of or group_of.get(a) != group_of.get(b))
        }

    def heal(self) -> None:
        self._blocked = set()
        for i in self.ids:
            self.connected[i] = True

    def link_up(self, a: int, b: int) -> bool:
        return self.connected[a] and self.connected[b] and (a, b) not in self._blocked

    def set_link(self, a: int, b: int, up: bool) -> None:
        """Enable or disable the one-way link from ``a`` to ``b``."""
        if up:
            self._blocked.discard((a, b))
        else:
            self._blocked.add((a, b))

    # -- clients ------------------------------------------------------------------------------

    def propose(self, i: int, data: bytes) -> int | None:
        """Propose at node ``i``; its log index, or None if ``i`` is down or not leading."""
        node = self.nodes[i]
        if node is None or not node.is_leader:
            return None
        index = node.propose(data)
        self._observe()
        return index

    def propose_many(self, i: int, items: list[bytes]) -> list[int] | None:
        """Propose a batch at node ``i``; their indexes, or None if ``i`` cannot take them."""
        node = self.nodes[i]
        if node is None or not node.is_leader:
            return None
        indexes = node.propose_many(items)
        self._observe()
        return indexes

    def leader(self) -> int | None:
        """A running node that believes it leads, in the highest term among those."""
        best = None
        for i, node in self.nodes.items():
            if node is not None and node.is_leader and (best is None or node.term > best[0]):
                best = (node.term, i)
        return best[1] if best else None

    def leaders(self) -> list[int]:
        return [i for i, n in self.nodes.items() if n is not None and n.is_leader]

    def applied(self) -> list[int]:
        return [n.applied for n in self.nodes.values() if n is not None]

    def total_rpcs(self) -> int:
        return sum(self.rpcs.values())

    def total_bytes(self) -> int:
        return sum(self.bytes.values())

    # -- time ---------------------------------------------------------------------------------

    def run_for(self, ms: int) -> None:
        """Process every event in the next ``ms`` simulated milliseconds."""
        self.run_until(lambda: False, ms)

    def run_until(self, predicate: Callable[[], bool], timeout_ms: int) -> bool:
        """Process events until ``predicate()`` holds (checked before and after each event) or
        ``timeout_ms`` of simulated time pass; whether it held."""
        deadline = self.now + timeout_ms
        if predicate():
            return True
        while self._queue and self._queue[0][0] <= deadline:
            when, _, action = heapq.heappop(self._queue)
            self.now = when
            action()
            self._observe()
            if predicate():
                return True
        self.now = deadline
        return False

    def schedule(self, delay_ms: int, action: Callable[[], None]) -> None:
        """Runs ``action`` after ``delay_ms`` simulated milliseconds (for simulated clients;
        actions at the same time run in the order they were scheduled)."""
        self._seq += 1
        heapq.heappush(self._queue, (self.now + delay_ms, self._seq, action))

    _schedule = schedule

    def _observe(self) -> None:
        if self.observer is not None:
            self.observer(self)

    def _tick(self, i: int, inc: int) -> None:
        if self.incarnation[i] != inc:
            return
        self.nodes[i].tick()
        self._schedule(self.tick_ms, lambda: self._tick(i, inc))

    # -- messages -----------------------------------------------------------------------------

    def _transmit(self, msg: Message) -> None:
        src, dst = msg.frm, msg.to
        self.rpcs[src] += 1
        self.bytes[src] += len(encode(msg))
        self.sent_by_type[msg.type] += 1
        if msg.reject and msg.type is MsgType.APP_RESP:
            self.rejects += 1
        if not self.link_up(src, dst):
            return
        rng = self.rng
        if self.unreliable and rng.random() < DROP_RATE:
            return
        if self.unreliable:
            delay = rng.randint(0, MAX_DELAY_MS)
        else:
            delay = rng.randint(0, RELIABLE_MAX_DELAY_MS)
        if self.long_reordering and msg.type in RESPONSES and rng.random() < LONG_REORDER_RATE:
            delay = LONG_REORDER_MIN_MS + rng.randint(0, rng.randint(0, LONG_REORDER_MAX_EXTRA_MS))
        if not self.unreliable:
            # A reliable link is FIFO, as a TCP connection is; unreliable ones reorder freely.
            arrival = max(self.now + delay, self._link_clock.get((src, dst), 0))
            self._link_clock[(src, dst)] = arrival
            delay = arrival - self.now
        inc = self.incarnation[dst]
        self._schedule(delay, lambda: self._deliver(msg, inc))

    def _deliver(self, msg: Message, inc: int) -> None:
        dst = msg.to
        node = self.nodes[dst]
        if node is None or self.incarnation[dst] != inc or not self.link_up(msg.frm, dst):
            return
        node.step(msg)
