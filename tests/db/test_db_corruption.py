"""Bad input on disk: every damaged page is reported with its offset, never read as data."""

from __future__ import annotations

import os
import random
import shutil

import pytest

from keyval.db import DB
from keyval.db.check import check_file, is_db_file
from keyval.db.meta import Meta
from keyval.db.page import (
    CHECKSUM,
    HEADER_SIZE,
    META_BODY,
    PAGE_SIZE_OFFSET,
    TYPE_FREELIST,
    TYPE_META,
    VERSION_OFFSET,
    build_page,
)
from keyval.errors import CorruptionError

from .conftest import dump, flip_bit, pages

PS = 512


@pytest.fixture
def sample(tmp_path) -> tuple[str, dict]:
    """A file with branches, leaves, an overflow run, nested and inline buckets, a freelist."""
    path = str(tmp_path / "sample.db")
    with DB(path, page_size=PS) as db:
        with db.update() as tx:
            b = tx.create_bucket(b"b")
            for i in range(400):
                b.put(b"k%04d" % i, b"v" * (i % 50))
            b.put(b"big", os.urandom(3000))
            b.create_bucket(b"inline").put(b"x", b"y")
        with db.update() as tx:
            b = tx.bucket(b"b")
            for i in range(0, 400, 5):
                b.delete(b"k%04d" % i)
        content = dump(db)
    return path, content


def read_all(path: str) -> dict:
    with DB(path) as db:
        return dump(db)


def run_start(path: str, offset: int) -> int:
    """Offset of the first page of the run that holds byte ``offset``."""
    start = 0
    for pgid, _, overflow in pages(path, PS):
        if pgid * PS <= offset < (pgid + overflow + 1) * PS:
            start = pgid * PS
    return start


def test_bit_flip_anywhere_in_a_page_is_corruption_at_that_page(sample, tmp_path):
    path, content = sample
    with DB(path) as db:
        free = set(db._freelist.free)  # just opened: every free page is reusable
    size = os.path.getsize(path)
    rng = random.Random(7)
    for trial in range(150):
        copy = str(tmp_path / f"flip{trial}.db")
        shutil.copy(path, copy)
        offset = rng.randrange(2 * PS, size)  # meta pages have their own test
        flip_bit(copy, offset, rng.randrange(8))
        if offset // PS in free:
            assert read_all(copy) == content  # a free page is never read
        else:
            with pytest.raises(CorruptionError) as e:
                read_all(copy)
            assert e.value.path == copy
            assert e.value.offset == run_start(path, offset), (offset, e.value)
        os.unlink(copy)


def test_flipped_active_meta_falls_back_to_the_previous_commit_and_says_so(sample, caplog):
    path, content = sample
    with DB(path) as db:
        txid = db._meta.txid
        with db.update() as tx:
            tx.bucket(b"b").put(b"after", b"x")
    slot = (txid + 1) % 2
    flip_bit(path, slot * PS + 100)
    with caplog.at_level("WARNING", logger="keyval.db"), DB(path) as db:
        assert db._meta.txid == txid
        assert dump(db) == content
    # Not silent: a commit may have been lost (or a crash cut it short); the log names where.
    (record,) = [r for r in caplog.records if r.name == "keyval.db"]
    assert path in record.getMessage() and f"offset {slot * PS}" in record.getMessage()
    assert f"transaction {txid}" in record.getMessage()


def test_both_metas_bad_is_corruption_at_offset_zero(sample):
    path, _ = sample
    flip_bit(path, 100)
    flip_bit(path, PS + 100)
    with pytest.raises(CorruptionError) as e:
        DB(path)
    assert e.value.offset == 0
    assert "checksum" in str(e.value)


@pytest.mark.parametrize("keep", [PS * 3 + 17, PS * 3, 3 * PS // 2, 100])
def test_truncated_file_is_corruption(sample, keep):
    path, _ = sample
    os.truncate(path, keep)
    with pytest.raises(CorruptionError, match=r"cut short|checksum|missing"):
        read_all(path)


def test_truncated_last_page_names_the_file_size(sample):
    path, _ = sample
    size = os.path.getsize(path)
    os.truncate(path, size - 1)
    with pytest.raises(CorruptionError, match="cut short") as e:
        DB(path)
    assert e.value.offset == size - 1


def _rewrite_metas(path: str, change) -> None:
    with open(path, "r+b") as f:
        for slot in (0, 1):
            f.seek(slot * PS)
            page = bytearray(f.read(PS))
            change(page)
            CHECKSUM.pack_into(page, 0, 0)
            body = bytes(page[HEADER_SIZE:])
            sealed = build_page(slot, TYPE_META, 0, body, PS)
            f.seek(slot * PS)
            f.write(sealed)


def test_invalid_page_size_field_is_corruption(sample):
    path, _ = sample
    _rewrite_metas(
        path,
        lambda p: p.__setitem__(
            slice(PAGE_SIZE_OFFSET, PAGE_SIZE_OFFSET + 4), (1000).to_bytes(4, "little")
        ),
    )
    with pytest.raises(CorruptionError, match="invalid page size 1000"):
        DB(path)


def test_page_size_field_changed_to_another_size_is_corruption(sample):
    path, _ = sample
    for slot in (0, 1):
        with open(path, "r+b") as f:
            f.seek(slot * PS + PAGE_SIZE_OFFSET)
            f.write((1024).to_bytes(4, "little"))
    with pytest.raises(CorruptionError):
        DB(path)


def test_future_format_version_is_refused_with_a_clear_error(sample):
    path, _ = sample
    _rewrite_metas(
        path,
        lambda p: p.__setitem__(
            slice(VERSION_OFFSET, VERSION_OFFSET + 4), (2).to_bytes(4, "little")
        ),
    )
    with pytest.raises(CorruptionError, match="version 2 is newer"):
        DB(path)
    findings = check_file(path)
    assert len(findings) == 1 and "newer" in str(findings[0])
    assert is_db_file(path)


def test_one_future_version_meta_is_enough_to_refuse(sample):
    path, _ = sample
    with open(path, "r+b") as f:
        f.seek(PS + VERSION_OFFSET)
        f.write((9).to_bytes(4, "little"))
    with pytest.raises(CorruptionError, match="version 9 is newer"):
        DB(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"hello world\n" * 1000, os.urandom(8192), b"SQLite format 3\x00" + bytes(4096)],
    ids=["tiny", "text", "random", "sqlite"],
)
def test_non_keyval_file_is_refused(tmp_path, content):
    path = str(tmp_path / "other")
    with open(path, "wb") as f:
        f.write(content or b"x")
    with pytest.raises(CorruptionError, match=r"not a keyval database|cut short"):
        DB(path)
    assert not is_db_file(path)
    assert check_file(path)
    with open(path, "rb") as f:
        assert f.read() == (content or b"x")  # refused without writing


def test_meta_pointing_past_its_hwm_is_corruption(sample):
    path, _ = sample
    with DB(path) as db:
        meta = db._meta
    bad = Meta(PS, meta.hwm + 5, meta.freelist, meta.hwm, meta.txid)
    with open(path, "r+b") as f:
        f.seek(meta.slot * PS)
        f.write(bad.encode())
    flip_bit(path, (1 - meta.slot) * PS + 100)
    with pytest.raises(CorruptionError, match="outside hwm"):
        DB(path)


def test_freelist_root_claiming_more_slots_than_fit_is_corruption(sample):
    """A count no page can hold, under a valid checksum (a bug, not a flipped bit): refused
    with the page's offset before any table of that size is built, and fsck says the same."""
    path, _ = sample
    with DB(path) as db:
        root = db._meta.freelist
    assert root
    with open(path, "r+b") as f:
        f.seek(root * PS)
        page = f.read(PS)
        body = page[HEADER_SIZE:]
        f.seek(root * PS)
        f.write(build_page(root, TYPE_FREELIST, 2**31, body, PS))
    with pytest.raises(CorruptionError, match="more than fit") as e:
        read_all(path)
    assert (e.value.path, e.value.offset) == (path, root * PS)
    assert any("more than fit" in str(f) for f in check_file(path))


def test_meta_body_layout_is_as_documented(sample):
    path, _ = sample
    with open(path, "rb") as f:
        head = f.read(HEADER_SIZE + META_BODY.size)
    magic, version, page_size, root, _, hwm, txid = META_BODY.unpack_from(head, HEADER_SIZE)
    assert (magic, version, page_size) == (b"KEYVALDB", 1, PS)
    assert txid % 2 == 0 and 2 <= root < hwm
