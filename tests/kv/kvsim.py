"""The KV scenario harness: KVServices on the simulated network, and simulated clients.

A :class:`Cluster` is N Raft nodes on a :class:`~keyval.raft.simnet.SimNet`, each with a
:class:`~keyval.kv.service.KVService` over a durable :class:`~keyval.kv.state.KVStateMachine`
(one ``keyval.db`` file per node in a temporary directory), optionally on durable
:class:`~keyval.raft.storage.RaftStorage` too. A crash loses what a real crash loses: the
state machine's uncommitted batch (its DB is closed without the final flush, as
``tests/kv/test_state.py`` does) and, with durable Raft storage, the storage object itself
(it is reopened from its directory).

A :class:`Client` is an actor on the same simulated clock, in the style of the Raft lab's
clerk: a client id, a sequence number per write, one request outstanding at a time. It sends
the request to the server it believes leads; the request travels with a small delay (0-2 ms,
or 0-26 ms and a 10% loss each way when the network is unreliable) and does not arrive when
the server is crashed, disconnected, or outside the client's ``reach``. On ``NotLeader`` the
client tries the hinted leader (or the next server), and when no answer comes within
``request_timeout_ms`` it tries the next server -- always with the same sequence number, so
the service applies the request exactly once. Every operation goes into a history with the
simulated call and return times, for :func:`keyval.kv.linearizability.check`. A write answered
EXPIRED (its session was dropped: see keyval.kv.state) is sent again in a new session if
that was its only attempt (it was not applied), as keyval.Client does; after several attempts
its outcome is unknown, and it stays pending in the history (``Client.unknown`` counts them).

Clients run either clerk-style (:meth:`Cluster.put` and friends run the network until the
operation completes) or as workers: a generator that yields ``(kind, key, value)`` and is sent
each result, so many clients run concurrently for as long as the test runs the network.

Everything is deterministic for a seed: the network's schedule comes from SimNet's generator,
the clients' delays, losses and random choices from the harness's own, seeded from the same
number. Failures raise AssertionError naming the seed.
"""

from __future__ import annotations

import os
import random
import zlib
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field

from keyval.errors import NotLeader
from keyval.kv import linearizability as lin
from keyval.kv.service import KVService
from keyval.kv.state import APPEND, DELETE, PUT, Command, KVStateMachine, register_command
from keyval.raft.simnet import DROP_RATE, MAX_DELAY_MS, RELIABLE_MAX_DELAY_MS, SimNet
from keyval.raft.storage import RaftStorage

SEED_ENV = "KEYVAL_KV_SEED"
WRITE_OPS = {lin.PUT: PUT, lin.APPEND: APPEND, lin.DELETE: DELETE}
OK, NOT_FOUND, EXPIRED = b"\x00", b"\x01", b"\x03"
REGISTER_KIND = "register"  # a client's internal request that opens its session
# With SimNet's default 50 ms tick: heartbeats every 100 ms and election timeouts of
# 500-1,000 ms, the Raft lab's settings (at most ten heartbeats a second, a new leader well
# within five seconds).
ELECTION_TIMEOUT_MS = 1_000
REQUEST_TIMEOUT_MS = 300
NOT_LEADER_BACKOFF_MS = 20  # before retrying after a NotLeader without a usable hint
DISK_SEGMENT = 64 * 1024

Worker = Generator[tuple[str, bytes, bytes | None], object, None]


def scenario_seed(name: str) -> int:
    """The seed of scenario ``name``: ``KEYVAL_KV_SEED`` (default 0) mixed with the name, so
    each scenario has its own schedule and ``KEYVAL_KV_SEED=7`` runs all of them on others."""
    base = int(os.environ.get(SEED_ENV, "0"))
    return zlib.crc32(f"{base}:{name}".encode())


@dataclass
class _Record:
    client: int
    call: int
    kind: str
    key: bytes
    value: bytes | None
    ret: int | None = None
    output: bytes | None = None


class SimHistory:
    """Operations as clients saw them, on the simulated clock (milliseconds)."""

    def __init__(self) -> None:
        self.records: list[_Record] = []

    def invoke(self, client: int, now: int, kind: str, key: bytes, value: bytes | None) -> int:
        self.records.append(_Record(client, now, kind, key, value))
        return len(self.records) - 1

    def complete(self, token: int, now: int, output: bytes | None) -> None:
        rec = self.records[token]
        assert rec.ret is None, f"operation {token} completed twice"
        rec.ret, rec.output = now, output

    def operations(self) -> list[lin.Operation]:
        return [
            lin.Operation(r.client, r.call, r.ret, r.kind, r.key, r.value, r.output)
            for r in self.records
        ]

    def __len__(self) -> int:
        return len(self.records)


@dataclass
class _Request:
    kind: str
    key: bytes
    value: bytes | None
    seq: int  # 0 for a get
    token: int
    then: Callable[[object], None] | None
    session: int = 0  # the client id it is sent under
    attempt: int = 0
    tries_in_session: int = 0  # attempts sent under ``session``
    finished: bool = False
    served_by: list[int] = field(default_factory=list)  # servers that answered it


class Client:
    """One simulated client (see the module doc). ``reach``: the servers it can talk to
    (None: all of them)."""

    def __init__(self, cluster: Cluster, cid: int, reach: Iterable[int] | None = None) -> None:
        self.cluster = cluster
        self.id = cid  # in the history
        self.session: int | None = None  # the client id the service sees (REGISTER gives it)
        self.seq = 0
        self.unknown = 0  # writes given up on as EXPIRED after several attempts
        self.sessions: list[int] = []  # every session it has had
        self.reach = None if reach is None else set(reach)
        self.target = cluster.rng.choice(self.servers())
        self.current: _Request | None = None
        self.completed = 0
        self.attempts = 0
        self._worker: Worker | None = None
        self._think_ms = 0
        self.appended: dict[bytes, int] = {}  # appender tag -> appends completed

    def servers(self) -> list[int]:
        ids = self.cluster.net.ids
        return [i for i in ids if self.reach is None or i in self.reach]

    @property
    def idle(self) -> bool:
        return self.current is None

    # -- one request ----------------------------------------------------------------------------

    def start(
        self,
        kind: str,
        key: bytes,
        value: bytes | None = None,
        then: Callable[[object], None] | None = None,
    ) -> _Request:
        """Issue one operation now; ``then(result)`` when it completes (a get's value or None;
        a write's reply, OK or NOT_FOUND)."""
        if self.current is not None:
            raise RuntimeError(f"client {self.id} already has a request outstanding")
        c = self.cluster
        token = c.history.invoke(self.id, c.net.now, kind, key, value)
        req = _Request(kind, key, value, 0, token, then)
        self.current = req
        if kind != lin.GET and self.session is None:
            self._register(lambda: self._send_in_session(req))
        elif kind != lin.GET:
            self._send_in_session(req)
        else:
            self._send(req)
        return req

    def _send_in_session(self, req: _Request) -> None:
        """Sends a write under the current session, with its next sequence number."""
        self.seq += 1
        req.session, req.seq, req.tries_in_session = self.session, self.seq, 0
        self._send(req)

    def _register(self, then: Callable[[], None]) -> None:
        """Opens a session (a REGISTER write, retried like any), then ``then()``."""

        def registered(reply: bytes) -> None:
            self.session = int.from_bytes(reply[1:], "little")
            self.sessions.append(self.session)
            self.seq = 0
            then()

        self._send(_Request(REGISTER_KIND, b"", None, 0, -1, registered))

    def _send(self, req: _Request) -> None:
        c = self.cluster
        req.attempt += 1
        req.tries_in_session += 1
        self.attempts += 1
        attempt, server = req.attempt, self.target
        session, seq = req.session, req.seq  # this attempt's: the request's may change
        if c.reachable(self, server) and not c.lost():
            c.net.schedule(c.delay(), lambda: self._arrive(req, attempt, server, session, seq))
        c.net.schedule(c.request_timeout_ms, lambda: self._timed_out(req, attempt))

    def _stale(self, req: _Request) -> bool:
        """A write whose session was replaced (or is being): it goes again once the new one
        is open, not under the old one."""
        return req.kind not in (lin.GET, REGISTER_KIND) and req.session != self.session

    def _arrive(self, req: _Request, attempt: int, server: int, session: int, seq: int) -> None:
        """The request reaches ``server`` (even if the client has moved on: a late duplicate
        is exactly what de-duplication is for)."""
        c = self.cluster
        if not c.reachable(self, server):
            return
        service = c.services[server]

        def done(result: object) -> None:
            self._answer(req, attempt, server, result, session)

        try:
            if req.kind == lin.GET:
                service.read(req.key, done)
            elif req.kind == REGISTER_KIND:
                service.write(register_command(), done)
            else:
                op = WRITE_OPS[req.kind]
                cmd = Command(op, session, seq, req.key, req.value or b"")
                service.write(cmd, done)
        except NotLeader as e:
            done(e)

    def _answer(
        self, req: _Request, attempt: int, server: int, result: object, session: int
    ) -> None:
        """``server`` sends its answer back."""
        c = self.cluster
        if not c.reachable(self, server) or c.lost():
            return

        def receive() -> None:
            if c.reachable(self, server):
                self._receive(req, attempt, server, result, session)

        c.net.schedule(c.delay(), receive)

    def _receive(
        self, req: _Request, attempt: int, server: int, result: object, session: int
    ) -> None:
        c = self.cluster
        if isinstance(result, NotLeader):
            if req.finished or attempt != req.attempt or self._stale(req):
                return  # an answer to an attempt already given up on
            hint = _hint(result, c.net.ids)
            if hint is not None and hint != server and (self.reach is None or hint in self.reach):
                self.target = hint
                self._send(req)
            else:
                self._next_server()
                c.net.schedule(NOT_LEADER_BACKOFF_MS, lambda: self._resend(req, attempt))
            return
        if isinstance(result, BaseException):
            c.fail(f"client {self.id}: {req.kind} {req.key!r} failed at {server}: {result!r}")
        req.served_by.append(server)
        if req.finished:
            return  # a second answer to a retried request (any attempt's answer is valid)
        if req.kind == REGISTER_KIND:
            if not (isinstance(result, bytes) and result[:1] == OK and len(result) == 9):
                c.fail(f"client {self.id}: REGISTER got {result!r}")
            req.finished = True
            self.target = server
            req.then(result)
            return
        if req.kind != lin.GET and result == EXPIRED:
            self._expired(req, session)
            return
        if req.kind != lin.GET and result not in (OK, NOT_FOUND):
            c.fail(f"client {self.id}: {req.kind} {req.key!r} got reply {result!r}")
        req.finished = True
        self.current = None
        self.completed += 1
        self.target = server
        if req.kind == lin.GET:
            output = result
        elif req.kind == lin.DELETE:
            output = lin.FOUND if result == OK else lin.ABSENT
        else:
            output = None
        c.history.complete(req.token, c.net.now, output)
        if req.then is not None:
            req.then(result)

    def _expired(self, req: _Request, session: int) -> None:
        """The write's session is gone. Sent once under it, it changed nothing: it goes again
        in a new session. Else an earlier attempt may have been applied: unknown."""
        if session != req.session or self._stale(req):
            return  # the answer to an attempt under a session already replaced
        self.session = None
        if req.tries_in_session == 1:
            self._register(lambda: self._send_in_session(req))
            return
        req.finished = True  # left pending in the history: it may or may not have happened
        self.current = None
        self.unknown += 1
        if req.then is not None:
            req.then(EXPIRED)

    def _timed_out(self, req: _Request, attempt: int) -> None:
        if req.finished or attempt != req.attempt or self._stale(req):
            return
        self._next_server()
        self._send(req)

    def _resend(self, req: _Request, attempt: int) -> None:
        if not req.finished and attempt == req.attempt and not self._stale(req):
            self._send(req)

    def _next_server(self) -> None:
        servers = self.servers()
        k = servers.index(self.target) if self.target in servers else -1
        self.target = servers[(k + 1) % len(servers)]

    # -- a worker -----------------------------------------------------------------------------

    def run(self, worker: Worker, think_ms: int = 0) -> None:
        """Drive ``worker``: each ``(kind, key, value)`` it yields is issued when the previous
        one completed (after ``think_ms``), and its result sent back in, until the worker ends
        or the cluster's workers are told to stop."""
        self._worker = worker
        self._think_ms = think_ms
        self._next(None, first=True)

    def _next(self, result: object, first: bool = False) -> None:
        worker = self._worker
        if worker is None:
            return
        try:
            # The result goes in even when stopping, so the worker sees every completed
            # operation; the operation it asks for next is then not issued.
            op = next(worker) if first else worker.send(result)
        except StopIteration:
            self._worker = None
            return
        if self.cluster.stopping:
            self._worker = None
            worker.close()
            return
        if self._think_ms and not first:
            self.cluster.net.schedule(self._think_ms, lambda: self._begin(op))
        else:
            self._begin(op)

    def _begin(self, op: tuple[str, bytes, bytes | None]) -> None:
        kind, key, value = op
        self.start(kind, key, value, self._next)

    @property
    def working(self) -> bool:
        return self._worker is not None or self.current is not None


def _hint(err: NotLeader, ids: tuple[int, ...]) -> int | None:
    try:
        hint = int(err.leader_hint) if err.leader_hint else None
    except ValueError:
        return None
    return hint if hint in ids else None


class Cluster:
    """``n`` KV servers on a SimNet, with clients. ``tmp_path``: where the nodes' files go."""

    def __init__(
        self,
        n: int,
        seed: int,
        tmp_path,
        *,
        unreliable: bool = False,
        long_reordering: bool = False,
        max_raft_state: int | None = None,
        durable_raft: bool = False,
        batch_entries: int = 8,
        request_timeout_ms: int = REQUEST_TIMEOUT_MS,
        tick_ms: int = 50,
        config: dict | None = None,
        pace_followers: bool = False,
        max_sessions: dict[int, int] | None = None,
    ) -> None:
        """``max_sessions``: each node's own session limit (a leader sets its own for all)."""
        self.seed = seed
        self.dir = tmp_path
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(seed ^ 0x6B76)  # the clients' own randomness
        self.batch_entries = batch_entries
        self.request_timeout_ms = request_timeout_ms
        self.machines: dict[int, KVStateMachine] = {}
        self.services: dict[int, KVService] = {}
        self.history = SimHistory()
        self.clients: list[Client] = []
        self.stopping = False
        self.max_raft_state = max_raft_state
        self.max_raft_state_seen = 0
        self.max_snapshot_seen = 0
        self._storages: list[RaftStorage] = []
        self.max_sessions = max_sessions
        options: dict = {}
        if durable_raft:
            options = {"storage_factory": self._open_storage, "storage_reopen": self._reopen}
        self.net = SimNet(
            n,
            seed,
            unreliable=unreliable,
            long_reordering=long_reordering,
            tick_ms=tick_ms,
            config=config,
            max_raft_state=max_raft_state,
            state_machine_factory=self._machine,
            on_start=self._attach,
            observer=self._observe if max_raft_state is not None else None,
            pace_followers=pace_followers,
            **options,
        )

    # -- nodes --------------------------------------------------------------------------------

    def _machine(self, i: int) -> KVStateMachine:
        old = self.machines.get(i)
        if old is not None:
            # A crash: whatever the batch had not committed to the DB is lost.
            old.close(flush=False)
        limit = {} if self.max_sessions is None else {"max_sessions": self.max_sessions[i]}
        self.machines[i] = KVStateMachine(
            str(self.dir / f"kv{i}.db"),
            batch_entries=self.batch_entries,
            batch_seconds=1e9,
            **limit,
        )
        return self.machines[i]

    def _attach(self, i: int, node) -> None:
        limit = None if self.max_sessions is None else self.max_sessions[i]
        self.services[i] = KVService(node, self.machines[i], max_sessions=limit)

    def _open_storage(self, i: int) -> RaftStorage:
        st = RaftStorage(str(self.dir / f"raft{i}"), segment_size=DISK_SEGMENT)
        self._storages.append(st)
        return st

    def _reopen(self, i: int, old: RaftStorage) -> RaftStorage:
        old.close()
        return self._open_storage(i)

    def _observe(self, net: SimNet) -> None:
        for i, node in net.nodes.items():
            if node is None:
                continue
            size = node.raft_state_size
            self.max_raft_state_seen = max(self.max_raft_state_seen, size)
            if size > 8 * self.max_raft_state:
                self.fail(
                    f"node {i}'s Raft state is {size} bytes at t={net.now} ms, more than 8x "
                    f"max_raft_state={self.max_raft_state}"
                )

    def snapshot_sizes(self) -> dict[int, int]:
        """Bytes of each running node's stored snapshot (0 if none); also kept as a maximum."""
        sizes = {}
        for i, node in self.net.nodes.items():
            if node is not None:
                snap = node.storage.snapshot()
                sizes[i] = len(snap.data) if snap is not None else 0
        self.max_snapshot_seen = max([self.max_snapshot_seen, *sizes.values()])
        return sizes

    def close(self) -> None:
        for m in self.machines.values():
            m.close(flush=False)
        for st in self._storages:
            st.close()

    # -- the network --------------------------------------------------------------------------

    def fail(self, what: str) -> None:
        raise AssertionError(f"seed={self.seed} t={self.net.now} ms: {what}")

    def reachable(self, client: Client, server: int) -> bool:
        net = self.net
        return (
            net.nodes[server] is not None
            and net.connected[server]
            and (client.reach is None or server in client.reach)
        )

    def delay(self) -> int:
        top = MAX_DELAY_MS if self.net.unreliable else RELIABLE_MAX_DELAY_MS
        return self.rng.randint(0, top)

    def lost(self) -> bool:
        return self.net.unreliable and self.rng.random() < DROP_RATE

    def run_for(self, ms: int) -> None:
        self.net.run_for(ms)

    def run_until(self, predicate: Callable[[], bool], timeout_ms: int, what: str) -> None:
        if not self.net.run_until(predicate, timeout_ms):
            self.fail(f"{what}: not within {timeout_ms} simulated ms")

    def wait_leader(self, timeout_ms: int = 10 * ELECTION_TIMEOUT_MS) -> int:
        self.run_until(lambda: self.net.leader() is not None, timeout_ms, "no leader elected")
        return self.net.leader()

    def crash_all(self) -> None:
        for i in self.net.ids:
            self.net.crash(i)

    def restart_all(self) -> None:
        for i in self.net.ids:
            self.net.restart(i)

    def partition_randomly(self) -> tuple[set[int], set[int]]:
        """Split the servers in two at random (the lab's partitioner); clients reach all."""
        ids = list(self.net.ids)
        a = {i for i in ids if self.rng.random() < 0.5}
        b = set(ids) - a
        self.net.partition(a, b)
        return a, b

    # -- clients ------------------------------------------------------------------------------

    def client(self, reach: Iterable[int] | None = None) -> Client:
        c = Client(self, len(self.clients) + 1, reach)
        self.clients.append(c)
        return c

    def call(
        self,
        client: Client,
        kind: str,
        key: bytes,
        value: bytes | None = None,
        timeout_ms: int = 20 * ELECTION_TIMEOUT_MS,
    ) -> object:
        """Clerk style: one operation, the network run until it completes; its result."""
        out: list[object] = []
        client.start(kind, key, value, out.append)
        self.run_until(lambda: bool(out), timeout_ms, f"client {client.id}: {kind} {key!r}")
        return out[0]

    def get(self, client: Client, key: bytes, **kw) -> bytes | None:
        return self.call(client, lin.GET, key, **kw)

    def put(self, client: Client, key: bytes, value: bytes, **kw) -> bytes:
        return self.call(client, lin.PUT, key, value, **kw)

    def append(self, client: Client, key: bytes, value: bytes, **kw) -> bytes:
        return self.call(client, lin.APPEND, key, value, **kw)

    def delete(self, client: Client, key: bytes, **kw) -> bytes:
        return self.call(client, lin.DELETE, key, **kw)

    def start_workers(self, workers: dict[Client, Worker], think_ms: int = 0) -> None:
        self.stopping = False
        for client, worker in workers.items():
            client.run(worker, think_ms)

    def stop_workers(self, timeout_ms: int = 30 * ELECTION_TIMEOUT_MS) -> None:
        """Tell the workers to stop and run until each one's last request has completed."""
        self.stopping = True
        self.run_until(
            lambda: not any(c.working for c in self.clients),
            timeout_ms,
            f"clients {[c.id for c in self.clients if c.working]} never finished",
        )
        self.stopping = False

    # -- verdicts -----------------------------------------------------------------------------

    def check_linearizable(self, timeout_s: float = 5.0) -> lin.Result:
        ops = self.history.operations()
        result = lin.check(ops, timeout=timeout_s)
        if result.ok is not True:
            verdict = "not linearizable" if result.ok is False else "undecided"
            self.fail(f"history of {len(ops)} operations {verdict}: {result.explanation}")
        return result


def appender(
    client: Client,
    key: bytes,
    count: int | None = None,
    get_every: int = 3,
    tag: bytes | None = None,
    shared: bool = False,
) -> Worker:
    """The lab's client loop: append ``x <tag> <j> y`` (``count`` times, or until stopped)
    and every ``get_every`` operations read the key back. On a key only this client writes the
    get must return exactly this client's appends; on a ``shared`` key it must hold each of
    them exactly once and in order (the gets also give the linearizability checker
    observations to prune its search with)."""
    tag = tag if tag is not None else b"%d" % client.id
    expected = b""
    j = 0
    while count is None or j < count:
        value = b"x %s %d y" % (tag, j)
        yield (lin.APPEND, key, value)
        expected += value
        j += 1
        client.appended[tag] = j
        if get_every and j % get_every == 0:
            got = yield (lin.GET, key, None)
            if shared:
                mine = [i for t, i in parse_appends(got or b"") if t == tag]
                ok = mine == list(range(j))
            else:
                ok = got == expected
            if not ok:
                want = f"its appends 0..{j - 1} once each in order" if shared else expected
                client.cluster.fail(f"client {client.id}: get({key!r}) -> {got!r}, expected {want}")


def parse_appends(value: bytes) -> list[tuple[bytes, int]]:
    """The ``(tag, j)`` of each ``x <tag> <j> y`` in ``value``, in order."""
    out = []
    for part in value.split(b" y"):
        if not part:
            continue
        x, tag, j = part.split(b" ")
        assert x == b"x", value
        out.append((tag, int(j)))
    return out


def check_appends(cluster: Cluster, value: bytes | None, counts: dict[bytes, int]) -> None:
    """Every ``x <tag> <j> y`` for j < counts[tag] occurs in ``value`` exactly once and each
    tag's appends in order (the lab's checkClntAppends / checkConcurrentAppends)."""
    seen: dict[bytes, list[int]] = {}
    for tag, j in parse_appends(value or b""):
        seen.setdefault(tag, []).append(j)
    for tag, n in counts.items():
        js = seen.pop(tag, [])
        if js != list(range(n)):
            cluster.fail(f"appends of {tag!r}: expected 0..{n - 1} once each in order, got {js}")
    if seen:
        cluster.fail(f"appends nobody made: {sorted(seen)}")
