"""Offline integrity check of a keyval.db file (what ``python -m keyval.fsck`` runs on one).

Checks, against the format in :mod:`keyval.db.page`:

* both meta pages (magic, version, page size, checksum; the standby one older than the active);
* every page reachable from the active meta: checksum, id, type where it is referenced, bounds;
* key order within every page and across pages (each key within its parent's separators), all
  leaves of a tree at one depth, only a root leaf empty, each bucket's key count;
* overflow runs: type, length, inside the file;
* the freelist: its pages, and that no free page is reachable;
* no page reachable twice, and nothing leaked: reachable and free pages together are exactly
  the pages below the high-water mark.

Findings never stop the check where it can go on. The file should not be open for writing
while it is checked (a live writer makes pages appear leaked or free).
"""

from __future__ import annotations

import itertools
import os

from keyval.errors import CorruptionError

from .meta import FutureVersionError, Meta, read_metas
from .page import (
    CHUNK_SLOT,
    HEADER_SIZE,
    MAGIC,
    MAGIC_OFFSET,
    MAX_PAGE_SIZE,
    MIN_PAGE_SIZE,
    PAGE_HEADER,
    TYPE_BRANCH,
    TYPE_CHUNK,
    TYPE_FREELIST,
    TYPE_LEAF,
    TYPE_OVERFLOW,
    BucketHeader,
    OverflowRef,
    check_run,
    chunk_bits,
    decode_branch_body,
    decode_leaf_body,
    pgid_array,
    type_name,
)


def is_db_file(path: str) -> bool:
    """Whether ``path`` looks like a keyval.db file (either meta page has the magic).

    Only sniffs; False for anything unreadable, including directories.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(MAX_PAGE_SIZE + MAGIC_OFFSET + len(MAGIC))
    except OSError:
        return False
    if head[MAGIC_OFFSET : MAGIC_OFFSET + len(MAGIC)] == MAGIC:
        return True
    size = MIN_PAGE_SIZE
    while size <= MAX_PAGE_SIZE:
        at = size + MAGIC_OFFSET
        if head[at : at + len(MAGIC)] == MAGIC:
            return True
        size *= 2
    return False


def check_file(path: str) -> list[CorruptionError]:
    """Every problem found in the database file at ``path``; an empty list means clean.

    Each finding is a CorruptionError naming ``path`` and, where the problem is at one place,
    the byte offset of the page concerned. OSError (e.g. the file is missing) propagates: that
    is an operational problem, not a finding.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return _Checker(path, fd).run()
    finally:
        os.close(fd)


class _Checker:
    def __init__(self, path: str, fd: int):
        self.path = path
        self.fd = fd
        self.size = os.fstat(fd).st_size
        self.findings: list[CorruptionError] = []
        self.page_size = 0
        self.hwm = 0
        self.marks = bytearray()

    def find(self, message: str, pgid: int | None = None) -> None:
        offset = None if pgid is None else pgid * self.page_size
        self.findings.append(CorruptionError(message, self.path, offset))

    # -- metas -----------------------------------------------------------------------------

    def run(self) -> list[CorruptionError]:
        metas = read_metas(self.fd, self.path)
        for m in metas:
            if isinstance(m, FutureVersionError):
                return [m]
        valid = [m for m in metas if isinstance(m, Meta)]
        self.findings.extend(m for m in metas if isinstance(m, CorruptionError))
        if not valid:
            return self.findings
        active = max(valid, key=lambda m: m.txid)
        self.page_size = active.page_size
        self.hwm = active.hwm
        for m in valid:
            if m is not active and m.txid >= active.txid:
                self.find(f"meta pages {0} and {1} both claim txid {m.txid}", m.slot)
            if m.page_size != active.page_size:
                self.find("the two meta pages disagree on the page size", m.slot)
        if self.size < self.hwm * self.page_size:
            self.findings.append(
                CorruptionError(
                    f"file is cut short: {self.size} bytes, the active meta commits "
                    f"{self.hwm} pages of {self.page_size}",
                    self.path,
                    self.size,
                )
            )
            # Only the pages that exist are checked (and marked: a corrupt hwm of 2**63 must
            # not be a bytearray that size).
            self.hwm = self.size // self.page_size
        self.marks = bytearray(self.hwm)
        self.mark(0, 1, "meta")
        self.mark(1, 1, "meta")
        self.check_bucket_tree(active.root, top=True)
        free = self.check_freelist(active.freelist)
        self.check_accounting(free)
        return self.findings

    # -- pages -----------------------------------------------------------------------------

    def mark(self, pgid: int, span: int, what: str) -> bool:
        """Record a reference to a run; False (with a finding) if it cannot be followed."""
        if (pgid < 2 and what != "meta") or pgid + span > self.hwm:
            self.find(
                f"{what} page {pgid} (+{span - 1}) is outside the file's {self.hwm} pages",
                pgid if pgid < self.hwm else None,
            )
            return False
        ok = True
        for p in range(pgid, pgid + span):
            if self.marks[p]:
                self.find(f"page {p} is reachable twice (again as {what})", p)
                ok = False
            self.marks[p] = 1
        return ok

    def read(self, pgid: int, expect: int, what: str) -> tuple[bytes, int] | None:
        """A verified run of the expected type, marked reachable; None after a finding."""
        ps = self.page_size
        if pgid < 2 or pgid >= self.hwm:
            self.find(
                f"{what} reference to page {pgid}, outside the file's {self.hwm} pages",
                pgid if pgid < self.hwm else None,
            )
            return None
        head = os.pread(self.fd, ps, pgid * ps)
        if len(head) < ps:
            self.find(f"{what} page {pgid} is cut short by the end of the file", pgid)
            return None
        overflow = PAGE_HEADER.unpack_from(head)[6]
        if pgid + overflow >= self.hwm:
            self.find(f"{what} page {pgid} claims {overflow} overflow pages past the end", pgid)
            self.mark(pgid, 1, what)
            return None
        if not self.mark(pgid, overflow + 1, what):
            return None
        buf = head + os.pread(self.fd, overflow * ps, (pgid + 1) * ps) if overflow else head
        try:
            ptype, count, _ = check_run(buf, pgid, ps, self.path)
        except CorruptionError as e:
            self.findings.append(e)
            return None
        if ptype != expect:
            self.find(f"page {pgid} is a {type_name(ptype)} page, referenced as {what}", pgid)
            return None
        return buf, count

    # -- trees -----------------------------------------------------------------------------

    def check_bucket_tree(self, root: int, top: bool) -> int:
        """Walk one bucket's tree; returns the number of plain keys in it."""
        state = {"leaf_depth": None, "keys": 0}
        self.walk(root, None, None, 1, True, top, state)
        return state["keys"]

    def walk(self, pgid, lo, hi, depth, is_root, top, state) -> None:
        ps = self.page_size
        got = self._read_node(pgid)
        if got is None:
            return
        buf, ptype, count = got
        end = len(buf)
        try:
            if ptype == TYPE_LEAF:
                keys, vals = decode_leaf_body(buf, HEADER_SIZE, count, end, self.path, pgid * ps)
            else:
                keys, vals = decode_branch_body(buf, HEADER_SIZE, count, end, self.path, pgid * ps)
        except CorruptionError as e:
            self.findings.append(e)
            return
        self.check_order(keys, lo, hi, pgid)
        if ptype == TYPE_BRANCH:
            if not keys:
                self.find(f"branch page {pgid} has no children", pgid)
            for i, child in enumerate(vals):
                child_hi = keys[i + 1] if i + 1 < len(keys) else hi
                self.walk(child, keys[i], child_hi, depth + 1, False, top, state)
            return
        if state["leaf_depth"] is None:
            state["leaf_depth"] = depth
        elif state["leaf_depth"] != depth:
            self.find(
                f"leaf page {pgid} is at depth {depth}, other leaves at {state['leaf_depth']}", pgid
            )
        if not keys and not is_root:
            self.find(f"leaf page {pgid} is empty but not the root of its bucket", pgid)
        self.check_entries(keys, vals, pgid, top, state)

    def _read_node(self, pgid: int):
        ps = self.page_size
        if pgid < 2 or pgid >= self.hwm:
            self.find(
                f"tree reference to page {pgid}, outside the file's {self.hwm} pages",
                pgid if pgid < self.hwm else None,
            )
            return None
        head = os.pread(self.fd, ps, pgid * ps)
        if len(head) < ps:
            self.find(f"tree page {pgid} is cut short by the end of the file", pgid)
            return None
        ptype = PAGE_HEADER.unpack_from(head)[2]
        if ptype not in (TYPE_LEAF, TYPE_BRANCH):
            self.mark(pgid, 1, "tree")
            self.find(f"page {pgid} is a {type_name(ptype)} page, referenced as a tree node", pgid)
            return None
        got = self.read(pgid, ptype, "tree")
        if got is None:
            return None
        return got[0], ptype, got[1]

    def check_order(self, keys, lo, hi, pgid) -> None:
        for a, b in itertools.pairwise(keys):
            if a >= b:
                self.find(f"keys out of order in page {pgid}: {a!r} then {b!r}", pgid)
                break
        if keys and lo is not None and keys[0] < lo:
            self.find(f"key {keys[0]!r} in page {pgid} is below its parent's bound {lo!r}", pgid)
        if keys and hi is not None and keys[-1] >= hi:
            self.find(
                f"key {keys[-1]!r} in page {pgid} is not below its parent's bound {hi!r}", pgid
            )

    def check_entries(self, keys, vals, pgid, top, state) -> None:
        for k, v in zip(keys, vals, strict=True):
            if type(v) is BucketHeader:
                self.check_bucket(v, pgid)
                continue
            if top:
                self.find(f"plain key {k!r} at the top level (only buckets belong there)", pgid)
            state["keys"] += 1
            if type(v) is OverflowRef:
                self.check_overflow(v)

    def check_bucket(self, header: BucketHeader, pgid: int) -> None:
        if header.root:
            found = self.check_bucket_tree(header.root, top=False)
        else:
            try:
                keys, vals = header.inline_entries(self.path)
            except CorruptionError as e:
                self.findings.append(e)
                return
            self.check_order(keys, None, None, pgid)
            state = {"leaf_depth": 1, "keys": 0}
            self.check_entries(keys, vals, pgid, False, state)
            found = state["keys"]
        if found != header.count:
            self.find(
                f"a bucket header in page {pgid} counts {header.count} keys, its tree "
                f"holds {found}",
                pgid,
            )

    def check_overflow(self, ref: OverflowRef) -> None:
        got = self.read(ref.pgid, TYPE_OVERFLOW, "overflow")
        if got is None:
            return
        buf, count = got
        if count != ref.length or len(buf) != ref.span(self.page_size) * self.page_size:
            self.find(
                f"overflow page {ref.pgid} holds {count} bytes in {len(buf)}, its "
                f"reference says {ref.length}",
                ref.pgid,
            )

    # -- freelist and accounting -----------------------------------------------------------

    def check_freelist(self, root: int) -> set[int]:
        free: set[int] = set()
        if root == 0:
            return free
        got = self.read(root, TYPE_FREELIST, "freelist root")
        if got is None:
            return free
        buf, count = got
        if HEADER_SIZE + 8 * count > len(buf):
            self.find(f"freelist root {root} claims {count} slots, more than fit", root)
            return free
        bits = chunk_bits(self.page_size)
        for slot, pgid in enumerate(pgid_array(count).unpack_from(buf, HEADER_SIZE)):
            if not pgid:
                continue
            chunk = self.read(pgid, TYPE_CHUNK, "freelist chunk")
            if chunk is None:
                continue
            cbuf, _ = chunk
            (stored,) = CHUNK_SLOT.unpack_from(cbuf, HEADER_SIZE)
            if stored != slot:
                self.find(f"freelist chunk {pgid} says slot {stored}, listed as slot {slot}", pgid)
                continue
            body = cbuf[HEADER_SIZE + CHUNK_SLOT.size : HEADER_SIZE + CHUNK_SLOT.size + bits // 8]
            base = slot * bits
            for j, byte in enumerate(body):
                if byte:
                    for b in range(8):
                        if byte >> b & 1:
                            free.add(base + 8 * j + b)
        return free

    def check_accounting(self, free: set[int]) -> None:
        beyond = sorted(p for p in free if p >= self.hwm)
        if beyond:
            self.find(
                f"{len(beyond)} free pages at or past the high-water mark {self.hwm}, "
                f"first {beyond[0]}",
                None,
            )
        for p in sorted(p for p in free if p < self.hwm and self.marks[p]):
            self.find(f"page {p} is both free and reachable", p)
        run_start = None
        for p in range(self.hwm + 1):
            leaked = p < self.hwm and not self.marks[p] and p not in free
            if leaked and run_start is None:
                run_start = p
            elif not leaked and run_start is not None:
                self.find(
                    f"pages {run_start}..{p - 1} are leaked: neither reachable nor free", run_start
                )
                run_start = None
