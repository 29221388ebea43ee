"""keyval.Client against three real in-process Servers on 127.0.0.1 (real sockets, real fsync).

What the simulated scenarios cannot show: the real client's sessions when threads share it,
its per-call timeout and close(), and what a server does with a request no honest client
sends.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import math
import os
import socket
import threading
import time

import pytest

from keyval.errors import ClosedError, SessionExpired, Timeout
from keyval.kv import protocol
from keyval.kv.client import Client
from keyval.kv.frames import KIND_RAFT, KIND_REQUEST
from keyval.kv.local import free_ports
from keyval.kv.server import MIN_SEGMENT_SIZE, Server
from keyval.kv.state import PUT, encode_command, max_sessions_command
from keyval.kv.transport import ClientConnection
from keyval.raft import messages

IDS = (1, 2, 3)
SEGMENT = MIN_SEGMENT_SIZE  # 4 MiB, not 64: each node writes its next segment out ahead
THREADS = 12
PUTS_PER_THREAD = 40


@pytest.fixture
def cluster(tmp_path):
    ports = free_ports(len(IDS))
    servers = _start_cluster(tmp_path, ports)
    try:
        yield servers, [f"127.0.0.1:{p}" for p in ports]
    finally:
        for server in servers.values():
            server.close()
    # Closing itself is no failure (a message answered while closing is dropped); a test may
    # have failed a node on purpose.
    assert not [s for s in servers.values() if isinstance(s.failure, ClosedError)]


def _start_cluster(root, ports: list[int], **options) -> dict[int, Server]:
    peers = {i: ("127.0.0.1", p) for i, p in zip(IDS, ports, strict=True)}
    servers = {
        i: Server(i, peers, str(root / f"node{i}"), segment_size=SEGMENT, **options) for i in IDS
    }
    for server in servers.values():
        server.start()
    return servers


def _leader(servers: dict[int, Server], client: Client) -> Server:
    # A put returns once some node leads and has applied it. On a loaded machine an election
    # can start right after it (then two nodes, or none, say they lead): put again.
    for _ in range(20):
        client.put(b"warm-up", b"x")
        leaders = [s for s in servers.values() if s.node.is_leader]
        if len(leaders) == 1:
            return leaders[0]
    pytest.fail("no single leader after 20 puts")


def test_threads_sharing_a_client_lose_no_acknowledged_write(cluster):
    """The cluster keeps one last sequence number per client id: threads numbering from one
    counter would have a write committed after a higher-numbered one taken for an old retry,
    acknowledged and never applied (the bug this guards against lost about a third)."""
    servers, addresses = cluster
    client = Client(addresses, timeout=20.0)
    _leader(servers, client)
    start = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            start.wait()
            for n in range(PUTS_PER_THREAD):
                client.put(b"t%d-%d" % (t, n), b"v%d" % n)
        except BaseException as exc:  # reported below, with the thread's number
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    missing = [
        (t, n)
        for t in range(THREADS)
        for n in range(PUTS_PER_THREAD)
        if client.get(b"t%d-%d" % (t, n)) != b"v%d" % n
    ]
    assert missing == []
    client.close()


def test_each_thread_has_its_own_session(cluster):
    _, addresses = cluster
    client = Client(addresses)
    ids = set()
    threads = [threading.Thread(target=lambda: ids.add(client.client_id)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids.add(client.client_id)
    assert len(ids) == 5
    assert client.client_id == client.client_id  # stable within a thread


def test_a_request_no_client_would_send_harms_no_node(cluster):
    """An empty key, framed correctly, is refused before it is proposed; before the fix it was
    committed, and every node stopped when it wrote the key to its database."""
    servers, addresses = cluster
    client = Client(addresses)
    bodies = (
        bytes([protocol.WRITE]) + encode_command(PUT, 7, 1, b"", b"value"),
        bytes([protocol.WRITE]) + encode_command(PUT, 7, 2, b"k" * (32 * 1024 + 1)),
        bytes([protocol.WRITE]) + b"\x01short",
        bytes([protocol.WRITE]) + max_sessions_command(1).encode(),  # the leader's alone
        bytes([protocol.READ]),
    )
    # "Nothing was proposed" is read off the leader's log, which a new term's no-op also
    # lengthens: on a loaded machine an election may fall inside the test, which then runs
    # again under the next leader.
    for _ in range(5):
        leader = _leader(servers, client)
        term, last_before = leader.node.term, leader.storage.last_index
        conn = ClientConnection(("127.0.0.1", leader.peers[leader.node_id][1]))
        try:
            replies = [conn.request(KIND_REQUEST, body) for body in bodies]
        finally:
            conn.close()
        last_after = leader.storage.last_index
        if leader.node.is_leader and leader.node.term == term:
            break
    else:
        pytest.fail("the leader changed during each of 5 tries")
    assert [r[0] for r in replies] == [protocol.BAD_REQUEST] * len(bodies), replies
    assert last_after == last_before  # nothing was proposed
    client.put(b"after", b"still serving")
    for server in servers.values():
        server.state_machine.flush()  # writes the batch to each node's DB: must not fail
        assert not server.stopped.is_set() and server.failure is None
    assert client.get(b"after") == b"still serving"
    with pytest.raises(ValueError):
        client.get(b"")  # the client itself refuses it, before any request


def test_per_call_timeout(tmp_path):
    (port,) = free_ports(1)  # nobody listens there
    client = Client([f"127.0.0.1:{port}"], timeout=60.0)
    started = time.monotonic()
    with pytest.raises(Timeout):
        client.put(b"k", b"v", timeout=0.3)
    assert time.monotonic() - started < 5.0  # the call's 0.3 s, not the client's 60 s
    with pytest.raises(ValueError):
        client.get(b"k", timeout=0)


def test_a_client_timeout_that_is_not_positive_is_refused(tmp_path):
    # NaN compared false with every deadline: a call to an unreachable server never ended.
    for bad in (0, -5, math.nan):
        with pytest.raises(ValueError):
            Client(["127.0.0.1:1"], timeout=bad)


def test_a_connection_attempt_ends_with_the_calls_timeout(tmp_path):
    # Connections were attempted with a fixed 1 s timeout: to a host that drops connection
    # attempts (here a listener whose backlog is full), a call with a 0.2 s timeout took 1 s.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler = []
        try:
            for _ in range(8):  # fill the backlog; later attempts hang
                c = socket.socket()
                c.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    c.connect(listener.getsockname())
                filler.append(c)
            client = Client([f"127.0.0.1:{listener.getsockname()[1]}"])
            started = time.monotonic()
            with pytest.raises(Timeout):
                client.get(b"k", timeout=0.2)
            assert time.monotonic() - started < 0.8
        finally:
            for c in filler:
                c.close()


def test_a_connection_closed_under_a_thread_does_not_fail_its_calls(cluster):
    # A thread whose believed leader moved between picking its connection and dropping the
    # failed one dropped another server's instead, and kept the closed one: every later call
    # raised ClosedError at once, until the leader moved again.
    servers, addresses = cluster
    client = Client(addresses)
    _leader(servers, client)
    client._local.conns[client._leader].close()  # the state that race left
    client.put(b"k", b"v")
    assert client.get(b"k") == b"v"


def test_close_closes_every_threads_connections(cluster):
    servers, addresses = cluster
    client = Client(addresses)
    _leader(servers, client)
    seen = []
    used, closed = threading.Event(), threading.Event()

    def use() -> None:  # stays alive (its connections with it) until the client is closed
        client.get(b"warm-up")
        seen.extend(client._local.conns.values())
        used.set()
        closed.wait(30)

    thread = threading.Thread(target=use)
    thread.start()
    try:
        assert used.wait(30) and seen
        client.close()
        assert all(conn._sock is None for conn in seen)
    finally:
        closed.set()
        thread.join()
    assert client.get(b"warm-up") == b"x"  # a closed client opens new connections


def test_a_failed_fsync_stops_the_node_and_the_others_go_on(cluster):
    """The put may still succeed: the followers made it durable, a majority without the
    leader. The leader must stop and say why (its process then exits non-zero)."""
    servers, addresses = cluster
    client = Client(addresses, timeout=20.0)
    leader = _leader(servers, client)
    leader.storage._wal.inject_fault("fsync", errno.EIO)
    with contextlib.suppress(Timeout):  # either outcome is allowed for this one write
        client.put(b"k", b"v")
    assert leader.stopped.wait(10.0)
    assert "Input/output error" in str(leader.failure)  # the injected EIO, named
    client.put(b"after", b"a new leader")
    assert client.get(b"after") == b"a new leader"


def test_servers_compact_on_their_own_thread_and_restart_from_the_snapshot(tmp_path):
    """With a small max_raft_state every node snapshots and compacts (off its lock, on the
    server's compaction thread) while the writes go on; each keeps its Raft state bounded,
    and a restart of the whole cluster from the snapshots and logs loses nothing."""
    limit = 16 * 1024
    ports = free_ports(len(IDS))
    addresses = [f"127.0.0.1:{p}" for p in ports]
    servers = _start_cluster(tmp_path, ports, max_raft_state=limit)
    client = Client(addresses, timeout=20.0)
    try:
        value = b"v" * 200
        for n in range(400):
            client.put(b"key-%d" % (n % 50), value + b"%d" % n)
        for server in servers.values():
            assert server.failure is None
            snap = server.storage.snapshot()
            assert snap is not None and snap.index > 0
            assert server.node.raft_state_size <= 8 * limit
    finally:
        client.close()
        for server in servers.values():
            server.close()
    servers = _start_cluster(tmp_path, ports, max_raft_state=limit)
    client = Client(addresses, timeout=20.0)
    try:
        for n in range(350, 400):
            assert client.get(b"key-%d" % (n % 50)) == b"v" * 200 + b"%d" % n
    finally:
        client.close()
        for server in servers.values():
            server.close()


def test_a_follower_behind_the_compacted_log_is_caught_up_by_a_streamed_snapshot(tmp_path):
    """Over real TCP: a follower stopped while the others write and compact past its log
    comes back, receives the leader's snapshot (read from its file, sent in chunks, gathered
    in an unnamed file, saved, restored in bounded transactions) and holds every write."""
    limit = 32 * 1024
    ports = free_ports(len(IDS))
    peers = {i: ("127.0.0.1", p) for i, p in zip(IDS, ports, strict=True)}
    addresses = [f"127.0.0.1:{p}" for p in ports]
    servers = _start_cluster(tmp_path, ports, max_raft_state=limit)
    client = Client(addresses, timeout=20.0)
    try:
        leader = _leader(servers, client)
        gone = next(i for i in IDS if servers[i] is not leader)
        servers[gone].close()
        values = {b"key-%d" % n: bytes([n % 251]) * 1000 for n in range(400)}  # 400 KB
        for key, value in values.items():
            client.put(key, value)
        snap = leader.storage.snapshot()
        assert len(snap.data) > 4 * 64 * 1024  # several chunks, more than one window
        assert leader.storage.first_index > servers[gone].storage.last_index + 1
        applied = threading.Condition()
        back = Server(
            gone, peers, str(tmp_path / f"node{gone}"), max_raft_state=limit, segment_size=SEGMENT
        )
        back.node.on_apply = functools.partial(_notify_after, back.node.on_apply, applied)
        servers[gone] = back
        back.start()
        client.put(b"after", b"it came back")
        with leader.node.lock:
            commit = leader.node.commit_index
        with applied:
            assert applied.wait_for(lambda: back.node.applied >= commit, 30)
        assert back.failure is None and back.storage.snapshot().index >= snap.index
        assert all(back.state_machine.get(k) == v for k, v in values.items())
        assert os.listdir(os.path.join(back.storage.path, "snap"))  # saved, no leftovers
        assert all(n.endswith(".snap") for n in os.listdir(os.path.join(back.storage.path, "snap")))
    finally:
        client.close()
        for server in servers.values():
            server.close()


def test_a_client_whose_session_expired_goes_on_in_a_new_one(tmp_path):
    """Room for two sessions: a third client expires the first. The first one's next write,
    refused EXPIRED at its only attempt, was never applied, so the client resends it in a new
    session; refused after a second attempt, it may have been applied: SessionExpired."""
    ports = free_ports(len(IDS))
    addresses = [f"127.0.0.1:{p}" for p in ports]
    servers = _start_cluster(tmp_path, ports, max_sessions=2)
    clients = [Client(addresses, timeout=20.0) for _ in range(3)]
    try:
        first = clients[0]
        first.put(b"a", b"1")
        old_id = first.client_id
        clients[1].put(b"b", b"1")
        clients[2].put(b"c", b"1")  # a third session: the first one's expires
        first.put(b"a", b"2")  # at the leader it believes in: one attempt
        assert first.client_id != old_id
        assert first.get(b"a") == b"2"

        clients[1].put(b"b", b"2")
        clients[2].put(b"c", b"2")  # the first one's new session expires too
        leader = _leader(servers, clients[1])
        follower = next(i for i, s in servers.items() if s is not leader)
        first._leader = IDS.index(follower)  # its first attempt meets a follower
        with pytest.raises(SessionExpired):
            first.put(b"a", b"3")
        assert first.get(b"a") == b"2"  # never applied (EXPIRED changes nothing)
        first.put(b"a", b"4")  # and the client goes on, in a new session
        assert first.get(b"a") == b"4"
    finally:
        for client in clients:
            client.close()
        for server in servers.values():
            server.close()


def test_a_resend_whose_new_session_expires_too_goes_again_in_another(tmp_path):
    """Room for one session: the first write's session expires, and so does the new one the
    client opens for the resend, before the resend lands (another client opens one in
    between). That resend was refused at its only attempt too: the client opens a third
    session and the write lands, instead of its EXPIRED being taken for success."""
    ports = free_ports(len(IDS))
    addresses = [f"127.0.0.1:{p}" for p in ports]
    servers = _start_cluster(tmp_path, ports, max_sessions=1)
    first, other = Client(addresses, timeout=20.0), Client(addresses, timeout=20.0)
    try:
        first.put(b"a", b"1")
        other.put(b"b", b"1")  # first's session expires
        opened = first._session

        def session(timeout):
            fresh = getattr(first._local, "session", None) is None
            out = opened(timeout)
            if fresh and not hasattr(session, "done"):
                session.done = True
                # other's session expired when first opened this one: other opens another,
                # and first's new session expires before first's resend lands
                other.put(b"b", b"2")
            return out

        first._session = session
        first.put(b"a", b"2")
        assert first.get(b"a") == b"2"
    finally:
        first.close()
        other.close()
        for server in servers.values():
            server.close()


def test_a_write_in_a_session_no_register_opened_is_refused(cluster):
    """A client id chosen by the client (as older keyval clients did) names no session the
    cluster can have opened: a clear error, not EXPIRED (which such a client took for done)."""
    servers, addresses = cluster
    client = Client(addresses)
    leader = _leader(servers, client)
    conn = ClientConnection(("127.0.0.1", leader.peers[leader.node_id][1]))
    try:
        body = bytes([protocol.WRITE]) + encode_command(PUT, 2**62, 1, b"k", b"v")
        reply = conn.request(KIND_REQUEST, body)
        assert reply[0] == protocol.BAD_REQUEST and b"REGISTER" in reply, reply
    finally:
        conn.close()
    assert client.get(b"k") is None


def test_nodes_started_with_different_session_limits_use_the_leaders(tmp_path):
    """The limit is replicated: a node given another one does not expire sessions at other
    entries than its peers (their states would differ), it uses the leader's."""
    ports = free_ports(len(IDS))
    peers = {i: ("127.0.0.1", p) for i, p in zip(IDS, ports, strict=True)}
    limits = dict(zip(IDS, (2, 3, 4), strict=True))
    servers = {
        i: Server(i, peers, str(tmp_path / f"n{i}"), max_sessions=limits[i], segment_size=SEGMENT)
        for i in IDS
    }
    # Each uses its own only until the log sets one: for entries applied before the limit
    # was replicated (a DB or snapshot of an older keyval), when it had to match everywhere.
    assert [servers[i].state_machine.max_sessions for i in IDS] == [2, 3, 4]
    applied = threading.Condition()
    for server in servers.values():  # a wake-up for the waits below on every applied entry
        server.node.on_apply = functools.partial(_notify_after, server.node.on_apply, applied)
        server.start()
    addresses = [f"127.0.0.1:{p}" for p in ports]
    clients = [Client(addresses, timeout=20.0) for _ in range(5)]
    try:
        leader = _leader(servers, clients[0])
        for n, client in enumerate(clients):
            client.put(b"k%d" % n, b"v")
        with leader.node.lock:
            commit = leader.node.commit_index
        nodes = servers.values()
        with applied:
            assert applied.wait_for(lambda: all(s.node.applied >= commit for s in nodes), 20)
        states = {
            i: (
                s.state_machine.max_sessions,
                [s.state_machine.session(c.client_id) for c in clients],
            )
            for i, s in servers.items()
        }
        limit = limits[leader.node_id]
        assert all(state == states[leader.node_id] for state in states.values()), states
        assert states[leader.node_id][0] == limit
        assert {s.status()["max_sessions"] for s in servers.values()} == {limit}
        assert sum(session is not None for session in states[leader.node_id][1]) == limit
    finally:
        for client in clients:
            client.close()
        for server in servers.values():
            server.close()


def _notify_after(on_apply, condition: threading.Condition, entry, reply) -> None:
    on_apply(entry, reply)
    with condition:
        condition.notify_all()


def test_a_message_answered_while_closing_is_dropped_not_a_failure(cluster):
    """close() stops the transport while a reader thread may still be stepping a message:
    its answer cannot go out, and that must not be taken for a failure of the node."""
    servers, addresses = cluster
    client = Client(addresses)
    leader = _leader(servers, client)
    client.close()
    follower = next(s for s in servers.values() if s is not leader)
    follower._stop.set()  # what close() does first, then the transport
    follower.transport.close()
    with leader.node.lock:
        term = leader.node.term
    beat = messages.Message(messages.MsgType.HEARTBEAT, follower.node_id, leader.node_id, term)
    follower._on_frames(leader.node_id, [(KIND_RAFT, messages.encode(beat))])
    assert follower.failure is None


def test_close_ends_a_call_in_flight_in_another_thread_at_once():
    """close() used to close connections only: a thread waiting for an answer went on until
    its attempt timed out, then retried on a new connection, until the call's own timeout."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    client = Client([f"127.0.0.1:{listener.getsockname()[1]}"], timeout=30)
    ended: list[BaseException] = []

    def call() -> None:
        try:
            client.get(b"k")  # this server reads the request and never answers
        except BaseException as exc:
            ended.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    conn, _ = listener.accept()
    try:
        conn.settimeout(10)
        assert conn.recv(1024)  # the request arrived: the call is waiting for its answer
        started = time.monotonic()
        client.close()
        thread.join(10)
        assert not thread.is_alive()
        assert len(ended) == 1 and isinstance(ended[0], ClosedError)
        assert time.monotonic() - started < 2.0  # woken by close, not by its 2.5 s attempt
    finally:
        conn.close()
        listener.close()
