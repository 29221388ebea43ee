"""Bad input gets a clear error and changes nothing."""

import os

import pytest

from keyval.errors import ClosedError, CorruptionError, KeyvalError
from keyval.wal import WAL

from .conftest import SMALL_SEGMENT


def listing(path):
    return sorted((name, os.path.getsize(os.path.join(path, name))) for name in os.listdir(path))


@pytest.mark.parametrize("bad", ["text", bytearray(b"x"), memoryview(b"x"), 5, None])
def test_non_bytes_payloads_raise_type_error_and_write_nothing(small_wal, bad):
    small_wal.append(b"ok")
    with pytest.raises(TypeError):
        small_wal.append(bad)
    with pytest.raises(TypeError):
        small_wal.append_many([b"fine", bad])
    assert small_wal.last_seq == 1


@pytest.mark.parametrize("bad_type", [-1, 256, 10**9])
def test_type_outside_a_byte_is_refused(small_wal, bad_type):
    with pytest.raises(ValueError):
        small_wal.append(b"x", type=bad_type)
    assert small_wal.last_seq == 0


@pytest.mark.parametrize(
    "types", [300, -1, [1, 256], [1, -1], [1, "a"], [1, None], "ab", [1], [1, 2, 3]]
)
def test_batch_types_outside_a_byte_or_not_one_per_record_are_refused_whole(small_wal, types):
    small_wal.append(b"ok")
    with pytest.raises(ValueError):
        small_wal.append_many([b"a", b"b"], type=types)
    assert small_wal.last_seq == 1
    assert small_wal.append_many([b"a", b"b"], type=[7, 9]) == (2, 3)
    assert [(s, t) for s, t, _ in small_wal.replay()] == [(1, 0), (2, 7), (3, 9)]


def test_empty_batch_is_refused(small_wal):
    with pytest.raises(ValueError):
        small_wal.append_many([])


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"segment_size": 100}, ValueError),
        ({"segment_size": 4097}, ValueError),
        ({"sync": "sometimes"}, ValueError),
        ({"segment_size": "64M"}, TypeError),
        ({"segment_size": 2.0**20}, TypeError),
        ({"buffer_size": float(1 << 20)}, TypeError),
        ({"buffer_size": 4095}, ValueError),
        ({"sync": "interval", "sync_interval": 0}, ValueError),
        ({"sync": "interval", "sync_interval": -1}, ValueError),
    ],
)
def test_bad_options_are_refused_before_anything_is_created(wal_dir, kwargs, error):
    with pytest.raises(error):
        WAL(wal_dir, **kwargs)
    assert not os.path.exists(wal_dir) or os.listdir(wal_dir) == []


@pytest.mark.parametrize("path", [b"log", 5, None])
def test_a_path_that_is_not_text_is_refused(tmp_path, monkeypatch, path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TypeError, match=r"path must be str|expected str"):
        WAL(path)
    assert os.listdir(tmp_path) == []


def test_a_path_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "file"
    path.write_bytes(b"hello")
    with pytest.raises(NotADirectoryError):
        WAL(str(path))
    assert path.read_bytes() == b"hello"


def test_a_directory_of_unrelated_files_is_refused_untouched(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8")
    before = listing(tmp_path)
    with pytest.raises(KeyvalError, match="not a keyval WAL directory"):
        WAL(str(tmp_path))
    assert listing(tmp_path) == before


def test_a_garbage_segment_is_corruption_named_by_file(tmp_path):
    seg = tmp_path / "0000000000000001-0000000000000001.wal"
    seg.write_bytes(os.urandom(8192))
    before = listing(tmp_path)
    with pytest.raises(CorruptionError) as info:
        WAL(str(tmp_path), segment_size=8192)
    assert info.value.path == str(seg)
    assert info.value.offset == 0
    assert listing(tmp_path) == [*before, ("LOCK", 0)]


def test_a_segment_of_a_newer_format_version_says_so(wal_dir):
    from keyval.errors import FormatVersionError

    with WAL(wal_dir, segment_size=SMALL_SEGMENT) as wal:
        wal.append(b"x")
    seg = os.path.join(wal_dir, sorted(n for n in os.listdir(wal_dir) if n.endswith(".wal"))[0])
    with open(seg, "r+b") as f:
        f.seek(8)
        f.write((2).to_bytes(4, "little"))
    with pytest.raises(FormatVersionError, match="version 2"):
        WAL(wal_dir, segment_size=SMALL_SEGMENT)


def test_a_truncated_segment_header_is_corruption(wal_dir):
    with WAL(wal_dir, segment_size=SMALL_SEGMENT) as wal:
        wal.append(b"x")
    seg = os.path.join(wal_dir, sorted(n for n in os.listdir(wal_dir) if n.endswith(".wal"))[0])
    os.truncate(seg, 30)
    with pytest.raises(CorruptionError):
        WAL(wal_dir, segment_size=SMALL_SEGMENT)


def test_a_missing_middle_segment_is_corruption(wal_dir):
    with WAL(wal_dir, segment_size=SMALL_SEGMENT, sync="none") as wal:
        for _ in range(500):
            wal.append(b"x" * 50)
    segs = sorted(n for n in os.listdir(wal_dir) if n.endswith(".wal"))
    os.unlink(os.path.join(wal_dir, segs[2]))
    with pytest.raises(CorruptionError, match="missing"):
        WAL(wal_dir, segment_size=SMALL_SEGMENT)


@pytest.mark.parametrize("bad", [-1, 1.5, "3", None])
def test_bad_sequence_numbers_are_refused(small_wal, bad):
    small_wal.append(b"x")
    with pytest.raises((TypeError, ValueError)):
        small_wal.read(bad)
    with pytest.raises((TypeError, ValueError)):
        small_wal.truncate_back(bad)
    assert small_wal.last_seq == 1


def test_use_after_close_raises_closed_error(wal_dir):
    wal = WAL(wal_dir, segment_size=SMALL_SEGMENT)
    wal.close()
    with pytest.raises(ClosedError):
        wal.append(b"x")
