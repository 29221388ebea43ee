"""Segment files: prepared ahead of time, created under a temporary name, and what a crash
while creating one leaves behind."""

import errno
import os
import struct
import time

import pytest
from keyval._wal_cffi import lib

from keyval.errors import CorruptionError, KeyvalError, ReadOnlyError
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


# -- segments deleted from either end: the bounds file (csrc/format.h) shows it -------------------

BOUNDS = "bounds"


def bounds_bytes(version: int, front: int, newest: int = 0) -> bytes:
    """A bounds file as keyval writes it (version 1: an older keyval's, without `newest`)."""
    head = b"KVWALBND" + struct.pack("<IIQQ", version, 0, front, 0)
    body = head + (struct.pack("<Q", newest) if version == 2 else b"")
    return body + struct.pack("<I", lib.kv_crc32c(0, body, len(body)))


def read_newest(wal_dir) -> int:
    with open(os.path.join(wal_dir, BOUNDS), "rb") as f:
        data = f.read()
    assert len(data) == 44 and data[8:12] == struct.pack("<I", 2)
    return struct.unpack_from("<Q", data, 32)[0]


def several_segments(wal_dir, records: int = 200) -> list[str]:
    with WAL(wal_dir, segment_size=SMALL, sync="always") as wal:
        for i in range(1, records + 1):
            wal.append(payload(i))
    segments = segment_files(wal_dir)
    assert len(segments) >= 3
    return segments


SMALL = 4096


def test_the_bounds_file_names_the_newest_segment_after_each_rotation(wal_dir):
    segments = several_segments(wal_dir)
    assert read_newest(wal_dir) == len(segments)


@pytest.mark.parametrize("which", ["newest", "two newest", "first", "all"])
def test_a_segment_deleted_from_either_end_is_corruption_not_a_shorter_log(wal_dir, which):
    segments = several_segments(wal_dir)
    doomed = {
        "newest": segments[-1:],
        "two newest": segments[-2:],
        "first": segments[:1],
        "all": segments,
    }[which]
    for path in doomed:
        os.unlink(path)
    before = sorted(os.listdir(wal_dir))
    with pytest.raises(CorruptionError, match="missing") as info:
        WAL(wal_dir, segment_size=SMALL)
    expected_path = segments[1] if which == "first" else wal_dir
    assert info.value.path == expected_path
    assert sorted(os.listdir(wal_dir)) == before  # refused, nothing changed
    assert fsck([wal_dir]) == 4
    assert fsck(["--repair", wal_dir]) == 4  # not a torn tail: nothing to cut
    assert sorted(os.listdir(wal_dir)) == before


def test_a_log_truncated_from_both_ends_still_opens(wal_dir):
    segments = several_segments(wal_dir)
    with WAL(wal_dir, segment_size=SMALL) as wal:
        last = wal.last_seq
        wal.truncate_front(100)
        wal.truncate_back(120)
        kept = segment_files(wal_dir)
        assert len(kept) < len(segments)
    assert read_newest(wal_dir) == int(os.path.basename(kept[-1]).split("-")[0], 16)
    with WAL(wal_dir, segment_size=SMALL) as wal:
        assert (wal.first_seq, wal.last_seq) == (100, 120) and last == 200
        assert [p for _, _, p in wal.replay()] == [payload(i) for i in range(100, 121)]
    assert fsck([wal_dir]) == 0


def test_an_older_logs_bounds_are_read_and_upgraded_on_open(wal_dir):
    """A log written before the bounds file named the newest segment: no bounds file at all,
    or one of version 1. It opens as before, and from then on a deleted segment shows."""
    segments = several_segments(wal_dir)
    for old in (None, bounds_bytes(1, front=1)):
        if old is None:
            os.unlink(os.path.join(wal_dir, BOUNDS))
        else:
            with open(os.path.join(wal_dir, BOUNDS), "wb") as f:
                f.write(old)
        assert fsck([wal_dir]) == 0
        with WAL(wal_dir, segment_size=SMALL) as wal:
            assert [p for _, _, p in wal.replay()] == [payload(i) for i in range(1, 201)]
        assert read_newest(wal_dir) == len(segments)
    os.unlink(segments[-1])
    with pytest.raises(CorruptionError, match="missing"):
        WAL(wal_dir, segment_size=SMALL)


def test_a_crash_between_naming_a_segment_and_recording_it_is_caught_up(wal_dir):
    """The bounds file may name an older newest segment than there is (a crash came between
    the rename and the bounds write): that is not corruption, and opening records it."""
    segments = several_segments(wal_dir)
    with open(os.path.join(wal_dir, BOUNDS), "wb") as f:
        f.write(bounds_bytes(2, front=1, newest=len(segments) - 1))
    assert fsck([wal_dir]) == 0
    with WAL(wal_dir, segment_size=SMALL) as wal:
        assert wal.last_seq == 200
    assert read_newest(wal_dir) == len(segments)


@pytest.mark.parametrize(
    "garbage, why",
    [
        (b"KVWALBND" + struct.pack("<I", 3) + bytes(32), "version 3"),
        (b"KVWALBND\x02\x00", "truncated"),
    ],
)
def test_a_bounds_file_of_an_unknown_version_or_cut_short_is_refused(wal_dir, garbage, why):
    several_segments(wal_dir)
    with open(os.path.join(wal_dir, BOUNDS), "wb") as f:
        f.write(garbage)
    with pytest.raises(KeyvalError, match=why):
        WAL(wal_dir, segment_size=SMALL)
    assert fsck([wal_dir]) == 4
