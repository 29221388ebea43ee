"""keyval.db: a copy-on-write B+tree page store in one file, in the manner of BoltDB.

>>> from keyval.db import DB
>>> with DB(path) as db:
...     with db.update() as tx:
...         tx.create_bucket(b"users", exist_ok=True).put(b"k", b"v")
...     with db.view() as tx:
...         tx.bucket(b"users").get(b"k")

The file format is specified in :mod:`keyval.db.page`, the commit protocol in
:mod:`keyval.db.tx`; :mod:`keyval.db.check` verifies a file.
"""

from .bucket import Bucket
from .cursor import Cursor
from .db import DB
from .tx import Tx

__all__ = ["DB", "Bucket", "Cursor", "Tx"]
