"""A power loss during an unacknowledged multi-block append must not make the log unopenable.

One append (or append_many batch, or group commit) is one write of several 4 KiB blocks,
then fdatasync. A power loss before that fdatasync returns may keep any subset of the
blocks: the page cache writes pages back in no set order, and a two-block O_DIRECT write
is not atomic either. When the later block survives and the earlier one does not, the
segment shows a bad (zeroed) record followed by a valid one. Recovery calls that corruption
(csrc/wal.c, recover(): "yet a valid record follows"), so the WAL, and the Raft node on it,
refuses to open and `fsck --repair` refuses to mend it, although nothing acknowledged is
missing: the SPEC's "reopening yields a prefix ... that contains every durable record" is
broken. Found by tests/powerloss (random mode, 4 KiB granularity).
"""

import pytest

from keyval.errors import CorruptionError
from keyval.fsck import main as fsck
from keyval.wal import WAL

BLOCK = 4096


def torn_state(path):
    with WAL(path, segment_size=16384, sync="always") as wal:
        wal.append(b"x" * 10)  # acknowledged: durable
        seg = wal.segments()[-1]["path"]
        with open(seg, "rb") as f:
            before = f.read()
        # One batch, one write covering blocks 0 and 1: record 2 starts in block 0,
        # record 3 lies wholly in block 1.
        wal.append_many([b"a" * 5000, b"b" * 100])
    with open(seg, "rb") as f:
        after = f.read()
    # Power lost before the batch's fdatasync returned: block 1 reached the disk, block 0
    # did not (it still holds what the last fdatasync made durable).
    with open(seg, "wb") as f:
        f.write(before[:BLOCK] + after[BLOCK:])
    return seg


@pytest.mark.xfail(strict=True, raises=CorruptionError, reason="torn multi-block append")
def test_a_torn_unacknowledged_batch_is_cut_not_corruption(tmp_path):
    path = str(tmp_path / "log")
    torn_state(path)
    with WAL(path, segment_size=16384) as wal:
        assert [p for _, _, p in wal.replay()] == [b"x" * 10]


def test_today_such_a_state_is_beyond_fsck_repair(tmp_path):
    """What an operator faces now: the node does not start, and fsck --repair exits 4."""
    path = str(tmp_path / "log")
    torn_state(path)
    with pytest.raises(CorruptionError, match="yet a valid record"):
        WAL(path, segment_size=16384)
    assert fsck([path, "--repair"]) == 4
