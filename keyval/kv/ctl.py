"""``keyval put|get|append|delete|status ... --peers 1=HOST:PORT,...``: one request to a cluster.

Keys and values are given as text (UTF-8). ``get`` prints the value, or exits 1 when the key is
missing; ``status`` prints each node's view (role, term, leader, commit and applied index), or
exits 1 when no node answers.
"""

from __future__ import annotations

import argparse
import json
import sys

from keyval.errors import KeyvalError
from keyval.kv.protocol import format_address, parse_peers

USAGE = {
    "put": ("key", "value"),
    "append": ("key", "value"),
    "get": ("key",),
    "delete": ("key",),
    "status": (),
}


def main(command: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"keyval {command}")
    for name in USAGE[command]:
        parser.add_argument(name)
    parser.add_argument("--peers", required=True, help="1=127.0.0.1:7001,2=127.0.0.1:7002,...")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--json", action="store_true", help="status: print JSON")
    args = parser.parse_args(argv)
    try:
        peers = parse_peers(args.peers)
    except ValueError as exc:
        parser.error(str(exc))
    from keyval.kv.client import Client

    client = Client([format_address(a) for a in peers.values()], timeout=args.timeout)
    try:
        if command == "status":
            nodes = client.status()
            if args.json:
                print(json.dumps(nodes, indent=2))
            else:
                print(
                    f"{'node':<6}{'address':<22}{'role':<11}{'term':>6}{'leader':>8}"
                    f"{'commit':>9}{'applied':>9}"
                )
                for n in nodes:
                    if "error" in n:
                        print(f"{'?':<6}{n['address']:<22}down: {n['error']}")
                        continue
                    print(
                        f"{n['id']:<6}{n['address']:<22}{n['role']:<11}{n['term']:>6}"
                        f"{n['leader'] or '-':>8}{n['commit']:>9}{n['applied']:>9}"
                    )
            if all("error" in n for n in nodes):
                print("keyval status: no node answered", file=sys.stderr)
                return 1
            return 0
        key = args.key.encode()
        if command == "get":
            value = client.get(key)
            if value is None:
                return 1
            sys.stdout.buffer.write(value + b"\n")
        elif command == "delete":
            return 0 if client.delete(key) else 1
        else:
            getattr(client, command)(key, args.value.encode())
        return 0
    except KeyvalError as exc:
        print(f"keyval {command}: {exc}", file=sys.stderr)
        return 2
    finally:
        client.close()
