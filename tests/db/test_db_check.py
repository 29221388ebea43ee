"""check_file finds each kind of problem it claims to, in files broken by hand.

Each broken page is re-sealed with a valid checksum, so only the check under test can notice.
"""

from __future__ import annotations

import os

import pytest

from keyval.db import DB
from keyval.db.check import check_file, is_db_file
from keyval.db.page import (
    CHUNK_SLOT,
    HEADER_SIZE,
    PAGE_HEADER,
    TYPE_BRANCH,
    TYPE_CHUNK,
    TYPE_LEAF,
    TYPE_OVERFLOW,
    BucketHeader,
    build_page,
    decode_branch_body,
    decode_leaf_body,
    encode_branch_body,
    encode_leaf_body,
)

from .conftest import flip_bit, pages

PS = 512


@pytest.fixture
def built(tmp_path) -> str:
    """One commit into a fresh file: every page but the first root (page 2) is reachable."""
    path = str(tmp_path / "check.db")
    with DB(path, page_size=PS) as db, db.update() as tx:
        b = tx.create_bucket(b"b")
        for i in range(300):
            b.put(b"k%04d" % i, b"v" * 30)
        b.put(b"big", b"o" * 2000)
        b.create_bucket(b"paged").put(b"p" * 200, b"w" * 200)
    assert check_file(path) == []
    return path


def read_run(path: str, pgid: int) -> tuple[bytes, tuple]:
    with open(path, "rb") as f:
        f.seek(pgid * PS)
        head = f.read(PS)
        header = PAGE_HEADER.unpack_from(head)
        rest = f.read(header[6] * PS)
    return head + rest, header


def write_page(path: str, pgid: int, ptype: int, count: int, body: bytes) -> None:
    page = build_page(pgid, ptype, count, body, PS)
    with open(path, "r+b") as f:
        f.seek(pgid * PS)
        f.write(page)


def leaf(path: str, pgid: int) -> tuple[list, list]:
    buf, header = read_run(path, pgid)
    return decode_leaf_body(buf, HEADER_SIZE, header[5], len(buf), path, None)


def of_type(path: str, ptype: int) -> list[int]:
    return [p for p, t, _ in pages(path, PS) if t == ptype and p != 2]


def overflow_run(path: str, length: int) -> int:
    (pgid,) = [p for p in of_type(path, TYPE_OVERFLOW) if read_run(path, p)[1][5] == length]
    return pgid


def plain_leaves(path: str) -> list[int]:
    return [p for p in of_type(path, TYPE_LEAF) if leaf(path, p)[0][:1] != [b"big"]]


def messages(path: str) -> list[str]:
    return [str(f) for f in check_file(path)]


def test_clean_file_has_no_findings(built):
    assert check_file(built) == []


def test_is_db_file_sniffs_the_magic(built, tmp_path):
    other = tmp_path / "other"
    other.write_bytes(b"not a database" * 100)
    assert is_db_file(built)
    assert not is_db_file(str(other))
    assert not is_db_file(str(tmp_path))
    assert not is_db_file(str(tmp_path / "missing"))


def test_missing_file_is_an_os_error_not_a_finding(tmp_path):
    with pytest.raises(FileNotFoundError):
        check_file(str(tmp_path / "missing"))


def test_bad_checksum_is_found_at_the_page(built):
    pgid = plain_leaves(built)[3]
    flip_bit(built, pgid * PS + 300)
    findings = check_file(built)
    assert any(f.offset == pgid * PS and "checksum" in f.message for f in findings)
    assert all(f.path == built for f in findings)


def test_keys_out_of_order_within_a_page(built):
    pgid = plain_leaves(built)[2]
    keys, vals = leaf(built, pgid)
    keys[1], keys[2] = keys[2], keys[1]
    write_page(built, pgid, TYPE_LEAF, len(keys), encode_leaf_body(keys, vals))
    findings = check_file(built)
    assert [f.offset for f in findings] == [pgid * PS]
    assert "out of order" in findings[0].message


def test_key_outside_its_parents_bounds(built):
    pgid = plain_leaves(built)[2]
    keys, vals = leaf(built, pgid)
    keys[-1] = b"k9999"  # still sorted within the page, but belongs to a later sibling
    write_page(built, pgid, TYPE_LEAF, len(keys), encode_leaf_body(keys, vals))
    assert any("not below its parent's bound" in m for m in messages(built))


def test_page_reachable_twice_and_the_page_it_replaced_leaked(built):
    branch = of_type(built, TYPE_BRANCH)[0]
    buf, header = read_run(built, branch)
    keys, children = decode_branch_body(buf, HEADER_SIZE, header[5], len(buf), built, None)
    lost = children[2]
    children[2] = children[1]
    write_page(built, branch, TYPE_BRANCH, len(keys), encode_branch_body(keys, children))
    found = messages(built)
    assert any(f"page {children[1]} is reachable twice" in m for m in found)
    assert any(f"pages {lost}.." in m and "leaked" in m for m in found)


def _chunk(path: str) -> tuple[int, bytearray]:
    (pgid,) = of_type(path, TYPE_CHUNK)
    buf, _ = read_run(path, pgid)
    return pgid, bytearray(buf[HEADER_SIZE + CHUNK_SLOT.size : PS])


def _write_chunk(path: str, pgid: int, bits: bytearray) -> None:
    count = sum(bin(b).count("1") for b in bits)
    write_page(path, pgid, TYPE_CHUNK, count, CHUNK_SLOT.pack(0) + bytes(bits))


def test_free_page_that_is_reachable(built):
    pgid, bits = _chunk(built)
    victim = plain_leaves(built)[0]
    bits[victim // 8] |= 1 << (victim % 8)
    _write_chunk(built, pgid, bits)
    assert any(f"page {victim} is both free and reachable" in m for m in messages(built))


def test_leaked_page_neither_reachable_nor_free(built):
    pgid, bits = _chunk(built)
    assert bits[0] & 0b100  # page 2, the first root, is free after the first commit
    bits[0] &= ~0b100 & 0xFF
    _write_chunk(built, pgid, bits)
    findings = check_file(built)
    assert [(f.offset, "leaked" in f.message) for f in findings] == [(2 * PS, True)]


def test_free_page_past_the_high_water_mark(built):
    pgid, bits = _chunk(built)
    with DB(built) as db:
        hwm = db._meta.hwm
    bits[(hwm + 3) // 8] |= 1 << ((hwm + 3) % 8)
    _write_chunk(built, pgid, bits)
    assert any("past the high-water mark" in m for m in messages(built))


def test_bad_standby_meta(built):
    with DB(built) as db:
        standby = 1 - db._meta.slot
    flip_bit(built, standby * PS + 200)
    findings = check_file(built)
    assert [f.offset for f in findings] == [standby * PS]


def test_truncated_file(built):
    size = os.path.getsize(built)
    os.truncate(built, size - PS)
    found = check_file(built)
    assert any(f.offset == size - PS and "cut short" in f.message for f in found)


def test_bucket_key_count_mismatch(built):
    for pgid in of_type(built, TYPE_LEAF):
        keys, vals = leaf(built, pgid)
        if b"b" in keys:
            break
    i = keys.index(b"b")
    header = vals[i]
    vals[i] = BucketHeader.of_page(header.root, header.count + 1)
    write_page(built, pgid, TYPE_LEAF, len(keys), encode_leaf_body(keys, vals))
    assert any("counts 302 keys, its tree holds 301" in m for m in messages(built))


def test_overflow_run_of_the_wrong_length(built):
    pgid = overflow_run(built, 2000)
    buf, header = read_run(built, pgid)
    value = buf[HEADER_SIZE : HEADER_SIZE + header[5]]
    page = build_page(pgid, TYPE_OVERFLOW, len(value) - 1, value[:-1], PS)
    with open(built, "r+b") as f:
        f.seek(pgid * PS)
        f.write(page)
    assert any(f"overflow page {pgid} holds 1999" in m for m in messages(built))


def test_page_of_the_wrong_type_where_a_node_is_expected(built):
    overflow = overflow_run(built, 2000)
    branch = of_type(built, TYPE_BRANCH)[0]
    buf, header = read_run(built, branch)
    keys, children = decode_branch_body(buf, HEADER_SIZE, header[5], len(buf), built, None)
    children[0] = overflow
    write_page(built, branch, TYPE_BRANCH, len(keys), encode_branch_body(keys, children))
    assert any("overflow page, referenced as a tree node" in m for m in messages(built))


def test_empty_leaf_that_is_not_a_root(built):
    pgid = plain_leaves(built)[1]
    write_page(built, pgid, TYPE_LEAF, 0, b"")
    found = messages(built)
    assert any(f"leaf page {pgid} is empty but not the root" in m for m in found)
    assert any("counts 301 keys" in m for m in found)


def test_leaves_at_different_depths(built):
    branch = of_type(built, TYPE_BRANCH)[0]
    buf, header = read_run(built, branch)
    keys, children = decode_branch_body(buf, HEADER_SIZE, header[5], len(buf), built, None)
    child, _ = read_run(built, children[0])
    assert PAGE_HEADER.unpack_from(child)[2] == TYPE_LEAF
    # Put a one-child branch between a branch and its first leaf: that leaf is now deeper.
    # Page 2 (free) holds it, which the check also reports; the depth finding is the point.
    spare = 2
    write_page(built, spare, TYPE_BRANCH, 1, encode_branch_body([keys[0]], [children[0]]))
    children[0] = spare
    write_page(built, branch, TYPE_BRANCH, len(keys), encode_branch_body(keys, children))
    found = messages(built)
    assert any(f"leaf page {children[0]} is at depth" in m for m in found) or any(
        "other leaves at" in m for m in found
    )


def test_fsck_cli_on_a_db_file_exit_codes_and_json(built, tmp_path, capsys):
    import json

    from keyval.fsck import main as fsck

    assert fsck([built, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["kind"], report["status"], report["problems"]) == ("db", "clean", [])
    pgid = plain_leaves(built)[3]
    flip_bit(built, pgid * PS + 300)
    assert fsck([built, "--json"]) == 4
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "errors"
    problem = report["problems"][0]
    assert (problem["path"], problem["offset"]) == (built, pgid * PS)
    assert problem["repairable"] is False
    assert fsck([built, "--repair"]) == 4  # a damaged page is never "repaired" away
    capsys.readouterr()
    stranger = tmp_path / "notes.txt"
    stranger.write_bytes(b"not a database")
    assert fsck([str(stranger), "--json"]) == 8
    assert json.loads(capsys.readouterr().out)["status"] == "failed"
