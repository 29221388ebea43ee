"""The log against a reference model (a list) under random operations, reopens included."""

import os
import shutil
import tempfile

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from keyval.wal import WAL

SEGMENT = 1024  # tiny: operations cross segment boundaries constantly
payloads = st.binary(max_size=300)


class LogModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="wal-model-")
        self.sync = "none"
        self.wal = WAL(os.path.join(self.dir, "log"), segment_size=SEGMENT, sync=self.sync)
        self.front = 1  # model: records[i] has seq front + i
        self.records: list[tuple[int, bytes]] = []
        self.next_seq = 1

    def teardown(self):
        self.wal.close()
        shutil.rmtree(self.dir)

    @property
    def last(self) -> int:
        return self.front + len(self.records) - 1

    @rule(data=payloads, type=st.integers(0, 255))
    def append(self, data, type):
        assert self.wal.append(data, type=type) == self.next_seq
        if not self.records:
            self.front = self.next_seq
        self.records.append((type, data))
        self.next_seq += 1

    @rule(batch=st.lists(payloads, min_size=1, max_size=20), type=st.integers(0, 255))
    def append_many(self, batch, type):
        first, last = self.wal.append_many(batch, type=type)
        assert (first, last) == (self.next_seq, self.next_seq + len(batch) - 1)
        if not self.records:
            self.front = self.next_seq
        self.records.extend((type, d) for d in batch)
        self.next_seq += len(batch)

    @rule()
    def sync(self):
        self.wal.sync()

    @precondition(lambda self: self.records)
    @rule(data=st.data())
    def truncate_back(self, data):
        seq = data.draw(st.integers(self.front - 1, self.last))
        self.wal.truncate_back(seq)
        del self.records[seq + 1 - self.front :]
        self.next_seq = seq + 1

    @precondition(lambda self: self.records)
    @rule(data=st.data())
    def truncate_front(self, data):
        seq = data.draw(st.integers(self.front, self.last + 1))
        self.wal.truncate_front(seq)
        del self.records[: seq - self.front]
        self.front = seq

    @rule(sync=st.sampled_from(["none", "always"]))
    def reopen(self, sync):
        self.wal.close()
        self.wal = WAL(os.path.join(self.dir, "log"), segment_size=SEGMENT, sync=sync)

    @precondition(lambda self: self.records)
    @rule(data=st.data())
    def read_any(self, data):
        seq = data.draw(st.integers(self.front, self.last))
        assert self.wal.read(seq) == self.records[seq - self.front][1]

    @precondition(lambda self: self.records)
    @rule(data=st.data())
    def replay_from_any_start(self, data):
        start = data.draw(st.integers(self.front, self.last + 1))
        expected = [
            (start + i, t, d) for i, (t, d) in enumerate(self.records[start - self.front :])
        ]
        assert list(self.wal.replay(start)) == expected

    @invariant()
    def bounds_match(self):
        if self.records:
            assert (self.wal.first_seq, self.wal.last_seq) == (self.front, self.last)
        else:
            assert (self.wal.first_seq, self.wal.last_seq) == (0, 0)
        assert self.wal.next_seq == self.next_seq


LogModel.TestCase.settings = settings(
    max_examples=int(os.environ.get("KEYVAL_MODEL_EXAMPLES", "60")),
    stateful_step_count=40,
    deadline=None,
)
test_log_matches_model = LogModel.TestCase
