"""DBLogStorage (the Raft log in a keyval.db bucket): bad input and use after close. Its
model-based test against MemoryStorage is shared with RaftStorage in test_model.py."""

import pytest

from keyval import errors
from keyval.raft.dblog import DBLogStorage
from keyval.raft.records import Entry, HardState, Snapshot


def test_bad_input_raises_and_writes_nothing(tmp_path):
    with DBLogStorage(tmp_path) as st_:
        st_.save(HardState(2, 1, 0), [Entry(1, 1, b"a"), Entry(2, 2, b"b")])
        with pytest.raises(TypeError):
            st_.append([Entry(3, 2, "text")])
        with pytest.raises(ValueError):
            st_.append([Entry(3, 2), Entry(5, 2)])
        with pytest.raises(ValueError):
            st_.append([Entry(3, 1)])  # term below the entry before it
        with pytest.raises(ValueError):
            st_.set_hard_state(HardState(1, 0, 0))  # term goes back
        with pytest.raises(ValueError):
            st_.set_hard_state(HardState(2, 3, 0))  # a second vote in one term
        with pytest.raises(TypeError):
            st_.save_snapshot(Snapshot(1, 1, "text"))
    with DBLogStorage(tmp_path) as st_:
        assert st_.hard_state() == HardState(2, 1, 0)
        assert st_.entries(1, 3) == [Entry(1, 1, b"a"), Entry(2, 2, b"b")]


def test_use_after_close_raises_closed_error(tmp_path):
    st_ = DBLogStorage(tmp_path)
    st_.close()
    with pytest.raises(errors.ClosedError):
        st_.append([Entry(1, 1)])
    with pytest.raises(errors.ClosedError):
        st_.entries(1, 1)
