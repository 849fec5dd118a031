"""The credential database: ``credentials.db`` (SQLite, WAL) in the reconciler's data dir.

One file holds the sealed credentials and the use audit so that recording a use and
touching ``last_used_at`` commit together.  ``transaction`` serialises writers of this
process with a lock and other processes with ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FILE_NAME = "credentials.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sealed_credentials (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    project     TEXT,
    type        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_by  TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    key_id      TEXT NOT NULL,
    nonce       BLOB NOT NULL,
    ciphertext  BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS sealed_credentials_key_id ON sealed_credentials (key_id);
CREATE TABLE IF NOT EXISTS credential_audit (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    credential_id TEXT NOT NULL,
    action        TEXT NOT NULL,
    actor         TEXT NOT NULL,
    source_ip     TEXT,
    at            TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS credential_audit_credential ON credential_audit (credential_id, id);
CREATE TABLE IF NOT EXISTS credential_usage (
    credential_id TEXT PRIMARY KEY,
    last_used_at  TEXT NOT NULL
);
"""


class Database:
    """A connection to ``credentials.db`` plus the lock that serialises its writers."""

    def __init__(self, path: Path):
        self.path = path
        # isolation_level=None: we open transactions ourselves, so their extent is visible.
        self.connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.lock = threading.RLock()
        self.connection.execute("PRAGMA journal_mode=WAL")
        self.connection.execute("PRAGMA busy_timeout=5000")
        self.connection.executescript(_SCHEMA)

    @classmethod
    def open(cls, data_dir: str | Path) -> Database:
        """Open (creating if needed) ``credentials.db`` in ``data_dir``."""
        directory = Path(data_dir)
        directory.mkdir(parents=True, exist_ok=True)
        return cls(directory / FILE_NAME)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed on success, rolled back on any exception."""
        with self.lock:
            self.connection.execute("BEGIN IMMEDIATE")
            try:
                yield self.connection
            except BaseException:
                self.connection.execute("ROLLBACK")
                raise
            self.connection.execute("COMMIT")

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        """Rows of a read-only query."""
        with self.lock:
            cursor = self.connection.execute(sql, params)
            cursor.row_factory = sqlite3.Row
            return cursor.fetchall()

    def close(self) -> None:
        """Close the connection."""
        with self.lock:
            self.connection.close()
