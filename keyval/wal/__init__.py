"""keyval.wal: a segmented write-ahead log with a C core.

>>> from keyval.wal import WAL
>>> with WAL(path, sync="always") as wal:
...     seq = wal.append(b"payload", type=1)

See :class:`WAL` for the durability contract and ``csrc/format.h`` for the on-disk format.
"""

from keyval.wal.log import RECORD_OVERHEAD, WAL

__all__ = ["RECORD_OVERHEAD", "WAL"]
