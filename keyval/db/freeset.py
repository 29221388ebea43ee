"""FreeSet: the set of page ids that can be reused now, as a bitmap.

Why not a sorted list (sortedcontainers' SortedList, used until now): a 1,000-put commit over
1M keys takes ~1,500 single pages and gives back as many, and each remove or insert into a
sorted list of ~70,000 page ids cost 2-4 us (a bisect, a list shift, index upkeep): about a
sixth of the commit's CPU. Here adding or removing a page is a bit flip, and the searches
(lowest, a window's pages taken at once, a run of consecutive pages, how many lie below a page,
the free tail) run over the bitmap's bytes at C speed (bytes and int methods), not per page.
One bit per page of the file: 16 KiB for a 512 MiB file of 4 KiB pages.

Not thread-safe: the freelist is used by the one writer only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator


class FreeSet:
    """A set of non-negative page ids, iterated in ascending order."""

    __slots__ = ("_bits", "_len", "_low")

    def __init__(self, pages: Iterable[int] = ()):
        self._bits = bytearray()
        self._len = 0
        self._low = 0  # every byte below this one is zero (a hint for first())
        self.update(pages)

    @classmethod
    def from_bitmap(cls, bits: bytes | bytearray) -> FreeSet:
        """The pages whose bit is set in ``bits`` (bit ``p & 7`` of byte ``p >> 3``)."""
        out = cls()
        out._bits = bytearray(bits)
        out._len = int.from_bytes(bits, "little").bit_count()
        return out

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __contains__(self, pgid: int) -> bool:
        byte = pgid >> 3
        return 0 <= byte < len(self._bits) and bool(self._bits[byte] >> (pgid & 7) & 1)

    def __iter__(self) -> Iterator[int]:
        for index, byte in enumerate(self._bits):
            while byte:
                low = byte & -byte
                yield index * 8 + low.bit_length() - 1
                byte ^= low

    def __repr__(self) -> str:
        return f"FreeSet({len(self)} pages)"

    def add(self, pgid: int) -> None:
        self.update((pgid,))

    def update(self, pages: Iterable[int]) -> None:
        # One loop for many pages: a commit releases ~1,500 at once.
        bits = self._bits
        added = 0
        low = self._low
        for pgid in pages:
            byte = pgid >> 3
            if byte >= len(bits):
                bits.extend(bytes(byte + 1 - len(bits)))
            mask = 1 << (pgid & 7)
            if not bits[byte] & mask:
                bits[byte] |= mask
                added += 1
                if byte < low:
                    low = byte
        self._len += added
        self._low = low

    def remove(self, pgid: int) -> None:
        """Take ``pgid`` out; ValueError if it is not in the set."""
        bits = self._bits
        byte = pgid >> 3
        mask = 1 << (pgid & 7)
        if pgid < 0 or byte >= len(bits) or not bits[byte] & mask:
            raise ValueError(f"page {pgid} is not free")
        bits[byte] &= ~mask & 0xFF
        self._len -= 1

    def take_range(self, lo: int, hi: int) -> bytes:
        """Take out every page ``lo <= p < hi`` (both multiples of 8); returns the bitmap
        bytes they had, for the caller to clear the same pages elsewhere."""
        if lo & 7 or hi & 7:
            raise ValueError("take_range works on whole bytes")
        bits = self._bits
        start, end = lo >> 3, min(hi >> 3, len(bits))
        if start >= end:
            return b""
        taken = bytes(bits[start:end])
        self._len -= int.from_bytes(taken, "little").bit_count()
        bits[start:end] = bytes(end - start)
        return taken

    def remove_run(self, first: int, span: int) -> None:
        """Take out ``span`` pages from ``first`` on, all of which must be in the set."""
        for pgid in range(first, first + span):
            self.remove(pgid)

    def first(self) -> int:
        """The lowest page id; ValueError when empty."""
        bits = self._bits
        low = self._low
        n = len(bits)
        if low < n and not bits[low]:
            low = n - len(bits[low:].lstrip(b"\0"))  # past the zero bytes at C speed
        self._low = low
        if low >= n:
            raise ValueError("no free page")
        byte = bits[low]
        return low * 8 + ((byte & -byte).bit_length() - 1)

    def pop_first(self) -> int:
        pgid = self.first()
        self.remove(pgid)
        return pgid

    def count_below(self, pgid: int) -> int:
        """How many pages of the set are below ``pgid`` (SortedList.bisect_left)."""
        if pgid <= 0:
            return 0
        byte, rest = pgid >> 3, pgid & 7
        bits = self._bits
        n = int.from_bytes(bits[:byte], "little").bit_count()
        if rest and byte < len(bits):
            n += (bits[byte] & ((1 << rest) - 1)).bit_count()
        return n

    def find_run(self, span: int) -> int | None:
        """The lowest first page of ``span`` consecutive pages of the set, or None."""
        if span <= 0 or span > self._len:
            return None
        starts = int.from_bytes(self._bits, "little")
        # Bit p of starts stays set while pages p .. p + have - 1 are all in the set: doubling
        # the run length covered each step, a few big-integer ANDs in all.
        have = 1
        while have < span and starts:
            step = min(have, span - have)
            starts &= starts >> step
            have += step
        if not starts:
            return None
        return (starts & -starts).bit_length() - 1

    def tail_run(self, end: int) -> int:
        """How many consecutive pages of the set end at ``end - 1``."""
        n = 0
        bits = self._bits
        p = end - 1
        while p >= 0:
            byte = p >> 3
            if byte >= len(bits):
                return n
            if (p & 7) == 7 and bits[byte] == 0xFF:
                n += 8
                p -= 8
                continue
            if not bits[byte] >> (p & 7) & 1:
                return n
            n += 1
            p -= 1
        return n


def set_bits(x: int, base: int) -> list[int]:
    """``base + i`` for each bit ``i`` set in ``x``, ascending (for small ``x``: each step
    costs a pass over it)."""
    out = []
    while x:
        low = x & -x
        out.append(base + low.bit_length() - 1)
        x ^= low
    return out
