"""The client protocol: the payloads of KIND_REQUEST and KIND_RESPONSE frames.

::

    request:  u8 kind | body
      WRITE   body = a state-machine Command (keyval.kv.state): op, client, seq, key, value
      READ    body = the key
      STATUS  body = empty

    response: u8 code | body
      OK          body = the reply: for WRITE the state machine's reply byte(s), for READ
                  1 byte "found" (0/1) then the value, for STATUS a JSON object
      NOT_LEADER  body = the leader's "host:port" if known, else empty
      RETRY       body = a reason (no answer in time here: try again, same sequence number)
      BAD_REQUEST body = a reason (malformed request: retrying will not help)

Addresses are written ``host:port``; a cluster is ``1=127.0.0.1:7001,2=127.0.0.1:7002,...``.
"""

from __future__ import annotations

WRITE, READ, STATUS = 1, 2, 3
OK, NOT_LEADER, RETRY, BAD_REQUEST = 0, 1, 2, 3


def parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not a host:port address: {text!r}")
    return host, int(port)


def format_address(addr: tuple[str, int]) -> str:
    return f"{addr[0]}:{addr[1]}"


def parse_peers(text: str) -> dict[int, tuple[str, int]]:
    """``"1=127.0.0.1:7001,2=..."`` -> ``{1: ("127.0.0.1", 7001), ...}``."""
    peers: dict[int, tuple[str, int]] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        node, sep, addr = item.partition("=")
        if not sep or not node.isdigit() or int(node) < 1:
            raise ValueError(f"not an id=host:port peer: {item!r}")
        if int(node) in peers:
            raise ValueError(f"node {node} is listed twice")
        peers[int(node)] = parse_address(addr)
    if not peers:
        raise ValueError("no peers given")
    return peers
