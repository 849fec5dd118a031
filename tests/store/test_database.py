"""The database interface on SQLite: transactions, row counts, the dialect piece, migrations."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.store import database, migrations, sqlite


def _migration(version: int, script: str) -> database.Migration:
    return database.Migration(version, f"step {version}", script)


def test_open_makes_one_migrated_file_in_the_data_dir(tmp_path: Path) -> None:
    db = database.Database.open(tmp_path / "new" / "data")
    try:
        assert isinstance(db, sqlite.SQLiteDatabase)
        assert db.location == str(tmp_path / "new" / "data" / database.FILE_NAME)
        assert db.query("PRAGMA journal_mode")[0]["journal_mode"] == "wal"
        versions = [r["version"] for r in db.query("SELECT version FROM schema_migrations")]
        assert versions == [m.version for m in migrations.MIGRATIONS]
    finally:
        db.close()


def test_a_transaction_commits_or_rolls_back_as_a_whole(db: database.Database) -> None:
    with db.transaction() as conn:
        conn.execute("INSERT INTO log_streams (stream, closed) VALUES (?, ?)", ("a", 1))
    with pytest.raises(RuntimeError), db.transaction() as conn:
        conn.execute("INSERT INTO log_streams (stream, closed) VALUES (?, ?)", ("b", 1))
        raise RuntimeError("abandon")
    assert [r["stream"] for r in db.query("SELECT stream FROM log_streams")] == ["a"]


def test_execute_and_write_return_the_row_count(db: database.Database) -> None:
    assert db.write("INSERT INTO log_streams (stream) VALUES (?)", ("a",)) == 1
    assert db.execute("INSERT INTO log_streams (stream) VALUES (?)", ("b",)) == 1
    assert db.execute("UPDATE log_streams SET closed = 1") == 2
    assert db.execute("DELETE FROM log_streams WHERE stream = ?", ("nope",)) == 0


def test_contains_is_a_case_sensitive_substring_test(db: database.Database) -> None:
    for line in ("Error: disk", "an error", "fine"):
        db.execute(
            "INSERT INTO log_lines (stream, seq, at, line) VALUES ('s', ?, 't', ?)",
            (len(line), line),
        )
    rows = db.query(f"SELECT line FROM log_lines WHERE {db.contains('line')}", ("error",))
    assert [r["line"] for r in rows] == ["an error"]


def test_migrations_apply_once_in_version_order(tmp_path: Path) -> None:
    steps = [
        _migration(2, "ALTER TABLE t ADD COLUMN b INTEGER NOT NULL DEFAULT 0"),
        _migration(1, "CREATE TABLE t (a TEXT); CREATE INDEX t_a ON t (a)"),
    ]
    db = sqlite.SQLiteDatabase(tmp_path / "q.db", schema=steps)
    try:
        assert db.migrate(steps) == []
        assert db.migrate([*steps, _migration(3, "CREATE TABLE u (x $float)")]) == [3]
        names = [r["name"] for r in db.query("SELECT name FROM schema_migrations ORDER BY version")]
        assert names == ["step 1", "step 2", "step 3"]
        column = db.query("SELECT type FROM pragma_table_info('u')")[0]["type"]
        assert column == "REAL"  # $float spelled for SQLite
    finally:
        db.close()


def test_a_failing_migration_leaves_nothing_behind(tmp_path: Path) -> None:
    good = _migration(1, "CREATE TABLE t (a TEXT)")
    with pytest.raises(Exception, match="no such table"):
        sqlite.SQLiteDatabase(tmp_path / "q.db", schema=[good, _migration(2, "DROP TABLE nope")])
    db = sqlite.SQLiteDatabase(tmp_path / "q.db", schema=[])
    try:
        tables = {r["name"] for r in db.query("SELECT name FROM sqlite_master")}
        assert "t" not in tables
        assert db.query("SELECT COUNT(*) AS n FROM schema_migrations")[0]["n"] == 0
    finally:
        db.close()


def test_two_connections_opening_one_file_migrate_it_once(tmp_path: Path) -> None:
    first = sqlite.SQLiteDatabase(tmp_path / "q.db")
    second = sqlite.SQLiteDatabase(tmp_path / "q.db")
    try:
        rows = second.query("SELECT version FROM schema_migrations")
        assert len(rows) == len(migrations.MIGRATIONS)
        first.execute("INSERT INTO log_streams (stream) VALUES ('a')")
        assert second.query("SELECT stream FROM log_streams")[0]["stream"] == "a"
    finally:
        first.close()
        second.close()


def test_every_migration_is_numbered_once_and_written_portably() -> None:
    versions = [m.version for m in migrations.MIGRATIONS]
    assert versions == list(range(1, len(versions) + 1))
    for migration in migrations.MIGRATIONS:
        text = migration.script.upper()
        # SQLite-only spellings have a portable $type (or must not be used at all).
        assert "AUTOINCREMENT" not in text and " BLOB" not in text and " REAL" not in text
        assert "ROWID" not in text and "INSERT OR" not in text
