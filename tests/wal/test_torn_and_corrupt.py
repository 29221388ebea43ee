"""Torn tails are cut; any other bad byte is corruption, named by file and offset."""

import os
import pathlib
import random

import pytest

from keyval.errors import CorruptionError, ReadOnlyError
from keyval.fsck import main as fsck
from keyval.wal import WAL

from .conftest import payload, segment_files

SEGMENT = 8192
HEADER = 64


def build(path, n, segment=SEGMENT):
    """A closed log of n records; returns the (offset, size) of each record in its file."""
    with WAL(path, segment_size=segment, sync="none") as wal:
        for i in range(1, n + 1):
            wal.append(payload(i))
        layout = []
        for seg in wal.segments():
            off = HEADER
            for seq in range(seg["first_seq"], seg["first_seq"] + seg["records"]):
                size = (20 + len(payload(seq)) + 7) & ~7
                layout.append((seg["path"], off, size))
                off += size
    return layout


def records(path, segment=SEGMENT):
    with WAL(path, segment_size=segment, sync="none") as wal:
        return [p for _, _, p in wal.replay()]


def zero_range(file, start, end):
    with open(file, "r+b") as f:
        f.seek(start)
        f.write(b"\0" * (end - start))


def flip_bit(file, offset, bit):
    with open(file, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ (1 << bit)]))


def test_last_record_cut_at_every_byte_reopens_with_all_earlier_records(tmp_path):
    pristine = tmp_path / "pristine"
    layout = build(str(pristine), 40)
    file, off, size = layout[-1]
    name = os.path.basename(file)
    meaningful = 20 + len(payload(40))  # the rest of `size` is padding, zero either way
    for keep in range(meaningful):  # keep `keep` bytes of the last record, as a torn write would
        work = tmp_path / f"cut{keep}"
        os.system(f"cp -r {pristine} {work}")
        zero_range(str(work / name), off + keep, off + size)
        got = records(str(work))
        assert got == [payload(i) for i in range(1, 40)], f"cut at byte {keep}"
        # the torn bytes were zeroed: the log now opens clean and fsck agrees
        assert fsck([str(work)]) == 0
        with WAL(str(work), segment_size=SEGMENT) as wal:
            assert wal.append(b"after") == 40


def test_torn_tail_is_reported_and_counted(tmp_path):
    layout = build(str(tmp_path / "log"), 10)
    file, off, size = layout[-1]
    zero_range(file, off + 20, off + size)  # header written, payload lost
    if size > 24:
        with WAL(str(tmp_path / "log"), segment_size=SEGMENT) as wal:
            path, at, nbytes = wal.torn_tail
            assert (path, at) == (file, off) and nbytes > 0


@pytest.mark.parametrize("seed", range(6))
def test_a_flipped_bit_with_a_valid_record_after_it_is_corruption(tmp_path, seed):
    rng = random.Random(seed)
    layout = build(str(tmp_path / "log"), 400)  # several segments
    victim = rng.randrange(len(layout) - 1)  # any record but the very last
    file, off, _size = layout[victim]
    flip_at = off + rng.randrange(20 + len(payload(victim + 1)))
    flip_bit(file, flip_at, rng.randrange(8))
    before = pathlib.Path(file).read_bytes()
    with pytest.raises(CorruptionError) as info:
        WAL(str(tmp_path / "log"), segment_size=SEGMENT)
    assert info.value.path == file
    assert info.value.offset == off
    assert pathlib.Path(file).read_bytes() == before, "a corrupt log must not be modified on open"
    assert fsck([str(tmp_path / "log")]) == 4
    assert fsck([str(tmp_path / "log"), "--repair"]) == 4
    assert pathlib.Path(file).read_bytes() == before, (
        "fsck --repair must not cut mid-log corruption"
    )


def test_a_flipped_bit_in_a_segment_header_is_corruption(tmp_path):
    layout = build(str(tmp_path / "log"), 400)
    second = sorted({f for f, _, _ in layout})[1]
    flip_bit(second, 20, 3)
    with pytest.raises(CorruptionError) as info:
        WAL(str(tmp_path / "log"), segment_size=SEGMENT)
    assert (info.value.path, info.value.offset) == (second, 0)


def test_a_zeroed_record_in_the_middle_of_the_last_segment_is_corruption(tmp_path):
    layout = build(str(tmp_path / "log"), 30)
    file, off, size = layout[10]
    zero_range(file, off, off + size)
    with pytest.raises(CorruptionError) as info:
        WAL(str(tmp_path / "log"), segment_size=SEGMENT)
    assert (info.value.path, info.value.offset) == (file, off)


def test_fsck_names_every_bad_record(tmp_path):
    layout = build(str(tmp_path / "log"), 400)
    first_file = layout[0][0]
    bad = [layout[i] for i in (5, 20, 35) if layout[i][0] == first_file]
    for file, off, _ in bad:
        flip_bit(file, off + 10, 0)  # inside the seq field
    from keyval.wal.check import check_dir

    found = [(p.path, p.offset) for p in check_dir(str(tmp_path / "log"))]
    for file, off, _ in bad:
        assert (file, off) in found


def test_corruption_in_a_rotated_segment_tail_is_caught_by_the_gap_it_leaves(tmp_path):
    layout = build(str(tmp_path / "log"), 400)
    files = segment_files(str(tmp_path / "log"))
    last_in_first = max((r for r in layout if r[0] == files[0]), key=lambda r: r[1])
    file, off, size = last_in_first
    flip_bit(file, off + size - 8 if size > 28 else off + 4, 1)
    with pytest.raises(CorruptionError):
        WAL(str(tmp_path / "log"), segment_size=SEGMENT)


def test_replay_rechecks_crcs_of_bytes_that_changed_after_open(tmp_path):
    path = str(tmp_path / "log")
    layout = build(path, 50)
    with WAL(path, segment_size=SEGMENT, sync="none") as wal:
        file, off, _ = layout[20]
        flip_bit(file, off + 12, 2)  # rot after the open's verification
        seen = []
        with pytest.raises(CorruptionError) as info:
            for seq, _, _ in wal.replay():
                seen.append(seq)
        assert (info.value.path, info.value.offset) == (file, off)
        assert seen == list(range(1, 21))  # every record before the rotten one, in order


def test_a_zeroed_record_in_an_earlier_segment_is_named_where_it_is(tmp_path):
    """Zeros normally end a full segment; a valid record after them in the same segment means
    records were zeroed there. Open and fsck name that file and offset, not the gap that
    shows at the next segment's start."""
    path = str(tmp_path / "log")
    layout = build(path, 400)
    first_file = layout[0][0]
    assert len({f for f, _, _ in layout}) > 2
    file, off, size = layout[3]
    assert file == first_file
    zero_range(file, off, off + size)
    with pytest.raises(CorruptionError) as info:
        WAL(path, segment_size=SEGMENT)
    assert (info.value.path, info.value.offset) == (file, off)
    assert "zeroed" in str(info.value)
    from keyval.wal.check import check_dir

    found = [(p.path, p.offset) for p in check_dir(path)]
    assert found[0] == (file, off)
    assert fsck([path]) == 4


def test_fsck_cli_on_a_wal_dir_json(tmp_path, capsys):
    import json

    path = str(tmp_path / "log")
    layout = build(path, 100)
    assert fsck([path, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["kind"], report["status"], report["problems"]) == ("wal", "clean", [])
    file, off, _ = layout[20]
    flip_bit(file, off + 30, 2)
    assert fsck([path, "--json"]) == 4
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "errors"
    assert [(p["path"], p["offset"], p["repairable"]) for p in report["problems"]] == [
        (file, off, False)
    ]


def _interrupted_cut(wal_dir: str, records: list[bytes], cut: int) -> str:
    """A log of ``records`` (one append_many batch) whose truncate_back(cut) stopped after its
    intent reached the bounds file: the state a crash there leaves (an injected write error
    right after the bounds write). Returns the segment's path."""
    wal = WAL(wal_dir, segment_size=1 << 20, sync="always")
    wal.append_many(records)
    path = wal.segments()[-1]["path"]
    wal.inject_fault("write", after=1)  # the bounds file is written, zeroing the tail fails
    with pytest.raises(ReadOnlyError):
        wal.truncate_back(cut)
    wal.close()
    return path


def test_an_interrupted_cut_does_not_hide_a_damaged_record_it_keeps(tmp_path):
    # Open finishes the cut, and bytes of records after it are expected then; a bad record
    # before it is damage as anywhere else, never zeroed away with them.
    records = [b"record-%03d" % i * 4 for i in range(1, 101)]
    path = _interrupted_cut(str(tmp_path / "log"), records, 90)
    data = bytearray(pathlib.Path(path).read_bytes())
    at = data.find(b"record-050")
    data[at] ^= 0xFF
    pathlib.Path(path).write_bytes(data)
    with pytest.raises(CorruptionError) as info:
        WAL(str(tmp_path / "log"))
    assert info.value.path == path and info.value.offset == at - 20


def test_an_interrupted_cut_keeps_its_last_record_whose_flags_rewrite_tore(tmp_path):
    # truncate_back rewrites the header of the last record it keeps (its "more of the batch
    # follows" flag goes). A crash tearing that write leaves the new flags with the old CRC
    # (or the reverse): the record is whole, so open keeps it and finishes the rewrite.
    records = [b"batch-%02d" % i for i in range(1, 9)]
    path = _interrupted_cut(str(tmp_path / "log"), records, 5)
    data = bytearray(pathlib.Path(path).read_bytes())
    flags = data.find(b"batch-05") - 20 + 17
    assert data[flags] == 1  # "continues": record 5 was inside the batch
    data[flags] = 0  # the new flags reached the disk, the new CRC did not
    pathlib.Path(path).write_bytes(data)
    with WAL(str(tmp_path / "log")) as wal:
        assert [p for _, _, p in wal.replay()] == records[:5]
    assert fsck([str(tmp_path / "log")]) == 0
    with WAL(str(tmp_path / "log")) as wal:
        assert wal.last_seq == 5
        wal.append(b"after")  # a new record, not part of the cut batch
        assert [p for _, _, p in wal.replay(5)] == [b"batch-05", b"after"]


@pytest.mark.parametrize("keep", ["used", "half"])
def test_a_segment_cut_shorter_than_it_was_made_is_corruption(tmp_path, keep):
    # Segments are written whole before they get their name and never shortened. One cut
    # down to its used bytes (or into them) read as a clean log that had simply ended
    # there: the records past the cut, acknowledged, were gone and fsck said "clean".
    path = str(tmp_path / "log")
    with WAL(path, segment_size=1 << 16, sync="always") as wal:
        for i in range(1, 6):
            wal.append(b"old%d" % i)
        used = wal.segments()[-1]["bytes"]
        for i in range(6, 9):
            wal.append(b"new%d" % i)
        seg = wal.segments()[-1]["path"]
    cut = used if keep == "used" else used // 2
    os.truncate(seg, cut)
    with pytest.raises(CorruptionError) as info:
        WAL(path, segment_size=1 << 16)
    assert (info.value.path, info.value.offset) == (seg, cut)
    assert "cut short" in str(info.value)
    assert fsck([path]) == 4
    assert fsck(["--repair", path]) == 4  # never "mended" by dropping acknowledged records
    assert os.path.getsize(seg) == cut


def test_fsck_agrees_with_open_on_a_cut_whose_segment_removal_a_power_loss_undid(tmp_path):
    # Open finishes an interrupted truncate_back: it unlinks the segments after the cut, then
    # zeroes the tail of the one that keeps it. With no directory fsync in between, a power
    # loss could keep the zeroing and undo the unlinks (found by tools/powerloss, double
    # crash): a gap before segments open drops unread anyway. fsck called that damage it
    # could not repair (exit 4 even with --repair) while the log opened fine.
    path = str(tmp_path / "log")
    recs = [b"rec-%03d" % i * 12 for i in range(1, 61)]
    with WAL(path, segment_size=2048, sync="always") as wal:
        for r in recs:
            wal.append(r)
        segs = wal.segments()
    assert len(segs) >= 3
    last = segs[-1]
    cut = last["first_seq"] - 3  # in the segment before the last
    assert segs[-2]["first_seq"] <= cut
    saved = pathlib.Path(last["path"]).read_bytes()
    wal = WAL(path, segment_size=2048, sync="always")
    wal.inject_fault("write", after=1)  # the bounds file is written, zeroing the tail fails
    with pytest.raises(ReadOnlyError):
        wal.truncate_back(cut)
    wal.close()
    assert not os.path.exists(last["path"])
    kept = pathlib.Path(segs[-2]["path"])
    data = bytearray(kept.read_bytes())
    at = data.find(recs[cut]) - 20  # record cut + 1
    data[at:] = bytes(len(data) - at)  # the zeroing reached the disk...
    kept.write_bytes(data)
    pathlib.Path(last["path"]).write_bytes(saved)  # ...the unlink did not
    assert fsck([path]) == 4  # an interrupted cut, which opening finishes
    assert fsck([path, "--repair"]) == 1
    assert fsck([path]) == 0
    assert records(path, segment=2048) == recs[:cut]
