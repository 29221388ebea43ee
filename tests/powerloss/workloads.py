"""Workloads run under the shim. Each acknowledged operation is written as one JSON line to
the marker file (fd of $PL_MARK, so the shim places it in the trace right after the calls
that made it durable) and to stdout. "attempt" lines come before the operation starts.

usage: workloads.py NAME ROOT
"""

from __future__ import annotations

import json
import os
import random
import sys

MARK = None


def mark(kind: str, **kw) -> None:
    line = json.dumps(dict(k=kind, **kw)) + "\n"
    os.write(MARK, line.encode())
    sys.stdout.write(line)
    sys.stdout.flush()


def payload(rng: random.Random, n: int, tag: str) -> bytes:
    head = tag.encode() + b":"
    return head + bytes(rng.getrandbits(8) for _ in range(max(0, n - len(head))))


def wal(root: str, seed: int) -> None:
    from keyval.wal import WAL

    rng = random.Random(seed)
    d = os.path.join(root, "wal")
    n = 0

    def one(w, size):
        nonlocal n
        n += 1
        p = payload(rng, size, f"r{n}")
        mark("attempt", op="append", p=[p.hex()])
        seq = w.append(p, type=1)
        mark("ack", op="append", first=seq, p=[p.hex()])

    def many(w, sizes):
        nonlocal n
        ps = []
        for s in sizes:
            n += 1
            ps.append(payload(rng, s, f"r{n}"))
        mark("attempt", op="append", p=[p.hex() for p in ps])
        first, _ = w.append_many(ps, type=1)
        mark("ack", op="append", first=first, p=[p.hex() for p in ps])

    with WAL(d, segment_size=16384, sync="always") as w:
        mark("ack", op="open")
        for _i in range(12):
            one(w, rng.choice([10, 100, 700, 3000]))
        many(w, [50, 2000, 40, 5000])
        for _i in range(8):
            one(w, rng.choice([10, 100, 1500]))
        f = w.first_seq + (w.last_seq - w.first_seq) // 2
        mark("attempt", op="truncate_front", seq=f)
        w.truncate_front(f)
        mark("ack", op="truncate_front", seq=f)
        for _i in range(6):
            one(w, rng.choice([10, 100, 4000]))
        b = w.last_seq - 7
        mark("attempt", op="truncate_back", seq=b)
        w.truncate_back(b)
        mark("ack", op="truncate_back", seq=b)
        for _i in range(6):
            one(w, rng.choice([10, 300, 2500]))
        many(w, [9000, 30])
    mark("ack", op="close")
    # reopen (recovery path, its syncs) and a few more
    with WAL(d, segment_size=16384, sync="always") as w:
        mark("ack", op="open")
        for _i in range(4):
            one(w, rng.choice([10, 3000]))
        b = w.last_seq - 2
        mark("attempt", op="truncate_back", seq=b)
        w.truncate_back(b)
        mark("ack", op="truncate_back", seq=b)
        one(w, 100)


def wal_buffered(root: str, seed: int) -> None:
    """Several writes to the file per fdatasync: batches bigger than the (small) write buffer
    with sync "always", then appends with sync "none", acknowledged once sync() returns."""
    from keyval.wal import WAL

    rng = random.Random(seed)
    d = os.path.join(root, "wal")
    n = 0

    def new_payloads(sizes):
        nonlocal n
        out = []
        for s in sizes:
            n += 1
            out.append(payload(rng, s, f"r{n}"))
        return out

    with WAL(d, segment_size=16384, sync="always", buffer_size=4096) as w:
        mark("ack", op="open")
        for sizes in ([300], [3000, 2500, 3500, 1000], [200], [1500, 2800, 1200]):
            ps = new_payloads(sizes)
            mark("attempt", op="append", p=[p.hex() for p in ps])
            first, _ = w.append_many(ps, type=1)
            mark("ack", op="append", first=first, p=[p.hex() for p in ps])
    mark("ack", op="close")
    with WAL(d, segment_size=16384, sync="none", buffer_size=4096) as w:
        mark("ack", op="open")
        for _round in range(4):
            done = []
            for p in new_payloads([rng.choice([200, 700, 1200]) for _ in range(8)]):
                mark("attempt", op="append", p=[p.hex()])
                done.append((w.append(p, type=1), p))
            w.sync()
            for seq, p in done:
                mark("ack", op="append", first=seq, p=[p.hex()])


def wal_reopen(root: str, seed: int) -> None:
    """Second crash: reopens a log a first crash left (recovery writes), then appends, cuts
    and appends again. The first run's markers (PL_PRE) are replayed first."""
    from keyval.wal import WAL

    with open(os.environ["PL_PRE"]) as f:
        for line in f:
            os.write(MARK, line.encode())
    rng = random.Random(seed)
    d = os.path.join(root, "wal")
    mark("attempt", op="reopen")
    with WAL(d, segment_size=16384, sync="always") as w:
        got = [[s, bytes(p).hex()] for s, _, p in w.replay()]
        mark("ack", op="recovered", records=got)
        for i in range(3):
            p = payload(rng, rng.choice([10, 3000, 6000]), f"z{i}")
            mark("attempt", op="append", p=[p.hex()])
            seq = w.append(p, type=1)
            mark("ack", op="append", first=seq, p=[p.hex()])
        if w.last_seq >= 2:
            b = w.last_seq - 1
            mark("attempt", op="truncate_back", seq=b)
            w.truncate_back(b)
            mark("ack", op="truncate_back", seq=b)
        ps = [payload(rng, n, f"y{n}") for n in (5000, 20)]
        mark("attempt", op="append", p=[p.hex() for p in ps])
        first, _ = w.append_many(ps, type=1)
        mark("ack", op="append", first=first, p=[p.hex() for p in ps])


def db(root: str, seed: int) -> None:
    from keyval.db import DB

    rng = random.Random(seed)
    path = os.path.join(root, "x.db")
    state: dict[str, str] = {}
    txn = 0

    def update(d, puts, dels=()):
        nonlocal txn
        txn += 1
        new = dict(state)
        for k in dels:
            new.pop(k, None)
        new.update(puts)
        mark("attempt", op="update", db="x", txn=txn, state=new)
        with d.update() as tx:
            b = tx.create_bucket(b"b", exist_ok=True)
            for k in dels:
                if k in state:
                    b.delete(k.encode())
            for k, v in puts.items():
                b.put(k.encode(), bytes.fromhex(v))
        state.clear()
        state.update(new)
        mark("ack", op="update", db="x", txn=txn, state=new)

    d = DB(path)
    mark("ack", op="open", db="x", state={})
    for i in range(6):
        update(
            d, {f"k{i:03d}-{j}": rng.randbytes(rng.choice([20, 300, 1500])).hex() for j in range(8)}
        )
    update(d, {f"big{j}": rng.randbytes(3000).hex() for j in range(30)})
    update(d, {}, dels=[k for k in state if k.startswith("big")])
    mark("attempt", op="shrink", db="x", state=dict(state))
    d.shrink()
    mark("ack", op="shrink", db="x", state=dict(state))
    update(d, {"after-shrink": "aa"})
    mark("attempt", op="compact", db="y", state=dict(state))
    d.compact(os.path.join(root, "y.db"))
    mark("ack", op="compact", db="y", state=dict(state))
    update(d, {"after-compact": "bb"}, dels=["k000-0"])
    d.close()


def raft_pre(root: str, seed: int) -> None:
    """raft, with the node directory made (and its name made durable) beforehand."""
    os.mkdir(os.path.join(root, "node"))
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(fd)
    os.close(fd)
    raft(root, seed, staged=True)


def raft(root: str, seed: int, staged: bool = False) -> None:
    from keyval.raft.storage import Entry, HardState, RaftStorage, Snapshot

    rng = random.Random(seed)
    node = os.path.join(root, "node")
    st = RaftStorage(node, segment_size=16384)
    mark("ack", op="open")

    def ents(lo, n, term):
        return [
            Entry(i, term, rng.randbytes(rng.choice([30, 400, 2500]))) for i in range(lo, lo + n)
        ]

    def enc(es):
        return [[e.index, e.term, e.data.hex()] for e in es]

    def append(es):
        mark("attempt", op="append", e=enc(es))
        st.append(es)
        mark("ack", op="append", e=enc(es))

    def hs(h):
        mark("attempt", op="hs", hs=[h.term, h.vote, h.commit])
        st.set_hard_state(h)
        mark("ack", op="hs", hs=[h.term, h.vote, h.commit])

    def save(h, es):
        mark("attempt", op="save", hs=[h.term, h.vote, h.commit], e=enc(es))
        st.save(h, es)
        mark("ack", op="save", hs=[h.term, h.vote, h.commit], e=enc(es))

    def snap(i, t):
        data = rng.randbytes(rng.choice([100, 5000]))
        mark("attempt", op="snap", i=i, t=t, d=data.hex())
        if staged and i % 2:
            st.stage_snapshot(Snapshot(index=i, term=t, data=data))
            st.save_snapshot(Snapshot(index=i, term=t, data=data), staged=True)
        else:
            st.save_snapshot(Snapshot(index=i, term=t, data=data))
        mark("ack", op="snap", i=i, t=t, d=data.hex())

    hs(HardState(1, 1, 0))
    append(ents(1, 5, 1))
    save(HardState(1, 1, 3), ents(6, 4, 1))
    save(HardState(2, 2, 5), ents(10, 6, 2))
    append(ents(8, 3, 2))  # conflict: replaces 8.. (old 8..15)
    snap(5, 1)
    append(ents(11, 4, 2))
    hs(HardState(2, 2, 9))
    snap(9, 2)
    append(ents(15, 5, 2))
    snap(12, 2)
    save(HardState(3, 3, 14), ents(20, 3, 3))
    snap(30, 3)  # beyond the log: drops it
    append(ents(31, 3, 3))
    st.close()
    mark("ack", op="close")


if __name__ == "__main__":
    name, root = sys.argv[1], sys.argv[2]
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    MARK = os.open(os.environ["PL_MARK"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    workloads = [wal, wal_buffered, wal_reopen, db, raft, raft_pre]
    {w.__name__: w for w in workloads}[name](root, seed)
