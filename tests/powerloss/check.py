"""Replays a workload's trace to many crash points and checks each reconstructed state with
the real code. usage: check.py TRACE_DIR WORKLOAD [--random N] [--seed S] [--stop-first]

Crash points: every position in the trace (before each op, and the end). Modes per point:
strict (only fsynced data/names), all (everything the process wrote, as a clean kill), and
N random (a random prefix of the volatile name ops, random sector subsets of unsynced writes).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pltrace as tr

from keyval import fsck
from keyval.errors import CorruptionError


class Violation(Exception):
    pass


def markers(ops, crash):
    return [(i, op.a) for i, op in enumerate(ops[:crash]) if op.kind == "M"]


def in_flight(ms):
    """The attempt not yet acknowledged (None if the last marker is an ack)."""
    if ms and ms[-1][1]["k"] == "attempt":
        return ms[-1][1]
    return None


# ---------------------------------------------------------------------------------------- WAL
def check_wal(root, ms):
    from keyval.wal import WAL

    expected: dict[int, bytes] = {}
    attempted: set[bytes] = set()
    forbidden: set[bytes] = set()
    opened = False
    fl = None
    for _, m in ms:
        if m["k"] == "attempt":
            if m["op"] == "append":
                attempted.update(bytes.fromhex(p) for p in m["p"])
            if m["op"] != "reopen":
                fl = m
            continue
        if m["op"] != "recovered":
            fl = None
        if m["op"] == "recovered":  # what a reopen found is durable from then on
            opened = True
            expected = {s: bytes.fromhex(p) for s, p in m["records"]}
        elif m["op"] == "open":
            opened = True
        elif m["op"] == "append":
            for j, p in enumerate(m["p"]):
                expected[m["first"] + j] = bytes.fromhex(p)
        elif m["op"] == "truncate_front":
            for s in [s for s in expected if s < m["seq"]]:
                del expected[s]
        elif m["op"] == "truncate_back":
            for s in [s for s in expected if s > m["seq"]]:
                forbidden.add(expected.pop(s))
    may_lose = lambda s: False  # noqa: E731
    if fl and fl["op"] == "truncate_back":
        forbidden = set()
        may_lose = lambda s: s > fl["seq"]  # noqa: E731
    if fl and fl["op"] == "truncate_front":
        may_lose = lambda s: s < fl["seq"]  # noqa: E731
    d = os.path.join(root, "wal")
    if not os.path.isdir(d):
        if opened and expected:
            raise Violation(f"wal directory missing; {len(expected)} acked records lost")
        return "nodir"
    with WAL(d, segment_size=16384) as w:
        got = {}
        for seq, _typ, p in w.replay():
            got[seq] = bytes(p)
        for s, p in expected.items():
            if s not in got and may_lose(s):
                continue
            if s not in got:
                raise Violation(f"acked record {s} lost (log {w.first_seq}..{w.last_seq})")
            if got[s] != p:
                raise Violation(f"acked record {s} has other contents")
        for s, p in got.items():
            if s in expected:
                continue
            if p in forbidden:
                raise Violation(f"record {s} removed by an acked truncate_back came back")
            if p not in attempted:
                raise Violation(f"record {s} was never appended")
    return "ok"


# ----------------------------------------------------------------------------------------- DB
def read_db(path):
    from keyval.db import DB
    from keyval.errors import BucketNotFound

    with DB(path) as d, d.view() as tx:
        try:
            b = tx.bucket(b"b")
        except BucketNotFound:
            return {}
        return {k.decode(): v.hex() for k, v in b.items()}


def check_db(root, ms):
    acked = {}
    opened = False
    cands_extra = collections.defaultdict(list)
    for _, m in ms:
        if m["k"] == "ack" and m.get("db"):
            acked[m["db"]] = m["state"]
            if m["op"] == "open":
                opened = True
    fl = in_flight(ms)
    if fl:
        cands_extra[fl["db"]].append(fl["state"])
    out = []
    for name in ("x", "y"):
        path = os.path.join(root, name + ".db")
        cands = ([acked[name]] if name in acked else []) + cands_extra[name]
        if not os.path.exists(path):
            if name in acked and (name == "y" or opened):
                raise Violation(f"{name}.db missing although acked")
            out.append(f"{name}:absent")
            continue
        if name == "x" and not opened:
            cands = [*cands, {}]
        got = read_db(path)
        if got not in cands:
            raise Violation(
                f"{name}.db holds a state that is neither the acked one nor the in-flight one "
                f"({len(got)} keys; acked {len(acked.get(name, {}))})"
            )
        out.append(f"{name}:ok")
    return ",".join(out)


# --------------------------------------------------------------------------------------- raft
def raft_states(ms):
    """(acked state, in-flight op) where a state is (hs, snap, log dict)."""
    hs, snap, log = (0, 0, 0), None, {}
    opened = False
    for _, m in ms:
        if m["k"] != "ack":
            continue
        hs, snap, log = apply_raft(m, hs, snap, log)
        if m["op"] == "open":
            opened = True
    return (hs, snap, log), in_flight(ms), opened


def apply_raft(m, hs, snap, log):
    log = dict(log)
    if m["op"] in ("append", "save"):
        es = m["e"]
        if es:
            lo = es[0][0]
            for i in [i for i in log if i >= lo]:
                del log[i]
            for i, t, d in es:
                log[i] = (t, d)
    if m["op"] in ("hs", "save"):
        hs = tuple(m["hs"])
    if m["op"] == "snap":
        i, t = m["i"], m["t"]
        keep = i in log and log[i][0] == t
        log = {k: v for k, v in log.items() if k > i} if keep else {}
        snap = (i, t, m["d"])
    return hs, snap, log


def check_raft(root, ms):
    from keyval.raft.storage import RaftStorage

    (hs, snap, log), fl, opened = raft_states(ms)
    node = os.path.join(root, "node")
    made = os.path.isdir(node) and os.path.exists(os.path.join(node, "raft.db"))
    if not made and opened and (hs != (0, 0, 0) or log or snap):
        raise Violation("node directory or raft.db missing although writes were acked")
    with RaftStorage(node, segment_size=16384) as st:
        h = st.hard_state()
        ghs = (h.term, h.vote, h.commit)
        s = st.snapshot()
        gsnap = None
        if s is not None:
            data = bytes(s.data)
            if not isinstance(s.data, bytes):
                s.data.close()
            gsnap = (s.index, s.term, bytes(data).hex())
        glog = {
            e.index: (e.term, e.data.hex()) for e in st.entries(st.first_index, st.last_index + 1)
        }
    cands = [(hs, snap, log)]
    if fl:
        nhs, nsnap, nlog = apply_raft(fl, hs, snap, log)
        cands.append((nhs, nsnap, nlog))
        if fl["op"] in ("append", "save") and fl["e"]:
            lo = fl["e"][0][0]
            for j in range(len(fl["e"])):
                part = {k: v for k, v in log.items() if k < lo}
                for i, t, d in fl["e"][:j]:
                    part[i] = (t, d)
                cands.append((hs, snap, part))
                if fl["op"] == "save":
                    # a term change goes first (early hard state with the old commit)
                    cands.append(((nhs[0], nhs[1], hs[2]), snap, part))
            if fl["op"] == "save":
                cands.append(((nhs[0], nhs[1], hs[2]), snap, log))
    for c in cands:
        if (ghs, gsnap, glog) == c:
            return "ok"
    # describe the difference with the acked state
    why = []
    if ghs != hs:
        why.append(f"hard state {ghs} != acked {hs}")
    if (gsnap and gsnap[:2]) != (snap and snap[:2]) or (gsnap != snap):
        why.append(f"snapshot {gsnap and gsnap[:2]} != acked {snap and snap[:2]}")
    if glog != log:
        miss = sorted(set(log) - set(glog))
        extra = sorted(set(glog) - set(log))
        diff = sorted(i for i in set(log) & set(glog) if log[i] != glog[i])
        why.append(f"log: missing {miss[:10]} extra {extra[:10]} differing {diff[:10]}")
    raise Violation("; ".join(why) + (f" (in flight: {fl['op']})" if fl else ""))


CHECKS = {
    "wal": (check_wal, "wal"),
    "wal_buffered": (check_wal, "wal"),
    "wal_reopen": (check_wal, "wal"),
    "db": (check_db, "x.db"),
    "raft": (check_raft, "node"),
    "raft_pre": (check_raft, "node"),
}


def run_one(ops, crash, mode, rng, workload, tmp, meta, initial=None):
    state = tr.build(ops, crash, mode, rng, meta, initial)
    root = os.path.join(tmp, "root")
    shutil.rmtree(root, ignore_errors=True)
    tr.materialize(state, root)
    fn, fsck_target = CHECKS[workload]
    ms = markers(ops, crash)
    # fsck first, on the untouched state
    targets = [os.path.join(root, fsck_target)]
    if workload == "db":
        targets.append(os.path.join(root, "y.db"))
    fr = []
    rr = []
    root2 = os.path.join(tmp, "root2")
    shutil.rmtree(root2, ignore_errors=True)
    shutil.copytree(root, root2)
    for t in targets:
        if os.path.exists(t):
            rep = fsck.check_path(t)
            fr.append((t, rep.exit_code, [str(p) for p in rep.problems], rep.error))
            t2 = os.path.join(root2, os.path.relpath(t, root))
            rep2 = fsck.check_path(t2, repair=True)
            rep3 = fsck.check_path(t2)
            rr.append((os.path.basename(t), rep2.exit_code, rep3.exit_code))
    try:
        res = fn(root, ms)
        err = None
    except Violation as e:
        res, err = "VIOLATION", str(e)
    except CorruptionError as e:
        res, err = "CORRUPTION", f"{type(e).__name__}: {e}"
    except Exception as e:
        res, err = "ERROR", f"{type(e).__name__}: {e}"
    fsck_codes = [c for _, c, _, _ in fr]
    fsck_note = None
    for name, c2, c3 in rr:
        if res == "CORRUPTION" and c2 != 4:
            fsck_note = f"fsck --repair gave {c2} on a state open refuses"
        elif res not in ("CORRUPTION", "ERROR") and (c2 not in (0, 1) or c3 != 0):
            fsck_note = f"fsck --repair gave {c2}, then fsck {c3}, on a state open accepts ({name})"
    if fsck_note:
        return res, err, fsck_note, state
    if res == "CORRUPTION" and not any(c == 4 for c in fsck_codes):
        fsck_note = f"fsck missed what open raised: {fr}"
    return res, err, fsck_note, state


def describe(ops, crash):
    lo = max(0, crash - 6)
    out = []
    for i in range(lo, min(len(ops), crash + 2)):
        op = ops[i]
        s = f"{'>>' if i == crash else '  '} {i} {op.kind} "
        if op.kind == "W":
            s += f"ino={op.a} off={op.b} len={op.c}"
        elif op.kind == "M":
            s += f"{op.a['k']} {op.a['op']}"
        else:
            s += f"{op.a} {op.b or ''}"
        out.append(s)
    return "\n".join(out)


def load_initial(trace_dir):
    """The durable state a trace started from (saved by double.py), or None."""
    path = os.path.join(trace_dir, "initial.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        inos = json.load(f)
    out = {}
    for p, ino in inos.items():
        if ino == "dir":
            out[p] = "dir"
        else:
            with open(os.path.join(trace_dir, "initial", p), "rb") as f:
                out[p] = (ino, f.read())
    return out


def run(trace_dir, workload, random_states=3, seed=0, meta="posix", points=None):
    """Checks every crash point of the trace in TRACE_DIR; returns (summary line, findings:
    {(kind, mode, message): [first crash point, files, count]}, ops)."""
    ops = tr.parse(os.path.join(trace_dir, "trace"))
    initial = load_initial(trace_dir)
    rng = random.Random(seed)
    points = range(len(ops) + 1) if points is None else points
    counts = collections.Counter()
    findings = collections.OrderedDict()
    states = 0
    tmp = tempfile.mkdtemp(prefix="plcheck-")
    try:
        for crash in points:
            if crash < len(ops) and ops[crash].kind == "M":
                continue  # same state as the next op
            for mode in ["strict", "all"] + ["random"] * random_states:
                res, err, fnote, state = run_one(
                    ops, crash, mode, rng, workload, tmp, meta, initial
                )
                states += 1
                counts[res] += 1
                for kind, msg in ((res, err), ("FSCK", fnote)):
                    if msg is None:
                        continue
                    msg = re.sub(r"/tmp/plcheck-\w+/root/", "", msg)
                    key = (kind, mode, re.sub(r"[0-9a-f]{6,}|\d+", "N", msg)[:200])
                    if key not in findings:
                        findings[key] = [crash, sorted(state), 0, msg]
                    findings[key][2] += 1
                    if kind == "FSCK":
                        counts["fsck-mismatch"] += 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary = (
        f"{workload} ({meta}): {len(ops)} ops, {len(points)} crash points, {states} states: "
        f"{dict(counts)}"
    )
    return summary, findings, ops


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("workload")
    ap.add_argument("--random", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--points", default="all")
    ap.add_argument("-v", action="store_true")
    ap.add_argument("--meta", default="posix", choices=["posix", "ext4"])
    a = ap.parse_args()
    points = None if a.points == "all" else [int(x) for x in a.points.split(",")]
    summary, findings, ops = run(a.dir, a.workload, a.random, a.seed, a.meta, points)
    print(summary)
    for (kind, mode, _), (crash, files, n, msg) in findings.items():
        print(f"\n[{kind}/{mode}] x{n}, first at op {crash}: {msg}")
        if a.v:
            print(describe(ops, crash))
            print("   files:", files)
    return 1 if any(k[0] != "FSCK" for k in findings) else 0


if __name__ == "__main__":
    sys.exit(main())
