"""RaftStorage against the in-memory reference (MemoryStorage) under random operations:
appends with conflicts, hard-state changes, snapshots with compaction, reopen at any step."""

import os
import shutil
import tempfile

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from keyval.raft.memory import MemoryStorage
from keyval.raft.records import Entry, HardState, Snapshot
from keyval.raft.storage import RaftStorage

SEGMENT = 4096  # tiny WAL segments: compaction deletes whole segments often


class StorageModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="raft-model-")
        self.real = RaftStorage(self.dir, segment_size=SEGMENT)
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
        entries = [Entry(start + i, term, os.urandom(2) + b"d" * (size % 97)) for i in range(count)]
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

    @rule(both=st.data())
    def save_entries_and_hard_state_together(self, both):
        m = self.model
        start = m.last_index + 1
        term = max(m.term(start - 1), m.hard_state().term, 1)
        entries = [Entry(start, term, b"x")]
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
        # a follower installing a snapshot that its log does not match
        m = self.model
        index = data.draw(st.integers(max(m.first_index, 1), m.last_index + 5))
        snap = Snapshot(index, self.max_term + 1, payload)
        self.max_term += 1
        self.real.save_snapshot(snap)
        m.save_snapshot(snap)

    @rule()
    def reopen(self):
        self.real.close()
        self.real = RaftStorage(self.dir, segment_size=SEGMENT)

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


StorageModel.TestCase.settings = settings(
    max_examples=int(os.environ.get("KEYVAL_MODEL_EXAMPLES", "40")),
    stateful_step_count=30,
    deadline=None,
)
test_storage_matches_memory_model = StorageModel.TestCase
