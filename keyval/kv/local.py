"""LocalCluster: a cluster of ``keyval serve`` processes on 127.0.0.1, for the demo, the
end-to-end tests and the benchmarks. Every loop in it is bounded in time."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from keyval.kv.client import Client


def free_ports(n: int) -> list[int]:
    """n TCP ports free on 127.0.0.1 right now (the OS picks them)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class LocalCluster:
    """``size`` nodes with data directories ``root/node<i>``; nothing runs until :meth:`start`."""

    def __init__(self, root: str, size: int = 3, extra_args: tuple[str, ...] = ()):
        self.ids = tuple(range(1, size + 1))
        ports = free_ports(size)
        self.addresses = {i: f"127.0.0.1:{p}" for i, p in zip(self.ids, ports, strict=True)}
        self.peers = ",".join(f"{i}={a}" for i, a in self.addresses.items())
        self.dirs = {i: os.path.join(root, f"node{i}") for i in self.ids}
        self.extra_args = extra_args
        self.procs: dict[int, subprocess.Popen] = {}

    def start(self, ids=None) -> None:
        for i in ids or self.ids:
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
                    *self.extra_args,
                ],
                stdout=subprocess.DEVNULL,
            )

    def kill(self, ids=None) -> None:
        """SIGKILL: no chance to flush or close anything."""
        for i in ids or self.ids:
            if i in self.procs and self.procs[i].poll() is None:
                self.procs[i].send_signal(signal.SIGKILL)
        for i in ids or self.ids:
            if i in self.procs:
                self.procs[i].wait()

    def stop(self) -> None:
        """SIGTERM and wait (a node closes its files cleanly); SIGKILL after 10 s."""
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

    def wait_for_leader(self, timeout: float = 30.0) -> float:
        """Seconds until some node reports itself leader; AssertionError past ``timeout``."""
        start = time.monotonic()
        with self.client(timeout=2.0) as c:
            while time.monotonic() - start < timeout:
                if any(n.get("role") == "leader" for n in c.status()):
                    return time.monotonic() - start
                time.sleep(0.02)
        raise AssertionError(f"no leader within {timeout} s")

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
