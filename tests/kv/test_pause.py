"""Jepsen-style process pauses on three real ``keyval serve`` processes.

Client threads put, append, get and delete on a few shared keys while the leader is stopped
with SIGSTOP (for longer than an election timeout, so that the others elect a new leader) and
then continued with SIGCONT: a leader that comes back must neither answer a read with stale
data nor acknowledge a write it did not commit, and its clients' requests in flight must end
right (applied once, or retried exactly once). The history is checked for linearizability,
every appended token must show up at most once in any value read, and every data directory
must be clean afterwards.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import pytest

from keyval.errors import SessionExpired, Timeout
from keyval.fsck import main as fsck
from keyval.kv import linearizability as lin
from keyval.kv.client import Client
from keyval.kv.local import LocalCluster
from keyval.kv.server import MIN_SEGMENT_SIZE

KEYS = [b"k0", b"k1", b"k2"]
WORKERS = 4
# Seconds each leader stays stopped: longer than a client's attempt (keyval.kv.client's
# TRY_TIMEOUT), so that the clients go on with a new leader meanwhile, and shorter.
PAUSES = (4.0, 1.0, 4.5, 0.6)
PROGRESS = 500  # operations completed between two pauses, and after the last
STALE_READERS = 6  # reads sent to the stopped leader once the new one has served writes


class _Progress:
    """Completed operations, for waiting on the load instead of sleeping."""

    def __init__(self) -> None:
        self.done = 0
        self.cond = threading.Condition()

    def add(self) -> None:
        with self.cond:
            self.done += 1
            self.cond.notify_all()

    def wait_for(self, more: int, timeout: float = 60.0, must: bool = True) -> bool:
        with self.cond:
            target = self.done + more
            ok = self.cond.wait_for(lambda: self.done >= target, timeout)
            assert ok or not must, (
                f"only {self.done} of {target} operations completed within {timeout} s"
            )
            return ok


def _worker(w, client, history, progress, stop, failures) -> None:
    rng = random.Random(w)
    n = 0
    while not stop.is_set():
        n += 1
        key, r, token = rng.choice(KEYS), rng.random(), b"%d.%d;" % (w, n)
        kind, value = (
            (lin.GET, None)
            if r < 0.35
            else (lin.PUT, token)
            if r < 0.55
            else (lin.APPEND, token)
            if r < 0.9
            else (lin.DELETE, None)
        )
        op = history.invoke(w, kind, key, value)
        try:
            if kind == lin.GET:
                out = client.get(key)
            elif kind == lin.PUT:
                out = client.put(key, value)
            elif kind == lin.APPEND:
                out = client.append(key, value)
            else:
                out = lin.FOUND if client.delete(key) else lin.ABSENT
        except (Timeout, SessionExpired):
            continue  # outcome unknown: left pending in the history
        except Exception as exc:  # anything else is a failure of the test
            failures.append(repr(exc))
            return
        history.complete(op, out)
        progress.add()


def _stale_reader(r, servers, key, history, failures) -> None:
    """One get, sent first to the stopped leader (``servers[0]``): it comes back believing it
    leads, with these requests waiting, while the others have committed writes it never saw."""
    op = history.invoke(WORKERS + 1 + r, lin.GET, key)
    try:
        with Client(servers, timeout=10.0) as c:
            out = c.get(key)
    except (Timeout, SessionExpired):
        return
    except Exception as exc:
        failures.append(repr(exc))
        return
    history.complete(op, out)


def _leader(cluster: LocalCluster, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    with cluster.client(timeout=2.0) as c:
        while time.monotonic() < deadline:
            leaders = [n["id"] for n in c.status() if n.get("role") == "leader"]
            if leaders:
                return leaders[0]
    raise AssertionError(f"no leader within {timeout} s")


@pytest.mark.torture
def test_a_paused_leader_never_breaks_linearizability_or_exactly_once(tmp_path):
    cluster = LocalCluster(
        str(tmp_path), size=3, extra_args=("--segment-size", str(MIN_SEGMENT_SIZE))
    )
    history, progress = lin.History(), _Progress()
    stop, failures, paused = threading.Event(), [], set()
    cluster.start()
    try:
        cluster.wait_for_leader()
        clients = [cluster.client(timeout=10.0) for _ in range(WORKERS)]
        threads = [
            threading.Thread(
                target=_worker, args=(w, clients[w], history, progress, stop, failures)
            )
            for w in range(WORKERS)
        ]
        for t in threads:
            t.start()
        try:
            for seconds in PAUSES:
                progress.wait_for(PROGRESS)
                leader = _leader(cluster)
                cluster.procs[leader].send_signal(signal.SIGSTOP)
                paused.add(leader)
                resume_at = time.monotonic() + seconds
                readers = []
                # Writes completed meanwhile were committed by another leader: reads that
                # begin after them must see them, wherever they are sent.
                if progress.wait_for(20, seconds - 0.5, must=False):
                    first = cluster.addresses[leader]
                    servers = [first] + [a for a in cluster.addresses.values() if a != first]
                    readers = [
                        threading.Thread(
                            target=_stale_reader, args=(r, servers, key, history, failures)
                        )
                        for r, key in enumerate(KEYS * (STALE_READERS // len(KEYS)))
                    ]
                    for t in readers:
                        t.start()
                time.sleep(max(0.0, resume_at - time.monotonic()))  # holds the pause
                cluster.procs[leader].send_signal(signal.SIGCONT)
                paused.discard(leader)
                for t in readers:
                    t.join(timeout=60)
            progress.wait_for(PROGRESS)  # service goes on after the last pause
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
            for c in clients:
                c.close()
        assert not failures, failures
        with Client(list(cluster.addresses.values()), timeout=30.0) as c:
            for key in KEYS:  # the final state, in the history too
                op = history.invoke(WORKERS, lin.GET, key)
                history.complete(op, c.get(key))
    finally:
        for i in paused:
            cluster.procs[i].send_signal(signal.SIGCONT)
        cluster.stop()

    ops = history.operations()
    result = lin.check(ops, timeout=60)
    assert result.ok is True, result.explanation
    for op in ops:
        if op.kind == lin.GET and op.output:
            tokens = [t for t in op.output.split(b";") if t]
            assert len(tokens) == len(set(tokens)), f"an append applied twice: {op}"
    assert sum(not op.pending for op in ops) >= (len(PAUSES) + 1) * PROGRESS
    for i in cluster.ids:
        assert fsck([cluster.dirs[i]]) == 0, f"node {i} not clean"
    assert all(os.path.isdir(d) for d in cluster.dirs.values())
