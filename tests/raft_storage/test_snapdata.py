"""File-backed snapshot data: a snapshot is read, sent, received, saved and restored a chunk
at a time, never held whole (issue 6: "streamed to a follower in chunks")."""

from __future__ import annotations

import os
import random
import tracemalloc
from pathlib import Path

import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from keyval.errors import CorruptionError
from keyval.raft import snapfile
from keyval.raft.core import Config
from keyval.raft.messages import Message, MsgType, SnapshotChunk
from keyval.raft.node import Node
from keyval.raft.records import Entry, Snapshot
from keyval.raft.snapdata import (
    FileBuffer,
    FileData,
    iter_chunks,
    open_reader,
    remove_stale_buffers,
)
from keyval.raft.storage import RaftStorage

BIG = 32 << 20  # a snapshot far bigger than the memory the streamed paths may use
MEMORY_BOUND = 6 << 20  # peak Python allocations allowed while streaming BIG (chunk buffers)
SEGMENT = 2**20  # 1 MiB WAL segments, not 64: each open log writes its next one out ahead


def file_data(tmp_path, data: bytes, offset: int = 0) -> FileData:
    path = tmp_path / f"data-{random.getrandbits(32)}"
    path.write_bytes(b"h" * offset + data)
    return FileData(os.open(path, os.O_RDONLY), offset, len(data))


def pseudo_random_chunks(total: int, size: int, seed: int = 1):
    """``total`` bytes of incompressible data, made a chunk at a time."""
    rng = random.Random(seed)
    for off in range(0, total, size):
        yield rng.randbytes(min(size, total - off))


bounds = st.one_of(st.none(), st.integers(-1200, 1200))


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=1000), offset=st.integers(0, 50), a=bounds, b=bounds)
def test_file_data_slices_as_bytes_do(tmp_path_factory, data, offset, a, b):
    fd = file_data(tmp_path_factory.mktemp("fd"), data, offset)
    assert len(fd) == len(data)
    assert fd[a:b] == data[a:b]
    assert bytes(fd) == data and fd == data and fd == bytearray(data)
    assert fd != data + b"x" and (not data or fd != b"x" + data[1:] or data[:1] == b"x")


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=5000), sizes=st.lists(st.integers(0, 700), max_size=20))
def test_a_reader_and_the_chunks_stream_the_data_in_order(tmp_path_factory, data, sizes):
    for source in (data, file_data(tmp_path_factory.mktemp("fd"), data, 7)):
        with open_reader(source) as reader:
            parts = [reader.read(n) for n in sizes]
            parts.append(reader.read())
        assert b"".join(parts) == data
        assert b"".join(bytes(c) for c in iter_chunks(source, 333)) == data


def test_file_data_refuses_what_bytes_would_not_do_alike(tmp_path):
    fd = file_data(tmp_path, b"abcdef")
    with pytest.raises(TypeError):
        fd[1]
    with pytest.raises(ValueError):
        fd[::2]
    with pytest.raises(ValueError):
        FileData(os.open(tmp_path, os.O_RDONLY), -1, 3)
    fd.close()
    with pytest.raises(ValueError, match="closed"):
        fd[:1]


def test_file_data_reads_a_file_unlinked_after_it_was_opened(tmp_path):
    path = tmp_path / "gone"
    path.write_bytes(b"still here")
    fd = FileData(os.open(path, os.O_RDONLY), 0, 10)
    path.unlink()
    assert bytes(fd) == b"still here"


def test_a_file_buffer_leaves_no_name_behind_and_hands_back_what_it_got(tmp_path):
    buffer = FileBuffer(str(tmp_path))
    for part in (b"one ", b"", b"two ", b"three"):
        buffer.append(part)
    assert len(buffer) == 13
    assert os.listdir(tmp_path) == []  # nothing a crash could leave
    data = buffer.finish()
    assert isinstance(data, FileData) and data == b"one two three"
    dropped = FileBuffer(str(tmp_path))
    dropped.append(b"never kept")
    dropped.discard()
    assert os.listdir(tmp_path) == []


def test_without_o_tmpfile_a_buffer_is_named_only_until_unlinked_and_leftovers_go(
    tmp_path, monkeypatch
):
    # A file system without O_TMPFILE: the file is made under a name and unlinked at once.
    # A crash in between leaves the name; the owner's next open removes such names, and only
    # those.
    monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    buffer = FileBuffer(str(tmp_path))
    buffer.append(b"kept in an unnamed file")
    assert os.listdir(tmp_path) == []
    assert buffer.finish() == b"kept in an unnamed file"
    left = tmp_path / ".keyval-buffer-x1y2.tmp"
    left.write_bytes(b"left by a crash")
    others = [tmp_path / "kv.db", tmp_path / "keyval-buffer-not-ours.tmp", tmp_path / "x.tmp"]
    for other in others:
        other.write_bytes(b"not a buffer")
    assert remove_stale_buffers(str(tmp_path)) == 1
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in others)


def test_a_snapshot_file_is_the_same_written_from_bytes_or_from_a_file(tmp_path):
    data = random.Random(3).randbytes(3 * (1 << 20) + 17)  # several streaming chunks
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    from_bytes = snapfile.write(str(tmp_path / "a"), Snapshot(7, 2, data))
    from_file = snapfile.write(str(tmp_path / "b"), Snapshot(7, 2, file_data(tmp_path, data, 5)))
    with open(from_bytes, "rb") as f1, open(from_file, "rb") as f2:
        assert f1.read() == f2.read()
    read = snapfile.read(from_file)
    assert isinstance(read.data, FileData) and (read.index, read.term, read.data) == (7, 2, data)


@pytest.mark.parametrize("damage", ["flip", "cut", "extend"])
def test_a_damaged_snapshot_file_is_refused_naming_it(tmp_path, damage):
    path = snapfile.write(str(tmp_path), Snapshot(3, 1, random.Random(4).randbytes(100_000)))
    raw = bytearray(Path(path).read_bytes())
    if damage == "flip":
        raw[snapfile.HEADER.size + 77_777] ^= 0x10
    elif damage == "cut":
        del raw[-1]
    else:
        raw += b"\0"
    Path(path).write_bytes(raw)
    with pytest.raises(CorruptionError) as err:
        snapfile.read(path)
    assert err.value.path == path


def peak_while(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_leader_reads_a_stored_snapshot_a_chunk_at_a_time(tmp_path):
    with RaftStorage(str(tmp_path / "node"), segment_size=SEGMENT) as storage:
        storage.append([Entry(i, 1, b"e") for i in range(1, 11)])
        digest = xxhash.xxh3_64()
        buffer = FileBuffer(str(tmp_path))
        for chunk in pseudo_random_chunks(BIG, 1 << 20):
            digest.update(chunk)
            buffer.append(chunk)
        storage.save_snapshot(Snapshot(10, 1, buffer.finish()))

        sent = xxhash.xxh3_64()

        def send_all() -> None:
            snap = storage.snapshot()  # verified whole, read a chunk at a time
            for off in range(0, len(snap.data), 64 * 1024):  # as the core slices its chunks
                sent.update(snap.data[off : off + 64 * 1024])

        assert peak_while(send_all) < MEMORY_BOUND
        assert sent.intdigest() == digest.intdigest()


class StreamingMachine:
    """Restores by hashing the snapshot as it streams in: what a state machine bigger than
    memory does."""

    def __init__(self) -> None:
        self.digest = None
        self.kind = None

    def apply(self, entry: Entry) -> None:
        pass

    def snapshot(self) -> bytes:
        return b""

    def restore(self, data) -> None:
        self.kind = type(data)
        digest = xxhash.xxh3_64()
        with open_reader(data) as reader:
            while block := reader.read(1 << 20):
                digest.update(block)
        self.digest = digest.intdigest()


def test_a_follower_receives_saves_and_restores_a_snapshot_in_bounded_memory(tmp_path):
    chunk_size, total = 64 * 1024, BIG
    expected = xxhash.xxh3_64()
    for chunk in pseudo_random_chunks(total, chunk_size, seed=9):
        expected.update(chunk)
    sent: list[Message] = []
    with RaftStorage(str(tmp_path / "follower"), segment_size=SEGMENT) as storage:
        machine = StreamingMachine()
        node = Node(Config(id=2, peers=(1, 2, 3)), storage, machine, send=sent.append)

        def receive() -> None:
            offset = 0
            for data in pseudo_random_chunks(total, chunk_size, seed=9):
                chunk = SnapshotChunk(500, 3, offset, total, data)
                node.step(Message(MsgType.SNAP, 2, 1, 3, chunk=chunk, commit=500))
                offset += len(data)

        assert peak_while(receive) < MEMORY_BOUND
        assert machine.kind is FileData and machine.digest == expected.intdigest()
        assert (node.applied, storage.first_index) == (500, 501)
        assert sent[-1].type is MsgType.APP_RESP and sent[-1].index == 500
        names = os.listdir(os.path.join(storage.path, "snap"))
        assert names == [snapfile.file_name(500, 3)]  # the received data left no other file
    with RaftStorage(str(tmp_path / "follower"), segment_size=SEGMENT) as storage:
        assert storage.snapshot().data == b"".join(pseudo_random_chunks(total, chunk_size, 9))
