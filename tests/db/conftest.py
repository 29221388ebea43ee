"""Fixtures and helpers shared by the keyval.db tests: real files in a temporary directory."""

from __future__ import annotations

import os

import pytest

from keyval.db import DB
from keyval.db.page import HEADER_SIZE, PAGE_HEADER


@pytest.fixture
def path(tmp_path) -> str:
    return str(tmp_path / "test.db")


@pytest.fixture
def db(path):
    d = DB(path, page_size=512)
    yield d
    d.close()


def dump_bucket(bucket) -> dict:
    """A bucket as {"kv": {key: value}, "sub": {name: dump}} (the models' shape)."""
    out = {"kv": dict(bucket.items()), "sub": {}}
    for name in bucket.buckets():
        out["sub"][name] = dump_bucket(bucket.bucket(name))
    return out


def dump(db: DB) -> dict:
    """Every bucket of ``db``, as in :func:`dump_bucket`, keyed by top-level name."""
    with db.view() as tx:
        return {name: dump_bucket(tx.bucket(name)) for name in tx.buckets()}


def pages(path: str, page_size: int) -> list[tuple[int, int, int]]:
    """(page id, type, overflow) of every run that starts a page, walking the file in order."""
    out = []
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        pgid = 0
        while (pgid + 1) * page_size <= size:
            f.seek(pgid * page_size)
            head = f.read(HEADER_SIZE)
            _, pid, ptype, _, _, _, overflow = PAGE_HEADER.unpack(head)
            out.append((pgid, ptype, overflow))
            pgid += overflow + 1 if pid == pgid else 1
    return out


def flip_bit(path: str, offset: int, bit: int = 0) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ (1 << bit)]))
