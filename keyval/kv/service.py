"""KVService: the replicated key/value service of one node, with no transport and no clock.

It owns the Raft :class:`~keyval.raft.node.Node` and the :class:`~keyval.kv.state.KVStateMachine`
and turns client requests into Raft work:

- a write (Put/Append/Delete) is proposed as a log entry and completed when that entry is
  applied: its reply comes from the state machine, which applies a retried request (same
  client id and sequence number) only once. If another entry is applied at that index (this
  node lost its leadership), or the node stops leading while it waits, the request fails with
  :class:`~keyval.errors.NotLeader` and the client retries elsewhere with the same sequence
  number.
- a read (Get) starts a ReadIndex round and is answered from the state machine once it has
  applied the read index: linearizable without writing the log.

Completion callbacks run on whatever thread drives the node (under the node's lock) and must
not block. The TCP server and the simulated-network tests both drive this class: it is the
one place where the service's logic lives.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from keyval.errors import NotLeader
from keyval.kv.state import Command, KVStateMachine, max_sessions_command
from keyval.raft.node import Node
from keyval.raft.readindex import ReadState
from keyval.raft.records import Entry

Done = Callable[[bytes | Exception | None], None]


class KVService:
    """Client requests on top of one Raft node whose state machine is ``state_machine``.

    Attaches to an existing :class:`~keyval.raft.node.Node` (it takes over the node's
    ``on_apply``, ``on_read`` and ``on_change`` callbacks), so whoever drives the node (a TCP
    server, the simulated network) keeps calling ``tick``/``step`` on it.
    """

    def __init__(
        self, node: Node, state_machine: KVStateMachine, max_sessions: int | None = None
    ) -> None:
        """``max_sessions``: the session limit this node sets for the whole cluster while it
        leads: its first write of each term goes after a SET_MAX_SESSIONS entry, so every node
        uses the same limit from that entry on (see keyval.kv.state). None sets nothing."""
        self.node = node
        self.state_machine = state_machine
        self._limit_entry = None if max_sessions is None else max_sessions_command(max_sessions)
        self._limit_term = 0  # the term whose writes followed our limit entry
        self._writes: dict[int, tuple[int, Done]] = {}  # log index -> (term proposed in, done)
        self._reads: dict[bytes, tuple[bytes, Done]] = {}  # ReadIndex context -> (key, done)
        self._read_ids = itertools.count(1)
        node.on_apply = self._applied
        node.on_read = self._readable
        node.on_change = self._changed

    # -- requests ------------------------------------------------------------------------------

    def write(self, command: Command, done: Done) -> None:
        """Proposes ``command``; ``done(reply)`` once applied, or ``done(NotLeader)``. Raises
        NotLeader at once when this node does not lead."""
        with self.node.lock:
            self._propose_limit()
            # Registered before proposing: in a one-node cluster the entry is committed and
            # applied inside propose() itself.
            index = self.node.next_index
            self._writes[index] = (self.node.term, done)
            try:
                proposed = self.node.propose(command.encode())
            except NotLeader:
                del self._writes[index]
                raise
            assert proposed == index, (proposed, index)

    def write_many(self, requests: list[tuple[Command, Done]]) -> None:
        """Proposes several commands as one Raft batch (one ready, one fsync per node); each
        ``done`` as for :meth:`write`. On a non-leader every ``done`` gets NotLeader."""
        with self.node.lock:
            if not self.node.is_leader:
                hint = str(self.node.leader) if self.node.leader else None
                for _, done in requests:
                    done(NotLeader(leader_hint=hint))
                return
            try:
                self._propose_limit()
            except NotLeader as exc:
                for _, done in requests:
                    done(exc)
                return
            first, term = self.node.next_index, self.node.term
            for k, (_, done) in enumerate(requests):
                self._writes[first + k] = (term, done)
            try:
                indexes = self.node.propose_many([cmd.encode() for cmd, _ in requests])
            except NotLeader as exc:
                for k in range(len(requests)):
                    self._writes.pop(first + k, None)
                for _, done in requests:
                    done(exc)
                return
            assert indexes == list(range(first, first + len(requests))), (indexes, first)

    def _propose_limit(self) -> None:
        """Proposes our session limit once per term, before that term's first write (under
        the node's lock): a write applied with a limit that differs from node to node would
        expire sessions differently on each. Raises NotLeader when this node does not lead."""
        if self._limit_entry is not None and self._limit_term != self.node.term:
            self.node.propose(self._limit_entry.encode())
            self._limit_term = self.node.term

    def read(self, key: bytes, done: Done) -> None:
        """``done(value or None)`` once a linearizable read of ``key`` may be served here, or
        ``done(NotLeader)``. Raises NotLeader at once when this node does not lead."""
        with self.node.lock:
            if not self.node.is_leader:
                raise NotLeader(leader_hint=str(self.node.leader) if self.node.leader else None)
            context = b"r%d" % next(self._read_ids)
            self._reads[context] = (key, done)
            try:
                self.node.read_index(context)
            except NotLeader:
                del self._reads[context]
                raise

    @property
    def pending(self) -> int:
        return len(self._writes) + len(self._reads)

    # -- callbacks from the node (under its lock) ----------------------------------------------

    def _applied(self, entry: Entry, reply: object) -> None:
        waiting = self._writes.pop(entry.index, None)
        if waiting is None:
            return
        term, done = waiting
        if entry.term != term:  # another leader's entry took the index: ours was lost
            done(NotLeader("leadership changed before the request was committed"))
        else:
            done(reply)

    def _readable(self, state: ReadState) -> None:
        waiting = self._reads.pop(state.context, None)
        if waiting is not None:
            key, done = waiting
            done(self.state_machine.get(key))

    def _changed(self) -> None:
        """This node stopped leading: nothing it has pending can be answered by it (a write
        may still commit under the new leader; the client's retry with the same sequence
        number then gets the reply of that one application)."""
        if self.node.is_leader or not (self._writes or self._reads):
            return
        hint = str(self.node.leader) if self.node.leader else None
        writes, reads = self._writes, self._reads
        self._writes, self._reads = {}, {}
        for _, done in [*writes.values(), *reads.values()]:
            done(NotLeader("this node stopped leading", leader_hint=hint))
