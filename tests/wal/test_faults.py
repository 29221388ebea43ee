"""Failed writes and fsyncs: fail-stop, never a silent retry; the log stays readable."""

import errno
import threading
import time

import pytest

from keyval.errors import ReadOnlyError
from keyval.wal import WAL

from .conftest import payload


def test_failed_fsync_makes_the_log_read_only_and_later_writes_raise(wal_dir):
    wal = WAL(wal_dir, segment_size=1 << 16, sync="always")
    for i in range(1, 11):
        wal.append(payload(i))
    wal.inject_fault("fsync", errno.EIO)
    with pytest.raises(ReadOnlyError) as info:
        wal.append(b"lost")
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.__cause__.errno == errno.EIO
    for write in (lambda: wal.append(b"x"), lambda: wal.append_many([b"x"]), wal.sync):
        with pytest.raises(ReadOnlyError):
            write()
    # reads still work and show exactly the durable records
    assert wal.last_seq == 10
    assert [p for _, _, p in wal.replay()] == [payload(i) for i in range(1, 11)]
    assert wal.stats()["failed"]
    wal.close()
    with WAL(wal_dir, segment_size=1 << 16) as wal:
        got = [p for _, _, p in wal.replay()]
        assert got[:10] == [payload(i) for i in range(1, 11)]
        assert wal.append(b"works again") == len(got) + 1


def test_enospc_on_write_raises_and_every_durable_record_survives_reopen(wal_dir):
    wal = WAL(wal_dir, segment_size=1 << 16, sync="none")
    for i in range(1, 101):
        wal.append(payload(i))
    wal.sync()
    wal.inject_fault("write", errno.ENOSPC)
    wal.append(b"buffered")
    with pytest.raises(ReadOnlyError) as info:
        wal.sync()
    assert info.value.__cause__.errno == errno.ENOSPC
    assert "No space left" in str(info.value)
    assert [p for _, _, p in wal.replay()] == [payload(i) for i in range(1, 101)]
    wal.close()
    with WAL(wal_dir, segment_size=1 << 16) as wal:
        assert [p for _, _, p in wal.replay()][:100] == [payload(i) for i in range(1, 101)]


def test_no_room_for_a_new_segment_is_an_error_but_not_fail_stop(wal_dir):
    with WAL(wal_dir, segment_size=4096, sync="none") as wal:
        wal.append(b"x")
        wal.sync()
        # the disk stays full for two attempts: the background one and the retry at rotation
        wal.inject_fault("prepare", errno.ENOSPC, times=2)
        # fill the first segment, use the prepared second, then need a third
        with pytest.raises(OSError) as info:
            for _ in range(1000):
                wal.append(b"y" * 100)
        assert info.value.errno == errno.ENOSPC
        assert not wal.stats()["failed"]
        last = wal.last_seq
        seq = wal.append(b"y" * 100)  # space is back: the next rotation succeeds
        assert seq == last + 1
    with WAL(wal_dir, segment_size=4096) as wal:
        assert wal.last_seq == seq


def test_group_commit_waiters_all_see_the_failure(wal_dir):
    wal = WAL(wal_dir, segment_size=1 << 20, sync="always")
    wal.append(b"durable")
    wal.inject_fault("fsync", errno.EIO, after=3)
    errors, successes = [], []

    def writer():
        for _ in range(50):
            try:
                successes.append(wal.append(b"w"))
            except ReadOnlyError as exc:
                errors.append(exc)
                return

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 8  # every thread hit the fail-stop
    durable = wal.stats()["durable_seq"]
    assert all(s <= durable for s in successes)  # nothing acknowledged that was not durable
    wal.close()
    with WAL(wal_dir, segment_size=1 << 20) as wal:
        assert wal.last_seq >= durable


def test_open_makes_what_a_killed_process_left_unsynced_durable(wal_dir):
    """A process appending with sync="none" and killed leaves the records it wrote (a full
    buffer at a time) in the page cache only. Reopening counts them durable (sync() and
    close() then have nothing to do for them), so open must fsync them first: otherwise a
    power loss after that sync() returned would lose records the contract says are durable."""
    import signal
    import subprocess
    import sys

    record = b"r" * 20_000  # 100 of them: several buffers' worth reach the page cache
    child = (
        "import os, signal\n"
        "from keyval.wal import WAL\n"
        f"wal = WAL({wal_dir!r}, segment_size=1 << 22, sync='none')\n"
        f"for i in range(100): wal.append({record!r})\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", child], timeout=60)
    assert done.returncode == -signal.SIGKILL
    wal = WAL(wal_dir, segment_size=1 << 22, sync="none")
    stats = wal.stats()
    assert stats["durable_seq"] == wal.last_seq > 0
    assert stats["fsyncs"] >= 1  # the recovered segment (and the directory) were synced
    assert [p for _, _, p in wal.replay()] == [record] * wal.last_seq
    wal.close()


def test_truncate_front_past_unsynced_records_leaves_a_log_that_opens(wal_dir):
    """With sync="none" the records before a new front may still be in the user-space buffer
    when truncate_front makes the front durable. A killed process then left a front past the
    log's end, and the log no longer opened. truncate_front now makes them durable first."""
    import signal
    import subprocess
    import sys

    child = (
        "import os, signal\n"
        "from keyval.wal import WAL\n"
        f"wal = WAL({wal_dir!r}, segment_size=1 << 20, sync='none')\n"
        "for i in range(1, 101): wal.append(b'%d' % i)\n"
        "wal.truncate_front(60)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", child], timeout=60)
    assert done.returncode == -signal.SIGKILL
    with WAL(wal_dir, segment_size=1 << 20, sync="none") as wal:
        assert wal.first_seq == 60
        assert [(s, p) for s, _, p in wal.replay()] == [(i, b"%d" % i) for i in range(60, 101)]


def test_close_raises_when_a_background_sync_failed_and_no_call_said_so(wal_dir):
    """sync="interval": appends return before their records are durable and the background
    sync that fails tells nobody. close() is the caller's last chance to hear that what it
    appended is not durable; it raises, naming the records. (A failure a call already raised
    is not raised again.)"""
    wal = WAL(wal_dir, segment_size=1 << 20, sync="interval", sync_interval=0.01)
    wal.inject_fault("fsync", errno.EIO)
    for i in range(1, 6):
        wal.append(payload(i))
    deadline = time.monotonic() + 10
    while not wal.stats()["failed"]:  # the background sync runs every 10 ms
        assert time.monotonic() < deadline, "the background sync never ran"
        time.sleep(0.005)
    with pytest.raises(ReadOnlyError) as info:
        wal.close()
    assert "records 1 to 5 were appended but never made durable" in str(info.value)
    assert info.value.__cause__.errno == errno.EIO
    wal.close()  # closed now: nothing more to say

    told = WAL(wal_dir + "-told", segment_size=1 << 20, sync="none")
    told.append(b"x")
    told.inject_fault("fsync", errno.EIO)
    with pytest.raises(ReadOnlyError):
        told.sync()
    told.close()  # the failure was raised by sync(): close does not raise it twice
