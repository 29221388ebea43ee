"""Parsing a shim trace and building the file system a power loss could leave.

Model (conservative, ext4 data=ordered with journalled metadata in mind):

* File data: what a file held at its last successful fsync/fdatasync (on any descriptor of the
  inode, O_DIRECT writes included) survives. Writes (and truncates) after that are volatile:
  mode "strict" drops all of them; mode "random" applies a random subset of them, each write
  torn at 512-byte sector granularity (any subset of its sectors), in trace order.
* Names: a create/rename/link/unlink/mkdir in directory D is durable once D is fsynced. The
  ones not yet durable at the crash are volatile; on ext4 the journal commits metadata in
  order, so a *prefix* (in trace order) of the volatile name operations may survive too:
  "strict" keeps none, "random" a random-length prefix, "all" every one of them.
* An inode's data follows the inode, whatever names it had on the way.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field

SECTOR = int(os.environ.get("PL_SECTOR", "512"))


@dataclass
class Op:
    kind: str
    a: object = None
    b: object = None
    c: object = None
    data: bytes = b""


def parse(path: str) -> list[Op]:
    """Ops with inode numbers replaced by (ino, generation): a freed inode number is reused."""
    ops = _parse(path)
    gen: dict[int, int] = {}
    for op in ops:
        if op.kind == "C":
            gen[op.a] = gen.get(op.a, 0) + 1
            op.a = (op.a, gen[op.a])
        elif op.kind in "WTXFS":
            op.a = (op.a, gen.get(op.a, 0))
    return ops


def _parse(path: str) -> list[Op]:
    with open(path, "rb") as f:
        raw = f.read()
    ops: list[Op] = []
    pos = 0
    n = len(raw)
    while pos < n:
        nl = raw.index(b"\n", pos)
        line = raw[pos:nl].decode()
        pos = nl + 1
        k, _, rest = line.partition(" ")
        if k == "W":
            ino, off, ln = map(int, rest.split())
            ops.append(Op("W", ino, off, ln, raw[pos : pos + ln]))
            pos += ln
        elif k == "T":
            ino, ln = map(int, rest.split())
            ops.append(Op("T", ino, ln))
        elif k == "F":
            ino, mode, off, ln = map(int, rest.split())
            ops.append(Op("F", ino, mode, (off, ln)))
        elif k == "S":
            ops.append(Op("S", int(rest)))
        elif k == "X":
            ops.append(Op("X", int(rest)))
        elif k == "D":
            ops.append(Op("D", os.path.normpath(rest)))
        elif k == "C":
            ino, p = rest.split(" ", 1)
            ops.append(Op("C", int(ino), p))
        elif k in "RL":
            a, b = rest.split(" ")
            ops.append(Op(k, a, b))
        elif k in "UK":
            ops.append(Op(k, rest))
        elif k == "M":
            ops.append(Op("M", json.loads(rest)))
        else:
            raise ValueError(f"bad trace line {line!r}")
    return ops


def parent(p: str) -> str:
    d = os.path.dirname(p)
    return d or "."


@dataclass
class FS:
    """The volatile view: names -> inode (dirs are names with inode None)."""

    names: dict = field(default_factory=dict)  # path -> ino, or "dir"


def build(
    ops: list[Op],
    crash: int,
    mode: str,
    rng: random.Random | None = None,
    meta="posix",
    initial: dict | None = None,
):
    """Files and directories (path -> bytes | None for a dir) a power loss just before
    ops[crash] may leave. ``initial``: path -> (ino, bytes) | "dir", durable before the trace."""
    rng = rng or random.Random(0)
    initial = initial or {}
    base: dict = {}
    # 1. name operations, with the index of the dir fsync that made each durable
    names: dict[str, object] = {".": "dir"}
    for p, v in initial.items():
        if v == "dir":
            names[p] = "dir"
        else:
            names[p] = (v[0], 0)
            base[(v[0], 0)] = v[1]
    name_ops = []  # (index, op, dirs it touches)
    for i, op in enumerate(ops[:crash]):
        if op.kind in "CRLUK":
            if op.kind == "C":
                dirs = {parent(op.b)}
            elif op.kind in "RL":
                dirs = {parent(op.a), parent(op.b)}
            else:
                dirs = {parent(op.a)}
            name_ops.append([i, op, dirs])
    last_dsync: dict[str, int] = {}
    for i, op in enumerate(ops[:crash]):
        if op.kind == "D":
            last_dsync[op.a] = i
    last_any = max([i for i, op in enumerate(ops[:crash]) if op.kind in "SD"], default=-1)
    durable = []
    volatile = []
    for i, op, dirs in name_ops:
        # posix: a rename across dirs needs both; ext4: any later fsync commits the journal,
        # which holds every earlier name operation
        if (meta == "ext4" and last_any > i) or all(last_dsync.get(d, -1) > i for d in dirs):
            durable.append((i, op))
        else:
            volatile.append((i, op))
    if mode == "strict":
        keep_v = 0
    elif mode == "all":
        keep_v = len(volatile)
    else:
        keep_v = rng.randint(0, len(volatile))
    chosen = sorted(durable + volatile[:keep_v], key=lambda t: t[0])
    # Apply chosen name ops in order. A name op may refer to a name whose creation was not
    # chosen (then it is skipped: e.g. rename of a file never durably created).
    # Track inode of each name: need inode for renames/links -> from the trace's volatile view.
    ino_of_name_at: dict[int, object] = {}
    vol: dict[str, object] = dict(names)
    for i, op in enumerate(ops[:crash]):
        if op.kind == "C":
            vol[op.b] = op.a
        elif op.kind == "K":
            vol[op.a] = "dir"
        elif op.kind == "R":
            ino_of_name_at[i] = vol.get(op.a)
            if op.a in vol:
                vol[op.b] = vol.pop(op.a)
        elif op.kind == "L":
            ino_of_name_at[i] = vol.get(op.a)
            if op.a in vol:
                vol[op.b] = vol[op.a]
        elif op.kind == "U":
            vol.pop(op.a, None)
    for i, op in chosen:
        if op.kind == "C":
            names[op.b] = op.a
        elif op.kind == "K":
            names[op.a] = "dir"
        elif op.kind == "R":
            ino = ino_of_name_at[i]
            names.pop(op.a, None)
            if ino is not None:
                names[op.b] = ino
        elif op.kind == "L":
            ino = ino_of_name_at[i]
            if ino is not None:
                names[op.b] = ino
        elif op.kind == "U":
            names.pop(op.a, None)

    # drop names whose parent directory does not exist
    def reachable(p):
        while p not in (".", ""):
            p = parent(p)
            if names.get(p) != "dir":
                return False
        return True

    names = {p: v for p, v in names.items() if reachable(p)}
    # 2. data
    data_ops: dict[int, list] = {}
    synced: dict[int, int] = {}
    for op in ops[:crash]:
        if op.kind in "WTXF":
            data_ops.setdefault(op.a, []).append(op)
        elif op.kind == "S":
            synced[op.a] = len(data_ops.get(op.a, []))
    contents: dict[int, bytearray] = {}
    for ino in {v for v in names.values() if v != "dir"}:
        buf = bytearray(base.get(ino, b""))
        lst = data_ops.get(ino, [])
        k = synced.get(ino, 0)
        for op in lst[:k]:
            _apply(buf, op)
        if mode != "strict":
            for op in lst[k:]:
                if mode == "all":
                    _apply(buf, op)
                elif rng.random() < 0.5:
                    _apply(buf, op, torn=rng)
        contents[ino] = buf
    return {p: (None if v == "dir" else bytes(contents[v])) for p, v in names.items()}


def _apply(buf: bytearray, op: Op, torn: random.Random | None = None) -> None:
    if op.kind == "W":
        off, data = op.b, op.data
        if len(buf) < off:
            buf.extend(bytes(off - len(buf)))
        if torn is None or len(data) <= SECTOR:
            end = off + len(data)
            if len(buf) < end:
                buf.extend(bytes(end - len(buf)))
            buf[off:end] = data
            return
        # any subset of the sectors, the file growing to the last one kept
        s = off
        while s < off + len(data):
            e = min((s // SECTOR + 1) * SECTOR, off + len(data))
            if torn.random() < 0.5:
                if len(buf) < e:
                    buf.extend(bytes(e - len(buf)))
                buf[s:e] = data[s - off : e - off]
            s = e
    elif op.kind == "T":
        del buf[op.b :]
        if len(buf) < op.b:
            buf.extend(bytes(op.b - len(buf)))
    elif op.kind == "X":
        del buf[:]
    elif op.kind == "F":
        off, ln = op.c
        if not (op.b & 1) and len(buf) < off + ln:  # not KEEP_SIZE
            buf.extend(bytes(off + ln - len(buf)))


def materialize(state: dict, root: str) -> None:
    os.makedirs(root, exist_ok=True)
    for p in sorted(state, key=lambda s: s.count("/")):
        full = os.path.join(root, p)
        if state[p] is None:
            os.makedirs(full, exist_ok=True)
    for p, v in state.items():
        if v is not None:
            with open(os.path.join(root, p), "wb") as f:
                f.write(v)
