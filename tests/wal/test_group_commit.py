"""Group commit: concurrent durable appenders share fsyncs and all their records land."""

import threading

from keyval.wal import WAL


def test_eight_threads_share_fsyncs_and_every_record_is_there(wal_dir):
    per_thread, threads_n = 200, 8
    with WAL(wal_dir, segment_size=1 << 20, sync="always") as wal:
        fsyncs_before = wal.stats()["fsyncs"]
        seqs: dict[int, list[int]] = {t: [] for t in range(threads_n)}
        barrier = threading.Barrier(threads_n)

        def writer(t):
            barrier.wait()
            for i in range(per_thread):
                seqs[t].append(wal.append(b"%d:%d" % (t, i)))

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(threads_n)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        fsyncs = wal.stats()["fsyncs"] - fsyncs_before
        total = per_thread * threads_n
        assert fsyncs < total, "no fsync was shared"
        assert sorted(s for v in seqs.values() for s in v) == list(range(1, total + 1))
    with WAL(wal_dir, segment_size=1 << 20) as wal:
        got = {p for _, _, p in wal.replay()}
    assert got == {b"%d:%d" % (t, i) for t in range(threads_n) for i in range(per_thread)}
    # each thread's records are in its own order
    for t in range(threads_n):
        assert seqs[t] == sorted(seqs[t])
