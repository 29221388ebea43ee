"""The two meta pages: what a committed database is, and how open picks the newest valid one.

The layout and validity rule are specified in :mod:`keyval.db.page`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from keyval.errors import CorruptionError

from .page import (
    HEADER_SIZE,
    MAGIC,
    MAGIC_OFFSET,
    MAX_PAGE_SIZE,
    META_BODY,
    META_SIZE,
    MIN_PAGE_SIZE,
    PAGE_HEADER,
    PAGE_SIZE_OFFSET,
    TYPE_META,
    VERSION,
    VERSION_FIELD,
    VERSION_OFFSET,
    build_page,
    check_run,
    valid_page_size,
)

MAX_TXID = 2**63  # a txid at or past this is corruption (see decode_meta)

log = logging.getLogger("keyval.db")


@dataclass(frozen=True, slots=True)
class Meta:
    """One committed state of the database."""

    page_size: int
    root: int
    freelist: int
    hwm: int
    txid: int

    @property
    def slot(self) -> int:
        return self.txid % 2

    def encode(self) -> bytearray:
        body = META_BODY.pack(
            MAGIC, VERSION, self.page_size, self.root, self.freelist, self.hwm, self.txid
        )
        return build_page(self.slot, TYPE_META, 0, body, self.page_size)


class FutureVersionError(CorruptionError):
    """The file was written by a newer keyval whose format this one does not know."""


def decode_meta(buf: bytes, slot: int, path: str | None, offset: int) -> Meta:
    """Check one meta page field by field (magic, version, page size, type/id, checksum)."""
    if len(buf) < META_SIZE:
        raise CorruptionError(f"meta page {slot} is cut short", path, offset)
    magic = buf[MAGIC_OFFSET : MAGIC_OFFSET + len(MAGIC)]
    if magic != MAGIC:
        raise CorruptionError(
            f"meta page {slot}: bad magic {magic!r}, not a keyval database", path, offset
        )
    (version,) = VERSION_FIELD.unpack_from(buf, VERSION_OFFSET)
    if version > VERSION:
        raise FutureVersionError(
            f"meta page {slot}: format version {version} is newer than this keyval supports "
            f"(up to {VERSION}); open it with a newer keyval",
            path,
            offset,
        )
    if version != VERSION:
        raise CorruptionError(f"meta page {slot}: unknown format version {version}", path, offset)
    (page_size,) = VERSION_FIELD.unpack_from(buf, PAGE_SIZE_OFFSET)
    if not valid_page_size(page_size):
        raise CorruptionError(f"meta page {slot}: invalid page size {page_size}", path, offset)
    if len(buf) < page_size:
        raise CorruptionError(f"meta page {slot} is cut short", path, offset)
    buf = buf[:page_size]
    _, pid, ptype, *_ = PAGE_HEADER.unpack_from(buf)
    if ptype != TYPE_META or pid != slot:
        raise CorruptionError(f"meta page {slot}: header says type {ptype} id {pid}", path, offset)
    check_run(buf, slot, page_size, path)
    _, _, _, root, freelist, hwm, txid = META_BODY.unpack_from(buf, HEADER_SIZE)
    if txid % 2 != slot:
        raise CorruptionError(f"meta page {slot} holds txid {txid} of the other slot", path, offset)
    if txid >= MAX_TXID:
        # No file commits 2**63 times; one that says so could not commit again (the next
        # txid would not fit its field).
        raise CorruptionError(f"meta page {slot}: txid {txid} is past any real one", path, offset)
    if not (2 <= root < hwm) or freelist >= hwm or (0 < freelist < 2):
        raise CorruptionError(
            f"meta page {slot}: root {root} / freelist {freelist} outside hwm {hwm}", path, offset
        )
    return Meta(page_size, root, freelist, hwm, txid)


def read_metas(fd: int, path: str | None) -> list[Meta | CorruptionError]:
    """Both meta pages, each decoded or the error that rejects it."""
    head = os.pread(fd, MAX_PAGE_SIZE, 0)
    results: list[Meta | CorruptionError] = []
    try:
        first = decode_meta(head, 0, path, 0)
        results.append(first)
        sizes = [first.page_size]
    except CorruptionError as e:
        results.append(e)
        # The first meta may be torn; its page-size field, if sane, still says where meta 1 is.
        sizes = []
        if len(head) >= META_SIZE and head[MAGIC_OFFSET : MAGIC_OFFSET + len(MAGIC)] == MAGIC:
            (claimed,) = VERSION_FIELD.unpack_from(head, PAGE_SIZE_OFFSET)
            if valid_page_size(claimed):
                sizes.append(claimed)
        size = MIN_PAGE_SIZE
        while size <= MAX_PAGE_SIZE:
            if size not in sizes:
                sizes.append(size)
            size *= 2
    second: Meta | CorruptionError | None = None
    for size in sizes:
        buf = os.pread(fd, size, size)
        try:
            candidate = decode_meta(buf, 1, path, size)
        except FutureVersionError as e:
            second = e
            break
        except CorruptionError as e:
            if second is None:
                second = e
            continue
        if candidate.page_size == size:
            second = candidate
            break
    if second is None:
        second = CorruptionError("meta page 1 is missing", path, None)
    results.append(second)
    return results


def choose_meta(metas: list[Meta | CorruptionError], path: str | None) -> Meta:
    """The valid meta with the highest txid; refuses a file any meta says is of a newer format."""
    for m in metas:
        if isinstance(m, FutureVersionError):
            raise m
    valid = [m for m in metas if isinstance(m, Meta)]
    if not valid:
        first = metas[0]
        assert isinstance(first, CorruptionError)
        if "not a keyval database" in first.message:
            raise first
        reasons = "; ".join(m.message for m in metas if isinstance(m, CorruptionError))
        raise CorruptionError(f"no valid meta page: {reasons}", path, 0)
    if len(valid) == 2 and valid[0].page_size != valid[1].page_size:
        raise CorruptionError("the two meta pages disagree on the page size", path, 0)
    chosen = max(valid, key=lambda m: m.txid)
    for bad in metas:
        if isinstance(bad, CorruptionError):
            # Expected once after a crash in the middle of a commit's meta write (that
            # commit never returned); anything else means the page was damaged, and the
            # commit it held is lost. Open cannot tell which: it says so, where and what.
            log.warning(
                "%s: %s (offset %s); using transaction %d from the other meta page: the "
                "commit after it was cut short by a crash, or this page is damaged",
                path,
                bad.message,
                bad.offset,
                chosen.txid,
            )
    return chosen


__all__ = ["FutureVersionError", "Meta", "choose_meta", "decode_meta", "read_metas"]
