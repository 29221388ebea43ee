"""Server: one node of the replicated key/value service, on TCP.

Wires the pieces together: the :class:`~keyval.kv.transport.Transport` carries Raft messages
between nodes and client requests to this one; the Raft :class:`~keyval.raft.node.Node` runs on
durable :class:`~keyval.raft.storage.RaftStorage`; the :class:`~keyval.kv.service.KVService`
turns requests into proposals and ReadIndex reads over the
:class:`~keyval.kv.state.KVStateMachine`. A tick thread drives Raft's clock and commits the
state machine's pending batch when it is due.

The path of a write, and which thread does what (each hand-off between threads costs tens of
microseconds, as much as the rest of the work): when no other write is being proposed, the
client connection's thread proposes it (the leader sends the append at once, from that
thread, to the one follower a quorum needs, and to the other on its next tick: see
keyval.raft.pacing), writes the leader's own log (``Node.persist``, the node's lock released
meanwhile) and goes back to reading its socket; the thread that learns the entry is
committed (usually the reader of a follower's acknowledgement) applies it and writes the
answer to the client's socket itself. Writes that arrive while a batch is being proposed wait
for the write thread, which proposes them together, so a busy leader sends few, large appends.
A node steps all the Raft messages one read brings before it writes, so appends that queued
up during a follower's fsync share its next one.

Data directory layout: ``raft/`` (the node's Raft state, see keyval.raft.storage) and
``kv.db`` (the key/value state with its applied index). A write is acknowledged once its entry
is committed (on a majority's WAL, fsynced) and applied here; the KV database catches up in
batches and a restart replays the log after its applied index.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import random
import sys
import threading
import time

from keyval.db.page import MAX_KEY_SIZE
from keyval.dirsync import makedirs_durable
from keyval.errors import ClosedError, MessageDecodeError, NotLeader
from keyval.kv import protocol
from keyval.kv.frames import KIND_RAFT, KIND_REQUEST, FrameError
from keyval.kv.service import KVService
from keyval.kv.state import (
    CLIENT_OPS,
    INVALID,
    MAX_COMMAND,
    MAX_SESSIONS,
    MAX_VALUE,
    Command,
    KVStateMachine,
    max_sessions_command,
)
from keyval.kv.transport import Transport
from keyval.raft import messages
from keyval.raft.check import SERVER_NODE_SUBDIR
from keyval.raft.core import Config
from keyval.raft.node import Node
from keyval.raft.storage import ENTRY_OVERHEAD, RaftStorage

log = logging.getLogger("keyval.kv.server")

TICK_SECONDS = 0.01
NUDGES_PER_TICK = 10  # Node.nudge every 1 ms: a late quorum is helped by a paced follower
ELECTION_TICKS = 15  # a follower waits 150-300 ms without a leader before it campaigns
HEARTBEAT_TICKS = 3
POLL_SECONDS = 0.1  # how long a thread waiting for work may take to notice close()
_INVALID = bytes([INVALID])
# The smallest Raft log segment a node takes (about 4 MiB): one of the longest commands fits.
MIN_SEGMENT_SIZE = (ENTRY_OVERHEAD + MAX_COMMAND + 7) // 8 * 8
REQUEST_TIMEOUT = 2.0  # a request not committed by then is answered RETRY (the client retries)


class Server:
    """Node ``node_id`` of the cluster ``peers`` (id -> (host, port), itself included), with its
    state under ``data_dir``. :meth:`start` opens everything and starts serving; :meth:`close`
    stops. Thread-safe."""

    def __init__(
        self,
        node_id: int,
        peers: dict[int, tuple[str, int]],
        data_dir: str,
        *,
        max_raft_state: int | None = 64 * 2**20,
        segment_size: int = 64 * 2**20,
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        if node_id not in peers:
            raise ValueError(f"node {node_id} is not among the peers {sorted(peers)}")
        max_sessions_command(max_sessions)  # ValueError for a bad limit, before opening anything
        if type(segment_size) is int and segment_size < MIN_SEGMENT_SIZE:
            # Else the first command that long would stop every node: none could log it.
            raise ValueError(
                f"segment_size must be at least {MIN_SEGMENT_SIZE} bytes, so that the longest "
                f"command fits one segment, not {segment_size}"
            )
        self.node_id = node_id
        self.peers = peers
        self.data_dir = data_dir
        makedirs_durable(data_dir)
        self.storage = RaftStorage(
            os.path.join(data_dir, SERVER_NODE_SUBDIR), segment_size=segment_size
        )
        try:
            # The limit in force is the one the log sets (a leader sets its own before its
            # term's first write; see KVService), the same on every node whatever each is
            # given. Ours is used only until then: by a DB (or an older snapshot) from before
            # the limit was replicated, whose entries were applied with it on every node.
            self.state_machine = KVStateMachine(
                os.path.join(data_dir, "kv.db"), max_sessions=max_sessions
            )
        except BaseException:
            self.storage.close()
            raise
        self.transport = Transport(
            node_id,
            listen=peers[node_id],
            peers=peers,
            on_frames=self._on_frames,
            on_request=self._on_request,
        )
        config = Config(
            id=node_id,
            peers=tuple(sorted(peers)),
            election_ticks=ELECTION_TICKS,
            heartbeat_ticks=HEARTBEAT_TICKS,
        )
        self._write_wanted = threading.Event()
        self._compact_wanted = threading.Event()
        self.node = Node(
            config,
            self.storage,
            self.state_machine,
            send=self._send,
            rng=random.Random(),
            max_raft_state=max_raft_state,
            on_persist_needed=self._persist_needed,
            pace_followers=True,
            on_compact_needed=self._compact_wanted.set,
        )
        self.service = KVService(self.node, self.state_machine, max_sessions=max_sessions)
        self._stop = threading.Event()
        self.failure: BaseException | None = None  # what stopped the node (see _fail)
        self._ticker = threading.Thread(target=self._tick_loop, name=f"keyval-tick-{node_id}")
        self._writer = threading.Thread(target=self._write_loop, name=f"keyval-write-{node_id}")
        self._compactor = threading.Thread(
            target=self._compact_loop, name=f"keyval-compact-{node_id}"
        )
        # Writes from all client connections meet here: those that arrive while a batch is
        # being proposed are proposed together next (see _write).
        self._writes_lock = threading.Lock()
        # (deadline, answer) of every request started, oldest first: see _expire_requests.
        self._deadlines: collections.deque = collections.deque()
        self._writes: list[tuple[Command, object]] = []
        self._writing = False  # a thread is proposing and persisting (see _write)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self.transport.start()
        self._ticker.start()
        self._writer.start()
        self._compactor.start()
        log.info(
            "node %d serving on %s", self.node_id, protocol.format_address(self.peers[self.node_id])
        )

    def close(self) -> None:
        self._stop.set()
        for thread in (self._ticker, self._writer):
            if thread.is_alive():
                thread.join(timeout=5)
        if self._compactor.is_alive():
            # Not cut short: it ends once the snapshot under way is written (or refused).
            self._compactor.join()
        self.transport.close()
        with self.node.lock:
            try:
                self.state_machine.close()
                self.storage.close()
            except Exception:
                if self.failure is None:
                    raise
                # Storage that stopped the node fails again on close: it was reported then.
                log.warning("node %d: closing after its failure: %s", self.node_id, self.failure)

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def stopped(self) -> threading.Event:
        """Set by :meth:`close`, or when a failure stopped the node (``failure`` says which):
        a node whose storage failed must not go on, and its process should exit."""
        return self._stop

    def _fail(self, what: str) -> None:
        """In an ``except`` block: the node cannot go on (its storage failed, or a bug)."""
        log.exception("node %d: %s failed; stopping", self.node_id, what)
        if self.failure is None:
            self.failure = sys.exc_info()[1]
        self._stop.set()

    def _tick_loop(self) -> None:
        """Ticks the node every TICK_SECONDS; a leader is also nudged NUDGES_PER_TICK - 1 times
        in between. Only a leader holds anything back for a nudge to send, so any other node
        sleeps until its next tick: a wake-up costs a follower tens of microseconds of CPU and
        a turn at the GIL, on the two cores the leader and the client share with it, a
        thousand times a second for nothing."""
        nudge_every = TICK_SECONDS / NUDGES_PER_TICK
        next_tick = time.monotonic() + TICK_SECONDS
        while True:
            wait = next_tick - time.monotonic()
            leads = self.node.is_leader  # a racy read: a new leader starts nudging a tick late
            if leads:
                wait = min(wait, nudge_every)
            if leads:
                # A plain sleep: a leader wakes a thousand times a second, and Event.wait
                # (a lock made and waited on with a timeout) costs several times as much CPU.
                # close() waits at most one nudge interval longer for it.
                time.sleep(max(wait, 0.0))
                if self._stop.is_set():
                    return
            elif self._stop.wait(max(wait, 0.0)):
                return
            now = time.monotonic()
            if now < next_tick:
                if leads:
                    self._nudge()
                continue
            next_tick = now + TICK_SECONDS
            try:
                self.node.tick()
                self._expire_requests()
                self.state_machine.flush_if_due()
            except Exception:  # a failed fsync is fatal for this node: stop serving
                self._fail("tick")

    def _nudge(self) -> None:
        try:
            self.node.nudge()
        except Exception:  # sends only; a failure here is a bug, and fatal as in tick
            self._fail("nudge")

    def _write_loop(self) -> None:
        """The write thread: proposes the writes that arrived while another thread was
        writing, and writes the leader's entries that were left for it."""
        while not self._stop.is_set():
            if not self._write_wanted.wait(POLL_SECONDS):
                continue
            self._write_wanted.clear()
            while not self._stop.is_set() and self._write_waiting():
                pass

    def _compact_loop(self) -> None:
        """The compaction thread: snapshots the state and compacts the log when the node asks
        (see ``Node.compact``), so that neither stalls the node."""
        while not self._stop.is_set():
            if not self._compact_wanted.wait(POLL_SECONDS):
                continue
            self._compact_wanted.clear()
            try:
                self.node.compact()
            except Exception:  # a failed write of the snapshot is fatal, as any other
                self._fail("compacting")

    def _persist_needed(self) -> None:
        """The leader left new entries unwritten (under the node's lock): the write thread
        writes them, unless a thread is writing already (it persists before it stops)."""
        if not self._writing:
            self._write_wanted.set()

    def _write(self, command: Command, done) -> None:
        """Proposes ``command`` and writes it to the leader's log at once on this thread if no
        other thread is writing (no hand-off: the common case with few clients); otherwise
        it joins the waiting writes, which the write thread proposes as one batch once the
        current write is done. ``done`` is called by whoever applies the entry."""
        with self._writes_lock:
            self._writes.append((command, done))
            if self._writing:
                return
            self._writing = True
        self._write_batch()

    def _write_waiting(self) -> bool:
        """On the write thread: proposes and persists what is waiting, unless another thread
        is writing; whether there was anything to do."""
        with self._writes_lock:
            if self._writing:
                return False
            self._writing = True
        return self._write_batch()

    def _write_batch(self) -> bool:
        """Proposes every waiting write as one batch and persists the leader's new entries
        (the caller set ``_writing``, which this clears); whether it did either. What arrives
        meanwhile is left to the write thread, so that no connection's thread keeps writing
        for others while its own client waits."""
        try:
            with self._writes_lock:
                batch, self._writes = self._writes, []
            if batch:
                try:
                    self.service.write_many(batch)
                except Exception as exc:  # storage failed: answer everyone, stop serving
                    for _, waiting in batch:
                        waiting(exc)
                    self._fail("proposing")
                    return True
            try:
                return self.node.persist() or bool(batch)
            except Exception:  # a failed fsync is fatal for this node: stop serving
                self._fail("persisting")
                return True
        finally:
            with self._writes_lock:
                self._writing = False
                if self._writes:
                    self._write_wanted.set()

    # -- Raft messages ----------------------------------------------------------------------

    def _send(self, msg: messages.Message) -> None:
        try:
            self.transport.send(msg.to, KIND_RAFT, messages.encode(msg))
        except FrameError as exc:
            # Requests are capped so that every entry fits a message (MAX_VALUE): this is an
            # entry from before that, or a bug. Lost, as the network may lose any message,
            # rather than taken for a failure of this node (which would stop it).
            log.error("node %d: a message to %d cannot be sent: %s", self.node_id, msg.to, exc)
        except ClosedError:
            if not self._stop.is_set():
                raise
            # Closing: a reader thread still stepping may answer; the answer is lost, as the
            # network may lose any message, rather than taken for a failure of this node.

    def _on_frames(self, peer_id: int, frames: list[tuple[int, bytes]]) -> None:
        """Steps every Raft message of one read from ``peer_id`` before processing them: the
        appends that queued up while this node was busy (an fsync) are written with one."""
        if peer_id not in self.peers or peer_id == self.node_id:
            # Its answers could go nowhere (the transport has no link to it): the transport
            # closes this connection, with a log line, and nothing else changes.
            raise FrameError(f"HELLO from node {peer_id}, not a peer of node {self.node_id}")
        msgs = []
        for kind, payload in frames:
            if kind != KIND_RAFT:
                continue
            try:
                msg = messages.decode(payload)
            except MessageDecodeError as exc:
                log.warning(
                    "node %d: dropped a malformed message from %d: %s", self.node_id, peer_id, exc
                )
                continue
            if msg.frm != peer_id or msg.to != self.node_id:
                log.warning("node %d: dropped a message misaddressed by %d", self.node_id, peer_id)
                continue
            msgs.append(msg)
        if msgs:
            try:
                self.node.step_many(msgs)
            except Exception:  # the messages were well formed: this node's storage failed
                self._fail("stepping")
                raise

    # -- client requests --------------------------------------------------------------------

    def _on_request(self, kind: int, payload: bytes, respond) -> bytes | None:
        if kind != KIND_REQUEST:
            # The transport hands over whatever a connection without a HELLO sends; a Raft
            # message there was read as a client's WRITE (its version byte is WRITE's code).
            raise FrameError(f"frame kind {kind} on a client connection")
        if not payload:
            return bytes([protocol.BAD_REQUEST]) + b"empty request"
        op, body = payload[0], payload[1:]
        if op == protocol.STATUS:
            return bytes([protocol.OK]) + json.dumps(self.status()).encode()
        try:
            if op == protocol.WRITE:
                command = Command.decode(body)
                if command.op not in CLIENT_OPS:
                    raise ValueError(f"op {command.op} is not a client's to ask")
                if len(command.value) > MAX_VALUE:
                    # The entry must fit a Raft message and the value an answer's frame.
                    raise ValueError(
                        f"values must be at most {MAX_VALUE} bytes, not {len(command.value)}"
                    )
                return self._start(lambda done: self._write(command, done), respond, write=True)
            if op == protocol.READ:
                if not 0 < len(body) <= MAX_KEY_SIZE:
                    raise ValueError(f"keys must be 1 to {MAX_KEY_SIZE} bytes, not {len(body)}")
                return self._start(lambda done: self.service.read(body, done), respond, write=False)
        except ValueError as exc:
            return bytes([protocol.BAD_REQUEST]) + str(exc).encode()
        return bytes([protocol.BAD_REQUEST]) + b"unknown request kind %d" % op

    def _start(self, start, respond, write: bool) -> bytes | None:
        """Starts a request with ``start(done)``. Its answer goes out through ``respond`` from
        the thread that completes it, or as RETRY from the tick thread once REQUEST_TIMEOUT
        has passed; this thread does not wait for it. Returns None, or the answer if ``start``
        refused at once."""
        answer = _FirstAnswer(respond)

        def done(result) -> None:
            answer(self._reply(result, write))

        try:
            start(done)
        except NotLeader:
            return self._not_leader()
        if not answer.given:
            self._deadlines.append((time.monotonic() + REQUEST_TIMEOUT, answer))
        return None

    def _expire_requests(self) -> None:
        """Answers RETRY to requests older than REQUEST_TIMEOUT (the client retries them with
        the same sequence number). Deadlines are appended in order; one thread pops them."""
        now = time.monotonic()
        deadlines = self._deadlines
        while deadlines:
            deadline, answer = deadlines[0]
            if not answer.given and deadline > now:
                return
            deadlines.popleft()
            answer(bytes([protocol.RETRY]) + b"not committed in time")

    def _reply(self, result, write: bool) -> bytes:
        if isinstance(result, NotLeader):
            return self._not_leader()
        if isinstance(result, Exception):
            return bytes([protocol.RETRY]) + str(result).encode()
        if write:
            if result[:1] == _INVALID:  # only a command no server checked gets this far
                return bytes([protocol.BAD_REQUEST]) + result[1:]
            return bytes([protocol.OK]) + result
        if result is not None and len(result) + 2 > self.transport.max_payload:
            # A value stored before values were capped (MAX_VALUE): the client hears why, and
            # the node answering it (maybe while applying entries) goes on.
            why = b"the value of %d bytes is too long to send in one answer" % len(result)
            return bytes([protocol.BAD_REQUEST]) + why
        return bytes([protocol.OK, 0 if result is None else 1]) + (result or b"")

    def _not_leader(self) -> bytes:
        leader = self.node.leader
        hint = protocol.format_address(self.peers[leader]).encode() if leader in self.peers else b""
        return bytes([protocol.NOT_LEADER]) + hint

    def status(self) -> dict:
        """Who this node thinks leads, its term, and its log and apply positions."""
        with self.node.lock:
            return {
                "id": self.node_id,
                "address": protocol.format_address(self.peers[self.node_id]),
                "role": self.node.role.name.lower(),
                "term": self.node.term,
                "leader": self.node.leader or None,
                "commit": self.node.commit_index,
                "applied": self.node.applied,
                "first_index": self.storage.first_index,
                "last_index": self.storage.last_index,
                "kv_durable_index": self.state_machine.durable_index,
                "max_sessions": self.state_machine.max_sessions,  # in force (the log's)
            }


class _FirstAnswer:
    """Passes the first answer given to ``respond`` and ignores later ones: a request timed out
    here (RETRY) may still complete later, and the client, having retried with the same sequence
    number, gets the reply of that one application then."""

    def __init__(self, respond) -> None:
        self._respond = respond
        self._lock = threading.Lock()
        self.given = False

    def __call__(self, reply: bytes) -> None:
        with self._lock:
            if self.given:
                return
            self.given = True
        self._respond(reply)
