"""Server, in process: three real Servers on 127.0.0.1 (real sockets, real fsync).

What the tick thread does between ticks: only a leader holds messages back for a nudge to
send (keyval.raft.pacing), so only a leader wakes up to nudge; the others sleep until their
next tick.
"""

from __future__ import annotations

import collections
import threading

from keyval.kv.local import free_ports
from keyval.kv.server import NUDGES_PER_TICK, Server

IDS = (1, 2, 3)
LEADER_TICKS = 20  # ticks a leader must have taken before the counts are read


class _CountingEvent(threading.Event):
    """The server's stop event, counting the waits of its tick thread (one per wake-up)."""

    def __init__(self) -> None:
        super().__init__()
        self.tick_waits = 0

    def wait(self, timeout=None):
        if threading.current_thread().name.startswith("keyval-tick-"):
            self.tick_waits += 1
        return super().wait(timeout)


def test_only_a_leader_wakes_up_between_ticks(tmp_path):
    ports = free_ports(len(IDS))
    peers = {i: ("127.0.0.1", p) for i, p in zip(IDS, ports, strict=True)}
    servers = {i: Server(i, peers, str(tmp_path / f"node{i}")) for i in IDS}
    counts = {i: collections.Counter() for i in IDS}
    lock = threading.Lock()
    enough = threading.Event()

    def instrument(i: int, server: Server) -> None:
        node = server.node
        tick, nudge = node.tick, node.nudge

        def counted_tick() -> None:
            tick()
            with lock:
                counts[i]["ticks"] += 1
                if node.is_leader:
                    counts[i]["leader_ticks"] += 1
                    if counts[i]["leader_ticks"] >= LEADER_TICKS:
                        enough.set()

        def counted_nudge() -> None:
            with lock:
                counts[i]["nudges" if node.is_leader else "follower_nudges"] += 1
            nudge()

        node.tick, node.nudge = counted_tick, counted_nudge

    for i, server in servers.items():
        server._stop = _CountingEvent()
        instrument(i, server)
    try:
        for server in servers.values():
            server.start()
        assert enough.wait(30), counts
    finally:
        for server in servers.values():
            server.close()
    with lock:
        leaders = [i for i in IDS if counts[i]["leader_ticks"] >= LEADER_TICKS]
        assert leaders, counts
        for i in IDS:
            assert counts[i]["follower_nudges"] == 0, counts
            assert counts[i]["ticks"] > 0, counts
            if counts[i]["leader_ticks"] == 0:  # never led: one wake-up per tick (and the last)
                assert servers[i]._stop.tick_waits <= counts[i]["ticks"] + 1, counts
        # A leader is nudged between its ticks (a late wake-up may skip some).
        lead = counts[leaders[0]]
        assert lead["nudges"] >= (LEADER_TICKS - 2) * (NUDGES_PER_TICK - 1) // 2, counts
