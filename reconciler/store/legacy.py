"""Adopting a data dir made before versioned migrations (SQLite only: nothing else is that old).

The old layout had two files and no numbered migrations:

- ``quicflow.db`` with ``schema_versions (component, version)``: each component
  created its own tables on first use, so a data dir holds only the tables of the
  components it ran. Each row is carried over as the numbered migration it equals
  (``Migration.legacy``), the others run as for a new store, and the old table is
  dropped once every row in it was known;
- ``credentials.db`` beside it (sealed credentials, their audit and last use). Its
  rows are copied into the same tables of the one database, in the transaction that
  migrates it, and the file is then renamed ``credentials.db.imported`` so it is never
  read again. Copying skips rows already present, so a crash before the rename only
  means the (idempotent) copy runs again on the next start.

Upgrade with the old process stopped: a process still writing ``credentials.db``
after the copy would write to a file nobody reads.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from reconciler.store import database

CREDENTIALS_FILE = "credentials.db"
RETIRED_SUFFIX = ".imported"

_CREDENTIAL_COLUMNS = {
    "sealed_credentials": (
        "id",
        "name",
        "project",
        "type",
        "description",
        "created_by",
        "created_at",
        "updated_at",
        "key_id",
        "nonce",
        "ciphertext",
    ),
    "credential_audit": ("id", "credential_id", "action", "actor", "source_ip", "at"),
    "credential_usage": ("credential_id", "last_used_at"),
}


def _tables(conn: database.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {row["name"] for row in rows}


def adopt_schema_versions(
    conn: database.Connection, migrations: Sequence[database.Migration]
) -> None:
    """Record the migrations an old ``schema_versions`` table says are applied."""
    if "schema_versions" not in _tables(conn):
        return
    done = database.recorded(conn)
    unknown = False
    for row in conn.execute("SELECT component, version FROM schema_versions").fetchall():
        equal = [
            m
            for m in migrations
            if m.legacy is not None
            and m.legacy[0] == row["component"]
            and m.legacy[1] <= row["version"]
        ]
        unknown |= not equal
        for migration in equal:
            if migration.version not in done:
                database.record(conn, migration)
                done.add(migration.version)
    # A row no migration stands for is kept where it is rather than lost.
    if not unknown:
        conn.execute("DROP TABLE schema_versions")


def import_credentials(conn: database.Connection, path: Path) -> bool:
    """Copy the rows of an old ``credentials.db`` into ``conn``'s tables; True when done."""
    if not {*_CREDENTIAL_COLUMNS} <= _tables(conn):
        return False  # the credential migration is not part of this schema
    source = sqlite3.connect(path, timeout=30)
    source.row_factory = sqlite3.Row
    try:
        present = {r["name"] for r in source.execute("SELECT name FROM sqlite_master")}
        for table, columns in _CREDENTIAL_COLUMNS.items():
            if table not in present:
                continue
            names = ", ".join(columns)
            rows = source.execute(f"SELECT {names} FROM {table}").fetchall()
            conn.executemany(
                f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))})"
                " ON CONFLICT DO NOTHING",
                [tuple(row) for row in rows],
            )
    finally:
        source.close()
    return True


def retire(path: Path) -> None:
    """Rename an imported ``credentials.db`` (and its WAL files) out of the way."""
    for suffix in ("", "-wal", "-shm"):
        part = path.with_name(path.name + suffix)
        if part.exists():
            part.rename(path.with_name(path.name + RETIRED_SUFFIX + suffix))
