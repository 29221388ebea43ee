"""Integrity check of a Raft node's data directory (the node half of ``keyval.fsck``).

Checks each part with its own checker (the WAL, raft.db, every snapshot file), then the
cross-checks only the whole can fail: the log has no gap after the snapshot, terms never
decrease along the log, the commit index lies within what the node holds, the snapshot in
force has its file and the file says the same index and term. Nothing is written.
"""

from __future__ import annotations

import os

from keyval.db import DB
from keyval.db.check import check_file
from keyval.errors import CorruptionError, KeyvalError
from keyval.raft import snapfile
from keyval.raft.storage import DB_FILE, SNAP_DIR, WAL_DIR, replay_state
from keyval.wal import WAL
from keyval.wal.check import check_dir

# Where a directory that is not a node directory itself may hold one: ``keyval serve --data``
# keeps its node there (keyval.kv.server), beside its key/value database.
SERVER_NODE_SUBDIR = "raft"


def is_node_dir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, WAL_DIR)) and os.path.isfile(
        os.path.join(path, DB_FILE)
    )


def node_dir_of(path: str) -> str | None:
    """The node directory ``path`` is or holds (see SERVER_NODE_SUBDIR), or None."""
    if is_node_dir(path):
        return path
    inner = os.path.join(path, SERVER_NODE_SUBDIR)
    return inner if is_node_dir(inner) else None


def _finding(message: str, path: str, offset: int | None = None, repairable: bool = False):
    exc = CorruptionError(message, path, offset)
    exc.repairable = repairable
    return exc


def check_snapshot_files(snap_dir: str) -> list[CorruptionError]:
    problems = []
    for name in sorted(os.listdir(snap_dir)) if os.path.isdir(snap_dir) else []:
        path = os.path.join(snap_dir, name)
        if name.endswith(snapfile.TMP_SUFFIX):
            problems.append(
                _finding(
                    "an interrupted snapshot write; opening the node removes it",
                    path,
                    repairable=True,
                )
            )
            continue
        parsed = snapfile.parse_name(name)
        if parsed is None:
            problems.append(_finding("not a snapshot file", path))
            continue
        try:
            snapfile.read(path).data.close()  # checks the header against the name too
        except CorruptionError as exc:
            problems.append(exc)
    return problems


def check_node_dir(path: str) -> list[CorruptionError]:
    """Every problem in the node directory ``path``, each naming its file (and offset)."""
    wal_dir, db_file = os.path.join(path, WAL_DIR), os.path.join(path, DB_FILE)
    snap_dir = os.path.join(path, SNAP_DIR)
    problems = check_dir(wal_dir) + check_file(db_file) + check_snapshot_files(snap_dir)
    if any(not p.repairable for p in problems):
        return problems  # the parts are broken: the cross-checks would only repeat that
    try:
        with DB(db_file) as db, WAL(wal_dir, _check_only=True) as wal:
            state = replay_state(wal, db, wal_dir)
    except KeyvalError as exc:
        return [*problems, exc if isinstance(exc, CorruptionError) else _finding(str(exc), path)]
    terms = state.terms
    for k in range(1, len(terms)):
        if terms[k] < terms[k - 1]:
            problems.append(
                _finding(
                    f"term goes back from {terms[k - 1]} to {terms[k]} at entry {state.base + k}",
                    wal_dir,
                )
            )
            break
    if terms and terms[0] < state.snap_term:
        problems.append(
            _finding(
                f"entry {state.base} has a term below the snapshot's {state.snap_term}", wal_dir
            )
        )
    if state.hard_state.commit > max(state.last_index, state.snap_index):
        problems.append(
            _finding(
                f"commit index {state.hard_state.commit} is past the last entry {state.last_index}",
                db_file,
            )
        )
    if state.snap_index:
        snap_path = os.path.join(snap_dir, snapfile.file_name(state.snap_index, state.snap_term))
        if not os.path.exists(snap_path):
            problems.append(
                _finding(
                    f"the snapshot in force (index {state.snap_index}, term {state.snap_term}) "
                    "has no file",
                    snap_path,
                )
            )
    return problems
