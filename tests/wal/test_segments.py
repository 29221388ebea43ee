"""Segment files: prepared ahead of time, created under a temporary name, and what a crash
while creating one leaves behind."""

import errno
import os
import time

import pytest

from keyval.errors import ReadOnlyError
from keyval.fsck import main as fsck
from keyval.wal import WAL

from .conftest import payload, segment_files

SEGMENT = 1 << 16


def wait_prepared(wal: WAL) -> None:
    deadline = time.monotonic() + 30
    while not wal.stats()["next_segment_prepared"]:
        assert time.monotonic() < deadline, "the next segment was never prepared"
        time.sleep(0.005)


def test_rotation_renames_the_segment_prepared_ahead_of_time(wal_dir):
    with WAL(wal_dir, segment_size=SEGMENT, sync="none") as wal:
        wait_prepared(wal)
        prep = os.path.join(wal_dir, "next.prep")
        assert os.path.getsize(prep) == SEGMENT
        assert os.stat(prep).st_blocks * 512 >= SEGMENT  # written whole: no hole to fill later
        prepared_inode = os.stat(prep).st_ino
        n = 0
        while len(segment_files(wal_dir)) == 1:
            n += 1
            wal.append(payload(n))
        second = segment_files(wal_dir)[1]
        assert os.stat(second).st_ino == prepared_inode  # the same file, renamed into place
        assert os.path.getsize(second) == SEGMENT
        assert [p for _, _, p in wal.replay()] == [payload(i) for i in range(1, n + 1)]


@pytest.mark.parametrize("leftover", ["next.tmp", "bounds.tmp", "next.prep"])
def test_half_made_files_from_a_crash_are_removed_on_open(wal_dir, leftover):
    with WAL(wal_dir, segment_size=SEGMENT, sync="always") as wal:
        for i in range(1, 51):
            wal.append(payload(i))
    with open(os.path.join(wal_dir, leftover), "wb") as f:
        f.write(b"\x5a" * 1000)  # garbage of the wrong size, as a crash mid-creation leaves
    with WAL(wal_dir, segment_size=SEGMENT) as wal:
        assert [p for _, _, p in wal.replay()] == [payload(i) for i in range(1, 51)]
        wait_prepared(wal)
        assert os.path.getsize(os.path.join(wal_dir, "next.prep")) == SEGMENT
    assert not os.path.exists(os.path.join(wal_dir, "next.tmp"))
    assert not os.path.exists(os.path.join(wal_dir, "bounds.tmp"))
    assert fsck([wal_dir]) == 0


def test_a_failed_fsync_at_rotation_is_fail_stop(wal_dir):
    wal = WAL(wal_dir, segment_size=SEGMENT, sync="none")
    wal.append(payload(1))
    wal.sync()
    wal.inject_fault("fsync", errno.EIO)  # the next fsync is the one rotation makes
    with pytest.raises(ReadOnlyError):
        for i in range(2, 10_000):
            wal.append(payload(i))
    assert wal.stats()["failed"]
    with pytest.raises(ReadOnlyError):
        wal.append(b"after")
    assert wal.read(1) == payload(1)  # reads still work
    wal.close()
