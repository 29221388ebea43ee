"""End to end: three real ``keyval serve`` processes on 127.0.0.1.

Clients write under load; every server is killed with SIGKILL at once in the middle of it;
the servers restart on their data directories; every write that was acknowledged must be
there, and fsck must find every data directory clean.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from keyval import Client
from keyval.errors import KeyvalError
from keyval.fsck import main as fsck

NODES = (1, 2, 3)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Cluster:
    def __init__(self, root):
        ports = free_ports(len(NODES))
        self.addresses = {i: f"127.0.0.1:{p}" for i, p in zip(NODES, ports, strict=True)}
        self.peers = ",".join(f"{i}={a}" for i, a in self.addresses.items())
        self.dirs = {i: str(root / f"node{i}") for i in NODES}
        self.procs: dict[int, subprocess.Popen] = {}

    def start(self, i: int) -> None:
        self.procs[i] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "keyval.cli",
                "serve",
                "--id",
                str(i),
                "--peers",
                self.peers,
                "--data",
                self.dirs[i],
            ],
            stdout=subprocess.DEVNULL,
        )

    def start_all(self) -> None:
        for i in NODES:
            self.start(i)

    def kill_all(self) -> None:
        for p in self.procs.values():
            p.send_signal(signal.SIGKILL)
        for p in self.procs.values():
            p.wait()

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def client(self, timeout: float = 15.0) -> Client:
        return Client(list(self.addresses.values()), timeout=timeout)

    def wait_for_leader(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        with self.client(timeout=2.0) as c:
            while time.monotonic() < deadline:
                if any(n.get("role") == "leader" for n in c.status()):
                    return
                time.sleep(0.05)
        raise AssertionError("no leader was elected")


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    c.start_all()
    yield c
    c.stop_all()


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
    cluster.kill_all()  # every server at once, while the writers are mid-request
    stop.set()
    for t in threads:
        t.join(timeout=30)
    with lock:
        acknowledged = dict(acknowledged)
        appended = {k: list(v) for k, v in appended.items()}
    assert len(acknowledged) >= 60, "the load never got going"

    for i in NODES:  # the data directories, as the crash left them
        assert fsck([cluster.dirs[i]]) in (0, 4), f"node {i} is corrupt after SIGKILL"
    cluster.start_all()
    cluster.wait_for_leader()
    with cluster.client() as c:
        for key, value in acknowledged.items():
            assert c.get(key) == value, f"lost acknowledged write {key!r}"
        for key, parts in appended.items():
            log = c.get(key) or b""
            # every acknowledged append is there once, in order; one in flight may follow
            assert log.startswith(b"".join(parts)), f"{key!r}: {log[:80]!r}"
    cluster.stop_all()
    for i in NODES:
        assert fsck([cluster.dirs[i]]) == 0, f"node {i} not clean after restart"
    assert os.path.exists(os.path.join(cluster.dirs[1], "kv.db"))
