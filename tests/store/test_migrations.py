"""Upgrading a data dir made by the old code: per-component ``schema_versions`` and a
separate ``credentials.db`` become one versioned store, every row kept."""

from __future__ import annotations

import secrets
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from store.old_layout import COMPONENT_SCHEMAS, CREDENTIALS_SCHEMA, SCHEMA_VERSIONS

from reconciler import notifications as outbox_values
from reconciler.auth import tokens
from reconciler.credential import auditing, manager, model, sealing
from reconciler.log.store import LogStore
from reconciler.runs import RunState
from reconciler.store import (
    alerts,
    builds,
    database,
    legacy,
    migrations,
    outbox,
    runs,
    schedules,
    sqlite,
    triggers,
)

KEY = secrets.token_bytes(32)
# The components this old data dir had used: no API token was ever issued and no
# schedule declared, so (as the old code created tables on first use) those are missing.
USED = ("runs", "logs", "alert.records", "alert.outbox", "trigger_records", "builder")

OLD_ROWS = [
    "INSERT INTO runs VALUES ('r-1', 'shop', 'prod', '1.0', 'c0ffee', 'h1', 'manual',"
    " 'succeeded', NULL, 'alice', 'rolling', '2026-01-01T00:00:00Z', '', '', '', 0, '', '{}', 1)",
    "INSERT INTO steps VALUES ('r-1', 'deploy:t1', 'succeeded', '', '', 1, '{}', '', 1)",
    "INSERT INTO decisions VALUES ('r-1', 'prod', 1, 'bob', '2026-01-01T00:01:00Z', 'ok')",
    "INSERT INTO log_lines VALUES ('r-1', 1, 't', 't1/deploy', 'stdout', 'hello')",
    "INSERT INTO log_lines VALUES ('r-1', 2, 't', 't1/deploy', 'stdout', 'bye')",
    "INSERT INTO log_streams VALUES ('r-1', 1)",
    "INSERT INTO alert_records (rule, rule_event, event, mode, project, env, version, severity,"
    " title, message, created_at, updated_at) VALUES ('rule-1', 'run_failed', 'run_failed',"
    " 'immediate', 'shop', 'prod', '1.0', 'critical', 'failed', 'it failed', 10.0, 10.0)",
    "INSERT INTO alert_outbox (key, callback, channel, url, body, policy, next_attempt_at,"
    " created_at) VALUES ('alert-1-ops', 'ops', 'webhook', 'http://127.0.0.1:9/', '{}',"
    ' \'{"attempts": 3, "backoff": 1.0, "max_backoff": 4.0, "timeout": 2.0}\', 11.0, 10.0)',
    "INSERT INTO alert_deliveries (outbox_id, key, callback, attempt, status, latency_ms, at)"
    " VALUES (1, 'alert-1-ops', 'ops', 1, 'failed', 3.5, 11.0)",
    "INSERT INTO trigger_records (at, trigger_id, project, status) VALUES"
    " ('2026-01-01T00:00:00.000+00:00', 'shop.gh', 'shop', 'success')",
    "INSERT INTO webhook_deliveries VALUES ('shop.gh', 'd-1', '2026-01-01T00:00:00+00:00')",
    "INSERT INTO builds (id, project, version, status, started_at) VALUES"
    " ('b-2', 'shop', '1.1', 'success', '2026-01-02T00:00:00Z')",
    "INSERT INTO builds (id, project, version, status, started_at) VALUES"
    " ('b-1', 'shop', '1.0', 'success', '2026-01-01T00:00:00Z')",
    "INSERT INTO image_artifacts VALUES ('b-1', 'shop', '1.0', 'reg/shop:1.0', 'sha256:aa', 5,"
    " '2026-01-01T00:05:00Z')",
]


def _sealed_row(tmp_path: Path) -> sqlite3.Row:
    """A credential sealed by the real sealing code, as a row to plant in the old file."""
    scratch = sqlite.SQLiteDatabase(tmp_path / "scratch" / "q.db")
    try:
        store = sealing.SealedStore(scratch, sealing.SealingKeys(KEY))
        store.put("registry", model.GLOBAL, model.CredentialType.ACCESS_TOKEN, {"token": "s3"})
        return scratch.query("SELECT * FROM sealed_credentials")[0]
    finally:
        scratch.close()


def make_old_data_dir(data_dir: Path, sealed: sqlite3.Row, *, main: bool = True) -> None:
    """What the old code left: quicflow.db (per-component versions) and credentials.db."""
    data_dir.mkdir(parents=True)
    if main:
        conn = sqlite3.connect(data_dir / "quicflow.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(SCHEMA_VERSIONS)
        for component in USED:
            for statement in COMPONENT_SCHEMAS[component].split(";"):
                conn.execute(statement)
            conn.execute("INSERT OR REPLACE INTO schema_versions VALUES (?, ?)", (component, 1))
        for statement in OLD_ROWS:
            conn.execute(statement)
        conn.close()
    creds = sqlite3.connect(data_dir / "credentials.db", isolation_level=None)
    creds.execute("PRAGMA journal_mode=WAL")
    creds.executescript(CREDENTIALS_SCHEMA)
    creds.execute(
        "INSERT INTO sealed_credentials VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", tuple(sealed)
    )
    creds.execute(
        "INSERT INTO credential_audit (credential_id, action, actor, at) VALUES"
        " ('global:registry', 'create', 'user:alice', '2026-01-01T00:00:00Z'),"
        " ('global:registry', 'use', 'run:r-1', '2026-01-01T00:02:00Z')"
    )
    creds.execute("INSERT INTO credential_usage VALUES ('global:registry', '2026-01-01T00:02:00Z')")
    creds.close()


@pytest.fixture
def old_dir(tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    make_old_data_dir(data_dir, _sealed_row(tmp_path))
    return data_dir


def _tables(db: database.Database) -> set[str]:
    return {r["name"] for r in db.query("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_an_old_data_dir_opens_migrated_with_every_row(old_dir: Path) -> None:
    db = database.Database.open(old_dir)
    try:
        versions = [r["version"] for r in db.query("SELECT version FROM schema_migrations")]
        assert versions == [m.version for m in migrations.MIGRATIONS]
        assert "schema_versions" not in _tables(db)

        run_store = runs.RunStore(db)
        run = run_store.get("r-1")
        assert run is not None and run.state is RunState.SUCCEEDED and run.actor == "alice"
        assert [s.key for s in run_store.steps("r-1")] == ["deploy:t1"]
        decision = run_store.decision("r-1", "prod")
        assert decision is not None and decision.user == "bob" and decision.approved
        logs = LogStore(db)
        assert [x.line for x in logs.read("r-1")] == ["hello", "bye"] and logs.is_closed("r-1")
        assert logs.append("r-1", [("t", "s", "stdout", "again")]) == 3

        (alert,) = alerts.AlertLog(db).history()
        assert (alert.rule, alert.project, alert.count) == ("rule-1", "shop", 1)
        box = outbox.Outbox(db)
        item = box.get("alert-1-ops")
        assert item is not None and item.message.policy.attempts == 3
        (delivery,) = box.deliveries()
        assert delivery.status is outbox_values.AttemptStatus.FAILED
        assert not box.enqueue(item.message, 20.0)  # the key is still known

        records = triggers.TriggerRecords(db)
        found, total = records.list(projects=["shop"])
        assert total == 1 and found[0].trigger_id == "shop.gh"
        assert not records.claim_delivery("shop.gh", "d-1", datetime.now(UTC))

        build_store = builds.BuildStore(db)
        assert [b.id for b in build_store.list("shop")] == ["b-2", "b-1"]
        artifact = build_store.latest_artifact("shop")
        assert artifact is not None and artifact.digest == "sha256:aa"

        # Components the old dir never used start empty and work.
        assert schedules.ScheduleStore(db).all() == {}
        token = tokens.TokenStore(db).create("alice")
        assert tokens.TokenStore(db).lookup(token) == "alice"
    finally:
        db.close()


def test_the_old_credentials_file_moves_into_the_one_database(old_dir: Path) -> None:
    db = database.Database.open(old_dir)
    try:
        assert not (old_dir / legacy.CREDENTIALS_FILE).exists()
        assert (old_dir / (legacy.CREDENTIALS_FILE + legacy.RETIRED_SUFFIX)).exists()
        credentials = manager.CredentialManager.using(db, {sealing.KEY_ENV: KEY.hex()})
        (info,) = credentials.list()
        assert (info.id, info.last_used_at) == ("global:registry", "2026-01-01T00:02:00Z")
        assert [e.action for e in credentials.logs("global:registry")] == [
            auditing.Action.USE,
            auditing.Action.CREATE,
        ]
        value = credentials.get("registry", "shop", actor="run:r-2")
        assert value.token == "s3"
        newest = credentials.logs("global:registry")[0]
        assert newest.id == 3 and newest.actor == "run:r-2"  # ids go on after the old ones
        credentials.close()  # the store stays open: it is the caller's
        assert db.query("SELECT COUNT(*) AS n FROM credential_audit")[0]["n"] == 3
    finally:
        db.close()


def test_reopening_applies_nothing_and_a_repeated_import_adds_no_row(old_dir: Path) -> None:
    db = database.Database.open(old_dir)
    db.close()
    # As if the process had stopped between the import's commit and the file's rename.
    retired = old_dir / (legacy.CREDENTIALS_FILE + legacy.RETIRED_SUFFIX)
    retired.rename(old_dir / legacy.CREDENTIALS_FILE)
    db = database.Database.open(old_dir)
    try:
        assert db.migrate(migrations.MIGRATIONS) == []
        counts = {
            table: db.query(f"SELECT COUNT(*) AS n FROM {table}")[0]["n"]
            for table in ("sealed_credentials", "credential_audit", "credential_usage", "runs")
        }
        assert counts == {
            "sealed_credentials": 1,
            "credential_audit": 2,
            "credential_usage": 1,
            "runs": 1,
        }
        assert not (old_dir / legacy.CREDENTIALS_FILE).exists()
    finally:
        db.close()


def test_a_credentials_file_without_the_main_database_is_imported(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    make_old_data_dir(data_dir, _sealed_row(tmp_path), main=False)
    credentials = manager.CredentialManager.open(data_dir, {sealing.KEY_ENV: KEY.hex()})
    try:
        assert credentials.get("registry", None, actor="user:alice").token == "s3"
    finally:
        credentials.close()


def test_an_unknown_old_component_keeps_the_old_version_table(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    make_old_data_dir(data_dir, _sealed_row(tmp_path))
    conn = sqlite3.connect(data_dir / "quicflow.db")
    conn.execute("INSERT INTO schema_versions VALUES ('from.elsewhere', 4)")
    conn.commit()
    conn.close()
    db = database.Database.open(data_dir)
    try:
        rows = db.query("SELECT component FROM schema_versions ORDER BY component")
        assert "from.elsewhere" in [r["component"] for r in rows]
        assert runs.RunStore(db).get("r-1") is not None
    finally:
        db.close()


def test_builds_keep_their_order_without_rowid(old_dir: Path) -> None:
    db = database.Database.open(old_dir)
    try:
        seqs = {r["id"]: r["seq"] for r in db.query("SELECT id, seq FROM builds")}
        assert seqs == {"b-1": 1, "b-2": 2}  # numbered by (started_at, id)
    finally:
        db.close()
