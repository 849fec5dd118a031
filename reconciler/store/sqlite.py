"""The SQLite backend of the operational store: one file under the data dir, WAL mode.

Writes are sub-millisecond, so they run inline on the event loop's thread under a lock
(a thread hop would cost more than the write). ``transaction`` uses ``BEGIN IMMEDIATE``
so several processes sharing the file serialise cleanly instead of failing late.

Opening a file applies the pending migrations; a data dir made before versioned
migrations is adopted on the way (``reconciler.store.legacy``).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from reconciler.store import database, legacy, migrations


class SQLiteDatabase(database.Database):
    """One SQLite connection (WAL) shared by the store's repositories."""

    dialect = "sqlite"
    column_types = {
        "serial": "INTEGER PRIMARY KEY AUTOINCREMENT",
        "float": "REAL",
        "bytes": "BLOB",
        "int64": "INTEGER",
    }

    def __init__(
        self,
        path: Path | str,
        schema: Sequence[database.Migration] = migrations.MIGRATIONS,
    ):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are opened here, so their extent is visible.
        self._conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30
        )
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._lock = threading.RLock()
        try:
            self.migrate(schema)
        except BaseException:
            self._conn.close()
            raise

    @property
    def location(self) -> str:
        """The file."""
        return self.path

    def migrate(self, migrations: Sequence[database.Migration]) -> list[int]:
        """Adopt an old-layout data dir, then apply the pending migrations (one transaction)."""
        old_credentials = (
            None if self.path == ":memory:" else Path(self.path).with_name(legacy.CREDENTIALS_FILE)
        )
        with self.transaction() as conn:
            legacy.adopt_schema_versions(conn, migrations)
            applied = self.apply(conn, migrations)
            imported = (
                old_credentials is not None
                and old_credentials.exists()
                and legacy.import_credentials(conn, old_credentials)
            )
        if imported and old_credentials is not None:
            legacy.retire(old_credentials)
        return applied

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (``BEGIN IMMEDIATE``): committed, or rolled back on error."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[database.Row]:
        """The rows of one read."""
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one self-contained statement (atomic on its own, no explicit transaction)."""
        with self._lock:
            return self._conn.execute(sql, params).rowcount

    def contains(self, column: str) -> str:
        """``instr`` is SQLite's substring test (``LIKE`` would ignore case)."""
        return f"instr({column}, ?) > 0"

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()
