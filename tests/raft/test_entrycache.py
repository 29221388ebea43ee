"""The entry cache answers every read exactly as the storage under it would.

Random sequences of appends (some replacing a suffix of the log), snapshots with compaction,
and reads of every kind run against a real RaftStorage; after each step every ``term`` and
``entries`` read over the whole range (and past both ends) must equal the storage's own
answer, errors included. Small cache bounds make eviction happen all the time.
"""

from __future__ import annotations

import random

import pytest

from keyval.errors import KeyvalError
from keyval.raft.entrycache import EntryCache
from keyval.raft.records import Entry, Snapshot
from keyval.raft.storage import RaftStorage

SEGMENT = 2**20  # 1 MiB WAL segments, not 64: each open log writes its next one out ahead


def _read(fn, *args):
    try:
        return ("ok", fn(*args))
    except KeyvalError as exc:
        return ("error", type(exc))


def _check_reads(cache: EntryCache, st: RaftStorage) -> None:
    lo, hi = st.first_index - 2, st.last_index + 2
    for i in range(max(lo, 0), hi + 1):
        assert _read(cache.term, i) == _read(st.term, i), i
    for a in range(max(lo, 1), hi + 1):
        for b in range(a, min(hi, a + 12) + 1):
            for max_bytes in (None, 1, 25, 10_000):
                assert _read(cache.entries, a, b, max_bytes) == _read(
                    st.entries, a, b, max_bytes
                ), (a, b, max_bytes)


@pytest.mark.parametrize("seed", range(6))
def test_reads_match_the_storage(tmp_path, seed: int) -> None:
    rng = random.Random(seed)
    st = RaftStorage(str(tmp_path / "raft"), segment_size=SEGMENT)
    cache = EntryCache(st, max_entries=rng.choice([3, 7, 50]), max_bytes=rng.choice([40, 10_000]))
    term = 1
    try:
        for _ in range(40):
            action = rng.random()
            if action < 0.7 or st.last_index < st.first_index:
                # Append, or replace a suffix (as a follower does on a conflict).
                start = rng.randint(max(st.first_index, st.last_index - 3), st.last_index + 1)
                if start <= st.last_index:
                    term += 1
                n = rng.randint(1, 5)
                entries = [
                    Entry(start + k, term, rng.randbytes(rng.randint(0, 20))) for k in range(n)
                ]
                st.append(entries)
                cache.wrote(entries)
            else:
                # Compaction at an index that keeps the log after it (what a node does).
                index = rng.randint(st.first_index, st.last_index)
                st.save_snapshot(Snapshot(index, st.term(index), b"state"))
                if rng.random() < 0.5:
                    cache.clear()
            _check_reads(cache, st)
    finally:
        st.close()


def test_served_from_memory(tmp_path) -> None:
    """Entries just written are read without touching the storage's entries()."""
    st = RaftStorage(str(tmp_path / "raft"), segment_size=SEGMENT)
    try:
        entries = [Entry(i, 1, b"x%d" % i) for i in range(1, 6)]
        st.append(entries)
        cache = EntryCache(st)
        cache.wrote(entries)

        class NoReads:
            first_index = st.first_index
            last_index = st.last_index

            def entries(self, *args):
                raise AssertionError("read from the storage")

        cache.storage = NoReads()
        assert cache.entries(2, 5) == entries[1:4]
        assert cache.entries(1, 6, max_bytes=5) == entries[:3]
    finally:
        st.close()


def test_a_snapshot_that_drops_the_log(tmp_path) -> None:
    """After a snapshot past the log's end (a follower catching up), the old entries are not
    served, and entries written after it are."""
    st = RaftStorage(str(tmp_path / "raft"), segment_size=SEGMENT)
    try:
        cache = EntryCache(st)
        old = [Entry(i, 1, b"old") for i in range(1, 4)]
        st.append(old)
        cache.wrote(old)
        st.save_snapshot(Snapshot(10, 2, b"state"))
        cache.clear()
        _check_reads(cache, st)
        new = [Entry(11, 2, b"new"), Entry(12, 2, b"new")]
        st.append(new)
        cache.wrote(new)
        assert cache.entries(11, 13) == new
        _check_reads(cache, st)
    finally:
        st.close()
