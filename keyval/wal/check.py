"""Integrity check and repair of a WAL directory (the WAL half of ``python -m keyval.fsck``)."""

from __future__ import annotations

import os

from keyval.errors import CorruptionError
from keyval.wal.log import WAL

SEGMENT_SUFFIX = ".wal"
BOUNDS_NAME = "bounds"


def is_wal_dir(path: str) -> bool:
    """True when ``path`` is a directory holding WAL segments or a WAL bounds file."""
    if not os.path.isdir(path):
        return False
    return any(name.endswith(SEGMENT_SUFFIX) or name == BOUNDS_NAME for name in os.listdir(path))


def check_dir(path: str) -> list[CorruptionError]:
    """Every problem in the log at ``path``, each naming file and offset; nothing is written.

    Findings with ``repairable`` set (a torn tail, an interrupted truncation) are what opening
    the log fixes by itself without losing an acknowledged record; the others are corruption.
    Raises (``LockedError``, ``OSError``, ...) when the log cannot be examined at all.
    """
    try:
        wal = WAL(path, _check_only=True)
    except CorruptionError as exc:  # the directory itself is unreadable as a log
        return [exc]
    try:
        return wal._findings()
    finally:
        wal.close()


def repair_dir(path: str) -> list[str]:
    """Repairs what can be repaired without losing acknowledged records and says what it did.

    Only repairable findings are acted on (by opening the log, which cuts a torn tail and
    finishes an interrupted truncation); when anything else is wrong nothing is touched and
    ``CorruptionError`` is raised for the first such problem.
    """
    findings = check_dir(path)
    fatal = [f for f in findings if not f.repairable]
    if fatal:
        raise fatal[0]
    if not findings:
        return []
    with WAL(path, sync="none", **segment_options(path)):
        pass
    return [f"repaired: {f}" for f in findings]


def segment_options(path: str) -> dict[str, int]:
    """The ``segment_size`` the log in ``path`` was written with, as WAL options (none when it
    has no segment). A repair opens the log with it: opening with another size would replace
    its prepared next segment with one of that size (64 MiB by default)."""
    sizes = [
        os.path.getsize(os.path.join(path, name))
        for name in os.listdir(path)
        if name.endswith(SEGMENT_SUFFIX)
    ]
    return {"segment_size": max(sizes)} if sizes else {}
