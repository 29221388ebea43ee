"""The crash test's child process, and the model the parent checks it against.

Run as ``python crash_workload.py DB_PATH``: opens the database, prints ``ready N`` (N the last
transaction number found in it), then commits transactions N+1, N+2, ... forever, printing each
number once its ``update()`` has returned (so it is durable), and shrinks the file after every
seventh, until it is killed.

Transaction ``n``'s operations depend on ``n`` alone, so the parent can replay them into a
model without talking to the child.
"""

from __future__ import annotations

import random
import sys

PAGE_SIZE = 1024
TOP = (b"alpha", b"beta")
SIZES = (0, 8, 50, 200, 300, 1500, 9000)  # 300 and up go to overflow pages at this page size


def operations(n: int) -> list[tuple]:
    rng = random.Random(n)
    ops: list[tuple] = []
    for _ in range(rng.randrange(1, 40)):
        path = (rng.choice(TOP), b"sub") if rng.random() < 0.3 else (rng.choice(TOP),)
        key = b"k%04d" % rng.randrange(400)
        r = rng.random()
        if r < 0.6:
            ops.append(("put", path, key, rng.randbytes(rng.choice(SIZES))))
        elif r < 0.95:
            ops.append(("delete", path, key))
        else:
            ops.append(("drop", path))
    if rng.random() < 0.15:
        # A big commit: many pages to write, so kills often land in the middle of writing them.
        base = rng.randrange(10_000)
        ops.extend(
            ("put", (b"bulk",), b"b%05d" % (base + i), rng.randbytes(1200)) for i in range(150)
        )
    ops.append(("put", (b"meta",), b"n", b"%d" % n))
    return ops


def apply_db(tx, ops: list[tuple]) -> None:
    from keyval.errors import BucketNotFound

    for op in ops:
        kind, path = op[0], op[1]
        if kind == "drop":
            try:
                owner = tx if len(path) == 1 else tx.bucket(path[0])
                owner.delete_bucket(path[-1])
            except BucketNotFound:
                pass
            continue
        b = tx.create_bucket(path[0], exist_ok=True)
        for name in path[1:]:
            b = b.create_bucket(name, exist_ok=True)
        if kind == "put":
            b.put(op[2], op[3])
        else:
            b.delete(op[2])


def apply_model(model: dict, ops: list[tuple]) -> None:
    """``model`` maps a bucket path to its {key: value}."""
    for op in ops:
        kind, path = op[0], op[1]
        if kind == "drop":
            for p in [p for p in model if p[: len(path)] == path]:
                del model[p]
            continue
        for i in range(1, len(path) + 1):
            model.setdefault(path[:i], {})
        if kind == "put":
            model[path][op[2]] = op[3]
        else:
            model[path].pop(op[2], None)


def read_db(db) -> dict:
    out: dict = {}

    def walk(bucket, path):
        out[path] = dict(bucket.items())
        for name in bucket.buckets():
            walk(bucket.bucket(name), (*path, name))

    with db.view() as tx:
        for name in tx.buckets():
            walk(tx.bucket(name), (name,))
    return out


def main(path: str) -> None:
    from keyval.db import DB

    db = DB(path, page_size=PAGE_SIZE)
    n = int(read_db(db).get((b"meta",), {}).get(b"n", b"0"))
    print("ready", n, flush=True)
    while True:
        n += 1
        with db.update() as tx:
            apply_db(tx, operations(n))
        print(n, flush=True)
        if n % 7 == 0:
            # Its commits move pages and cut the file but change no content: a kill inside
            # it must leave transaction n as it was.
            db.shrink()


if __name__ == "__main__":
    main(sys.argv[1])
