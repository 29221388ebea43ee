"""Client: the replicated key/value service, from an application.

>>> from keyval import Client
>>> c = Client(["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"])
>>> c.put(b"k", b"v"); c.get(b"k")
b'v'

Every operation is linearizable. A write carries this client's id and a sequence number that
stays the same across retries, so however often it is retried (a timeout, a leader change, a
lost reply) the cluster applies it exactly once. The client finds the leader by itself (a
follower's NOT_LEADER answer names it) and retries until ``timeout`` seconds have passed, then
raises :class:`~keyval.errors.Timeout`: the operation may or may not have taken effect.

A thread's first write opens its session on the cluster (one REGISTER write, whose log index
is the session's id). The cluster keeps a bounded number of sessions
(``keyval.kv.state.MAX_SESSIONS``) and expires the least recently used. A write whose session
expired is answered EXPIRED; if that answer
came to its only attempt, the write was never applied and the client sends it again at once
in a new session (and again, should that one expire too before the write lands, within the
call's ``timeout``, which covers every request the call makes); after several attempts it may
have been, and the call raises :class:`~keyval.errors.SessionExpired` (the outcome is unknown,
as after a timeout).

Thread-safe: each thread has its own connections and its own session (a client id with its
own sequence numbers). The cluster remembers one last sequence number per client id, so two
threads numbering from one counter would have the later-numbered write's commit make the other
look like an old retry: it would be acknowledged and never applied.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import weakref

from keyval.errors import (
    ClosedError,
    KeyTooLarge,
    KeyvalError,
    SessionExpired,
    Timeout,
    ValueTooLarge,
)
from keyval.kv import protocol
from keyval.kv.frames import KIND_REQUEST, FrameError
from keyval.kv.state import (
    APPEND,
    DELETE,
    EXPIRED,
    MAX_VALUE,
    NOT_FOUND,
    OK,
    PUT,
    encode_command,
    register_command,
)
from keyval.kv.transport import ClientConnection

MAX_KEY = 32 * 1024
TRY_TIMEOUT = 2.5  # one attempt at one server; the server itself answers RETRY after 2 s
CONNECT_TIMEOUT = 1.0  # at most, for one connection attempt (never past the call's deadline)
# What one attempt may fail with that another server, or a new connection, may not: a
# connection closed under it (by close(), or a server that went away) included.
_TRANSIENT = (OSError, Timeout, FrameError, ClosedError)
_WRITE = bytes([protocol.WRITE])
_RETRY = bytes([protocol.RETRY])
_EXPIRED, _OK = bytes([EXPIRED]), bytes([OK])
_REGISTER = register_command().encode()


class Client:
    def __init__(self, servers: list[str] | str, timeout: float = 10.0) -> None:
        if isinstance(servers, str):
            servers = [s for s in servers.split(",") if s]
        if not servers:
            raise ValueError("at least one server address is needed")
        self.servers = [protocol.parse_address(s.split("=", 1)[-1]) for s in servers]
        if not timeout > 0:  # NaN too: a deadline that never passes
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        self.timeout = timeout
        self._leader = 0  # index into servers of the one believed to lead
        self._local = threading.local()  # this thread's session and connections
        # Every live thread's connections, for close(); a thread's go with it when it ends.
        self._all_conns: weakref.WeakSet[_Connections] = weakref.WeakSet()
        self._all_conns_lock = threading.Lock()
        # Bumped by close(): a call that began before it ends with ClosedError instead of
        # retrying on new connections.
        self._closes = 0

    @property
    def client_id(self) -> int:
        """The calling thread's client id (each thread has its own session; this opens it if
        the thread has none)."""
        return self._session(None)[0]

    # -- operations -------------------------------------------------------------------------
    # ``timeout``: seconds for this call, retries included (default: the client's).

    def put(self, key: bytes, value: bytes, timeout: float | None = None) -> None:
        self._write(PUT, key, value, timeout)

    def append(self, key: bytes, value: bytes, timeout: float | None = None) -> None:
        self._write(APPEND, key, value, timeout)

    def delete(self, key: bytes, timeout: float | None = None) -> bool:
        """Deletes ``key``; whether it existed."""
        return self._write(DELETE, key, b"", timeout)[:1] != bytes([NOT_FOUND])

    def get(self, key: bytes, timeout: float | None = None) -> bytes | None:
        _check(key, b"")
        body = self._call(bytes([protocol.READ]) + key, timeout)
        return body[1:] if body[:1] == b"\x01" else None

    def status(self) -> list[dict]:
        """Every server's own view (role, term, leader, commit and applied index), or an
        ``error`` entry for those that do not answer."""
        out = []
        for addr in self.servers:
            try:
                conn = ClientConnection(addr, timeout=CONNECT_TIMEOUT)
                try:
                    reply = conn.request(KIND_REQUEST, bytes([protocol.STATUS]), timeout=2.0)
                finally:
                    conn.close()
                out.append(json.loads(reply[1:]))
            except (OSError, Timeout) as exc:
                out.append({"address": protocol.format_address(addr), "error": str(exc)})
        return out

    def close(self) -> None:
        """Closes every thread's connections. A call in flight in another thread ends with
        ClosedError (its outcome unknown, as after a Timeout); a later call opens new ones."""
        with self._all_conns_lock:
            self._closes += 1
            maps = list(self._all_conns)
        for conns in maps:
            for index in list(conns):
                conn = conns.pop(index, None)
                if conn is not None:
                    conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the retry loop ---------------------------------------------------------------------

    def _session(self, timeout: float | None) -> tuple[int, itertools.count]:
        """This thread's session: opened on the cluster (one REGISTER write) when it has none.
        Its id is the index of that entry: never an id another client or an expired session
        had, so no retry is ever taken for someone else's."""
        session = getattr(self._local, "session", None)
        if session is None:
            reply = self._call(_WRITE + _REGISTER, timeout)
            if reply[:1] != _OK or len(reply) != 9:
                raise KeyvalError(f"the cluster did not open a session: {reply!r}")
            client_id = int.from_bytes(reply[1:], "little")
            session = self._local.session = (client_id, itertools.count(1))
        return session

    def _timeout(self, timeout: float | None) -> float:
        """A call's timeout: the client's when None; ValueError unless positive."""
        if timeout is None:
            return self.timeout
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        return timeout

    def _write(self, op: int, key: bytes, value: bytes, timeout: float | None) -> bytes:
        _check(key, value)
        timeout = self._timeout(timeout)
        deadline = time.monotonic() + timeout  # for every request this call makes
        while True:
            client_id, seqs = self._session(_left(deadline, timeout))
            seq = next(seqs)
            request = _WRITE + encode_command(op, client_id, seq, key, value)
            reply = self._call(request, _left(deadline, timeout))
            if reply[:1] != _EXPIRED:
                return reply
            self._local.session = None  # expired on the cluster: later calls start a new one
            if self._local.attempts > 1:
                raise SessionExpired(
                    f"session {client_id:#x} expired while write {seq} was retried: it may "
                    "or may not have taken effect"
                )
            # Sent once and refused: never applied. Again, in a new session (which may expire
            # before the write lands too, when sessions are opened faster than the limit).

    def _call(self, request: bytes, timeout: float | None = None) -> bytes:
        closes = self._closes
        timeout = self._timeout(timeout)
        # The first attempt at the believed leader is the common case and on every operation's
        # critical path: no clock reads unless it fails.
        conns = getattr(self._local, "conns", None)
        # Read once: another thread may move _leader meanwhile, and dropping its index instead
        # of this one's left this thread a closed connection that failed every later call.
        leader = self._leader
        conn = conns.get(leader) if conns else None
        self._local.attempts = 1  # requests sent (or perhaps sent) by this call
        if conn is None or timeout < TRY_TIMEOUT:
            self._local.attempts = 0
            return self._call_with_retries(request, time.monotonic(), None, timeout, closes)
        started = time.monotonic()
        try:
            reply = conn.request(KIND_REQUEST, request, TRY_TIMEOUT)
        except _TRANSIENT:
            self._drop(leader)
            reply = _RETRY
        if reply[0] == protocol.OK:
            return reply[1:]
        return self._call_with_retries(request, started, reply, timeout, closes)

    def _call_with_retries(
        self, request: bytes, started: float, reply: bytes | None, timeout: float, closes: int
    ) -> bytes:
        """The retry loop; ``reply`` is the answer of a first attempt at the believed leader,
        already made (None if none was); ``closes``: close() calls seen when the call began."""
        deadline = started + timeout
        tries = 0
        while True:
            if self._closes != closes:  # close() took this call's connections: it ends here
                raise ClosedError("the client was closed during the call")
            target = self._leader
            if reply is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Timeout(f"no server answered within {timeout} s")
                self._local.attempts += 1
                try:
                    conn = self._conn(target, min(CONNECT_TIMEOUT, left))
                    reply = conn.request(KIND_REQUEST, request, min(TRY_TIMEOUT, left))
                except _TRANSIENT:
                    self._drop(target)
                    reply = _RETRY
            code, body = reply[0], reply[1:]
            reply = None
            if code == protocol.OK:
                return body
            if code == protocol.BAD_REQUEST:
                raise ValueError(body.decode(errors="replace"))
            tries += 1
            if code == protocol.NOT_LEADER and body:
                hinted = protocol.parse_address(body.decode())
                if hinted in self.servers and self.servers.index(hinted) != target:
                    self._leader = self.servers.index(hinted)
                    continue
            self._leader = (target + 1) % len(self.servers)
            if tries % len(self.servers) == 0:  # a full round without a leader: an election
                left = deadline - time.monotonic()
                time.sleep(min(0.05 * tries / len(self.servers), 0.5, max(left, 0)))

    def _conn(self, index: int, connect_timeout: float = CONNECT_TIMEOUT) -> ClientConnection:
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = _Connections()
            with self._all_conns_lock:
                self._all_conns.add(conns)
        conn = conns.get(index)
        if conn is None:
            conn = conns[index] = ClientConnection(self.servers[index], timeout=connect_timeout)
        return conn

    def _drop(self, index: int) -> None:
        conn = getattr(self._local, "conns", {}).pop(index, None)
        if conn is not None:
            conn.close()


class _Connections(dict):
    """One thread's connections by server index: a dict that a WeakSet can hold, so equal
    only to itself (two threads' empty dicts must stay two members)."""

    __hash__ = object.__hash__

    def __eq__(self, other: object) -> bool:
        return self is other


def _left(deadline: float, timeout: float) -> float:
    """Seconds left before ``deadline``; Timeout when none are."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise Timeout(f"no answer within {timeout} s")
    return left


def _check(key: bytes, value: bytes) -> None:
    if type(key) is not bytes or type(value) is not bytes:
        raise TypeError("keys and values must be bytes")
    if not key or len(key) > MAX_KEY:
        raise KeyTooLarge(f"keys must be 1 to {MAX_KEY} bytes, not {len(key)}")
    if len(value) > MAX_VALUE:
        raise ValueTooLarge(f"values must be at most {MAX_VALUE} bytes, not {len(value)}")
