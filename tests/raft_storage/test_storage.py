"""RaftStorage behaviours one at a time: empty state, durability points, compaction, snapshot
retention, recovery leftovers, and bad input that must change nothing."""

import os

import pytest

from keyval.errors import ClosedError, CorruptionError, LogCompacted, LogUnavailable
from keyval.raft import snapfile
from keyval.raft.records import Entry, HardState, Snapshot
from keyval.raft.storage import ENTRY, HARD_STATE, SNAPSHOT, RaftStorage
from keyval.wal import WAL

SEGMENT = 8192


def ents(start, end, term=1):
    return [Entry(i, term, b"data-%d" % i) for i in range(start, end + 1)]


@pytest.fixture
def node(tmp_path):
    with RaftStorage(str(tmp_path / "node"), segment_size=SEGMENT) as st:
        yield st


def segments(st) -> int:
    return sum(n.endswith(".wal") for n in os.listdir(os.path.join(st.path, "wal")))


def reopen(st):
    st.close()
    return RaftStorage(st.path, segment_size=SEGMENT)


def test_empty_storage(node):
    assert (node.first_index, node.last_index, node.term(0)) == (1, 0, 0)
    assert node.hard_state() == HardState(0, 0, 0)
    assert node.snapshot() is None
    assert node.entries(1, 1) == []


def test_append_then_read_back_after_reopen(node):
    node.append(ents(1, 200))
    node = reopen(node)
    assert node.entries(1, 201) == ents(1, 200)
    assert node.entries(100, 102) == ents(100, 101)
    assert node.term(200) == 1
    node.close()


def test_a_conflicting_entry_replaces_the_suffix_durably(node):
    node.append(ents(1, 50, term=1))
    node.append([Entry(30, 2, b"new")])
    assert node.last_index == 30
    node = reopen(node)
    assert node.last_index == 30
    assert node.entries(29, 31) == [Entry(29, 1, b"data-29"), Entry(30, 2, b"new")]
    node.close()


def test_entries_can_stop_at_a_byte_budget(node):
    node.append(ents(1, 100))
    got = node.entries(1, 101, max_bytes=50)
    assert 1 <= len(got) < 100 and got == ents(1, len(got))


def test_hard_state_survives_reopen_and_a_vote_is_kept(node):
    node.set_hard_state(HardState(5, 3, 0))
    node = reopen(node)
    assert node.hard_state() == HardState(5, 3, 0)
    with pytest.raises(ValueError, match="already voted"):
        node.set_hard_state(HardState(5, 2, 0))
    with pytest.raises(ValueError, match="go back"):
        node.set_hard_state(HardState(4, 0, 0))
    assert node.hard_state() == HardState(5, 3, 0)
    with pytest.raises(TypeError):
        node.set_hard_state(None)  # wrote nothing and said nothing
    node.close()


def test_snapshot_compacts_the_log_and_term_at_its_index_still_answers(node):
    node.append(ents(1, 300, term=2))
    files_before = segments(node)
    node.save_snapshot(Snapshot(250, 2, b"state"))
    assert (node.first_index, node.last_index, node.term(250)) == (251, 300, 2)
    with pytest.raises(LogCompacted):
        node.entries(250, 252)
    with pytest.raises(LogCompacted):
        node.term(249)
    with pytest.raises(LogUnavailable):
        node.term(301)
    assert segments(node) < files_before
    node = reopen(node)
    assert (node.first_index, node.last_index, node.term(250)) == (251, 300, 2)
    assert node.snapshot() == Snapshot(250, 2, b"state")
    node.close()


def test_a_snapshot_that_does_not_match_the_log_replaces_all_of_it(node):
    node.append(ents(1, 20, term=1))
    node.save_snapshot(Snapshot(10, 3, b"from the leader"))
    assert (node.first_index, node.last_index) == (11, 10)
    node = reopen(node)
    assert (node.first_index, node.last_index, node.term(10)) == (11, 10, 3)
    node.close()


def test_only_the_newest_two_snapshots_are_kept(node):
    node.append(ents(1, 100))
    for index in (10, 20, 30, 40):
        node.save_snapshot(Snapshot(index, 1, b"s%d" % index))
    names = sorted(os.listdir(os.path.join(node.path, "snap")))
    assert [snapfile.parse_name(n)[0] for n in names] == [30, 40]


def test_a_half_written_snapshot_is_ignored_and_removed(node):
    node.append(ents(1, 10))
    node.save_snapshot(Snapshot(5, 1, b"real"))
    snap_dir = os.path.join(node.path, "snap")
    leftover = os.path.join(snap_dir, snapfile.file_name(9, 1) + ".tmp")
    unrecorded = os.path.join(snap_dir, snapfile.file_name(8, 1))
    with open(leftover, "wb") as f:
        f.write(b"partial")
    snapfile.write(snap_dir, Snapshot(8, 1, b"never recorded"))  # crash before its WAL record
    node = reopen(node)
    assert node.snapshot() == Snapshot(5, 1, b"real")
    assert not os.path.exists(leftover) and not os.path.exists(unrecorded)
    node.close()


def test_a_staged_snapshot_is_in_force_only_once_saved(node):
    node.append(ents(1, 100))
    node.save_snapshot(Snapshot(10, 1, b"old"))
    staged = Snapshot(60, 1, b"staged")
    node.stage_snapshot(staged)
    node.append(ents(101, 120))  # staging took no lock: the log goes on meanwhile
    assert node.snapshot() == Snapshot(10, 1, b"old") and node.first_index == 11
    node.save_snapshot(staged, staged=True)
    assert node.snapshot() == staged and (node.first_index, node.last_index) == (61, 120)
    node = reopen(node)
    assert node.snapshot() == staged and node.entries(61, 121) == ents(61, 120)
    node.close()


def test_a_staged_snapshot_left_by_a_crash_or_discarded_is_removed(node):
    node.append(ents(1, 100))
    node.save_snapshot(Snapshot(10, 1, b"old"))
    path = os.path.join(node.path, "snap", snapfile.file_name(50, 1))
    node.stage_snapshot(Snapshot(50, 1, b"discarded"))
    node.discard_staged(Snapshot(50, 1, b"discarded"))
    assert not os.path.exists(path)
    node.discard_staged(Snapshot(10, 1, b"old"))  # the one in force stays
    node.stage_snapshot(Snapshot(50, 1, b"crash before it is saved"))
    node = reopen(node)
    assert node.snapshot() == Snapshot(10, 1, b"old") and node.first_index == 11
    assert not os.path.exists(path)
    with pytest.raises(ValueError, match="staged"):  # nothing staged: nothing to put in force
        node.save_snapshot(Snapshot(50, 1, b"x"), staged=True)
    with pytest.raises(ValueError):  # not newer than the one in force: nothing written
        node.stage_snapshot(Snapshot(10, 1, b"again"))
    assert sorted(os.listdir(os.path.join(node.path, "snap"))) == [snapfile.file_name(10, 1)]
    node.close()


def test_saving_a_snapshot_keeps_it_while_newer_ones_are_staged(node):
    node.append(ents(1, 100))
    node.save_snapshot(Snapshot(10, 1, b"old"))
    node.stage_snapshot(Snapshot(50, 1, b"staged a"))
    node.stage_snapshot(Snapshot(60, 1, b"staged b"))
    node.save_snapshot(Snapshot(20, 1, b"in force"))
    assert node.snapshot() == Snapshot(20, 1, b"in force")
    node = reopen(node)  # the staged ones go; the one in force stays
    assert node.snapshot() == Snapshot(20, 1, b"in force")
    names = sorted(os.listdir(os.path.join(node.path, "snap")))
    assert names == [snapfile.file_name(10, 1), snapfile.file_name(20, 1)]
    node.close()


@pytest.mark.parametrize(
    "kind, payload, message",
    [
        (ENTRY, b"short", "shorter than its header"),
        (ENTRY, bytes(16) + b"data", "index 0, term 0"),  # would wipe the log as "compacted"
        (HARD_STATE, b"\x01" * 8, "hard state"),
        (SNAPSHOT, b"\x01" * 4, "snapshot marker"),
    ],
)
def test_a_record_keyval_could_not_have_written_is_corruption(tmp_path, kind, payload, message):
    path = str(tmp_path / "node")
    with RaftStorage(path, segment_size=SEGMENT) as st:
        st.append(ents(1, 5))
    with WAL(os.path.join(path, "wal"), segment_size=SEGMENT) as wal:
        wal.append(payload, type=kind)  # its checksum holds: only its contents are wrong
    with pytest.raises(CorruptionError, match=message) as info:
        RaftStorage(path, segment_size=SEGMENT)
    assert info.value.path == os.path.join(path, "wal")


@pytest.mark.parametrize(
    "bucket, key, message",
    [(b"meta", b"hard_state", "hard state"), (b"snapshot", b"latest", "snapshot/latest")],
)
def test_a_raft_db_value_of_the_wrong_size_is_corruption(tmp_path, bucket, key, message):
    from keyval.db import DB

    path = str(tmp_path / "node")
    with RaftStorage(path, segment_size=SEGMENT) as st:
        st.append(ents(1, 5))
        st.set_hard_state(HardState(1, 1, 3))
    with DB(os.path.join(path, "raft.db")) as db, db.update() as tx:
        tx.create_bucket(bucket, exist_ok=True).put(key, b"junk")
    with pytest.raises(CorruptionError, match=message) as info:
        RaftStorage(path, segment_size=SEGMENT)
    assert info.value.path == os.path.join(path, "raft.db")


def test_a_corrupt_snapshot_file_is_reported_with_its_path(node):
    node.append(ents(1, 10))
    node.save_snapshot(Snapshot(5, 1, b"x" * 1000))
    path = os.path.join(node.path, "snap", snapfile.file_name(5, 1))
    with open(path, "r+b") as f:
        f.seek(500)
        f.write(b"!")
    with pytest.raises(CorruptionError) as info:
        node.snapshot()
    assert info.value.path == path


def test_a_batch_cut_short_by_a_crash_never_keeps_entries_without_their_term(tmp_path):
    # save() wrote the entries first and the hard state last; a batch bigger than a segment
    # spans several, and a crash may keep only a prefix: entries of term 2 came back with
    # the hard state still at term 1.
    path = str(tmp_path / "node")
    with RaftStorage(path, segment_size=16 * 1024) as st:
        st.set_hard_state(HardState(1, 1, 0))
        st.save(HardState(2, 0, 0), [Entry(i, 2, b"x" * 500) for i in range(1, 91)])
        last = st._wal.segments()[-1]
    assert last["first_seq"] > 2  # the batch spans segments
    with open(last["path"], "r+b") as f:  # the crash: the last segment never reached the disk
        f.seek(64)
        f.write(bytes(last["file_size"] - 64))
    with RaftStorage(path, segment_size=16 * 1024) as st:
        assert 0 < st.last_index < 90
        assert st.hard_state().term == 2 and st.term(st.last_index) == 2
        assert st.hard_state().commit == 0


def test_another_snapshots_file_under_the_name_of_the_one_in_force_is_corruption(node):
    # A whole, valid file of the snapshot at 10 copied over the one at 20 was returned as is:
    # a node would have restored the state at 10 and applied the log from 21.
    node.append(ents(1, 30))
    node.save_snapshot(Snapshot(10, 1, b"state@10"))
    older = os.path.join(node.path, "snap", snapfile.file_name(10, 1))
    with open(older, "rb") as f:
        copy = f.read()
    node.save_snapshot(Snapshot(20, 1, b"state@20"))
    path = os.path.join(node.path, "snap", snapfile.file_name(20, 1))
    with open(path, "wb") as f:
        f.write(copy)
    with pytest.raises(CorruptionError) as info:
        node.snapshot()
    assert info.value.path == path and "index 10" in str(info.value)


@pytest.mark.parametrize(
    "bad, error",
    [
        ([Entry(1, 1), Entry(3, 1)], ValueError),  # not contiguous
        ([Entry(0, 1)], ValueError),  # index 0
        ([Entry(11, 1), Entry(12, 0)], ValueError),  # term 0
        ([Entry(11, 2), Entry(12, 1)], ValueError),  # term going backwards in the batch
        ([Entry(11, 1, "text")], TypeError),  # data not bytes
        ([(11, 1, b"x")], TypeError),  # not an Entry
        ([Entry(13, 3)], ValueError),  # gap after last_index
        ([None], TypeError),  # not an Entry, first
        ([Entry(11, 2**64)], ValueError),  # a term past u64
    ],
)
def test_bad_entries_are_refused_and_write_nothing(node, bad, error):
    node.append(ents(1, 10, term=2))
    wal_before = node._wal.next_seq
    with pytest.raises(error):
        node.append(bad)
    assert node.last_index == 10 and node._wal.next_seq == wal_before


def test_values_past_u64_are_refused_and_write_nothing(node):
    node.append(ents(1, 10))
    with pytest.raises(ValueError):
        node.set_hard_state(HardState(2**64, 0, 0))
    with pytest.raises(ValueError):
        node.save_snapshot(Snapshot(2**64, 1, b"s"))
    assert node.hard_state() == HardState() and node.snapshot() is None
    assert os.listdir(os.path.join(node.path, "snap")) == []


def test_an_entry_below_the_previous_term_is_refused(node):
    node.append(ents(1, 10, term=3))
    with pytest.raises(ValueError, match="term"):
        node.append([Entry(11, 2)])


def test_a_snapshot_older_than_the_current_one_is_refused(node):
    node.append(ents(1, 20))
    node.save_snapshot(Snapshot(15, 1, b"new"))
    with pytest.raises(ValueError, match="older"):
        node.save_snapshot(Snapshot(10, 1, b"old"))
    assert node.snapshot() == Snapshot(15, 1, b"new")


def test_appending_below_the_snapshot_is_refused(node):
    node.append(ents(1, 20))
    node.save_snapshot(Snapshot(15, 1, b"s"))
    with pytest.raises(LogCompacted):
        node.append([Entry(10, 1)])


def test_use_after_close_raises(node):
    node.close()
    with pytest.raises(ClosedError):
        node.append(ents(1, 1))
    with pytest.raises(ClosedError):
        node.hard_state()
