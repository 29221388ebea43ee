"""``keyval inspect NODE_DIR [--json]``: what a Raft node's data directory holds.

Hard state, log range, snapshots and WAL segments with their sizes, read without writing
anything (the WAL is opened for checking only), so it is safe on a stopped node's directory.
NODE_DIR may also be the data directory of ``keyval serve``, which keeps the node in ``raft/``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from keyval.db import DB
from keyval.errors import KeyvalError
from keyval.raft import snapfile
from keyval.raft.check import node_dir_of
from keyval.raft.storage import DB_FILE, SNAP_DIR, WAL_DIR, replay_state
from keyval.wal import WAL


def describe(node_dir: str) -> dict:
    """A JSON-ready description of the node directory; raises KeyvalError/OSError."""
    wal_dir = os.path.join(node_dir, WAL_DIR)
    with DB(os.path.join(node_dir, DB_FILE)) as db, WAL(wal_dir, _check_only=True) as wal:
        state = replay_state(wal, db, wal_dir)
        segments = wal.segments()
        problems = [str(p) for p in wal._findings()]
    snap_dir = os.path.join(node_dir, SNAP_DIR)
    snapshots = []
    for name in sorted(os.listdir(snap_dir)) if os.path.isdir(snap_dir) else []:
        parsed = snapfile.parse_name(name)
        if parsed:
            path = os.path.join(snap_dir, name)
            snapshots.append(
                {
                    "index": parsed[0],
                    "term": parsed[1],
                    "bytes": os.path.getsize(path),
                    "path": path,
                }
            )
    hs = state.hard_state
    return {
        "path": node_dir,
        "hard_state": {"term": hs.term, "vote": hs.vote, "commit": hs.commit},
        "log": {
            "first_index": state.base,
            "last_index": state.last_index,
            "entries": len(state.seqs),
        },
        "snapshot": {"index": state.snap_index, "term": state.snap_term}
        if state.snap_index
        else None,
        "snapshots": snapshots,
        "wal_segments": segments,
        "wal_bytes_used": sum(s["bytes"] for s in segments),
        "wal_bytes_allocated": sum(s["file_size"] for s in segments),
        "problems": problems,
    }


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def render(info: dict) -> str:
    hs, lg = info["hard_state"], info["log"]
    snap = info["snapshot"]
    lines = [
        f"node        {info['path']}",
        f"hard state  term {hs['term']}  vote {hs['vote']}  commit {hs['commit']}",
        f"log         entries {lg['first_index']}..{lg['last_index']} ({lg['entries']:,})",
        "snapshot    " + (f"index {snap['index']}  term {snap['term']}" if snap else "none"),
        f"WAL         {len(info['wal_segments'])} segment(s), {_size(info['wal_bytes_used'])} "
        f"used of {_size(info['wal_bytes_allocated'])} allocated",
        "",
        f"{'segment':<40}{'first seq':>12}{'records':>10}{'used':>12}{'size':>12}",
    ]
    for s in info["wal_segments"]:
        lines.append(
            f"{os.path.basename(s['path']):<40}{s['first_seq']:>12}{s['records']:>10}"
            f"{_size(s['bytes']):>12}{_size(s['file_size']):>12}"
        )
    if info["snapshots"]:
        lines += ["", f"{'snapshot file':<40}{'index':>12}{'term':>10}{'size':>12}"]
        for s in info["snapshots"]:
            lines.append(
                f"{os.path.basename(s['path']):<40}{s['index']:>12}{s['term']:>10}"
                f"{_size(s['bytes']):>12}"
            )
    for p in info["problems"]:
        lines.append(f"problem: {p}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keyval inspect", description=__doc__.split("\n\n")[0])
    parser.add_argument("node_dir")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    node_dir = node_dir_of(args.node_dir)
    if node_dir is None:
        print(f"keyval inspect: {args.node_dir} is not a node data directory", file=sys.stderr)
        return 2
    try:
        info = describe(node_dir)
    except (KeyvalError, OSError) as exc:
        print(f"keyval inspect: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=2) if args.json else render(info))
    return 0
