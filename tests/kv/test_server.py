"""Server, in process: three real Servers on 127.0.0.1 (real sockets, real fsync).

What the tick thread does between ticks: only a leader holds messages back for a nudge to
send (keyval.raft.pacing), so only a leader wakes up to nudge; the others sleep until their
next tick. And inputs that once stopped nodes: requests too long to replicate, answers too
long to send, a HELLO from a node that is not a peer.
"""

from __future__ import annotations

import collections
import socket
import subprocess
import sys
import threading

import pytest

from keyval.db import DB
from keyval.db.page import MAX_KEY_SIZE
from keyval.kv import protocol
from keyval.kv.client import Client
from keyval.kv.frames import HELLO, KIND_HELLO, KIND_RAFT, KIND_REQUEST, encode
from keyval.kv.local import free_ports
from keyval.kv.server import MIN_SEGMENT_SIZE, NUDGES_PER_TICK, Server
from keyval.kv.state import MAX_VALUE, PUT, encode_command
from keyval.kv.transport import ClientConnection
from keyval.raft import messages
from keyval.raft.messages import Message, MsgType

IDS = (1, 2, 3)
SEGMENT = MIN_SEGMENT_SIZE  # 4 MiB, not 64: each node writes its next segment out ahead
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
    servers = {i: Server(i, peers, str(tmp_path / f"node{i}"), segment_size=SEGMENT) for i in IDS}
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


@pytest.fixture
def cluster(tmp_path):
    """Three Servers on 127.0.0.1; ``before_start(data_dir)`` may seed each node's directory."""
    made: list[Server] = []

    def start(before_start=None) -> tuple[dict[int, Server], Client]:
        ports = free_ports(len(IDS))
        peers = {i: ("127.0.0.1", p) for i, p in zip(IDS, ports, strict=True)}
        for i in IDS:
            if before_start is not None:
                before_start(tmp_path / f"node{i}")
            made.append(Server(i, peers, str(tmp_path / f"node{i}"), segment_size=SEGMENT))
        for server in made:
            server.start()
        return {s.node_id: s for s in made}, Client([f"127.0.0.1:{p}" for p in ports])

    yield start
    for server in made:
        server.close()


def _all_serving(servers: dict[int, Server]) -> None:
    assert not any(s.stopped.is_set() for s in servers.values()), {
        i: s.failure for i, s in servers.items()
    }


def test_a_write_too_long_for_a_raft_message_is_refused_and_stops_no_node(cluster):
    # It once passed the server's checks, then could not be sent to the followers: the leader
    # stopped, and the client's retry stopped the next one.
    servers, client = cluster()
    client.put(b"a", b"1")
    leader = next(s for s in servers.values() if s.node.is_leader)
    conn = ClientConnection(leader.peers[leader.node_id], timeout=10)
    try:
        value = bytes(8 * 2**20 - 64)  # the request still fits one frame
        request = bytes([protocol.WRITE]) + encode_command(PUT, 0, 0, b"k", value)
        reply = conn.request(KIND_REQUEST, request, timeout=10)
    finally:
        conn.close()
    assert reply[0] == protocol.BAD_REQUEST and b"at most %d" % MAX_VALUE in reply
    with pytest.raises(ValueError, match="grow past"):  # appends cannot get there either
        for _ in range(2):
            client.append(b"grown", bytes(MAX_VALUE // 2 + 1))
    client.put(b"a", b"2")
    assert client.get(b"a") == b"2"
    _all_serving(servers)


def test_a_value_too_long_to_answer_is_refused_and_stops_no_node(cluster):
    # A value stored before values were capped: its answer does not fit a frame. Building it
    # raised inside the node applying entries, which stopped it (and the retry the next one).
    def seed(data_dir) -> None:
        data_dir.mkdir()
        with DB(str(data_dir / "kv.db")) as db, db.update() as tx:
            tx.create_bucket(b"kv").put(b"old", bytes(9 * 2**20))

    servers, client = cluster(seed)
    with pytest.raises(ValueError, match="too long to send"):
        client.get(b"old")
    client.put(b"a", b"1")
    assert client.get(b"a") == b"1"
    _all_serving(servers)


def test_a_hello_from_a_node_that_is_not_a_peer_closes_only_that_connection(cluster):
    # Its messages were stepped and the answers sent to an unknown node: KeyError, and every
    # node it reached stopped (a fourth server started with a wrong peer list did the same).
    servers, client = cluster()
    client.put(b"a", b"1")
    for server in servers.values():
        with socket.create_connection(server.peers[server.node_id], timeout=10) as sock:
            sock.sendall(encode(KIND_HELLO, HELLO.pack(99)))
            stale = Message(MsgType.HEARTBEAT, server.node_id, 99, 0)
            sock.sendall(encode(KIND_RAFT, messages.encode(stale)))
            assert sock.recv(1) == b""  # the server closed the connection
    client.put(b"a", b"2")
    assert client.get(b"a") == b"2"
    _all_serving(servers)


def test_a_frame_other_than_a_request_closes_a_client_connection_and_changes_nothing(cluster):
    # Every kind but HELLO and RESPONSE was served as a request: a RAFT frame carrying a PUT
    # was applied.
    servers, client = cluster()
    client.put(b"k", b"before")
    leader = next(s for s in servers.values() if s.node.is_leader)
    put = bytes([protocol.WRITE]) + encode_command(PUT, 0, 0, b"k", b"smuggled")
    for kind in (KIND_RAFT, 0, 255):
        with socket.create_connection(leader.peers[leader.node_id], timeout=10) as sock:
            sock.sendall(encode(kind, put))
            assert sock.recv(1) == b""  # closed, not answered
    assert client.get(b"k") == b"before"
    _all_serving(servers)


def test_a_spoofed_append_response_stops_no_leader(cluster):
    # A HELLO with a peer's id, then an APP_RESP acknowledging an index past the leader's log:
    # the leader stopped, and the same frame sent to the next leader stopped that one too.
    servers, client = cluster()
    client.put(b"k", b"1")
    for _ in range(2):
        leader = next(s for s in servers.values() if s.node.is_leader)
        peer = next(i for i in servers if i != leader.node_id)
        lie = Message(MsgType.APP_RESP, leader.node_id, peer, leader.node.term, index=10**6)
        with socket.create_connection(leader.peers[leader.node_id], timeout=10) as sock:
            sock.sendall(
                encode(KIND_HELLO, HELLO.pack(peer)) + encode(KIND_RAFT, messages.encode(lie))
            )
        client.put(b"k", b"2")  # answered by a leader that went on
    assert client.get(b"k") == b"2"
    _all_serving(servers)


def test_the_longest_command_fits_the_smallest_segment(cluster):
    servers, client = cluster()  # every node on MIN_SEGMENT_SIZE
    key, value = b"K" * MAX_KEY_SIZE, bytes(range(256)) * (MAX_VALUE // 256)
    client.put(key, value)
    client.put(b"after", b"1")  # the next segment takes the next entry
    assert client.get(key) == value
    for server in servers.values():
        wal = server.storage._wal
        assert wal.stats()["segments"] >= 2, "the command should have filled a segment"
    _all_serving(servers)


@pytest.mark.parametrize(
    "args",
    [
        {"segment_size": MIN_SEGMENT_SIZE - 8},  # the longest command would stop every node
        {"max_sessions": 0},
    ],
)
def test_a_bad_option_is_refused_before_anything_is_made(tmp_path, args):
    peers = {1: ("127.0.0.1", free_ports(1)[0])}
    with pytest.raises(ValueError, match=next(iter(args))):
        Server(1, peers, str(tmp_path / "node"), **args)
    with pytest.raises(ValueError, match="not among the peers"):
        Server(2, peers, str(tmp_path / "node"))
    assert list(tmp_path.iterdir()) == []


def test_serve_says_why_it_refuses_a_segment_size(tmp_path):
    port = free_ports(1)[0]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "keyval.cli",
            "serve",
            "--id",
            "1",
            "--peers",
            f"1=127.0.0.1:{port}",
            "--data",
            str(tmp_path / "node"),
            "--segment-size",
            "4096",
        ],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert b"segment_size must be at least %d" % MIN_SEGMENT_SIZE in done.stderr
    assert list(tmp_path.iterdir()) == []
