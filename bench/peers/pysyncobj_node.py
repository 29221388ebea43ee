"""One PySyncObj node with a replicated dict, serving puts over TCP: the peer of the cluster
benchmark (``bench/test_cluster.py``).

``python -m bench.peers.pysyncobj_node --raft HOST:PORT --partners HOST:PORT,HOST:PORT
--serve HOST:PORT --dir DIR`` runs a ``SyncObj`` whose consumer is a ``ReplDict``, with its
journal file on (``SyncObjConf(journalFile=DIR/journal, fullDumpFile=DIR/dump)``), until
SIGTERM. Requests arrive on ``--serve``, one connection per client thread, so a PySyncObj
write takes the same path as a keyval write: client -> TCP -> a node -> Raft -> reply.

Wire format (both directions): u32 big-endian length, then the body.

- ``P`` u16 key length, key, value: ``ReplDict.set(key, value, sync=True)``; the reply is
  ``OK`` once the command is committed and applied on this node, else ``ER`` and the error.
- ``S``: this node's ``getStatus()`` (``self``, ``leader``, ``raft_term``, ...) as JSON, so
  the benchmark can send its puts to the leader as keyval's client does.

Durability, read from pysyncobj 0.3.x's ``journal.py``: ``FileJournal`` writes each entry into
an ``mmap`` of the journal file and never calls ``msync``/``fsync`` on the append path (only
when the journal is closed), and the term/vote file is written without ``fsync``. An entry
survives a killed process (it is in the page cache) but not a power loss or kernel crash: the
journal is *not durable* in the sense keyval's WAL is.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socketserver
import struct
import sys
import threading

from pysyncobj import SyncObj, SyncObjConf, SyncObjException
from pysyncobj.batteries import ReplDict

_LEN = struct.Struct(">I")
_KEY_LEN = struct.Struct(">H")
REQUEST_TIMEOUT = 10.0  # seconds a put waits for its command to be applied before ER


def read_frame(sock) -> bytes | None:
    """One framed body from ``sock``, or None when the peer closed the connection."""
    head = _read_exactly(sock, _LEN.size)
    if head is None:
        return None
    body = _read_exactly(sock, _LEN.unpack(head)[0])
    if body is None:
        raise ConnectionError("connection closed inside a frame")
    return body


def write_frame(sock, body: bytes) -> None:
    sock.sendall(_LEN.pack(len(body)) + body)


def put_request(key: bytes, value: bytes) -> bytes:
    return b"P" + _KEY_LEN.pack(len(key)) + key + value


def _read_exactly(sock, n: int) -> bytes | None:
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(n - got)
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _address(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pysyncobj_node", description=__doc__.split("\n")[0])
    parser.add_argument("--raft", required=True, help="this node's Raft address HOST:PORT")
    parser.add_argument("--partners", required=True, help="the other nodes' Raft addresses")
    parser.add_argument("--serve", required=True, help="where clients connect, HOST:PORT")
    parser.add_argument("--dir", required=True, help="directory of the journal and dump files")
    parser.add_argument(
        "--no-batch",
        action="store_true",
        help="appendEntriesUseBatch=False: replicate each command at once instead of every "
        "appendEntriesPeriod (0.1 s)",
    )
    args = parser.parse_args(argv)
    os.makedirs(args.dir, exist_ok=True)
    conf = SyncObjConf(
        journalFile=os.path.join(args.dir, "journal"),
        fullDumpFile=os.path.join(args.dir, "dump"),
        appendEntriesUseBatch=not args.no_batch,
    )
    store = ReplDict()
    partners = [p for p in args.partners.split(",") if p]
    node = SyncObj(args.raft, partners, consumers=[store], conf=conf)

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            sock = self.request
            while True:
                try:
                    body = read_frame(sock)
                except OSError:
                    return
                if body is None:
                    return
                write_frame(sock, self._answer(body))

        def _answer(self, body: bytes) -> bytes:
            if body[:1] == b"P":
                (key_len,) = _KEY_LEN.unpack_from(body, 1)
                key = body[3 : 3 + key_len]
                try:
                    store.set(key, body[3 + key_len :], sync=True, timeout=REQUEST_TIMEOUT)
                except SyncObjException as exc:
                    return b"ER" + str(exc).encode()
                return b"OK"
            if body[:1] == b"S":
                status = node.getStatus()
                leader = status.get("leader")
                return json.dumps(
                    {
                        "self": str(status.get("self")),
                        "leader": str(leader) if leader is not None else None,
                        "term": status.get("raft_term"),
                        "log_len": status.get("log_len"),
                    }
                ).encode()
            return b"ERunknown request"

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    server = Server(_address(args.serve), Handler)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, name="serve", daemon=True).start()
    print(f"pysyncobj node {args.raft} serving on {args.serve}", flush=True)
    try:
        stop.wait()
    finally:
        server.shutdown()
        server.server_close()
        node.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
