"""The TCP transport between keyval nodes, and the request/response path for clients.

Threads, not asyncio: the Raft node driver is synchronous, and a thread per connection is easy to
reason about at a cluster's scale (a handful of peers, tens of clients).

Connections and their modes (frames as in :mod:`keyval.kv.frames`):

- **Peer links are one-way.** Node A sends to node B on a connection A opened; B answers on its
  own connection to A. A's first frame is ``KIND_HELLO`` carrying A's node id; every later frame
  is handed to ``on_frame(A, kind, payload)`` on B. Nothing is ever written back on it.
- **Client connections** are the ones whose first frame is anything but HELLO: each frame is a
  request, answered by exactly one ``KIND_RESPONSE`` frame, in order, on the same connection.
  ``on_request(kind, payload, respond)`` runs on that connection's thread. It either returns
  the answer, or returns None having called, or arranged that some thread will call,
  ``respond(answer)`` exactly once: whoever completes a request (the thread that applied a
  write) then writes the answer to the socket itself, and the connection's thread, instead
  of waiting to be woken for it, goes back to reading. It handles the next request on that
  connection only once the previous answer is out, so answers stay in request order.

Sending never blocks the caller. :meth:`Transport.send` writes the frame to the peer's socket
at once when nothing is queued or being written on that link and the socket takes the whole
frame without waiting (the common case, and one thread hand-off less per message); otherwise
the frame (or its unwritten rest) goes to that peer's bounded queue, which the peer's sender
thread writes. When the queue is full the **oldest** frame is dropped: Raft tolerates loss
(the leader resends from what followers acknowledge), and after an outage the newest messages
(current term, latest commit index) are the useful ones, while a backlog of stale heartbeats and
appends would only delay them. The sender thread connects lazily when there is something
to send, and after a failure reconnects with exponential back-off (capped, with jitter so that
nodes restarted together do not retry in lockstep). Frames handed to a connection that then fails
may be lost; frames on one live connection arrive in the order sent.

A malformed or oversized frame (:class:`~keyval.kv.frames.FrameError`), a bad HELLO, a frame
not received whole within ``frame_timeout`` (10 s) of its first byte (or of the connection's
start, for the first one), or an exception from a callback closes that one connection with one
log line; other connections, the listener and the senders carry on. Between frames a connection
may stay idle without limit. At most ``max_connections`` inbound connections are open; past
that, a new one is let in only to say HELLO as a peer (as many at once as there are peers), so that
clients holding every slot cannot keep the cluster's own links from reconnecting. The listener
binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import random
import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable

from keyval.errors import ClosedError, Timeout
from keyval.kv.frames import (
    DEFAULT_MAX_PAYLOAD,
    HELLO,
    KIND_HELLO,
    KIND_RESPONSE,
    FrameDecoder,
    FrameError,
    encode,
)

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
RECV_SIZE = 256 * 1024
# Polling intervals bound how long close() waits for a thread blocked in accept() or on an idle
# queue; shutdown() wakes blocked sockets sooner on Linux, these are the portable fallback.
POLL_INTERVAL = 0.1


def _peer_name(addr) -> str:
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else str(addr)


class _PeerLink:
    """The outbound side towards one peer: its queue and its socket.

    One thread at a time writes to the socket: the one that set ``busy`` (under ``cond``), be it
    the sender thread or a caller of :meth:`Transport.send` writing directly. ``partial`` says
    that ``queue[0]`` is the unwritten rest of a frame begun on the current socket: it must go
    out next on that socket, and nowhere else."""

    def __init__(self, peer_id: int, address: tuple[str, int], capacity: int):
        self.peer_id = peer_id
        self.address = address
        self.queue: deque[bytes] = deque()
        self.capacity = capacity
        self.cond = threading.Condition()
        self.sock: socket.socket | None = None
        self.busy = False
        self.partial = False

    def enqueue(self, frame: bytes) -> bool:
        """Queue ``frame`` (under ``cond``); False if the oldest whole frame was dropped."""
        dropped = False
        if len(self.queue) >= self.capacity:
            if self.partial:  # the begun frame must finish, or the stream is garbage
                del self.queue[1]
            else:
                self.queue.popleft()
            dropped = True
        self.queue.append(frame)
        self.cond.notify()
        return not dropped


class _Response:
    """``respond`` for one client request. Writes the answer from the calling thread when the
    socket takes it without waiting (always, unless the client stopped reading); otherwise a
    thread of its own writes the rest, so that the caller (which may hold a Raft node's lock)
    never blocks on a client. ``out`` is set once the whole answer is written, or cannot be."""

    def __init__(self, transport: Transport, sock: socket.socket) -> None:
        self._transport = transport
        self._sock = sock
        self._lock = threading.Lock()  # held while writing, so abandon() waits for a write
        self._called = False
        self._abandoned = False
        self.out = threading.Event()

    def __call__(self, reply: bytes) -> None:
        t = self._transport
        frame = encode(KIND_RESPONSE, reply, t.max_payload)
        with self._lock:
            if self._called:
                raise RuntimeError("a request answered twice")
            self._called = True
            if self._abandoned:  # the connection is gone; so is whoever asked
                self.out.set()
                return
            # The connection's socket is blocking (no timeout), so MSG_DONTWAIT is a true
            # non-blocking attempt.
            try:
                sent = self._sock.send(frame, socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            except OSError:  # broken: the connection's thread finds out on its next read
                self.out.set()
                return
            if sent == len(frame):
                t._count("frames_sent", 1, "bytes_sent", sent)
                self.out.set()
                return
            t._spawn(self._finish, "answer", frame, sent)

    def _finish(self, frame: bytes, sent: int) -> None:
        try:
            with self._lock:
                if not self._abandoned:
                    self._sock.sendall(frame[sent:])
                    self._transport._count("frames_sent", 1, "bytes_sent", len(frame))
        except OSError:
            pass
        finally:
            self.out.set()

    def abandon(self) -> None:
        """The connection is closing: an answer not yet written is dropped. Returns once no
        thread writes to the socket any more (it may then be closed)."""
        self._abandoned = True
        with self._lock:
            pass


class Transport:
    """Moves frames between this node and its peers over TCP; serves client requests.

    ``on_frame(peer_id, kind, payload)`` is called for every frame received from a peer, on that
    connection's reader thread (one thread per inbound peer connection: calls for one peer are
    sequential and in order, calls for different peers may be concurrent). Given
    ``on_frames(peer_id, [(kind, payload), ...])`` instead, it gets every frame one read from
    that peer completed in one call (a Raft node steps them all, then writes once).
    ``on_request(kind, payload, respond) -> bytes | None`` answers a client request (see the
    module docstring); without it client connections are refused.

    Thread-safe: :meth:`send`, :meth:`stats` and :meth:`close` may be called from any thread.
    """

    def __init__(
        self,
        node_id: int,
        listen: tuple[str, int] = (DEFAULT_HOST, 0),
        peers: dict[int, tuple[str, int]] | None = None,
        on_frame: Callable[[int, int, bytes], None] | None = None,
        on_frames: Callable[[int, list[tuple[int, bytes]]], None] | None = None,
        on_request: Callable[[int, bytes, Callable[[bytes], None]], bytes | None] | None = None,
        *,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        queue_size: int = 4096,
        backoff_min: float = 0.02,
        backoff_max: float = 1.0,
        connect_timeout: float = 1.0,
        write_timeout: float = 5.0,
        max_connections: int = 256,
        frame_timeout: float = 10.0,
    ):
        self.node_id = node_id
        self.listen = listen
        self.on_frame = on_frame
        self.on_frames = on_frames
        self.on_request = on_request
        self.max_payload = max_payload
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.write_timeout = write_timeout
        self.max_connections = max_connections
        self.frame_timeout = frame_timeout
        # Connections let in past max_connections for a peer's HELLO (see _accept_loop).
        self._spare = 0
        self._links = {
            pid: _PeerLink(pid, addr, queue_size)
            for pid, addr in (peers or {}).items()
            if pid != node_id
        }
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._inbound: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._started = False
        self._counters = dict.fromkeys(
            (
                "frames_sent",
                "bytes_sent",
                "frames_received",
                "bytes_received",
                "requests",
                "connections_accepted",
                "connections_refused",
                "connections_made",
                "connect_failures",
                "drops",
                "errors",
            ),
            0,
        )
        self.address: tuple[str, int] | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Bind and listen (``address`` is then the bound host and port) and start the threads.

        Raises ``OSError`` if the address cannot be bound."""
        if self._started:
            raise RuntimeError("transport already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # A node restarted on its old port must not wait for TIME_WAIT connections to expire.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(self.listen)
            sock.listen(64)
        except OSError:
            sock.close()
            raise
        sock.settimeout(POLL_INTERVAL)
        self._listener = sock
        self.address = sock.getsockname()[:2]
        self._started = True
        self._spawn(self._accept_loop, f"listen-{self.address[1]}")
        for link in self._links.values():
            self._spawn(self._send_loop, f"send-{link.peer_id}", link)

    def close(self, timeout: float = 2.0) -> None:
        """Stop every thread and close every socket; returns within about ``timeout`` seconds.
        Frames still queued are dropped. Idempotent."""
        self._stop.set()
        for link in self._links.values():
            with link.cond:
                link.cond.notify_all()
                sock = link.sock
            if sock is not None:
                self._shutdown(sock)
        with self._lock:
            inbound = list(self._inbound)
        for sock in inbound:
            self._shutdown(sock)
        if self._listener is not None:
            self._shutdown(self._listener)
        deadline = time.monotonic() + timeout
        # Repeat: a connection accepted just before the stop flag was seen spawns its reader
        # after the first pass (its socket is already shut down, so the reader ends at once).
        while time.monotonic() < deadline:
            others = [t for t in self.threads() if t is not threading.current_thread()]
            if not others:
                break
            for t in others:
                t.join(max(0.0, deadline - time.monotonic()))
        if self._listener is not None:
            self._listener.close()
        stuck = [t.name for t in self.threads()]
        if stuck:
            log.warning("transport %d: threads still running after close: %s", self.node_id, stuck)

    def __enter__(self) -> Transport:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def threads(self) -> list[threading.Thread]:
        """The transport's threads that are still alive."""
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            return list(self._threads)

    def stats(self) -> dict[str, int]:
        """A snapshot of the counters: frames (HELLO excluded) and bytes (everything on the wire)
        sent and received, connections, drops, errors; plus ``queued``, the frames waiting in
        all peer queues."""
        with self._lock:
            out = dict(self._counters)
        out["queued"] = sum(len(link.queue) for link in self._links.values())
        return out

    # --- sending -----------------------------------------------------------------------------

    def send(self, peer_id: int, kind: int, payload: bytes) -> bool:
        """Send one frame to ``peer_id``; never blocks on the network.

        Written at once when the link is idle and its socket has room (see the module
        docstring), else queued. Returns False if the queue was full and its oldest frame was
        dropped to make room. Delivery is best effort. Raises ``KeyError`` for an unknown peer,
        :class:`~keyval.kv.frames.FrameError` for a payload over ``max_payload``, and
        :class:`~keyval.errors.ClosedError` after :meth:`close`.
        """
        if self._stop.is_set():
            raise ClosedError("transport is closed")
        link = self._links[peer_id]
        frame = encode(kind, payload, self.max_payload)
        with link.cond:
            sock = link.sock
            direct = sock is not None and not link.busy and not link.queue
            if direct:
                link.busy = True
            else:
                queued = link.enqueue(frame)
        if not direct:
            if not queued:
                self._count("drops")
            return queued
        try:
            # A blocking socket (see _connect): MSG_DONTWAIT makes this one attempt that takes
            # what the socket buffer has room for and returns.
            sent = sock.send(frame, socket.MSG_DONTWAIT)
        except OSError:  # full, or broken: the sender thread retries, or finds it broken
            sent = 0
        with link.cond:
            link.busy = False
            if sent < len(frame):
                # Ahead of anything queued meanwhile: it was sent first.
                link.queue.appendleft(frame[sent:])
                link.partial = sent > 0
            if link.queue:
                link.cond.notify()
        if sent:
            self._count("frames_sent", 1 if sent == len(frame) else 0, "bytes_sent", sent)
        return True

    def _send_loop(self, link: _PeerLink) -> None:
        backoff = self.backoff_min
        while not self._stop.is_set():
            with link.cond:
                if not link.queue or link.busy:
                    link.cond.wait(POLL_INTERVAL)
                    continue
                link.busy = True
            try:
                backoff = self._write_queue(link, backoff)
            finally:
                with link.cond:
                    link.busy = False
                    if link.queue:
                        link.cond.notify()
        with link.cond:  # a direct write still under way must not see its socket closed
            link.cond.wait_for(lambda: not link.busy, self.write_timeout)
        self._drop_socket(link)

    def _write_queue(self, link: _PeerLink, backoff: float) -> float:
        """Write everything queued for ``link``, connecting first if needed (the caller has set
        ``link.busy``); the back-off to use next."""
        if link.sock is None or self._peer_closed(link.sock):
            self._drop_socket(link)
            if not self._connect(link):
                # Equal jitter: wait between half and all of the current back-off.
                self._stop.wait(random.uniform(backoff / 2, backoff))
                return min(backoff * 2, self.backoff_max)
            backoff = self.backoff_min
        with link.cond:
            batch = list(link.queue)
            link.queue.clear()
            link.partial = False
        data = b"".join(batch)
        try:
            link.sock.sendall(data)  # only the thread that set busy touches link.sock
        except OSError as e:
            if not self._stop.is_set():
                log.info("transport %d: send to peer %d failed: %s", self.node_id, link.peer_id, e)
                self._count("errors")
            self._count("drops", len(batch))
            self._drop_socket(link)
            return backoff
        self._count("frames_sent", len(batch), "bytes_sent", len(data))
        return backoff

    def _connect(self, link: _PeerLink) -> bool:
        try:
            sock = socket.create_connection(link.address, timeout=self.connect_timeout)
        except OSError:
            self._count("connect_failures")
            return False
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Blocking, so that send() with MSG_DONTWAIT is one attempt (a Python timeout would make
        # it poll first, and wait); the kernel bounds a blocked sendall() instead.
        sock.settimeout(None)
        seconds = int(self.write_timeout)
        micros = int((self.write_timeout - seconds) * 1e6)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", seconds, micros))
        try:
            sock.sendall(encode(KIND_HELLO, HELLO.pack(self.node_id)))
        except OSError:
            sock.close()
            self._count("connect_failures")
            return False
        with link.cond:
            if self._stop.is_set():
                sock.close()
                return False
            link.sock = sock
        self._count("connections_made")
        return True

    @staticmethod
    def _peer_closed(sock: socket.socket) -> bool:
        """Whether the peer closed our write-only link (it never sends, so readable = EOF/reset).
        Checking before a write saves the frames a write into a dead socket would lose."""
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            return bool(readable) and not sock.recv(1, socket.MSG_PEEK)
        except (OSError, ValueError):
            return True

    def _drop_socket(self, link: _PeerLink) -> None:
        with link.cond:
            sock, link.sock = link.sock, None
            partial, link.partial = link.partial, False
            if partial:  # the rest of a frame begun on that socket means nothing elsewhere
                link.queue.popleft()
        if partial:
            self._count("drops")
        if sock is not None:
            sock.close()

    # --- receiving ---------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        listener = self._listener
        while not self._stop.is_set():
            try:
                sock, addr = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    break
                self._count("errors")
                self._stop.wait(POLL_INTERVAL)  # e.g. out of file descriptors: do not spin
                continue
            with self._lock:
                # Checked under the lock close() takes to snapshot the inbound sockets: either
                # close() sees this socket and shuts it down, or this loop sees the stop flag.
                stopping = self._stop.is_set()
                full = len(self._inbound) >= self.max_connections
                # Past the limit, as many connections as there are peers still get in, on the
                # condition that they say HELLO as a peer: clients holding every slot must not
                # cut the cluster's own links when one drops and reconnects.
                peer_only = full and self._spare < len(self._links)
                if peer_only:
                    self._spare += 1
                    full = False
                if not (full or stopping):
                    self._inbound.add(sock)
            if stopping:
                sock.close()
                break
            if full:
                log.warning(
                    "transport %d: refusing %s: %d connections open",
                    self.node_id,
                    _peer_name(addr),
                    self.max_connections,
                )
                self._count("connections_refused")
                sock.close()
                continue
            self._count("connections_accepted")
            self._spawn(self._serve_connection, f"conn-{addr[1]}", sock, addr, peer_only)

    def _serve_connection(self, sock: socket.socket, addr, peer_only: bool = False) -> None:
        name = _peer_name(addr)
        decoder = FrameDecoder(self.max_payload)
        peer_id: int | None = None
        client = False
        pending: _Response | None = None  # the last request's, until its answer is out
        # A connection must bring its first frame, and every frame it starts, within
        # frame_timeout: each one open holds a thread and one of max_connections, and 256 that
        # sent a byte and then nothing locked every client out of the node for as long as they
        # stayed. Between whole frames it may be idle for ever (a client between requests).
        due: float | None = time.monotonic() + self.frame_timeout
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(None)  # close() wakes the read with shutdown()
            while not self._stop.is_set():
                if due is not None:
                    left = due - time.monotonic()
                    if left <= 0 or not poller.poll(left * 1000):
                        raise FrameError(
                            f"no complete frame within {self.frame_timeout:g} s"
                            f" ({decoder.buffered} bytes of one received)"
                        )
                data = sock.recv(RECV_SIZE)
                if not data:
                    return
                self._count("bytes_received", len(data))
                batch: list[tuple[int, bytes]] = []
                complete = 0
                for kind, payload in decoder.feed(data):
                    complete += 1
                    if peer_id is None and not client:
                        if kind == KIND_HELLO:
                            if len(payload) != HELLO.size:
                                raise FrameError(f"HELLO of {len(payload)} bytes")
                            (peer_id,) = HELLO.unpack(payload)
                            if peer_only and peer_id not in self._links:
                                raise FrameError(
                                    f"HELLO from {peer_id}, not a peer, past the limit of "
                                    f"{self.max_connections} connections"
                                )
                            continue
                        if peer_only:  # a client: only peers get past the limit
                            raise FrameError(
                                f"past the limit of {self.max_connections} connections, only "
                                "a peer is let in"
                            )
                        if self.on_request is None:
                            raise FrameError(f"kind {kind} before HELLO and no client service")
                        client = True
                    if client:
                        if kind in (KIND_HELLO, KIND_RESPONSE):
                            raise FrameError(f"kind {kind} is not a request")
                        if pending is not None:  # answers go out in request order
                            while not pending.out.wait(POLL_INTERVAL):
                                if self._stop.is_set():
                                    return
                            pending = None
                        self._count("frames_received", 1, "requests", 1)
                        respond = _Response(self, sock)
                        reply = self.on_request(kind, payload, respond)
                        if reply is not None:
                            respond(reply)
                        if not respond.out.is_set():
                            pending = respond
                    else:
                        if kind == KIND_HELLO:
                            raise FrameError("second HELLO on a peer connection")
                        self._count("frames_received")
                        if self.on_frames is not None:
                            batch.append((kind, payload))
                        elif self.on_frame is not None:
                            self.on_frame(peer_id, kind, payload)
                if batch:
                    self.on_frames(peer_id, batch)
                if complete or due is None:  # a frame was begun: its own time starts now
                    due = time.monotonic() + self.frame_timeout if decoder.buffered else None
        except FrameError as e:
            log.warning("transport %d: closing connection from %s: %s", self.node_id, name, e)
            self._count("errors")
        except OSError as e:
            if not self._stop.is_set():
                log.info("transport %d: connection from %s failed: %s", self.node_id, name, e)
                self._count("errors")
        except Exception as e:
            log.warning(
                "transport %d: closing connection from %s: callback raised %r",
                self.node_id,
                name,
                e,
            )
            self._count("errors")
        finally:
            if pending is not None:
                pending.abandon()
            with self._lock:
                self._inbound.discard(sock)
                if peer_only:  # its spare slot is free again
                    self._spare -= 1
            sock.close()

    # --- plumbing ----------------------------------------------------------------------------

    def _spawn(self, target, name: str, *args) -> None:
        t = threading.Thread(
            target=target, args=args, name=f"kv-transport-{self.node_id}-{name}", daemon=True
        )
        with self._lock:
            self._threads.append(t)
        t.start()

    def _count(self, *pairs) -> None:
        """``_count("a")`` adds 1 to a; ``_count("a", 3, "b", 10)`` adds 3 to a and 10 to b."""
        if len(pairs) == 1:
            pairs = (pairs[0], 1)
        with self._lock:
            for i in range(0, len(pairs), 2):
                self._counters[pairs[i]] += pairs[i + 1]

    @staticmethod
    def _shutdown(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class ClientConnection:
    """One client connection to a node's transport: blocking request/response.

    ``request`` sends one request frame and returns the payload of the response frame. Not
    thread-safe (one outstanding request at a time; use one connection per thread). Raises
    :class:`~keyval.errors.Timeout` when no answer came in time (the request may or may not have
    been applied; the connection is then closed, since a late answer would be mistaken for the
    next one's), ``ConnectionError`` when the server closed the connection, and ``OSError`` when
    it cannot connect.
    """

    def __init__(
        self,
        address: tuple[str, int],
        timeout: float = 5.0,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ):
        self.address = address
        self.max_payload = max_payload
        self._sock: socket.socket | None = socket.create_connection(address, timeout=timeout)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._decoder = FrameDecoder(max_payload)
        self._pending: deque = deque()
        self._timeout: float | None = timeout

    def request(self, kind: int, payload: bytes, timeout: float = 5.0) -> bytes:
        sock = self._sock
        if sock is None:
            raise ClosedError("connection is closed")
        # This runs once per client operation, on its critical path: the timeout is set only
        # when it changes, and the clock read only when an answer takes more than one read.
        if timeout != self._timeout:
            sock.settimeout(timeout)
            self._timeout = timeout
        deadline = None
        try:
            sock.sendall(encode(kind, payload, self.max_payload))
            while not self._pending:
                data = sock.recv(RECV_SIZE)
                if not data:
                    raise ConnectionError(f"{_peer_name(self.address)} closed the connection")
                self._pending.extend(self._decoder.feed(data))
                if not self._pending:  # a partial answer: the rest within what is left
                    now = time.monotonic()
                    if deadline is None:
                        deadline = now + timeout
                    if now >= deadline:
                        raise TimeoutError
                    self._timeout = deadline - now
                    sock.settimeout(self._timeout)
        except TimeoutError:
            self.close()
            raise Timeout(f"no answer from {_peer_name(self.address)} in {timeout} s") from None
        except (OSError, FrameError):
            self.close()
            raise
        frame = self._pending.popleft()
        if frame.kind != KIND_RESPONSE:
            self.close()
            raise ConnectionError(f"expected a response frame, got kind {frame.kind}")
        return frame.payload

    def close(self) -> None:
        """Closes the connection; a request another thread is waiting in returns at once
        (shutdown wakes a blocked recv, which closing the socket alone does not)."""
        sock = self._sock
        if sock is not None:
            self._sock = None
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def __enter__(self) -> ClientConnection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
