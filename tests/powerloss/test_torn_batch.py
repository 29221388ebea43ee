"""A power loss in the middle of an unacknowledged write of several blocks.

One append (or append_many batch, or group commit) is one write of several 4 KiB blocks, then
fdatasync. A power loss before that fdatasync returns may keep any subset of the blocks: the
page cache writes pages back in no set order, and an O_DIRECT write of two blocks is not
atomic either. When a later block survives and an earlier one does not, the segment shows a
zeroed record followed by valid ones. Each record says how many records were appended
between the last fdatasync before its write and itself (format.h), so recovery can tell that
those valid records belong to the torn writes (cut them: nothing of them was acknowledged) from
ones written after an fdatasync (corruption: such a write proves the earlier one was
synced). Found by tests/powerloss (random mode, 4 KiB blocks); before, the log refused to open
and fsck --repair exited 4. The same holds for several writes before one fdatasync (a batch
bigger than the buffer, sync "none"): the workload wal_buffered.
"""

import os

import pytest

from keyval.errors import CorruptionError
from keyval.fsck import main as fsck
from keyval.wal import WAL

BLOCK = 4096
SEGMENT = 16384
FIRST = b"x" * 10  # record 1, acknowledged; record 2 starts at offset 96


def torn_state(path: str, later_write: bool = False) -> str:
    """Record 1 durable, then one batch (records 2 and 3) written as one write over blocks 0
    and 1, and (``later_write``) record 4 appended after it; then block 0 as a power loss
    before the batch's fdatasync leaves it: zero after record 1 (its last synced content)."""
    with WAL(path, segment_size=SEGMENT, sync="always") as wal:
        wal.append(FIRST)
        seg = wal.segments()[-1]["path"]
        wal.append_many([b"a" * 5000, b"b" * 100])  # record 3 lies wholly in block 1
        if later_write:
            wal.append(b"c" * 100)
    with open(seg, "r+b") as f:
        f.seek(96)
        f.write(bytes(BLOCK - 96))
    return seg


def test_a_write_torn_by_a_power_loss_is_cut_not_called_corruption(tmp_path):
    path = str(tmp_path / "log")
    torn_state(path)
    with WAL(path, segment_size=SEGMENT) as wal:
        assert [p for _, _, p in wal.replay()] == [FIRST]
        assert wal.append(b"next") == 2  # the log goes on where the torn write began
    with WAL(path, segment_size=SEGMENT) as wal:
        assert [p for _, _, p in wal.replay()] == [FIRST, b"next"]


def test_fsck_names_the_torn_write_and_repair_cuts_it(tmp_path, capsys):
    path = str(tmp_path / "log")
    torn_state(path)
    assert fsck([path]) == 4  # left as it is: a torn tail is reported, not mended, by default
    assert "a power loss kept later blocks" in capsys.readouterr().out
    assert fsck([path, "--repair"]) == 1
    assert fsck([path]) == 0


def test_a_zeroed_block_with_a_later_write_after_it_is_corruption(tmp_path):
    path = str(tmp_path / "log")
    seg = torn_state(path, later_write=True)
    with pytest.raises(CorruptionError, match=r"record \(seq 4\) .* in a later write") as info:
        WAL(path, segment_size=SEGMENT)  # names record 4, not 3 (of the torn write)
    assert (info.value.path, info.value.offset) == (seg, 96)
    assert fsck([path, "--repair"]) == 4


@pytest.mark.parametrize("damage", ["flipped bit", "zeroed header"])
def test_damage_that_no_power_loss_leaves_is_corruption_within_one_write_too(tmp_path, damage):
    """A batch is one write, so its later records pass the write test; but a power loss
    zeroes whole sectors, and neither a flipped bit nor 20 zeroed bytes do that."""
    path = str(tmp_path / "log")
    with WAL(path, segment_size=SEGMENT, sync="always") as wal:
        wal.append(FIRST)
        seg = wal.segments()[-1]["path"]
        wal.append_many([os.urandom(300) for _ in range(5)])
    with open(seg, "r+b") as f:
        if damage == "flipped bit":
            f.seek(96 + 40)
            byte = f.read(1)[0]
            f.seek(96 + 40)
            f.write(bytes([byte ^ 1]))
        else:
            f.seek(96)
            f.write(bytes(20))
    with pytest.raises(CorruptionError, match="follows at offset") as info:
        WAL(path, segment_size=SEGMENT)
    assert "later write" not in str(info.value)  # all of one write: the bytes tell
    assert (info.value.path, info.value.offset) == (seg, 96)


def zero_first_block_after_first_record(seg: str) -> None:
    with open(seg, "r+b") as f:
        f.seek(96)
        f.write(bytes(BLOCK - 96))


def test_a_batch_bigger_than_the_buffer_is_one_write_for_recovery(tmp_path):
    """A batch larger than the write buffer reaches the file in several writes and one
    fdatasync: a power loss before it may lose a block of the first write and keep the later
    ones. Nothing of the batch was acknowledged, so it is a torn tail, not corruption (before,
    the index restarted at each write and the log refused to open)."""
    path = str(tmp_path / "log")
    with WAL(path, segment_size=1 << 20, sync="always", buffer_size=BLOCK * 4) as wal:
        wal.append(FIRST)
        seg = wal.segments()[-1]["path"]
        wal.append_many([bytes([65 + i]) * 6000 for i in range(6)])  # 3 writes of 2 records
        assert wal.stats()["writes"] >= 4  # FIRST's, then the batch's several
    zero_first_block_after_first_record(seg)
    with WAL(path, segment_size=1 << 20) as wal:
        assert [p for _, _, p in wal.replay()] == [FIRST]
    assert fsck([path]) == 0


@pytest.mark.parametrize("sync", ["none", "interval"])
def test_unsynced_writes_torn_by_a_power_loss_are_cut(tmp_path, sync):
    """With sync "none" the buffer goes to the file whenever it fills, with no fdatasync in
    between: every write since the last one is lost or kept block by block together."""
    path = str(tmp_path / "log")
    with WAL(path, segment_size=1 << 20, sync="always", buffer_size=BLOCK) as wal:
        wal.append(FIRST)
        seg = wal.segments()[-1]["path"]
    with WAL(path, segment_size=1 << 20, sync=sync, sync_interval=3600, buffer_size=BLOCK) as wal:
        for i in range(12):
            wal.append(bytes([65 + i]) * 1000)
        writes = wal.stats()["writes"]
        zero_first_block_after_first_record(seg)  # as if written back after later blocks
        assert writes >= 2  # several writes (and the rest at close), none synced in between
    with WAL(path, segment_size=1 << 20) as wal:
        assert [p for _, _, p in wal.replay()] == [FIRST]


def test_a_write_after_a_sync_still_proves_the_one_before(tmp_path):
    """The index counts back only to the last fdatasync: a record written after one is a
    later write, and a zeroed block before it is corruption."""
    path = str(tmp_path / "log")
    with WAL(path, segment_size=1 << 20, sync="none", buffer_size=BLOCK) as wal:
        wal.append(FIRST)
        seg = wal.segments()[-1]["path"]
        wal.sync()
        for i in range(6):
            wal.append(bytes([65 + i]) * 1000)
        wal.sync()  # the records above are durable: a record after this proves them
        wal.append(b"after the sync")
    zero_first_block_after_first_record(seg)
    with pytest.raises(CorruptionError, match=r"record \(seq 8\) .* in a later write") as info:
        WAL(path, segment_size=1 << 20)
    assert (info.value.path, info.value.offset) == (seg, 96)
