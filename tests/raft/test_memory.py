"""MemoryStorage: the SPEC's RaftStorage semantics, the reference for the durable store."""

from __future__ import annotations

import pytest

from keyval.errors import ClosedError
from keyval.raft.memory import LogCompacted, LogUnavailable, MemoryStorage
from keyval.raft.records import Entry, HardState, Snapshot


def entries(lo: int, hi: int, term: int = 1) -> list[Entry]:
    return [Entry(i, term, b"%d" % i) for i in range(lo, hi)]


def test_empty_storage():
    st = MemoryStorage()
    assert (st.first_index, st.last_index, st.term(0)) == (1, 0, 0)
    assert st.hard_state() == HardState(0, 0, 0)
    assert st.snapshot() is None
    assert st.entries(1, 1) == []


def test_hard_state_round_trip():
    st = MemoryStorage()
    st.set_hard_state(HardState(term=3, vote=2, commit=10))
    assert st.hard_state() == HardState(term=3, vote=2, commit=10)


def test_a_hard_state_raft_never_writes_is_refused_and_changes_nothing():
    """As RaftStorage refuses it: the reference must answer every call alike."""
    st = MemoryStorage()
    st.set_hard_state(HardState(term=3, vote=2, commit=5))
    for bad in (HardState(2, 2, 5), HardState(3, 1, 5)):
        with pytest.raises(ValueError):
            st.set_hard_state(bad)  # a term going back; a second vote in a term
    with pytest.raises(TypeError):
        st.set_hard_state(None)
    assert st.hard_state() == HardState(term=3, vote=2, commit=5)


def test_append_and_read_back():
    st = MemoryStorage()
    st.append(entries(1, 6))
    assert st.last_index == 5
    assert st.entries(2, 4) == entries(2, 4)
    assert st.term(5) == 1
    with pytest.raises(LogUnavailable):
        st.term(6)
    with pytest.raises(LogUnavailable):
        st.entries(1, 7)


def test_append_replaces_the_suffix_from_its_first_entry():
    st = MemoryStorage()
    st.append(entries(1, 6))
    st.append(entries(3, 4, term=2))
    assert st.last_index == 3
    assert [st.term(i) for i in (1, 2, 3)] == [1, 1, 2]


def test_append_refuses_gaps_and_non_consecutive_entries():
    st = MemoryStorage()
    st.append(entries(1, 3))
    with pytest.raises(ValueError):
        st.append(entries(5, 6))
    with pytest.raises(ValueError):
        st.append([Entry(3, 1), Entry(5, 1)])


def test_snapshot_compacts_entries_up_to_its_index_and_keeps_matching_tail():
    st = MemoryStorage()
    st.append(entries(1, 11))
    st.save_snapshot(Snapshot(6, 1, b"state"))
    assert (st.first_index, st.last_index, st.term(6)) == (7, 10, 1)
    assert st.entries(7, 11) == entries(7, 11)
    with pytest.raises(LogCompacted):
        st.entries(6, 8)
    with pytest.raises(LogCompacted):
        st.term(5)
    with pytest.raises(LogCompacted):
        st.append(entries(5, 6))
    assert st.snapshot() == Snapshot(6, 1, b"state")


def test_snapshot_not_matching_the_log_replaces_it():
    st = MemoryStorage()
    st.append(entries(1, 11))
    st.save_snapshot(Snapshot(8, 3, b"leader's"))
    assert (st.first_index, st.last_index, st.term(8)) == (9, 8, 3)
    st.append(entries(9, 10, term=3))
    assert st.last_index == 9


def test_snapshot_beyond_the_log_and_older_snapshot_refused():
    st = MemoryStorage()
    st.append(entries(1, 3))
    st.save_snapshot(Snapshot(20, 4))
    assert (st.first_index, st.last_index) == (21, 20)
    with pytest.raises(ValueError):
        st.save_snapshot(Snapshot(10, 4))


def test_closed_storage_raises():
    st = MemoryStorage()
    st.close()
    with pytest.raises(ClosedError):
        st.hard_state()
