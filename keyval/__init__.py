"""keyval: a crash-safe storage engine and the Raft-replicated key/value database built on it.

Layers, bottom up: :mod:`keyval.wal` (segmented write-ahead log, C core), :mod:`keyval.db`
(copy-on-write B+tree page store), :mod:`keyval.raft` (consensus and its durable storage),
:mod:`keyval.kv` (the replicated service). Errors live in :mod:`keyval.errors`.
"""

__version__ = "0.1.0"
