"""``keyval serve --id N --peers 1=HOST:PORT,... --data DIR``: run one node until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from keyval.kv.protocol import parse_peers

# How long a thread that wants the GIL waits before the holder is made to drop it (Python's
# default is 5 ms). A node's threads hold the GIL for long stretches only off the write path
# (the state machine's batch commit, a snapshot); with the default, a reader thread woken by a
# follower's acknowledgement, or a client's connection thread, could wait that long behind one.
SWITCH_INTERVAL = 0.0005


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="keyval serve", description=__doc__.split(":")[0])
    parser.add_argument("--id", type=int, required=True, help="this node's id")
    parser.add_argument("--peers", required=True, help="1=127.0.0.1:7001,2=127.0.0.1:7002,...")
    parser.add_argument("--data", required=True, help="this node's data directory")
    parser.add_argument(
        "--max-raft-state",
        type=int,
        default=64 * 2**20,
        help="snapshot and compact once the Raft log passes this many bytes",
    )
    parser.add_argument(
        "--segment-size",
        type=int,
        default=64 * 2**20,
        help="bytes per Raft log segment; the node keeps the next one written out ahead of time",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    try:
        peers = parse_peers(args.peers)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format=f"%(asctime)s node{args.id} %(name)s %(levelname)s %(message)s",
    )
    from keyval.kv.server import Server

    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        server = Server(
            args.id,
            peers,
            args.data,
            max_raft_state=args.max_raft_state,
            segment_size=args.segment_size,
        )
    except (ValueError, OSError) as exc:
        print(f"keyval serve: {exc}", file=sys.stderr)
        return 1
    # A signal stops the node as a failure does: either way the wait below ends.
    signal.signal(signal.SIGTERM, lambda *_: server.stopped.set())
    signal.signal(signal.SIGINT, lambda *_: server.stopped.set())
    with server:
        print(f"node {args.id} serving on {peers[args.id][0]}:{peers[args.id][1]}", flush=True)
        server.stopped.wait()
    if server.failure is not None:
        print(f"keyval serve: node {args.id} stopped: {server.failure!r}", file=sys.stderr)
        return 1
    return 0
