"""Leaf and branch pages encoded in C: one call per page for the commit path.

A commit writes every page it touched; building each in Python (element table, packed data,
padding, checksum) costs more than the rest of its handling. These wrappers hand the C encoder
(csrc/db/encode.c) what C-speed builtins can gather without a Python loop per entry: the packed
bytes and their lengths. The pages are byte for byte those of :func:`.page.build_page` with
:func:`.page.encode_leaf_body` (plain values) or :func:`.page.encode_branch_body`, which the
tests check. ``AVAILABLE`` is False without the extension; callers use the Python codec then.

Plain leaves and branches skip even that gathering where the Python-API encoders of
csrc/db/pyencode.c are there: ``leaf_parts`` / ``branch_parts`` are then the lists themselves
and their size, and ``encode_leaf`` / ``encode_branch`` read them directly (a 1,000-put commit
over 1M keys rewrites some 200 branches of 150 children, whose conversion to C arrays by cffi
cost more than their encoding).
"""

from __future__ import annotations

from .page import BRANCH_ELEMENT, HEADER_SIZE, LEAF_ELEMENT, span_for
from .pagemap import AVAILABLE, PY_EXPORTS, ffi, lib

__all__ = [
    "AVAILABLE",
    "branch_parts",
    "branch_size",
    "encode_branch",
    "encode_leaf",
    "encode_packed_branch",
    "encode_packed_leaf",
    "leaf_parts",
    "leaf_size",
    "packed_branch_parts",
    "packed_leaf_parts",
]


_leaf_size = PY_EXPORTS.get("leaf_size")
_encode_leaf_lists = PY_EXPORTS.get("encode_leaf")
_encode_branch_lists = PY_EXPORTS.get("encode_branch")
# The list encoder itself (None without it), for the tests of the input it refuses.
PY_EXPORTS_ENCODE_BRANCH = _encode_branch_lists
# Encoded sizes of a plain leaf's entries / a branch's keys, or None without the Python-API
# encoder: leaf_size(keys, vals), branch_size(keys).
leaf_size = _leaf_size
branch_size = PY_EXPORTS.get("branch_size")


def leaf_parts(keys: list[bytes], vals: list[bytes]) -> tuple:
    """What :func:`encode_leaf` needs for a plain leaf's entries, its last item the encoded
    size: (keys, vals, size) for the Python-API encoder, else (packed keys and values, their
    lengths, size) for kvdb_encode_leaf. The lists must not change until then."""
    if _leaf_size is not None:
        return keys, vals, _leaf_size(keys, vals)
    return packed_leaf_parts(keys, vals)


def packed_leaf_parts(keys: list[bytes], vals: list[bytes]) -> tuple[bytes, list[int], int]:
    """(packed keys and values, their lengths, encoded size): kvdb_encode_leaf's input."""
    n = len(keys)
    data: list = [None] * (2 * n)
    data[0::2] = keys
    data[1::2] = vals
    packed = b"".join(data)
    return packed, list(map(len, data)), HEADER_SIZE + LEAF_ELEMENT.size * n + len(packed)


def branch_parts(keys: list[bytes]) -> tuple:
    """What :func:`encode_branch` needs for a branch's keys, its last item the encoded size:
    (keys, None, size) for the Python-API encoder, else :func:`packed_branch_parts`. The list
    must not change until then."""
    if _encode_branch_lists is not None and branch_size is not None:
        return keys, None, branch_size(keys)
    return packed_branch_parts(keys)


def packed_branch_parts(keys: list[bytes]) -> tuple[bytes, list[int], int]:
    """(packed keys, their lengths, encoded size): kvdb_encode_branch's input."""
    packed = b"".join(keys)
    return packed, list(map(len, keys)), HEADER_SIZE + BRANCH_ELEMENT.size * len(keys) + len(packed)


def _run(size: int, page_size: int) -> bytearray:
    return bytearray(span_for(size, page_size) * page_size)


def encode_leaf(pgid: int, parts: tuple[bytes, list[int], int], page_size: int) -> bytearray:
    """The sealed leaf run at ``pgid`` for :func:`leaf_parts`' ``parts``.

    Raises ValueError for entries the format cannot hold (a key longer than 65535 bytes)."""
    if _encode_leaf_lists is not None:
        keys, vals, _ = parts
        return _encode_leaf_lists(pgid, keys, vals, page_size)
    return encode_packed_leaf(pgid, parts, page_size)


def encode_packed_leaf(pgid: int, parts: tuple[bytes, list[int], int], page_size: int) -> bytearray:
    """:func:`encode_leaf` through kvdb_encode_leaf, for :func:`packed_leaf_parts`' parts."""
    packed, lens, size = parts
    out = _run(size, page_size)
    rc = lib.kvdb_encode_leaf(
        ffi.from_buffer(out), len(out), page_size, pgid, packed, len(packed), lens, len(lens)
    )
    if rc != len(out):
        raise ValueError(f"leaf page {pgid} cannot be encoded (code {rc})")
    return out


def encode_branch(pgid: int, parts: tuple, children: list[int], page_size: int) -> bytearray:
    """The sealed branch run at ``pgid`` for :func:`branch_parts`' ``parts`` and the children.

    Raises ValueError for keys the format cannot hold, or a child count that does not match."""
    if parts[1] is None:
        keys = parts[0]
        if len(children) != len(keys):
            raise ValueError(f"branch page {pgid} has {len(keys)} keys, {len(children)} children")
        return _encode_branch_lists(pgid, keys, children, page_size)
    return encode_packed_branch(pgid, parts, children, page_size)


def encode_packed_branch(
    pgid: int, parts: tuple[bytes, list[int], int], children: list[int], page_size: int
) -> bytearray:
    """:func:`encode_branch` through kvdb_encode_branch, for :func:`packed_branch_parts`."""
    packed, lens, size = parts
    if len(children) != len(lens):
        raise ValueError(f"branch page {pgid} has {len(lens)} keys, {len(children)} children")
    out = _run(size, page_size)
    rc = lib.kvdb_encode_branch(
        ffi.from_buffer(out),
        len(out),
        page_size,
        pgid,
        packed,
        len(packed),
        lens,
        children,
        len(lens),
    )
    if rc != len(out):
        raise ValueError(f"branch page {pgid} cannot be encoded (code {rc})")
    return out
