"""The KV state machine: against a dict under random commands with retried requests,
batched commits, snapshots, and reopen with log replay; and through a real crash."""

import contextlib
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import tracemalloc
from unittest import mock

import hypothesis
import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from keyval.db import DB
from keyval.errors import CorruptionError, FormatVersionError
from keyval.kv import state
from keyval.kv.state import (
    APPEND,
    DELETE,
    EXPIRED,
    INVALID,
    NOT_FOUND,
    OK,
    PUT,
    SET_MAX_SESSIONS,
    Command,
    KVStateMachine,
    max_sessions_command,
    register_command,
)
from keyval.raft.core import Config
from keyval.raft.node import Node
from keyval.raft.records import Entry, Snapshot
from keyval.raft.snapdata import FileData
from keyval.raft.storage import RaftStorage

MAX_SESSIONS = 2  # in the model test: fewer than its three clients
SEGMENT = 2**20  # 1 MiB WAL segments, not 64: each open log writes its next one out ahead
keys = st.sampled_from([b"a", b"b", b"c", b"key-" + b"k" * 40])
values = st.binary(max_size=60)


class Model:
    """What the state must be after applying commands in order, with de-duplication and at
    most ``max_sessions`` sessions (the least recently used expires)."""

    def __init__(self, max_sessions: int):
        self.data: dict[bytes, bytes] = {}
        self.sessions: dict[int, tuple[int, bytes]] = {}
        self.last_use: dict[int, int] = {}  # client -> index of the entry that last used it
        self.max_sessions = max_sessions

    def register(self, index: int) -> bytes:
        self.sessions[index] = (0, b"")
        self.last_use[index] = index
        self.expire()
        return bytes([OK]) + struct.pack("<Q", index)

    def apply(self, cmd: Command, index: int) -> bytes:
        last = self.sessions.get(cmd.client)
        if cmd.seq and last is None:
            return bytes([EXPIRED])
        if cmd.seq and cmd.seq <= last[0]:
            return last[1] if cmd.seq == last[0] else bytes([OK])
        if cmd.op == PUT:
            self.data[cmd.key], reply = cmd.value, bytes([OK])
        elif cmd.op == APPEND:
            self.data[cmd.key], reply = self.data.get(cmd.key, b"") + cmd.value, bytes([OK])
        else:
            reply = bytes([OK if self.data.pop(cmd.key, None) is not None else NOT_FOUND])
        if cmd.seq:
            self.sessions[cmd.client] = (cmd.seq, reply)
            self.last_use[cmd.client] = index
            self.expire()
        return reply

    def set_limit(self, limit: int) -> bytes:
        self.max_sessions = limit
        self.expire()
        return bytes([OK])

    def expire(self) -> None:
        while len(self.sessions) > self.max_sessions:
            oldest = min(self.last_use, key=self.last_use.__getitem__)
            del self.sessions[oldest], self.last_use[oldest]


class StateMachineModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="kv-state-")
        self.path = os.path.join(self.dir, "kv.db")
        self.sm = self._open()
        self.log: list[Entry] = []  # the Raft log: every applied entry
        self.model = Model(MAX_SESSIONS)
        self.session: dict[int, int | None] = {1: None, 2: None, 3: None}  # REGISTER's ids
        self.next_seq = {1: 1, 2: 1, 3: 1}
        self.ids: set[int] = {424242}  # every session id used (and one never registered)

    def _open(self) -> KVStateMachine:
        # Three clients and room for two sessions: sessions expire all the time.
        return KVStateMachine(
            self.path, batch_entries=5, batch_seconds=3600, max_sessions=MAX_SESSIONS
        )

    def teardown(self):
        self.sm.close()
        shutil.rmtree(self.dir)

    def _apply(self, data: bytes) -> bytes:
        entry = Entry(len(self.log) + 1, 1, data)
        self.log.append(entry)
        return self.sm.apply(entry)

    def _next(self, client: int) -> tuple[int, int]:
        """``client``'s session id and next sequence number, opening a session (a REGISTER
        entry) when it has none."""
        if self.session[client] is None:
            expected = self.model.register(len(self.log) + 1)
            assert self._apply(register_command().encode()) == expected
            self.session[client] = len(self.log)
            self.ids.add(len(self.log))
            self.next_seq[client] = 1
        self.next_seq[client] += 1
        return self.session[client], self.next_seq[client] - 1

    @rule(
        op=st.sampled_from([PUT, APPEND, DELETE]),
        client=st.sampled_from([1, 2, 3]),
        key=keys,
        value=values,
    )
    def command(self, op, client, key, value):
        cmd = Command(op, *self._next(client), key, value)
        expected = self.model.apply(cmd, len(self.log) + 1)
        assert self._apply(cmd.encode()) == expected

    @rule(client=st.sampled_from([1, 2, 3]))
    def client_whose_session_expired_starts_a_new_one(self, client):
        if self.session[client] not in self.model.sessions:
            self.session[client] = None

    @rule(op=st.sampled_from([PUT, APPEND, DELETE]), key=keys, value=values)
    def write_outside_any_session(self, op, key, value):
        cmd = Command(op, 0, 0, key, value)
        assert self._apply(cmd.encode()) == self.model.apply(cmd, len(self.log) + 1)

    @rule(seq=st.integers(1, 3))
    def write_in_a_session_that_cannot_exist(self, seq):
        # An id not below the write's index: no REGISTER made it (a client choosing its own).
        cmd = Command(PUT, len(self.log) + 1 + seq, seq, b"a", b"never")
        assert self._apply(cmd.encode())[:1] == bytes([INVALID])

    @rule(seq=st.integers(1, 3))
    def write_in_a_session_gone_or_never_opened(self, seq):
        sid = len(self.log)  # an id below the write's index: perhaps a session that expired
        if sid < 1 or sid in self.model.sessions:
            return
        cmd = Command(PUT, sid, seq, b"a", b"never")
        self.ids.add(sid)
        assert self._apply(cmd.encode()) == bytes([EXPIRED]) == self.model.apply(cmd, 0)

    @rule(
        commands=st.lists(
            st.tuples(st.sampled_from([PUT, APPEND, DELETE]), st.sampled_from([1, 2, 3]), keys),
            min_size=1,
            max_size=8,
        ),
        value=values,
    )
    def batch_applied_at_once(self, commands, value):
        cmds = [Command(op, *self._next(client), key, value) for op, client, key in commands]
        entries = [Entry(len(self.log) + k + 1, 1, c.encode()) for k, c in enumerate(cmds)]
        self.log += entries
        expected = [self.model.apply(c, e.index) for c, e in zip(cmds, entries, strict=True)]
        assert self.sm.apply_many(entries) == expected

    @rule(client=st.sampled_from([1, 2, 3]), key=keys, value=values)
    def retried_request_is_applied_once(self, client, key, value):
        cmd = Command(APPEND, *self._next(client), key, value)
        first = self._apply(cmd.encode())
        assert self._apply(cmd.encode()) == first  # the retry: same reply, no second append
        assert first == self.model.apply(cmd, len(self.log) - 1)
        self.model.apply(cmd, len(self.log))

    @rule(limit=st.integers(1, 3))
    def session_limit_set_by_the_log(self, limit):
        expected = self.model.set_limit(limit)
        assert self._apply(max_sessions_command(limit).encode()) == expected

    @rule()
    def leader_noop(self):
        assert self._apply(b"") == b""

    @rule()
    def flush(self):
        self.sm.flush()
        assert self.sm.durable_index == len(self.log)

    @rule()
    def reopen_without_flush_then_replay_the_log(self):
        # as after a crash: the DB holds the last batch; the log after it is applied again
        self.sm.close(flush=False)
        self.sm = self._open()
        replay = self.log[self.sm.durable_index :]
        if replay:
            self.sm.apply_many(replay)  # as a restarted node replays a chunk of its log

    @rule()
    def snapshot_restored_into_a_fresh_node(self):
        data = self.sm.snapshot()
        other_path = os.path.join(self.dir, "other.db")
        other = KVStateMachine(other_path, max_sessions=MAX_SESSIONS)
        other.restore(data)
        assert other.applied_index == len(self.log)
        assert other.max_sessions == self.model.max_sessions  # the snapshot carries it
        for key in self.model.data:
            assert other.get(key) == self.model.data[key]
        for client, session in self.model.sessions.items():
            assert other.session(client) == session
        other.close()
        os.unlink(other_path)

    @rule(
        later=st.lists(st.tuples(st.sampled_from([PUT, APPEND, DELETE]), keys), max_size=4),
        value=values,
    )
    def snapshot_fixed_then_encoded_after_more_entries(self, later, value):
        # As a node compacting off its lock: the state is fixed, entries go on being applied
        # (and batches written), and the encoding that comes after is of the fixed state.
        encode = self.sm.snapshot_reader()
        fixed = (len(self.log), dict(self.model.data), dict(self.model.sessions))
        for op, key in later:
            self.command(op, 1, key, value)
        self.sm.flush()
        other_path = os.path.join(self.dir, "fixed.db")
        other = KVStateMachine(other_path, max_sessions=MAX_SESSIONS)
        other.restore(encode())
        applied, data, sessions = fixed
        assert other.applied_index == applied
        for key in (b"a", b"b", b"c", b"key-" + b"k" * 40):
            assert other.get(key) == data.get(key)
        for sid in self.ids:
            assert other.session(sid) == sessions.get(sid)
        other.close()
        os.unlink(other_path)

    @invariant()
    def same_state(self):
        assert self.sm.applied_index == len(self.log)
        assert self.sm.max_sessions == self.model.max_sessions
        for key in (b"a", b"b", b"c", b"key-" + b"k" * 40):
            assert self.sm.get(key) == self.model.data.get(key)
        for sid in self.ids:
            assert self.sm.session(sid) == self.model.sessions.get(sid)


StateMachineModel.TestCase.settings = settings(
    max_examples=int(os.environ.get("KEYVAL_MODEL_EXAMPLES", "20")),
    stateful_step_count=40,
    deadline=None,
)
test_state_machine_matches_model = StateMachineModel.TestCase


def test_malformed_commands_are_refused():
    for bad in (b"\x01", b"\x09" + b"\0" * 20, Command(PUT, 1, 1, b"k").encode()[:-1]):
        with pytest.raises(ValueError):
            Command.decode(bad)


CHILD = """
import os, sys
from keyval.kv.state import KVStateMachine, Command, APPEND
from keyval.raft.records import Entry
sm = KVStateMachine(sys.argv[1], batch_entries=7, batch_seconds=3600)
i = sm.applied_index
while True:
    i += 1
    sm.apply(Entry(i, 1, Command(APPEND, 0, 0, b"k%d" % (i % 5), b"<%d>" % i).encode()))
    if sm.durable_index == i:
        os.write(1, b"%d\\n" % i)
"""


def test_a_crash_leaves_the_state_of_exactly_one_applied_index(tmp_path):
    path = str(tmp_path / "kv.db")
    rng = random.Random(3)
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, path], stdout=subprocess.PIPE)
        flushed = 0
        for _ in range(rng.randrange(1, 40)):
            flushed = int(proc.stdout.readline())
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        sm = KVStateMachine(path)
        a = sm.durable_index
        assert a >= flushed and a % 7 == 0  # a whole batch or none of it
        expected = {}
        for i in range(1, a + 1):
            k = b"k%d" % (i % 5)
            expected[k] = expected.get(k, b"") + b"<%d>" % i
        assert {k: sm.get(k) for k in expected} == expected
        sm.close()


def test_opening_the_state_removes_snapshot_buffers_a_crash_left_beside_it(tmp_path):
    # Where the file system has no O_TMPFILE, a snapshot's buffer has a name for an instant
    # (keyval.raft.snapdata.FileBuffer); a crash then leaves it in the state's directory.
    left = tmp_path / ".keyval-buffer-abc.tmp"
    left.write_bytes(b"x" * 100)
    sm = KVStateMachine(str(tmp_path / "kv.db"))
    try:
        assert not left.exists()
        assert sorted(os.listdir(tmp_path)) == ["kv.db"]
    finally:
        sm.close()


def test_reads_see_every_applied_entry_while_a_batch_is_written_to_the_db(tmp_path):
    """flush_if_due (a server's tick) writes the batch outside the lock that apply takes:
    entries go on being applied meanwhile, and get() sees the newest value throughout."""
    sm = KVStateMachine(str(tmp_path / "kv.db"), batch_entries=10**9, batch_seconds=0)
    stop = threading.Event()
    flushed = threading.Condition()

    def flush_often():
        while not stop.is_set():
            sm.flush_if_due()
            with flushed:
                flushed.notify_all()

    sm.apply(Entry(1, 1, register_command().encode()))  # session 1
    flusher = threading.Thread(target=flush_often)
    flusher.start()
    try:
        for i in range(2, 2001):
            sm.apply(Entry(i, 1, Command(PUT, 1, i - 1, b"k%d" % (i % 7), b"%d" % i).encode()))
            assert sm.get(b"k%d" % (i % 7)) == b"%d" % i
            if i > 7:
                assert sm.get(b"k%d" % ((i - 3) % 7)) == b"%d" % (i - 3)
            if i % 400 == 0:  # make sure batches were written while applying went on
                with flushed:
                    assert flushed.wait_for(lambda i=i: sm.durable_index >= i, 10.0)
    finally:
        stop.set()
        flusher.join()
    sm.flush()
    assert sm.durable_index == 2000
    sm.close()
    again = KVStateMachine(str(tmp_path / "kv.db"))
    assert again.get(b"k%d" % (2000 % 7)) == b"2000"
    assert again.session(1)[0] == 1999
    again.close()


def test_a_command_the_db_cannot_hold_is_answered_invalid_and_changes_nothing(tmp_path):
    """Such a command reaches the log only from a server that did not check it; applying it
    must not raise (every node would stop, and again on every restart) nor touch the state."""
    from keyval.kv.state import INVALID, MAX_VALUE, encode_command

    sm = KVStateMachine(str(tmp_path / "kv.db"))
    sm.apply(Entry(1, 1, register_command().encode()))  # session 1
    good = Command(PUT, 1, 1, b"k", b"12345678").encode()
    bad = [
        encode_command(PUT, 1, 2, b"", b"v"),  # an empty key
        encode_command(PUT, 1, 2, b"x" * (32 * 1024 + 1), b"v"),  # a key over the limit
        encode_command(PUT, 1, 2, b"big", bytes(MAX_VALUE + 1)),  # a value over the limit
        encode_command(APPEND, 1, 2, b"k", bytes(MAX_VALUE - 7)),  # 8 more: past the limit
        b"\x09" + bytes(20),  # an unknown op
        b"\x01",  # too short
    ]
    entries = [Entry(2, 1, good)] + [Entry(3 + i, 1, d) for i, d in enumerate(bad)]
    replies = sm.apply_many(entries)
    assert replies[0] == bytes([OK])
    assert [r[:1] for r in replies[1:]] == [bytes([INVALID])] * len(bad)
    assert all(len(r) > 1 for r in replies[1:])  # each says why
    assert sm.applied_index == len(entries) + 1
    sm.flush()  # the batch reaches the DB: nothing in it the DB refuses
    assert sm.get(b"k") == b"12345678" and sm.get(b"big") is None
    assert sm.session(1) == (1, bytes([OK]))  # the invalid ones did not advance the session
    sm.close()


def _old_format_db(path, sessions: dict[bytes, bytes]) -> None:
    """A kv.db as written before sessions expired: no format mark, sessions ``seq | reply``."""
    with DB(str(path)) as db, db.update() as tx:
        for name in (b"kv", b"sessions", b"meta"):
            tx.create_bucket(name)
        tx.bucket(b"kv").put(b"k", b"v")
        tx.bucket(b"meta").put(b"applied", struct.pack("<Q", 7))
        for key, value in sessions.items():
            tx.bucket(b"sessions").put(key, value)


def _old_snapshot(with_session: bool) -> bytes:
    records = b"\x01" + struct.pack("<I", 1) + b"k" + struct.pack("<I", 1) + b"v"
    if with_session:
        value = struct.pack("<Q", 3) + b"\x00"
        records += b"\x02" + struct.pack("<I", 8) + bytes(8) + struct.pack("<I", 9) + value
    return b"KVSNAP01" + struct.pack("<Q", 9) + records


def test_state_of_the_format_before_sessions_expired_is_read_only_without_sessions(tmp_path):
    """Old sessions carry no last use, so the order they would expire in could differ from
    node to node: such a file or snapshot is refused (and left as it was); one without
    sessions is taken as it is."""
    _old_format_db(tmp_path / "plain.db", {})
    sm = KVStateMachine(str(tmp_path / "plain.db"))
    assert (sm.applied_index, sm.get(b"k")) == (7, b"v")
    sm.restore(_old_snapshot(with_session=False))
    assert (sm.applied_index, sm.get(b"k")) == (9, b"v")
    with pytest.raises(FormatVersionError, match="KVSNAP01"):
        sm.restore(_old_snapshot(with_session=True))
    assert sm.applied_index == 9
    sm.close()

    _old_format_db(tmp_path / "sessions.db", {struct.pack("<Q", 5): struct.pack("<Q", 3) + b"\0"})
    with pytest.raises(FormatVersionError, match="older format"):
        KVStateMachine(str(tmp_path / "sessions.db"))
    with DB(str(tmp_path / "sessions.db")) as db, db.view() as tx:
        assert tx.bucket(b"meta").get(b"format") is None  # not marked: nothing was changed


def _state_with_sessions(path) -> KVStateMachine:
    """Sessions 1..5 (REGISTER entries 1..5), then 40 writes in them."""
    sm = KVStateMachine(str(path))
    for i in range(1, 6):
        sm.apply(Entry(i, 1, register_command().encode()))
    for i in range(1, 41):
        op, key, value = PUT if i % 3 else APPEND, b"k%d" % (i % 7), b"v%d" % i
        cmd = Command(op, client=i % 5 + 1, seq=i // 5 + 1, key=key, value=value)
        sm.apply(Entry(5 + i, 1, cmd.encode()))
    return sm


def _contents(sm: KVStateMachine) -> tuple:
    return (
        sm.applied_index,
        [sm.get(b"k%d" % k) for k in range(8)],
        [sm.session(c) for c in range(1, 7)],
    )


def test_a_file_backed_snapshot_restores_as_its_bytes_do(tmp_path):
    """What RaftStorage hands out (FileData, streamed) restores exactly as bytes do."""
    source = _state_with_sessions(tmp_path / "source.db")
    data = bytes(source.snapshot())
    path = tmp_path / "snap"
    path.write_bytes(b"header" + data)
    from_bytes = KVStateMachine(str(tmp_path / "a.db"))
    from_file = KVStateMachine(str(tmp_path / "b.db"))
    from_bytes.restore(data)
    from_file.restore(FileData(os.open(path, os.O_RDONLY), 6, len(data)))
    assert _contents(from_file) == _contents(from_bytes) == _contents(source)
    for sm in (source, from_bytes, from_file):
        sm.close()


@settings(max_examples=60, deadline=None)
@hypothesis.given(cut=st.integers(0, 10**6), flips=st.lists(st.integers(0, 10**6), max_size=3))
def test_a_damaged_snapshot_is_refused_and_changes_nothing(tmp_path_factory, cut, flips):
    """Truncated or bit-flipped: either it still decodes (a flip inside a key or value), or
    restore raises CorruptionError and the state is what it was, DB included."""
    tmp = tmp_path_factory.mktemp("damaged")
    data = bytearray(bytes(_state_with_sessions(tmp / "source.db").snapshot()))
    if cut % 4 == 0:
        del data[max(cut % len(data), 1) :]
    for flip in flips:
        data[flip % len(data)] ^= 1 << (flip % 8)
    sm = KVStateMachine(str(tmp / "target.db"))
    sm.apply(Entry(1, 1, Command(PUT, client=0, seq=0, key=b"k1", value=b"mine").encode()))
    sm.flush()
    before = _contents(sm)
    try:
        with mock.patch.object(state, "RESTORE_BATCH_BYTES", 16):  # a transaction per record
            sm.restore(bytes(data))
    except (CorruptionError, FormatVersionError):
        assert _contents(sm) == before
        sm.close()
        reopened = KVStateMachine(str(tmp / "target.db"))
        assert _contents(reopened) == before
        reopened.close()
    else:
        sm.close()


def test_a_snapshot_is_encoded_into_a_file_in_bounded_memory(tmp_path):
    """Compaction encodes the whole state: it streams into an unnamed file, so the peak is a
    buffer, not the state's size; nothing is left in the directory."""
    sm = KVStateMachine(str(tmp_path / "kv.db"))
    value = bytes(range(100))
    entries = [
        Entry(i, 1, Command(PUT, 0, 0, b"key%08d" % i, value).encode()) for i in range(1, 100_001)
    ]
    for at in range(0, len(entries), 10_000):
        sm.apply_many(entries[at : at + 10_000])
    encode = sm.snapshot_reader()
    tracemalloc.start()
    try:
        data = encode()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert isinstance(data, FileData) and len(data) > 11_000_000
    assert peak < 4_000_000
    assert os.listdir(tmp_path) == ["kv.db"]  # before "other" is made
    (tmp_path / "other").mkdir()
    other = KVStateMachine(str(tmp_path / "other" / "kv.db"))
    other.restore(data)
    assert other.get(b"key00054321") == value and other.applied_index == 100_000
    sm.close()
    other.close()


@pytest.mark.parametrize(
    "key, value",
    [
        (b"max_sessions", bytes(8)),  # zero
        (b"max_sessions", b"\x01" * 7),  # not a u64
        (b"max_sessions", b"\x01" * 9),
        (b"min_sessions", struct.pack("<Q", 5)),  # no such setting
    ],
)
def test_a_malformed_session_limit_entry_is_invalid_and_changes_nothing(tmp_path, key, value):
    sm = KVStateMachine(str(tmp_path / "kv.db"), max_sessions=3)
    for client in (1, 2, 3):  # sessions 1, 2 and 3
        sm.apply(Entry(client, 1, register_command().encode()))
    entry = Entry(4, 1, Command(SET_MAX_SESSIONS, 0, 0, key, value).encode())
    assert sm.apply(entry)[:1] == bytes([INVALID])
    assert sm.max_sessions == 3 and all(sm.session(c) is not None for c in (1, 2, 3))
    sm.close()


def test_a_lowered_limit_expires_the_least_recently_used_sessions_and_is_kept(tmp_path):
    sm = KVStateMachine(str(tmp_path / "kv.db"), max_sessions=10)
    for index in (1, 2, 3):  # sessions 1, 2 and 3
        sm.apply(Entry(index, 1, register_command().encode()))
    sm.apply(Entry(4, 1, Command(PUT, 1, 1, b"k", b"v").encode()))  # 2 is the least recent now
    sm.apply(Entry(5, 1, max_sessions_command(2).encode()))
    assert [sm.session(c) is not None for c in (1, 2, 3)] == [True, False, True]
    sm.close()
    sm = KVStateMachine(str(tmp_path / "kv.db"), max_sessions=10)  # the log's limit wins
    assert sm.max_sessions == 2 and sm.session(2) is None
    sm.close()
    with pytest.raises(ValueError):
        max_sessions_command(0)


RESTORE_CHILD = """
import contextlib, os, sys
from keyval.kv import state
state.RESTORE_BATCH_BYTES = 2048  # many transactions, each a chance to be killed between
sm = state.KVStateMachine(sys.argv[1])
update = sm._db.update

@contextlib.contextmanager
def reporting_update():
    with update() as tx:
        yield tx
    os.write(1, b"committed\\n")

sm._db.update = reporting_update
sm.restore(open(sys.argv[2], "rb").read())
os.write(1, b"done\\n")
"""


def test_a_crash_while_restoring_leaves_the_old_state_or_a_marked_one(tmp_path):
    """restore() writes a big snapshot in several transactions: killed at any point, the DB
    reopens at its old state, or whole at the new one, or marked as being restored
    (applied_index 0, so the node restores its snapshot again), and restoring again then
    gives the new state exactly."""
    source = KVStateMachine(str(tmp_path / "source.db"))
    for i in range(1, 401):
        source.apply(Entry(i, 1, Command(PUT, 0, 0, b"new%d" % i, b"n" * 100).encode()))
    snapshot = tmp_path / "snapshot"
    snapshot.write_bytes(bytes(source.snapshot()))
    source.close()
    new = {b"new%d" % i: b"n" * 100 for i in range(1, 401)}
    rng = random.Random(5)
    outcomes = set()
    for round_ in range(8):
        path = str(tmp_path / f"kv{round_}.db")
        old = KVStateMachine(path)
        for i in range(1, 6):
            old.apply(Entry(i, 1, Command(PUT, 0, 0, b"old%d" % i, b"o").encode()))
        old.close()
        args = [sys.executable, "-c", RESTORE_CHILD, path, str(snapshot)]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE)
        for _ in range(rng.randrange(0, 30)):
            if proc.stdout.readline() in (b"", b"done\n"):
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        sm = KVStateMachine(path)
        if sm.applied_index == 5:
            outcomes.add("old")
            assert sm.get(b"old3") == b"o" and sm.get(b"new1") is None
        elif sm.applied_index == 400:
            outcomes.add("new")
            assert all(sm.get(k) == v for k, v in new.items()) and sm.get(b"old3") is None
        else:
            assert sm.applied_index == 0, sm.applied_index
            outcomes.add("marked")
            sm.restore(snapshot.read_bytes())
            assert sm.applied_index == 400 and sm.get(b"new400") == new[b"new400"]
            assert sm.get(b"old3") is None
        sm.close()
    assert "marked" in outcomes  # the kill landed between transactions at least once


def test_a_node_restores_its_snapshot_again_over_a_restore_cut_short(tmp_path):
    """The other half of the marker: the Raft driver sees applied index 0 and restores the
    snapshot it saved before the restore began."""
    source = KVStateMachine(str(tmp_path / "source.db"))
    for i in range(1, 201):
        source.apply(Entry(i, 1, Command(PUT, 0, 0, b"k%d" % i, b"v" * 100).encode()))
    data = bytes(source.snapshot())
    source.close()
    with RaftStorage(str(tmp_path / "raft"), segment_size=SEGMENT) as storage:
        storage.save_snapshot(Snapshot(200, 1, data))
        sm = KVStateMachine(str(tmp_path / "kv.db"))
        update, commits = sm._db.update, []

        @contextlib.contextmanager
        def failing_update():  # the machine dies after the third transaction
            if len(commits) == 3:
                raise OSError("killed")
            with update() as tx:
                yield tx
            commits.append(1)

        sm._db.update = failing_update
        with mock.patch.object(state, "RESTORE_BATCH_BYTES", 1024), pytest.raises(OSError):
            sm.restore(data)
        sm.close(flush=False)
        sm = KVStateMachine(str(tmp_path / "kv.db"))
        assert sm.applied_index == 0 and sm.get(b"k200") is None
        node = Node(Config(id=1, peers=(1, 2, 3)), storage, sm, send=lambda m: None)
        assert node.applied == 200 and sm.applied_index == 200
        assert all(sm.get(b"k%d" % i) == b"v" * 100 for i in range(1, 201))
        sm.close()


def _record(tag: int, key: bytes, value: bytes, klen=None, vlen=None) -> bytes:
    klen = len(key) if klen is None else klen
    vlen = len(value) if vlen is None else vlen
    return struct.pack("<BI", tag, klen) + key + struct.pack("<I", vlen) + value


GOOD = _record(1, b"a", b"1") + _record(1, b"b", b"2")


@pytest.mark.parametrize(
    "records",
    [
        GOOD + _record(1, b"", b"empty key"),
        GOOD + _record(1, b"k" * (32 * 1024 + 1), b"key too long"),
        GOOD + _record(2, b"short", bytes(20)),  # a session key is a u64 client id
        GOOD + _record(9, b"k", b"no such bucket"),
        GOOD + _record(1, b"k", b"", vlen=2**32 - 1),  # declares 4 GiB: never allocated
        GOOD + _record(1, b"", b"", klen=2**31),
        GOOD + b"\x01\x01",  # cut in a record's head
    ],
)
def test_a_snapshot_with_a_record_no_state_holds_is_refused_before_anything_changes(
    tmp_path, records
):
    sm = KVStateMachine(str(tmp_path / "kv.db"))
    sm.apply(Entry(1, 1, Command(PUT, 0, 0, b"mine", b"kept").encode()))
    snapshot = b"KVSNAP02" + struct.pack("<Q", 9) + records
    with mock.patch.object(state, "RESTORE_BATCH_BYTES", 1), pytest.raises(CorruptionError):
        sm.restore(snapshot)  # (one transaction per record, had it begun writing)
    assert (sm.applied_index, sm.get(b"mine"), sm.get(b"a")) == (1, b"kept", None)
    sm.close()
    sm = KVStateMachine(str(tmp_path / "kv.db"))
    assert (sm.applied_index, sm.get(b"mine"), sm.get(b"a")) == (1, b"kept", None)
    sm.close()
