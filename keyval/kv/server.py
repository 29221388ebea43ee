"""Server: one node of the replicated key/value service, on TCP.

Wires the pieces together: the :class:`~keyval.kv.transport.Transport` carries Raft messages
between nodes and client requests to this one; the Raft :class:`~keyval.raft.node.Node` runs on
durable :class:`~keyval.raft.storage.RaftStorage`; the :class:`~keyval.kv.service.KVService`
turns requests into proposals and ReadIndex reads over the
:class:`~keyval.kv.state.KVStateMachine`. A tick thread drives Raft's clock and commits the
state machine's pending batch when it is due.

Data directory layout: ``raft/`` (the node's Raft state, see keyval.raft.storage) and
``kv.db`` (the key/value state with its applied index). A write is acknowledged once its entry
is committed (on a majority's WAL, fsynced) and applied here; the KV database catches up in
batches and a restart replays the log after its applied index.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import threading

from keyval.errors import MessageDecodeError, NotLeader
from keyval.kv import protocol
from keyval.kv.frames import KIND_RAFT
from keyval.kv.service import KVService
from keyval.kv.state import Command, KVStateMachine
from keyval.kv.transport import Transport
from keyval.raft import messages
from keyval.raft.core import Config
from keyval.raft.node import Node
from keyval.raft.storage import RaftStorage

log = logging.getLogger("keyval.kv.server")

TICK_SECONDS = 0.01
ELECTION_TICKS = 15  # a follower waits 150-300 ms without a leader before it campaigns
HEARTBEAT_TICKS = 3
REQUEST_TIMEOUT = 2.0  # a request not committed by then is answered RETRY (the client retries)
MAX_BATCH = 256  # writes proposed together: one Raft ready, one fsync on each node


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
    ) -> None:
        if node_id not in peers:
            raise ValueError(f"node {node_id} is not among the peers {sorted(peers)}")
        self.node_id = node_id
        self.peers = peers
        self.data_dir = data_dir
        os.makedirs(data_dir, exist_ok=True)
        self.storage = RaftStorage(os.path.join(data_dir, "raft"), segment_size=segment_size)
        try:
            self.state_machine = KVStateMachine(os.path.join(data_dir, "kv.db"))
        except BaseException:
            self.storage.close()
            raise
        self.transport = Transport(
            node_id,
            listen=peers[node_id],
            peers=peers,
            on_frame=self._on_frame,
            on_request=self._on_request,
        )
        config = Config(
            id=node_id,
            peers=tuple(sorted(peers)),
            election_ticks=ELECTION_TICKS,
            heartbeat_ticks=HEARTBEAT_TICKS,
        )
        self.node = Node(
            config,
            self.storage,
            self.state_machine,
            send=self._send,
            rng=random.Random(),
            max_raft_state=max_raft_state,
        )
        self.service = KVService(self.node, self.state_machine)
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick_loop, name=f"keyval-tick-{node_id}")
        # Writes from all client connections meet here, so that those arriving while the node
        # is busy (an fsync) are proposed together: group commit at the Raft level.
        self._writes: queue.Queue = queue.Queue()
        self._proposer = threading.Thread(
            target=self._propose_loop, name=f"keyval-propose-{node_id}"
        )

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        self.transport.start()
        self._ticker.start()
        self._proposer.start()
        log.info(
            "node %d serving on %s", self.node_id, protocol.format_address(self.peers[self.node_id])
        )

    def close(self) -> None:
        self._stop.set()
        for thread in (self._ticker, self._proposer):
            if thread.is_alive():
                thread.join(timeout=5)
        self.transport.close()
        with self.node.lock:
            self.state_machine.close()
            self.storage.close()

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _tick_loop(self) -> None:
        while not self._stop.wait(TICK_SECONDS):
            try:
                self.node.tick()
                self.state_machine.flush_if_due()
            except Exception:  # a failed fsync is fatal for this node: stop serving
                log.exception("node %d: tick failed; stopping", self.node_id)
                self._stop.set()

    def _propose_loop(self) -> None:
        while not self._stop.is_set():
            try:
                batch = [self._writes.get(timeout=0.1)]
            except queue.Empty:
                continue
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._writes.get_nowait())
                except queue.Empty:
                    break
            try:
                self.service.write_many(batch)
            except Exception as exc:  # storage failed: answer everyone, then stop serving
                for _, done in batch:
                    done(exc)
                log.exception("node %d: proposing failed; stopping", self.node_id)
                self._stop.set()

    # -- Raft messages ----------------------------------------------------------------------

    def _send(self, msg: messages.Message) -> None:
        self.transport.send(msg.to, KIND_RAFT, messages.encode(msg))

    def _on_frame(self, peer_id: int, kind: int, payload: bytes) -> None:
        if kind != KIND_RAFT:
            return
        try:
            msg = messages.decode(payload)
        except MessageDecodeError as exc:
            log.warning(
                "node %d: dropped a malformed message from %d: %s", self.node_id, peer_id, exc
            )
            return
        if msg.frm != peer_id or msg.to != self.node_id:
            log.warning("node %d: dropped a message misaddressed by %d", self.node_id, peer_id)
            return
        self.node.step(msg)

    # -- client requests --------------------------------------------------------------------

    def _on_request(self, kind: int, payload: bytes) -> bytes:
        if not payload:
            return bytes([protocol.BAD_REQUEST]) + b"empty request"
        op, body = payload[0], payload[1:]
        if op == protocol.STATUS:
            return bytes([protocol.OK]) + json.dumps(self.status()).encode()
        try:
            if op == protocol.WRITE:
                command = Command.decode(body)
                return self._wait(lambda done: self._writes.put((command, done)), write=True)
            if op == protocol.READ:
                return self._wait(lambda done: self.service.read(body, done), write=False)
        except ValueError as exc:
            return bytes([protocol.BAD_REQUEST]) + str(exc).encode()
        return bytes([protocol.BAD_REQUEST]) + b"unknown request kind %d" % op

    def _wait(self, start, write: bool) -> bytes:
        finished = threading.Event()
        box: list = []

        def done(result) -> None:
            box.append(result)
            finished.set()

        try:
            start(done)
        except NotLeader:
            return self._not_leader()
        if not finished.wait(REQUEST_TIMEOUT):
            return bytes([protocol.RETRY]) + b"not committed in time"
        result = box[0]
        if isinstance(result, NotLeader):
            return self._not_leader()
        if isinstance(result, Exception):
            return bytes([protocol.RETRY]) + str(result).encode()
        if write:
            return bytes([protocol.OK]) + result
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
            }
