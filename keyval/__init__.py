"""keyval: a crash-safe storage engine and the Raft-replicated key/value database built on it.

Layers, bottom up: :mod:`keyval.wal` (segmented write-ahead log, C core), :mod:`keyval.db`
(copy-on-write B+tree page store), :mod:`keyval.raft` (consensus and its durable storage),
:mod:`keyval.kv` (the replicated service). Errors live in :mod:`keyval.errors`.
"""

__version__ = "0.1.0"

__all__ = ["Client"]


def __getattr__(name: str):
    # The client is imported on first use: `import keyval` stays light for storage-only users.
    if name == "Client":
        from keyval.kv.client import Client

        return Client
    raise AttributeError(f"module 'keyval' has no attribute {name!r}")
