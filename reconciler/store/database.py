"""What the store's repositories may ask of a database: the interface every backend implements.

``Database`` is a small base class with two implementations:
``reconciler.store.sqlite.SQLiteDatabase`` (the embedded default, a file in the data
dir) and ``reconciler.store.postgresql.PostgreSQLDatabase`` (shared by replicas;
chosen by a ``postgresql://`` DSN in ``QUICFLOW_STORE``). A repository uses only what
is declared here:

- ``transaction()``: a context manager yielding a ``Connection`` (``execute`` and
  ``executemany`` returning a ``Cursor`` with ``fetchone``, ``fetchall`` and
  ``rowcount``), committed on success and rolled back on any exception;
- ``query(sql, params)``: the rows of one read; ``execute(sql, params)``: one statement
  in its own transaction, returning the row count; ``write(sql, params)``: one
  self-contained statement without an explicit transaction (cheapest write);
- ``migrate(migrations)``: apply the numbered migrations not yet recorded;
- ``contains(column)``: the one dialect-specific condition repositories need;
- ``close()``.

The paramstyle is ``qmark`` (``?``) for every backend: a backend whose driver wants
another one translates (SQL here holds no literal ``?`` or ``%``). Rows are read by
column name (``row["id"]``), never by position, and SQL is written to run on SQLite and
PostgreSQL alike: explicit column lists, ``ON CONFLICT … DO UPDATE / DO NOTHING``,
``RETURNING id`` for generated ids, no ``rowid``.

Writes are sub-millisecond, so a backend runs them inline on the caller's thread (the
event loop's) under a lock: a thread hop would cost more than the write.
"""

from __future__ import annotations

import abc
import os
import string
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Protocol

FILE_NAME = "quicflow.db"
#: The environment variable naming a shared store (a PostgreSQL DSN; its password belongs
#: in PGPASSWORD or a passfile, never on a command line).
STORE_VARIABLE = "QUICFLOW_STORE"

_SCHEMA_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
)


class Row(Protocol):
    """A result row, read by column name."""

    def __getitem__(self, column: str, /) -> Any: ...

    def keys(self) -> list[str]: ...


class Cursor(Protocol):
    """What a statement run inside a transaction gives back."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """The connection a transaction yields (``sqlite3.Connection`` is one as it is)."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Cursor: ...


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered schema change: SQL statements separated by ``;``.

    Column types that differ between backends are written as ``$name`` (see
    ``Database.column_types``); ``legacy`` names the per-component schema version of
    the old layout (``schema_versions``) that this migration is equal to. ``only``
    names the one backend (``Database.dialect``) whose SQL this is — a table rebuild,
    SQLite's full-text index: the others record it as applied without running it.
    """

    version: int
    name: str
    script: str
    legacy: tuple[str, int] | None = None
    only: str = ""

    def statements(self, column_types: Mapping[str, str]) -> list[str]:
        """The statements of this migration, written for a backend's column types."""
        sql = string.Template(self.script).substitute(column_types)
        return [s.strip() for s in sql.split(";") if s.strip()]


class Database(abc.ABC):
    """The operational store's database; one subclass per backend."""

    #: Repositories write ``?`` parameters; a backend whose driver wants another style translates.
    paramstyle: ClassVar[str] = "qmark"
    #: How the portable ``$name`` column types of a migration are spelled here.
    column_types: ClassVar[Mapping[str, str]]
    #: Which backend this is (``"sqlite"``, ``"postgresql"``): a migration whose ``only``
    #: names another one is recorded without running.
    dialect: ClassVar[str] = ""
    #: Whether other reconciler processes (replicas) may share this store: they then
    #: divide the work through leases (``reconciler.engine.sharding``).
    shared: ClassVar[bool] = False

    @classmethod
    def open(cls, data_dir: str | Path, store: str | None = None) -> Database:
        """The operational store, migrated: ``store`` (or ``$QUICFLOW_STORE``) when it is
        a PostgreSQL DSN, else the data dir's own ``quicflow.db`` (SQLite)."""
        dsn = store if store is not None else os.environ.get(STORE_VARIABLE, "")
        if dsn:
            from reconciler.store import postgresql

            if not postgresql.is_dsn(dsn):
                raise ValueError(
                    f"{STORE_VARIABLE} must be a postgresql:// DSN (or unset for SQLite in "
                    "the data dir)"
                )
            return postgresql.PostgreSQLDatabase(dsn)
        from reconciler.store import sqlite

        return sqlite.SQLiteDatabase(Path(data_dir) / FILE_NAME)

    @property
    @abc.abstractmethod
    def location(self) -> str:
        """Where the data is (a file, a server), for messages."""

    @abc.abstractmethod
    def transaction(self) -> AbstractContextManager[Connection]:
        """A write transaction: committed on success, rolled back on any exception."""

    @abc.abstractmethod
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """The rows of one read."""

    @abc.abstractmethod
    def write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one self-contained statement (atomic on its own); the row count."""

    @abc.abstractmethod
    def contains(self, column: str) -> str:
        """A condition true when ``column`` contains the next parameter (case-sensitive)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection."""

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement in its own transaction; the row count."""
        with self.transaction() as conn:
            return conn.execute(sql, params).rowcount

    def migrate(self, migrations: Sequence[Migration]) -> list[int]:
        """Apply the migrations not yet recorded, in order, in one transaction; their versions."""
        with self.transaction() as conn:
            return self.apply(conn, migrations)

    def apply(self, conn: Connection, migrations: Sequence[Migration]) -> list[int]:
        """Apply, inside the caller's transaction, the migrations not yet recorded."""
        done = recorded(conn)
        applied = []
        for migration in sorted(migrations, key=lambda m: m.version):
            if migration.version in done:
                continue
            if not migration.only or migration.only == self.dialect:
                for statement in migration.statements(self.column_types):
                    conn.execute(statement)
            record(conn, migration)
            applied.append(migration.version)
        return applied


def recorded(conn: Connection) -> set[int]:
    """The versions of the migrations applied so far (creating the version table if new)."""
    conn.execute(_SCHEMA_TABLE)
    return {
        row["version"] for row in conn.execute("SELECT version FROM schema_migrations").fetchall()
    }


def record(conn: Connection, migration: Migration) -> None:
    """Record ``migration`` as applied."""
    conn.execute(
        "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
        (migration.version, migration.name, datetime.now(UTC).isoformat(timespec="seconds")),
    )
