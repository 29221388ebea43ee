"""The on-disk format of a keyval.db file: pages, their header, and the codec of every page type.

This docstring is the format's specification; the code below implements exactly it.

File
====
A database is one file of fixed-size pages (``page_size``, a power of two from 512 to 65536,
chosen when the file is created and recorded in the meta pages). Page ``n`` starts at byte
``n * page_size``. Pages 0 and 1 are the two meta pages; every other page below the high-water
mark (``hwm``, the page count of the committed file) is reachable from the newest meta page
exactly once, or is free. Bytes past ``hwm * page_size`` are leftovers of an interrupted
transaction and mean nothing. All integers are little-endian.

Page header (every page, 32 bytes)
----------------------------------
    offset size field
    0      8    checksum  xxh3_64 of every byte of the run after this field (bytes 8 .. end)
    8      8    id        page id (catches a page written to or read from the wrong place)
    16     1    type      1 meta, 2 branch, 3 leaf, 4 freelist root, 5 freelist chunk, 6 overflow
    17     1    flags     0 (reserved)
    18     2    reserved  0
    20     4    count     type-specific (below)
    24     4    overflow  number of further pages that belong to this one (a "run")
    28     4    reserved  0

A page whose content does not fit in one page occupies ``1 + overflow`` consecutive pages; the
header is on the first, and the checksum covers the whole run. Unused bytes at the end of a run
are zero and are covered by the checksum too, so a flipped bit anywhere is detected.

Meta page (pages 0 and 1; count = 0)
------------------------------------
    offset size field
    32     8    magic     b"KEYVALDB"
    40     4    version   format version, 1
    44     4    page_size
    48     8    root      page id of the root of the top-level bucket tree
    56     8    freelist  page id of the freelist root (0: no free pages)
    64     8    hwm       high-water mark: number of pages in the committed file
    72     8    txid      id of the transaction that wrote this meta

Transaction ``t`` writes its meta into slot ``t % 2``, so the previous meta survives a torn
write. Validity of a meta, checked field by field in this order: magic, version (a newer version
is refused with an error that says so, never read as if it were this one), page size, type and
id, checksum. Recovery: the valid meta with the highest txid is the database; no other repair.

Leaf page (type 3; count = number of entries)
---------------------------------------------
    32              7 * count   elements: flags u8, key length u16, value length u32
    32 + 7 * count  ...         key 0, value 0, key 1, value 1, ... (packed, no padding)

Element flags: 0 the value is stored here; 1 the value is an overflow reference (12 bytes: page
id u64 of its overflow run, value length u32); 2 the entry is a nested bucket whose value is a
bucket header. Keys are 1 byte to 32 KiB and strictly increasing. Only the root leaf of a bucket
may be empty.

Bucket header (16 bytes, then for an inline bucket its entries)
---------------------------------------------------------------
    0      8    root      root page id of the bucket's tree; 0: the bucket is inline
    8      8    count     number of plain (non-bucket) keys in the bucket (at most 2**61)
    16     4    n         inline only: number of entries, followed by n leaf elements and data
                          exactly as in a leaf page

Branch page (type 2; count = number of children)
------------------------------------------------
    32              10 * count  elements: key length u16, child page id u64
    32 + 10 * count ...         key 0, key 1, ... (packed)

Key ``i`` is a lower bound of every key under child ``i`` and greater than every key under
child ``i - 1``; keys are strictly increasing. A branch has at least one child, and every child
of a branch is of one kind (all leaves or all branches).

Overflow run (type 6; count = value length)
-------------------------------------------
    32     count    the value

Freelist root (type 4; count = number of chunk slots)
-----------------------------------------------------
    32     8 * count    page id of the chunk page of slot i (0: every bit of that slot is clear)

Freelist chunk (type 5; count = number of set bits)
---------------------------------------------------
    32     8        slot index ``s``
    40     ...      bitmap: bit ``b`` of byte ``j`` set means page ``s * BITS + 8 * j + b`` is
                    free, where BITS = (page_size - 40) * 8

A page is free when it is unreachable from the meta that holds the freelist; a freed page is
reused only once no open reader can still see it (tracked in memory; on open nothing is still
being read, so every free page is reusable). A commit rewrites only the chunks whose bits
changed, plus the root, so its cost does not grow with the number of free pages.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from itertools import accumulate, pairwise

import xxhash

from keyval.errors import CorruptionError

MAGIC = b"KEYVALDB"
VERSION = 1
MIN_PAGE_SIZE = 512
MAX_PAGE_SIZE = 65536
DEFAULT_PAGE_SIZE = 4096
MAX_KEY_SIZE = 32 * 1024
MAX_VALUE_SIZE = 2**31 - 1
# A key takes at least 8 bytes of a page (its element and a byte): no file of 2**64 bytes holds
# more than this many, and a bucket's count stays far from the C put's 2**63 - 1.
MAX_BUCKET_KEYS = 2**61

PAGE_HEADER = struct.Struct("<QQBBHII4x")
HEADER_SIZE = PAGE_HEADER.size
CHECKSUM = struct.Struct("<Q")

META_BODY = struct.Struct("<8sIIQQQQ")
META_SIZE = HEADER_SIZE + META_BODY.size
MAGIC_OFFSET = HEADER_SIZE
VERSION_FIELD = struct.Struct("<I")
VERSION_OFFSET = MAGIC_OFFSET + len(MAGIC)
PAGE_SIZE_OFFSET = VERSION_OFFSET + 4

TYPE_META = 1
TYPE_BRANCH = 2
TYPE_LEAF = 3
TYPE_FREELIST = 4
TYPE_CHUNK = 5
TYPE_OVERFLOW = 6
TYPE_NAMES = {
    TYPE_META: "meta",
    TYPE_BRANCH: "branch",
    TYPE_LEAF: "leaf",
    TYPE_FREELIST: "freelist",
    TYPE_CHUNK: "freelist chunk",
    TYPE_OVERFLOW: "overflow",
}

FLAG_VALUE = 0
FLAG_OVERFLOW = 1
FLAG_BUCKET = 2

LEAF_ELEMENT = struct.Struct("<BHI")
BRANCH_ELEMENT = struct.Struct("<HQ")
OVERFLOW_REF = struct.Struct("<QI")
BUCKET_HEADER = struct.Struct("<QQ")
INLINE_COUNT = struct.Struct("<I")
CHUNK_SLOT = struct.Struct("<Q")
PGID = struct.Struct("<Q")

_checksum = xxhash.xxh3_64_intdigest


def valid_page_size(page_size: int) -> bool:
    return MIN_PAGE_SIZE <= page_size <= MAX_PAGE_SIZE and page_size & (page_size - 1) == 0


def max_inline_value(page_size: int) -> int:
    """Largest value stored inside a leaf; longer ones go to an overflow run.

    A quarter page keeps at least four entries per leaf, so splits stay meaningful.
    """
    return page_size // 4


def max_inline_bucket(page_size: int) -> int:
    """Largest encoded bucket stored inside its parent's leaf instead of in pages of its own."""
    return page_size // 4


def chunk_bits(page_size: int) -> int:
    """Number of page ids one freelist chunk covers."""
    return (page_size - HEADER_SIZE - CHUNK_SLOT.size) * 8


def span_for(size: int, page_size: int) -> int:
    """Pages needed by a run whose header and body take ``size`` bytes (at least one)."""
    # No max(): a commit asks this for every page it writes, and the builtin call was most
    # of its cost.
    return (size - 1) // page_size + 1 if size > page_size else 1


class OverflowRef:
    """A leaf entry's value that lives in an overflow run of its own."""

    __slots__ = ("length", "pgid")

    def __init__(self, pgid: int, length: int):
        self.pgid = pgid
        self.length = length

    def encode(self) -> bytes:
        return OVERFLOW_REF.pack(self.pgid, self.length)

    def span(self, page_size: int) -> int:
        return span_for(HEADER_SIZE + self.length, page_size)


class BucketHeader:
    """A leaf entry's value that is a nested bucket: its root page, key count, inline entries.

    ``offset`` is the file offset of the page the header was read from (None for one made in
    a write transaction): an inline bucket's entries are decoded only when first used, and a
    corrupt one must still name where it lies."""

    __slots__ = ("_inline", "count", "offset", "raw", "root")

    def __init__(self, root: int, count: int, raw: bytes, offset: int | None = None):
        self.root = root
        self.count = count
        self.raw = raw
        self.offset = offset
        self._inline: tuple[list[bytes], list] | None = None

    @classmethod
    def of_page(cls, root: int, count: int) -> BucketHeader:
        return cls(root, count, BUCKET_HEADER.pack(root, count))

    @classmethod
    def inline(cls, count: int, keys: list[bytes], vals: list) -> BucketHeader:
        body = INLINE_COUNT.pack(len(keys)) + encode_leaf_body(keys, vals)
        return cls(0, count, BUCKET_HEADER.pack(0, count) + body)

    def inline_entries(self, path: str | None) -> tuple[list[bytes], list]:
        """Decode the entries of an inline bucket (cached: headers are immutable)."""
        entries = self._inline
        if entries is None:
            raw = self.raw
            offset = self.offset
            start = BUCKET_HEADER.size + INLINE_COUNT.size
            if len(raw) < start:
                raise CorruptionError("inline bucket header is cut short", path, offset)
            (n,) = INLINE_COUNT.unpack_from(raw, BUCKET_HEADER.size)
            entries = decode_leaf_body(raw, start, n, len(raw), path, offset)
            self._inline = entries
        return entries


def decode_bucket_header(raw: bytes, path: str | None, offset: int | None) -> BucketHeader:
    if len(raw) < BUCKET_HEADER.size:
        raise CorruptionError("bucket header is cut short", path, offset)
    root, count = BUCKET_HEADER.unpack_from(raw)
    if count > MAX_BUCKET_KEYS:
        raise CorruptionError(
            f"bucket header counts {count} keys, more than a file holds", path, offset
        )
    if root == 0 and len(raw) < BUCKET_HEADER.size + INLINE_COUNT.size:
        raise CorruptionError("inline bucket has no entry count", path, offset)
    return BucketHeader(root, count, raw, offset)


@lru_cache(maxsize=1024)
def _leaf_elements(count: int) -> struct.Struct:
    return struct.Struct("<" + "BHI" * count)


@lru_cache(maxsize=64)
def pgid_array(count: int) -> struct.Struct:
    return struct.Struct(f"<{count}Q")


@lru_cache(maxsize=1024)
def _branch_elements(count: int) -> struct.Struct:
    return struct.Struct("<" + "HQ" * count)


def leaf_value_size(val, max_inline: int) -> int:
    """Bytes a leaf value takes inside the leaf once spilled."""
    t = type(val)
    if t is bytes:
        n = len(val)
        return n if n <= max_inline else OVERFLOW_REF.size
    if t is OverflowRef:
        return OVERFLOW_REF.size
    return len(val.raw)


def encode_leaf_body(keys: list[bytes], vals: list, plain: bool = False) -> bytes:
    """Elements then data of a leaf; values must already be in their on-page form.

    ``plain``: every value is bytes stored in the leaf, which allows a C-speed encoding.
    """
    if plain:
        # Interleave with slice assignments: no Python-level loop per entry.
        n = len(keys)
        flat = [FLAG_VALUE] * (3 * n)
        flat[1::3] = map(len, keys)
        flat[2::3] = map(len, vals)
        data: list = [None] * (2 * n)
        data[0::2] = keys
        data[1::2] = vals
        return _leaf_elements(n).pack(*flat) + b"".join(data)
    flat = []
    data = []
    for k, v in zip(keys, vals, strict=True):
        t = type(v)
        if t is bytes:
            raw = v
            flag = FLAG_VALUE
        elif t is OverflowRef:
            raw = v.encode()
            flag = FLAG_OVERFLOW
        else:
            raw = v.raw
            flag = FLAG_BUCKET
        flat += (flag, len(k), len(raw))
        data.append(k)
        data.append(raw)
    return _leaf_elements(len(keys)).pack(*flat) + b"".join(data)


def decode_leaf_body(
    buf: bytes, start: int, count: int, end: int, path: str | None, offset: int | None
) -> tuple[list[bytes], list]:
    """Keys and values (bytes, OverflowRef or BucketHeader) of a leaf body at ``buf[start:]``."""
    # The count is checked before a struct is built for it: a corrupt count must not cost
    # gigabytes of format string.
    if start + LEAF_ELEMENT.size * count > end:
        raise CorruptionError(f"leaf claims {count} entries, more than fit", path, offset)
    elements = _leaf_elements(count)
    pos = start + elements.size
    flat = elements.unpack_from(buf, start)
    if count and not 0 < min(key_lens := flat[1::3]) <= max(key_lens) <= MAX_KEY_SIZE:
        raise CorruptionError("leaf key is empty or longer than keys can be", path, offset)
    if flat[0::3].count(FLAG_VALUE) == count:
        # Every value is stored in the leaf: cut keys and values with one comprehension.
        lens: list = [0] * (2 * count)
        lens[0::2] = flat[1::3]
        lens[1::2] = flat[2::3]
        offsets = list(accumulate(lens, initial=pos))
        if offsets[-1] > end:
            raise CorruptionError("leaf entry runs past the end of its page", path, offset)
        pieces = [buf[a:b] for a, b in pairwise(offsets)]
        return pieces[0::2], pieces[1::2]
    keys = []
    vals = []
    it = iter(flat)
    for flag, klen, vlen in zip(it, it, it, strict=True):
        kend = pos + klen
        vend = kend + vlen
        if vend > end:
            raise CorruptionError("leaf entry runs past the end of its page", path, offset)
        keys.append(buf[pos:kend])
        if flag == FLAG_VALUE:
            vals.append(buf[kend:vend])
        elif flag == FLAG_OVERFLOW:
            if vlen != OVERFLOW_REF.size:
                raise CorruptionError("overflow reference has the wrong size", path, offset)
            vals.append(OverflowRef(*OVERFLOW_REF.unpack_from(buf, kend)))
        elif flag == FLAG_BUCKET:
            vals.append(decode_bucket_header(buf[kend:vend], path, offset))
        else:
            raise CorruptionError(f"leaf entry has unknown flags {flag}", path, offset)
        pos = vend
    return keys, vals


def encode_branch_body(keys: list[bytes], children: list[int]) -> bytes:
    flat = []
    for k, c in zip(keys, children, strict=True):
        flat += (len(k), c)
    return _branch_elements(len(keys)).pack(*flat) + b"".join(keys)


def decode_branch_body(
    buf: bytes, start: int, count: int, end: int, path: str | None, offset: int | None
) -> tuple[list[bytes], list[int]]:
    if start + BRANCH_ELEMENT.size * count > end:
        raise CorruptionError(f"branch claims {count} children, more than fit", path, offset)
    if count == 0:
        raise CorruptionError("branch without children", path, offset)
    elements = _branch_elements(count)
    pos = start + elements.size
    flat = elements.unpack_from(buf, start)
    keys = []
    children = flat[1::2]
    for klen in flat[0::2]:
        kend = pos + klen
        keys.append(buf[pos:kend])
        pos = kend
    if pos > end:
        raise CorruptionError("branch keys run past the end of the page", path, offset)
    return keys, list(children)


def build_page(
    pgid: int, ptype: int, count: int, body: bytes, page_size: int, min_span: int = 1
) -> bytearray:
    """A sealed page run: header, body, zero padding to whole pages, checksum filled in."""
    used = HEADER_SIZE + len(body)
    span = max(span_for(used, page_size), min_span)
    buf = bytearray(span * page_size)
    PAGE_HEADER.pack_into(buf, 0, 0, pgid, ptype, 0, 0, count, span - 1)
    buf[HEADER_SIZE:used] = body
    CHECKSUM.pack_into(buf, 0, _checksum(memoryview(buf)[CHECKSUM.size :]))
    return buf


def build_overflow(pgid: int, value: bytes, page_size: int) -> tuple[int, list]:
    """An overflow run for ``value`` as (span, buffers), without copying the value."""
    used = HEADER_SIZE + len(value)
    span = span_for(used, page_size)
    header = bytearray(HEADER_SIZE)
    PAGE_HEADER.pack_into(header, 0, 0, pgid, TYPE_OVERFLOW, 0, 0, len(value), span - 1)
    padding = bytes(span * page_size - used)
    h = xxhash.xxh3_64()
    h.update(memoryview(header)[CHECKSUM.size :])
    h.update(value)
    h.update(padding)
    CHECKSUM.pack_into(header, 0, h.intdigest())
    return span, [header, value, padding]


def check_run(buf, pgid: int, page_size: int, path: str | None) -> tuple[int, int, int]:
    """Verify a whole run read from page ``pgid``; returns (type, count, overflow).

    Raises CorruptionError naming the page's byte offset on any mismatch.
    """
    offset = pgid * page_size
    if len(buf) < page_size:
        raise CorruptionError(f"page {pgid} is cut short by the end of the file", path, offset)
    checksum, pid, ptype, _flags, _reserved, count, overflow = PAGE_HEADER.unpack_from(buf)
    if len(buf) != (overflow + 1) * page_size:
        raise CorruptionError(f"page {pgid} run is cut short by the end of the file", path, offset)
    if _checksum(memoryview(buf)[CHECKSUM.size :]) != checksum:
        raise CorruptionError(f"page {pgid} fails its checksum", path, offset)
    if pid != pgid:
        raise CorruptionError(f"page {pgid} carries the id {pid}", path, offset)
    return ptype, count, overflow


def overflow_of(buf, pgid: int, page_size: int, path: str | None) -> int:
    """The header's overflow count of a page, before its checksum can be checked."""
    if len(buf) < HEADER_SIZE:
        raise CorruptionError(
            f"page {pgid} is cut short by the end of the file", path, pgid * page_size
        )
    return PAGE_HEADER.unpack_from(buf)[6]


def type_name(ptype: int) -> str:
    return TYPE_NAMES.get(ptype, f"unknown type {ptype}")
