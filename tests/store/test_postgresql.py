"""The PostgreSQL backend: chosen by a DSN, never shows a password, migrates once per database."""

from __future__ import annotations

import concurrent.futures
import socket
from pathlib import Path

import psycopg
import pytest
from postgres import fresh_dsn

from reconciler.errors import TemporaryError
from reconciler.store import database, migrations, postgresql
from reconciler.store.runs import RunStore


def test_a_dsn_in_the_environment_selects_postgresql(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn = fresh_dsn()
    monkeypatch.setenv(database.STORE_VARIABLE, dsn)
    store = database.Database.open(tmp_path / "data")
    try:
        assert isinstance(store, postgresql.PostgreSQLDatabase)
        assert store.location.startswith("postgresql://quicflow@127.0.0.1:")
        assert not (tmp_path / "data" / database.FILE_NAME).exists()  # no SQLite file made
    finally:
        store.close()


def test_a_store_setting_that_is_not_a_dsn_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(database.STORE_VARIABLE, "mysql://db/quicflow")
    with pytest.raises(ValueError, match="QUICFLOW_STORE must be a postgresql:// DSN"):
        database.Database.open(tmp_path / "data")


def test_an_unreachable_server_is_named_without_its_password() -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    dsn = f"postgresql://ops:hunter2-secret@127.0.0.1:{port}/quicflow"
    with pytest.raises(TemporaryError) as caught:
        postgresql.PostgreSQLDatabase(dsn, connect_timeout=2)
    message = str(caught.value)
    assert f"cannot connect to the store at postgresql://ops@127.0.0.1:{port}/quicflow" in message
    assert "hunter2" not in message and "hunter2" not in repr(caught.value.__cause__)


def test_replicas_opening_one_database_together_apply_each_migration_once() -> None:
    dsn = fresh_dsn()
    with concurrent.futures.ThreadPoolExecutor(3) as pool:  # three replicas starting at once
        stores = list(pool.map(lambda _: postgresql.PostgreSQLDatabase(dsn), range(3)))
    try:
        with psycopg.connect(dsn) as conn:
            versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
        assert sorted(versions) == [m.version for m in migrations.MIGRATIONS]
        # Every replica sees what another wrote.
        runs = [RunStore(s) for s in stores]
        assert runs[0].active() == runs[1].active() == []
    finally:
        for store in stores:
            store.close()


def test_replicas_on_one_database_act_on_a_delivery_and_a_cron_slot_once(tmp_path: Path) -> None:
    """Three replicas (three connections, three threads) race for the same webhook
    delivery id and the same cron slot: exactly one of them gets each, every time."""
    from datetime import UTC, datetime, timedelta

    from reconciler.store.schedules import ScheduleStore
    from reconciler.store.triggers import TriggerRecords

    dsn = fresh_dsn()
    stores = [database.Database.open(tmp_path / f"r{i}", store=dsn) for i in range(3)]
    try:
        start = datetime(2026, 12, 3, 2, 0, tzinfo=UTC)
        schedules = [ScheduleStore(db) for db in stores]
        schedules[0].baseline("app.nightly", "0 2 * * *", start - timedelta(days=1), start)
        with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
            for round_ in range(20):
                delivery = f"delivery-{round_}"
                got = list(
                    pool.map(
                        lambda db, d=delivery: TriggerRecords(db).claim_delivery(
                            "app.gh", d, start
                        ),
                        stores,
                    )
                )
                assert sorted(got) == [False, False, True], (delivery, got)
                slot = start + timedelta(days=round_)
                fired = list(
                    pool.map(
                        lambda s, at=slot: s.claim(
                            "app.nightly", "0 2 * * *", at, at + timedelta(days=1)
                        ),
                        schedules,
                    )
                )
                assert sorted(fired) == [False, False, True], (slot, fired)
    finally:
        for db in stores:
            db.close()
