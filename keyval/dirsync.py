"""fsync of a directory: what makes a file's creation, rename or removal in it durable.

Shared by every layer that creates or removes files (the page store, the Raft snapshots);
the WAL does the same in C.
"""

from __future__ import annotations

import os


def fsync_dir(path: str) -> None:
    """Makes the entries of directory ``path`` durable (names created, renamed, removed).

    Raises OSError if the directory cannot be opened or synced: the caller must not treat the
    change as durable then."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
