"""append_many batches are units: consecutive seqs under concurrency, all or nothing on crash."""

import os
import threading

from keyval.wal import WAL

SEGMENT = 8192


def record_offsets(wal):
    """(path, offset, padded size) of every record, in seq order."""
    out = []
    for seg in wal.segments():
        off = 64
        for seq in range(seg["first_seq"], seg["first_seq"] + seg["records"]):
            size = (20 + len(wal.read(seq)) + 7) & ~7
            out.append((seg["path"], off, size))
            off += size
    return out


def test_a_batch_missing_its_last_record_is_cut_whole_on_open(wal_dir):
    with WAL(wal_dir, segment_size=SEGMENT, sync="none") as wal:
        wal.append(b"before")
        _first, last = wal.append_many([b"b%d" % i * 20 for i in range(10)])
        layout = record_offsets(wal)
    path, off, size = layout[last - 1]
    with open(path, "r+b") as f:  # the crash came before the batch's last record was written
        f.seek(off)
        f.write(b"\0" * size)
    with WAL(wal_dir, segment_size=SEGMENT) as wal:
        assert wal.last_seq == 1
        assert [p for _, _, p in wal.replay()] == [b"before"]
        assert wal.torn_tail is not None
        assert wal.append(b"next") == 2


def test_truncating_inside_a_batch_keeps_exactly_the_records_asked_for(wal_dir):
    with WAL(wal_dir, segment_size=SEGMENT, sync="none") as wal:
        wal.append_many([b"x%d" % i for i in range(20)])
        wal.truncate_back(7)  # record 7 said "more follows"; it must not any more
    with WAL(wal_dir, segment_size=SEGMENT) as wal:
        assert wal.last_seq == 7
        assert wal.read(7) == b"x6"


def test_a_batch_that_does_not_fit_starts_a_new_segment_instead_of_spanning_two(wal_dir):
    with WAL(wal_dir, segment_size=SEGMENT, sync="none") as wal:
        wal.append(b"a" * 6000)
        first, last = wal.append_many([b"b" * 500] * 6)  # 3 KiB: does not fit after 6 KiB
        segs = wal.segments()
        holder = [s for s in segs if s["first_seq"] <= first < s["first_seq"] + s["records"]]
        assert holder and holder[0]["first_seq"] + holder[0]["records"] - 1 >= last


def test_concurrent_batches_and_appends_keep_each_batch_consecutive(wal_dir):
    with WAL(wal_dir, segment_size=1 << 16, sync="none", buffer_size=4096) as wal:
        results = []

        def batcher(t):
            for i in range(50):
                batch = [b"%d.%d.%d" % (t, i, j) + b"." * 300 for j in range(8)]
                results.append((wal.append_many(batch), batch))

        def single():
            for _ in range(400):
                wal.append(b"single")

        threads = [threading.Thread(target=batcher, args=(t,)) for t in range(3)]
        threads.append(threading.Thread(target=single))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for (first, last), batch in results:
            assert last - first + 1 == len(batch)
            assert [wal.read(s) for s in range(first, last + 1)] == batch


def test_fsck_reports_an_unfinished_batch_as_repairable(wal_dir):
    from keyval.fsck import main as fsck

    with WAL(wal_dir, segment_size=SEGMENT, sync="none") as wal:
        wal.append_many([b"y" * 30] * 5)
        layout = record_offsets(wal)
    path, off, size = layout[-1]
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(b"\0" * size)
    assert fsck([wal_dir]) == 4
    assert fsck([wal_dir, "--repair"]) == 1
    assert fsck([wal_dir]) == 0
    assert os.path.exists(wal_dir)
    # The repair opened the log with the size it was written with: every file in it,
    # the prepared next segment too, is a segment of that size (not 64 MiB).
    sizes = {
        os.path.getsize(os.path.join(wal_dir, name))
        for name in os.listdir(wal_dir)
        if name.endswith((".wal", ".prep"))
    }
    assert sizes == {SEGMENT}
