"""The SQLite database of the operational store, with per-component schema migrations.

Writes are sub-millisecond, so they run inline on the event loop's thread under a lock
(a thread hop would cost more than the write). ``transaction`` uses ``BEGIN IMMEDIATE``
so several processes sharing the file serialise cleanly instead of failing late.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

FILE_NAME = "quicflow.db"


class Database:
    """One SQLite connection (WAL) shared by the store's repositories."""

    def __init__(self, path: Path | str):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=30
        )
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY, version INTEGER)"
        )
        self._lock = threading.RLock()

    @classmethod
    def open(cls, data_dir: Path) -> Database:
        return cls(Path(data_dir) / FILE_NAME)

    def migrate(self, component: str, steps: Sequence[str]) -> None:
        """Apply the not-yet-applied schema ``steps`` of ``component`` (each a SQL script)."""
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT version FROM schema_versions WHERE component = ?", (component,)
            ).fetchone()
            done = row["version"] if row else 0
            for i, script in enumerate(steps[done:], start=done + 1):
                for statement in [s for s in script.split(";") if s.strip()]:
                    conn.execute(statement)
                conn.execute("INSERT OR REPLACE INTO schema_versions VALUES (?, ?)", (component, i))

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def write(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run one self-contained statement (atomic on its own, no explicit transaction)."""
        with self._lock:
            self._conn.execute(sql, params)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement in its own transaction; return the last row id."""
        with self.transaction() as conn:
            return conn.execute(sql, params).lastrowid or 0

    def close(self) -> None:
        with self._lock:
            self._conn.close()
