"""End to end: three real ``keyval serve`` processes on 127.0.0.1.

Clients write under load; every server is killed with SIGKILL at once in the middle of it;
the servers restart on their data directories; every write that was acknowledged must be
there, and fsck must find every data directory clean.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from keyval.errors import KeyvalError
from keyval.fsck import check_path
from keyval.fsck import main as fsck
from keyval.kv.local import LocalCluster
from keyval.kv.server import MIN_SEGMENT_SIZE

NODES = (1, 2, 3)


@pytest.fixture
def cluster(tmp_path):
    # 4 MiB segments, not 64: each node writes its next segment out ahead.
    c = LocalCluster(
        str(tmp_path), size=len(NODES), extra_args=("--segment-size", str(MIN_SEGMENT_SIZE))
    )
    c.start()
    yield c
    c.stop()


def test_cli_round_trip(cluster):
    cluster.wait_for_leader()

    def keyval(*args):
        return subprocess.run(
            [sys.executable, "-m", "keyval.cli", *args, "--peers", cluster.peers],
            capture_output=True,
            timeout=60,
        )

    assert keyval("put", "greeting", "hello").returncode == 0
    assert keyval("append", "greeting", " world").returncode == 0
    got = keyval("get", "greeting")
    assert (got.returncode, got.stdout) == (0, b"hello world\n")
    assert keyval("delete", "greeting").returncode == 0
    assert keyval("get", "greeting").returncode == 1
    status = keyval("status", "--json")
    assert status.returncode == 0
    nodes = json.loads(status.stdout)
    assert sorted(n["id"] for n in nodes) == list(NODES)
    leaders = {n["leader"] for n in nodes}
    assert len(leaders) == 1 and None not in leaders  # every node names the same leader
    assert [n["role"] for n in nodes].count("leader") == 1
    assert len({n["term"] for n in nodes}) == 1
    assert all(n["applied"] >= 4 and n["commit"] >= n["applied"] for n in nodes)
    table = keyval("status")
    assert table.returncode == 0 and table.stdout.count(b"127.0.0.1") == len(NODES)


def test_every_acknowledged_write_survives_sigkill_of_every_server(cluster):
    cluster.wait_for_leader()
    acknowledged: dict[bytes, bytes] = {}
    appended: dict[bytes, list[bytes]] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def writer(w: int) -> None:
        with cluster.client(timeout=5.0) as c:
            n = 0
            while not stop.is_set():
                key, value = b"w%d-%d" % (w, n % 50), b"%d:%d" % (w, n)
                try:
                    c.put(key, value)
                    c.append(b"log-%d" % w, b"%d," % n)
                except KeyvalError:
                    return  # the cluster went down under us: stop at the last acknowledged
                with lock:
                    acknowledged[key] = value
                    appended.setdefault(b"log-%d" % w, []).append(b"%d," % n)
                n += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(acknowledged) < 60 and time.monotonic() < deadline:
        time.sleep(0.02)
    cluster.kill()  # every server at once, while the writers are mid-request
    stop.set()
    for t in threads:
        t.join(timeout=30)
    with lock:
        acknowledged = dict(acknowledged)
        appended = {k: list(v) for k, v in appended.items()}
    assert len(acknowledged) >= 60, "the load never got going"

    for i in NODES:  # the data directories, as the crash left them
        report = check_path(cluster.dirs[i])
        assert report.error is None, report.error
        # A torn tail (a write the kill cut short) is what a crash may leave: open cuts it.
        # Anything else is corruption.
        assert all(p.repairable for p in report.problems), f"node {i}: {report.problems}"
    cluster.start()
    cluster.wait_for_leader()
    with cluster.client() as c:
        for key, value in acknowledged.items():
            assert c.get(key) == value, f"lost acknowledged write {key!r}"
        for key, parts in appended.items():
            log = c.get(key) or b""
            # every acknowledged append is there once, in order; one in flight may follow
            assert log.startswith(b"".join(parts)), f"{key!r}: {log[:80]!r}"
    cluster.stop()
    for i in NODES:
        assert fsck([cluster.dirs[i]]) == 0, f"node {i} not clean after restart"
    assert os.path.exists(os.path.join(cluster.dirs[1], "kv.db"))


def test_status_fails_when_no_node_answers():
    from keyval.kv.local import free_ports

    ports = free_ports(2)  # nobody listens on them
    peers = ",".join(f"{i}=127.0.0.1:{p}" for i, p in enumerate(ports, 1))
    done = subprocess.run(
        [sys.executable, "-m", "keyval.cli", "status", "--peers", peers],
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert b"no node answered" in done.stderr
