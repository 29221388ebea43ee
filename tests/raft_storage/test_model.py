"""The durable Raft stores against the in-memory reference (MemoryStorage) under random
operations: appends with conflicts, hard state alone and with entries, snapshots inside and
across the log, reads below and past the log, ``max_bytes``, reopen at any step. The same
state machine runs on RaftStorage (the log on the WAL) and DBLogStorage (the log in a
keyval.db bucket, the benchmark's comparison backend)."""

import os
import shutil
import tempfile

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from keyval import errors
from keyval.raft.dblog import DBLogStorage
from keyval.raft.memory import MemoryStorage
from keyval.raft.records import Entry, HardState, Snapshot
from keyval.raft.storage import RaftStorage

SEGMENT = 4096  # tiny WAL segments: compaction deletes whole segments often
EXAMPLES = int(os.environ.get("KEYVAL_MODEL_EXAMPLES", "40"))


class StoreModel(RuleBasedStateMachine):
    """One Raft store against MemoryStorage; subclasses say which store."""

    @staticmethod
    def open_store(path: str):
        raise NotImplementedError

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="raft-model-")
        self.real = self.open_store(self.dir)
        self.model = MemoryStorage()
        self.max_term = 1

    def teardown(self):
        self.real.close()
        shutil.rmtree(self.dir)

    @rule(data=st.data(), count=st.integers(1, 12), size=st.integers(0, 300))
    def append(self, data, count, size):
        m = self.model
        start = data.draw(st.integers(m.first_index, m.last_index + 1), label="start")
        low = m.term(start - 1) or 1
        term = data.draw(st.integers(low, max(self.max_term, low) + 1), label="term")
        self.max_term = max(self.max_term, term)
        entries = [Entry(start + i, term, os.urandom(2) + b"d" * size) for i in range(count)]
        self.real.append(entries)
        m.append(entries)

    @rule(bump=st.booleans(), vote=st.integers(0, 5), commit=st.integers(0, 50))
    def set_hard_state(self, bump, vote, commit):
        cur = self.model.hard_state()
        term = cur.term + 1 if bump else cur.term
        vote = vote if (bump or not cur.vote) else cur.vote
        hs = HardState(term, vote, commit)
        self.max_term = max(self.max_term, term)
        self.real.set_hard_state(hs)
        self.model.set_hard_state(hs)

    @rule(count=st.integers(1, 5))
    def save_entries_and_hard_state_together(self, count):
        m = self.model
        start = m.last_index + 1
        term = max(m.term(start - 1), m.hard_state().term, 1)
        entries = [Entry(start + i, term, b"x" * i) for i in range(count)]
        hs = HardState(term, m.hard_state().vote if term == m.hard_state().term else 0, start)
        self.real.save(hard_state=hs, entries=entries)
        m.append(entries)
        m.set_hard_state(hs)

    @precondition(lambda self: self.model.last_index >= self.model.first_index)
    @rule(data=st.data(), payload=st.binary(max_size=2000))
    def snapshot_inside_the_log(self, data, payload):
        m = self.model
        index = data.draw(st.integers(m.first_index, m.last_index))
        snap = Snapshot(index, m.term(index), payload)
        self.real.save_snapshot(snap)
        m.save_snapshot(snap)

    @rule(data=st.data(), payload=st.binary(max_size=100))
    def snapshot_from_a_leader_past_or_across_the_log(self, data, payload):
        m = self.model
        index = data.draw(st.integers(max(m.first_index, 1), m.last_index + 5))
        snap = Snapshot(index, self.max_term + 1, payload)
        self.max_term += 1
        self.real.save_snapshot(snap)
        m.save_snapshot(snap)

    @precondition(lambda self: self.model.first_index > 1)
    @rule(data=st.data())
    def compacted_reads_and_appends_raise_log_compacted(self, data):
        m = self.model
        below = data.draw(st.integers(0, m.first_index - 2), label="below")
        with pytest.raises(errors.LogCompacted):
            self.real.term(below)
        with pytest.raises(errors.LogCompacted):
            self.real.entries(m.first_index - 1, m.last_index + 1)
        with pytest.raises(errors.LogCompacted):
            self.real.append([Entry(m.first_index - 1, self.max_term, b"")])
        with pytest.raises(IndexError):  # MemoryStorage agrees (its own IndexError classes)
            m.term(below)

    @rule(past=st.integers(1, 3))
    def reads_past_the_log_raise_log_unavailable(self, past):
        m = self.model
        with pytest.raises(errors.LogUnavailable):
            self.real.term(m.last_index + past)
        with pytest.raises(errors.LogUnavailable):
            self.real.entries(m.first_index, m.last_index + 1 + past)
        with pytest.raises(ValueError):
            self.real.append([Entry(m.last_index + 1 + past, self.max_term, b"")])
        with pytest.raises(IndexError):
            m.term(m.last_index + past)

    @precondition(lambda self: self.model.last_index >= self.model.first_index)
    @rule(max_bytes=st.integers(0, 600))
    def max_bytes_returns_the_shortest_prefix_reaching_it(self, max_bytes):
        m = self.model
        everything = m.entries(m.first_index, m.last_index + 1)
        expected, size = [], 0
        for e in everything:
            expected.append(e)
            size += len(e.data)
            if size >= max_bytes:
                break
        assert self.real.entries(m.first_index, m.last_index + 1, max_bytes) == expected

    @rule()
    def reopen(self):
        self.real.close()
        self.real = self.open_store(self.dir)

    @invariant()
    def same_observable_state(self):
        r, m = self.real, self.model
        assert (r.first_index, r.last_index) == (m.first_index, m.last_index)
        assert r.hard_state() == m.hard_state()
        assert r.snapshot() == m.snapshot()
        for i in range(m.first_index - 1, m.last_index + 1):
            assert r.term(i) == m.term(i), i
        assert r.entries(m.first_index, m.last_index + 1) == m.entries(
            m.first_index, m.last_index + 1
        )


class RaftStorageModel(StoreModel):
    @staticmethod
    def open_store(path: str) -> RaftStorage:
        return RaftStorage(path, segment_size=SEGMENT)


class DBLogModel(StoreModel):
    @staticmethod
    def open_store(path: str) -> DBLogStorage:
        return DBLogStorage(path)


for machine in (RaftStorageModel, DBLogModel):
    machine.TestCase.settings = settings(
        max_examples=EXAMPLES, stateful_step_count=30, deadline=None
    )
test_raft_storage_matches_memory_model = RaftStorageModel.TestCase
test_dblog_matches_memory_model = DBLogModel.TestCase
