"""End to end: three real ``keyval serve`` processes on 127.0.0.1.

Clients write under load; every server is killed with SIGKILL at once in the middle of it;
the servers restart on their data directories; every write that was acknowledged must be
there, and fsck must find every data directory clean.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

from keyval.errors import KeyvalError
from keyval.fsck import main as fsck
from keyval.kv.local import LocalCluster

NODES = (1, 2, 3)


@pytest.fixture
def cluster(tmp_path):
    c = LocalCluster(str(tmp_path), size=len(NODES))
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
    status = keyval("status")
    assert status.returncode == 0 and b"leader" in status.stdout


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
        assert fsck([cluster.dirs[i]]) in (0, 4), f"node {i} is corrupt after SIGKILL"
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
