"""Crash safety: a child commits transactions and is SIGKILLed at random moments, many times.

The child reports each transaction number on stdout after ``update()`` returned. After every
kill the parent reopens the file and requires exactly the state after the last reported
transaction or after the one in flight (all of a transaction or none of it), and a clean
check. Synchronisation is only on the child's output; the kill lands after a random number of
reports plus a random amount of busy work, so it hits every phase of a commit.
"""

from __future__ import annotations

import copy
import os
import random
import signal
import subprocess
import sys

import pytest

from keyval.db import DB
from keyval.db.check import check_file

from .crash_workload import apply_model, operations, read_db

WORKLOAD = os.path.join(os.path.dirname(__file__), "crash_workload.py")


class Model:
    """The workload's state after transaction ``n``, advanced on demand."""

    def __init__(self):
        self.n = 0
        self.state: dict = {}

    def at(self, n: int) -> dict:
        assert n >= self.n
        while self.n < n:
            self.n += 1
            apply_model(self.state, operations(self.n))
        return self.state

    def after(self, n: int) -> dict:
        state = copy.deepcopy(self.at(n))
        apply_model(state, operations(n + 1))
        return state


def one_round(path: str, model: Model, rng: random.Random) -> int:
    child = subprocess.Popen(
        [sys.executable, WORKLOAD, path],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready = child.stdout.readline().split()
        assert ready[:1] == ["ready"], child.stderr.read()
        reported = int(ready[1])
        for _ in range(rng.randrange(0, 6)):
            line = child.stdout.readline()
            assert line, child.stderr.read()
            reported = int(line)
        for _ in range(rng.randrange(0, 200_000)):  # jitter the kill's moment, no waiting
            pass
        child.send_signal(signal.SIGKILL)
        child.wait()
        # Read through the same buffered file objects: readline() may already hold lines the
        # child wrote before it died (communicate() would read past them).
        out, err = child.stdout.read(), child.stderr.read()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL, err
    for line in out.split():
        reported = int(line)

    with DB(path) as db:
        got = read_db(db)
    n = int(got.get((b"meta",), {}).get(b"n", b"0"))
    assert n in (reported, reported + 1), f"reopened at {n}, last reported {reported}"
    expected = model.at(n) if n == reported else model.after(reported)
    assert got == expected
    assert check_file(path) == []
    return n


def run(tmp_path, rounds: int, seed: int) -> None:
    path = str(tmp_path / "crash.db")
    model = Model()
    rng = random.Random(seed)
    last = 0
    for _ in range(rounds):
        n = one_round(path, model, rng)
        assert n >= last
        last = n
    assert last > rounds  # the child really committed between the kills


def test_sigkill_at_random_moments_keeps_last_reported_or_in_flight_commit(tmp_path):
    run(tmp_path, rounds=30, seed=1)


@pytest.mark.torture
def test_sigkill_torture(tmp_path):
    run(tmp_path, rounds=int(os.environ.get("KEYVAL_DB_CRASH_ROUNDS", "500")), seed=2)


def test_open_syncs_a_commit_a_killed_writer_left_unsynced(tmp_path, monkeypatch):
    """A writer with sync=False that is killed leaves its last commits in the page cache
    only. A durable open takes the newest meta as committed, so it must sync the file before
    anything reads it or builds on it (the real fdatasync runs; only the calls are counted)."""
    import keyval.db.db as db_module

    path = str(tmp_path / "unsynced.db")
    child = (
        "import os, signal\n"
        "from keyval.db import DB\n"
        f"db = DB({path!r}, sync=False)\n"
        "with db.update() as tx:\n"
        "    b = tx.create_bucket(b'b')\n"
        "    for i in range(100): b.put(b'k%03d' % i, b'v' * 50)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", child], timeout=60)
    assert done.returncode == -signal.SIGKILL
    real, synced = db_module._fdatasync, []

    def counted(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(db_module, "_fdatasync", counted)
    db = DB(path)
    assert synced  # before the first read below
    with db.view() as tx:
        assert tx.bucket(b"b").get(b"k099") == b"v" * 50
    db.close()
