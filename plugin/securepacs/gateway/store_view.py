"""The gateway's read-only view of the plugin's store: clinics, AE titles, revocations.

Why read-only: the gateway runs under its own uid and must not be able to change who is enrolled (in
compose the store is even mounted read-only into its container). The view opens SQLite with
``mode=ro`` and never runs the schema set-up of :class:`securepacs.store.database.Store`; a write raises
``sqlite3.OperationalError`` ("attempt to write a readonly database"). The store uses a rollback journal,
so a reader needs nothing but read access to the database file itself.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from urllib.parse import quote

from securepacs.store.database import Store


class ReadOnlyStore(Store):
    """:class:`Store`'s reading methods over a ``mode=ro`` connection (writing methods fail)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
        try:
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None, timeout=30)
        except sqlite3.OperationalError as exc:
            # mode=ro never creates the file: name the one that is missing (or unreadable) instead.
            raise sqlite3.OperationalError(f"cannot open the store {self.path} read-only: {exc}") from exc
