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


def makedirs_durable(path: str) -> None:
    """``os.makedirs(path, exist_ok=True)``, with the name of every directory it creates made
    durable: each new directory's parent is fsynced after it. Without that a power loss can
    take a freshly made directory (and everything later written and synced inside it) away,
    its own name never having reached the disk."""
    path = os.path.abspath(path)
    missing = []
    p = path
    while not os.path.isdir(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    if not missing:
        return
    os.makedirs(path, exist_ok=True)
    for d in reversed(missing):  # outermost first: a parent's own name before its entries
        fsync_dir(os.path.dirname(d))
