"""Round trips through the log: append, read, replay, rotation, truncation, reopen."""

import pytest

from keyval.errors import ClosedError, ValueTooLarge
from keyval.wal import WAL
from keyval.wal.log import RECORD_OVERHEAD, FramedRecords

from .conftest import SMALL_SEGMENT, payload, segment_files


def test_empty_log_has_no_records(wal_dir):
    with WAL(wal_dir, segment_size=SMALL_SEGMENT) as wal:
        assert (wal.first_seq, wal.last_seq, wal.next_seq) == (0, 0, 1)
        assert list(wal.replay()) == []
        with pytest.raises(IndexError):
            wal.read(1)


def test_sequence_numbers_are_consecutive_from_one(small_wal):
    assert [small_wal.append(payload(i)) for i in range(1, 6)] == [1, 2, 3, 4, 5]
    assert small_wal.append_many([b"a", b"b", b"c"]) == (6, 8)
    assert (small_wal.first_seq, small_wal.last_seq) == (1, 8)


def test_read_returns_every_record_including_empty_ones(small_wal):
    for i in range(1, 300):
        small_wal.append(payload(i), type=i % 256)
    for i in range(1, 300):
        assert small_wal.read(i) == payload(i)
    assert small_wal.read(37) == b""


def test_replay_yields_seq_type_payload_in_order_from_any_start(small_wal):
    for i in range(1, 200):
        small_wal.append(payload(i), type=i % 7)
    for start in (1, 2, 99, 199):
        got = list(small_wal.replay(start))
        assert got == [(i, i % 7, payload(i)) for i in range(start, 200)]
    assert list(small_wal.replay(200)) == []
    with pytest.raises(IndexError):
        list(small_wal.replay(201))


def test_replay_batches_hold_many_empty_records_and_grow_for_a_big_one(wal_dir):
    # replay reads in batches bounded by record count and by bytes: more empty records than
    # one batch holds, a record larger than the batch buffer, and records of many sizes in
    # one batch must all come back exactly, and stop must cut at any point.
    big = bytes(range(256)) * 12_289  # 3 MiB + 256 B: past the 1 MiB batch buffer
    records = [(b"", 1)] * 20_000 + [(payload(7), 2), (big, 3)] + [(payload(9), 4)] * 5_000
    with WAL(wal_dir, segment_size=8 << 20, sync="none") as wal:
        for data, kind in records:
            wal.append(data, type=kind)
        expected = [(seq, kind, data) for seq, (data, kind) in enumerate(records, start=1)]
        assert list(wal.replay()) == expected
        for start, stop in ((1, 16_385), (16_384, 20_003), (20_002, 20_003), (19_999, None)):
            end = len(records) + 1 if stop is None else stop
            assert list(wal.replay(start, stop)) == expected[start - 1 : end - 1]


def test_replay_never_changes_a_tuple_the_caller_kept(small_wal):
    # replay's C iterator refills the tuple it handed out last if nobody else holds it (as
    # zip does): a kept one, whole or in part, must stay as it was.
    for i in range(1, 50):
        small_wal.append(payload(i), type=i % 5)
    expected = [(i, i % 5, payload(i)) for i in range(1, 50)]
    records = small_wal.replay()
    first, second = next(records), next(records)
    payloads = [p for _, _, p in records]
    assert [first, second] == expected[:2]
    assert payloads == [p for _, _, p in expected[2:]]
    kept = []
    for record in small_wal.replay():
        kept.append(record)
        record = None  # dropped and kept alternately: both paths of the iterator
    assert kept == expected


def test_framed_records_refuses_a_batch_it_cannot_read():
    # The iterator over one batch of kv_wal_read_batch: counts past its buffer are refused
    # when made, a record (or its header) running past the bytes said to be used when reached,
    # before a byte past them is read.
    with pytest.raises(ValueError):
        FramedRecords(bytearray(16), 17, 1)
    with pytest.raises(ValueError):
        FramedRecords(bytearray(16), -1, 1)
    with pytest.raises(TypeError):
        FramedRecords("not a buffer", 1, 1)
    with pytest.raises(SystemError):  # not even a record's header in the bytes used
        next(FramedRecords(bytearray(24), 8, 1))
    batch = bytearray(32)
    batch[8] = 100  # a 100-byte payload in 16 bytes
    records = FramedRecords(batch, 32, 1)
    with pytest.raises(SystemError):
        next(records)
    assert list(records) == []
    batch[8] = 3
    batch[0] = 7
    batch[12] = 9
    batch[16:19] = b"abc"
    assert list(FramedRecords(batch, 24, 1)) == [(7, 9, b"abc")]


def test_replay_refuses_bad_arguments_when_called_and_a_far_start_when_read(small_wal):
    small_wal.append(b"x")
    with pytest.raises(TypeError):
        small_wal.replay("1")
    with pytest.raises(ValueError):
        small_wal.replay(1, -1)
    records = small_wal.replay(5)
    with pytest.raises(IndexError):
        next(records)


def test_rotation_spreads_records_over_many_segments_of_bounded_size(wal_dir):
    with WAL(wal_dir, segment_size=SMALL_SEGMENT, sync="none") as wal:
        for i in range(1, 2001):
            wal.append(payload(i))
        segments = wal.segments()
    assert len(segments) > 20
    assert all(s["file_size"] == SMALL_SEGMENT for s in segments)
    assert all(s["bytes"] <= SMALL_SEGMENT for s in segments)
    assert [s["first_seq"] for s in segments] == sorted(s["first_seq"] for s in segments)
    with WAL(wal_dir, segment_size=SMALL_SEGMENT) as wal:
        assert [p for _, _, p in wal.replay()] == [payload(i) for i in range(1, 2001)]


def test_reopen_keeps_records_and_continues_numbering(wal_dir):
    with WAL(wal_dir, segment_size=SMALL_SEGMENT, sync="none") as wal:
        for i in range(1, 101):
            wal.append(payload(i))
    with WAL(wal_dir, segment_size=SMALL_SEGMENT) as wal:
        assert (wal.first_seq, wal.last_seq) == (1, 100)
        assert wal.append(b"next") == 101
        assert wal.read(100) == payload(100)


def test_truncate_back_forgets_later_records_and_reuses_their_numbers(wal_dir):
    with WAL(wal_dir, segment_size=SMALL_SEGMENT, sync="none") as wal:
        for i in range(1, 501):
            wal.append(payload(i))
        segments_before = len(wal.segments())
        wal.truncate_back(120)
        assert wal.last_seq == 120
        assert len(wal.segments()) < segments_before
        assert wal.append(b"new 121") == 121
    with WAL(wal_dir, segment_size=SMALL_SEGMENT) as wal:
        assert wal.last_seq == 121
        assert wal.read(121) == b"new 121"
        assert [p for _, _, p in wal.replay()][:120] == [payload(i) for i in range(1, 121)]


def test_truncate_back_to_zero_empties_the_log(small_wal):
    for i in range(1, 50):
        small_wal.append(payload(i))
    small_wal.truncate_back(0)
    assert (small_wal.first_seq, small_wal.last_seq) == (0, 0)
    assert small_wal.append(b"x") == 1


def test_truncate_front_forgets_earlier_records_and_deletes_whole_segments(wal_dir):
    with WAL(wal_dir, segment_size=SMALL_SEGMENT, sync="none") as wal:
        for i in range(1, 1001):
            wal.append(payload(i))
        files_before = segment_files(wal_dir)
        wal.truncate_front(700)
        assert wal.first_seq == 700
        assert len(segment_files(wal_dir)) < len(files_before)
        with pytest.raises(IndexError):
            wal.read(699)
        assert wal.read(700) == payload(700)
    with WAL(wal_dir, segment_size=SMALL_SEGMENT) as wal:
        assert (wal.first_seq, wal.last_seq) == (700, 1000)
        assert [s for s, _, _ in wal.replay()] == list(range(700, 1001))


def test_truncate_front_of_everything_leaves_an_empty_log_that_numbers_on(wal_dir):
    with WAL(wal_dir, segment_size=SMALL_SEGMENT, sync="none") as wal:
        for i in range(1, 11):
            wal.append(payload(i))
        wal.truncate_front(11)
        assert (wal.first_seq, wal.last_seq) == (0, 0)
    with WAL(wal_dir, segment_size=SMALL_SEGMENT) as wal:
        assert (wal.first_seq, wal.last_seq, wal.next_seq) == (0, 0, 11)
        assert wal.append(b"eleven") == 11
        assert wal.first_seq == 11


def test_truncations_outside_the_log_are_refused(small_wal):
    for i in range(1, 11):
        small_wal.append(payload(i))
    small_wal.truncate_front(5)
    with pytest.raises(IndexError):
        small_wal.truncate_front(12)
    with pytest.raises(IndexError):
        small_wal.truncate_back(2)
    assert (small_wal.first_seq, small_wal.last_seq) == (5, 10)


def test_largest_record_fills_a_segment_and_one_byte_more_is_refused(wal_dir):
    largest = SMALL_SEGMENT - RECORD_OVERHEAD
    with WAL(wal_dir, segment_size=SMALL_SEGMENT, sync="none") as wal:
        wal.append(b"small")
        seq = wal.append(b"L" * largest)
        with pytest.raises(ValueTooLarge):
            wal.append(b"L" * (largest + 1))
        with pytest.raises(ValueTooLarge):
            wal.append_many([b"ok", b"L" * (largest + 1)])
        assert wal.last_seq == seq
        assert wal.read(seq) == b"L" * largest
    with WAL(wal_dir, segment_size=SMALL_SEGMENT) as wal:
        assert wal.read(seq) == b"L" * largest


def test_records_larger_than_the_write_buffer_go_straight_to_the_file(wal_dir):
    big = bytes(range(256)) * 64  # 16 KiB, four times the buffer
    with WAL(wal_dir, segment_size=1 << 20, sync="always", buffer_size=4096) as wal:
        seqs = [wal.append(b"a"), wal.append(big), wal.append(b"b")]
    with WAL(wal_dir, segment_size=1 << 20) as wal:
        assert [wal.read(s) for s in seqs] == [b"a", big, b"b"]


def test_close_is_idempotent_and_later_use_raises_closed(wal_dir):
    wal = WAL(wal_dir, segment_size=SMALL_SEGMENT)
    wal.append(b"x")
    wal.close()
    wal.close()
    for call in (
        lambda: wal.append(b"y"),
        lambda: wal.append_many([b"y"]),
        lambda: wal.sync(),
        lambda: wal.read(1),
        lambda: list(wal.replay()),
        lambda: wal.truncate_back(0),
        lambda: wal.truncate_front(1),
        lambda: wal.first_seq,
        lambda: wal.last_seq,
        lambda: wal.next_seq,
        lambda: wal.stats(),
        lambda: wal.segments(),
        lambda: wal.torn_tail,
    ):
        with pytest.raises(ClosedError):
            call()


def test_replay_from_zero_raises_as_read_does(small_wal):
    small_wal.append(b"x")
    with pytest.raises(IndexError):
        small_wal.replay(0)
    with pytest.raises(IndexError):
        small_wal.read(0)
    assert [p for _, _, p in small_wal.replay()] == [b"x"]  # None: from the first record


def test_second_opener_is_refused_while_the_log_is_open(wal_dir):
    from keyval.errors import LockedError

    # flock locks belong to the open file description, so a second open in the same process
    # conflicts just as another process would.
    with WAL(wal_dir, segment_size=SMALL_SEGMENT), pytest.raises(LockedError):
        WAL(wal_dir, segment_size=SMALL_SEGMENT)


def test_interval_mode_makes_records_durable_without_an_explicit_sync(wal_dir):
    import time

    with WAL(wal_dir, segment_size=1 << 16, sync="interval", sync_interval=0.02) as wal:
        seq = wal.append(b"x")
        deadline = time.monotonic() + 10
        while wal.stats()["durable_seq"] < seq:
            assert time.monotonic() < deadline, "the sync thread never synced"
            time.sleep(0.005)
        assert wal.stats()["fsyncs"] >= 1


def test_none_mode_syncs_only_when_asked(wal_dir):
    with WAL(wal_dir, segment_size=1 << 16, sync="none") as wal:
        before = wal.stats()["fsyncs"]
        for _i in range(100):
            wal.append(b"x")
        assert wal.stats()["fsyncs"] == before
        assert wal.stats()["durable_seq"] == 0
        wal.sync()
        assert wal.stats()["durable_seq"] == 100


def test_always_mode_makes_each_append_durable_before_it_returns(wal_dir):
    with WAL(wal_dir, segment_size=1 << 16, sync="always") as wal:
        for _ in range(20):
            seq = wal.append(b"x")
            assert wal.stats()["durable_seq"] >= seq
        _first, last = wal.append_many([b"a"] * 10)
        assert wal.stats()["durable_seq"] >= last
