"""The exceptions of keyval: every error a caller can catch, in one place.

All derive from :class:`KeyvalError`. Storage errors carry the file and byte offset they concern,
so that a report of corruption can be checked by hand with a hex dump.
"""

from __future__ import annotations


class KeyvalError(Exception):
    """Base class of every keyval error."""


class CorruptionError(KeyvalError):
    """Stored bytes fail their checksum or break a format rule.

    ``path`` names the file and ``offset`` the byte offset of the bad record, page or header
    (``None`` when the problem is not at one place, e.g. a missing file). ``repairable`` is
    true for findings that a repair (or simply opening the store) fixes without losing any
    acknowledged data, such as the torn tail a crash leaves.
    """

    repairable = False

    def __init__(self, message: str, path: str | None = None, offset: int | None = None):
        self.message = message
        self.path = path
        self.offset = offset
        where = path if path is not None else "?"
        if offset is not None:
            where = f"{where} at offset {offset}"
        super().__init__(f"{where}: {message}")

    def to_dict(self) -> dict:
        return {"path": self.path, "offset": self.offset, "message": self.message}


class FormatVersionError(CorruptionError):
    """The file was written by a format version this keyval does not read (a newer one, or an
    older one it no longer reads)."""


class LockedError(KeyvalError):
    """Another process has the store open (each file or log has one owner at a time)."""


class ClosedError(KeyvalError):
    """The object (log, database, client) was closed."""


class TxClosedError(ClosedError):
    """The transaction was committed or rolled back and cannot be used any more."""


class ReadOnlyError(KeyvalError):
    """A write was attempted on something that only reads.

    Raised for writes inside ``DB.view()``, and for every write to a WAL after a failed
    ``write``/``fsync`` made it fail-stop (the original ``OSError`` is the ``__cause__``).
    """


class BucketNotFound(KeyvalError, KeyError):
    """The named bucket does not exist."""


class BucketExists(KeyvalError):
    """A bucket of that name exists already (pass ``exist_ok=True`` to reuse it)."""


class KeyTooLarge(KeyvalError, ValueError):
    """The key is empty or longer than the store allows."""


class ValueTooLarge(KeyvalError, ValueError):
    """The value (or WAL record) is longer than the store allows."""


class LogCompacted(KeyvalError, IndexError):
    """The Raft log index asked for was compacted into a snapshot."""


class LogUnavailable(KeyvalError, IndexError):
    """The Raft log index asked for is past the end of the log."""


class MessageDecodeError(KeyvalError, ValueError):
    """Bytes from the network are not one well-formed message of a known version."""


class NotLeader(KeyvalError):
    """This Raft node is not the leader; ``leader_hint`` names the one it believes leads."""

    def __init__(self, message: str = "not the leader", leader_hint: str | None = None):
        self.leader_hint = leader_hint
        super().__init__(message if leader_hint is None else f"{message} (leader: {leader_hint})")


class Timeout(KeyvalError, TimeoutError):
    """An operation did not complete within its deadline; it may or may not have taken effect."""


class SessionExpired(KeyvalError):
    """A write was retried after its client session expired on the cluster (more clients than
    it keeps sessions for came meanwhile): as after a :class:`Timeout`, it may or may not have
    taken effect. The client has started a new session; later calls go on normally."""
