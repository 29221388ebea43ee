import os

import pytest

from keyval.wal import WAL

SMALL_SEGMENT = 4096  # small enough that tests rotate through many segments


def payload(seq: int) -> bytes:
    """A payload that is a function of its seq, so a reader can tell a right record from a
    wrong one, with lengths that vary (0..200 bytes) to exercise padding."""
    return (b"%d:" % seq) * (seq % 37)


@pytest.fixture
def wal_dir(tmp_path):
    return str(tmp_path / "log")


@pytest.fixture
def small_wal(wal_dir):
    with WAL(wal_dir, segment_size=SMALL_SEGMENT, sync="none") as wal:
        yield wal


def segment_files(path: str) -> list[str]:
    return sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(".wal"))
