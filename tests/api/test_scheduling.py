"""Cron schedules: the pure ``due_slots`` table, and exactly-once firing on a real database.

Once per slot is checked across a restart (a new ``Scheduler`` on the same file) and
across two schedulers on two connections to one SQLite file ticking at the same instant
from two threads — the same locking two processes get. The clock is injected.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from api.recording import RecordingEngine
from api.servers import LiveServer
from gitrepos import ConfigRepo
from starlette.applications import Starlette

from reconciler.runs import Trigger
from reconciler.store.database import Database
from reconciler.trigger.scheduling import RUN_ONCE, SKIP, Scheduler, due_slots


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("now", "last", "cron", "tz", "policy", "expected"),
    [
        ("2025-03-01T12:00:00", None, "0 * * * *", "UTC", RUN_ONCE, []),  # never seen: no back-fill
        ("2025-03-01T12:59:59", "2025-03-01T12:00:00", "0 * * * *", "UTC", RUN_ONCE, []),
        (
            "2025-03-01T13:00:00",
            "2025-03-01T12:00:00",
            "0 * * * *",
            "UTC",
            RUN_ONCE,
            ["2025-03-01T13:00:00"],
        ),
        (
            "2025-03-01T13:00:20",
            "2025-03-01T12:00:00",
            "0 * * * *",
            "UTC",
            SKIP,
            ["2025-03-01T13:00:00"],
        ),
        # three days down: one run for the newest slot, not 72
        (
            "2025-03-04T13:20:00",
            "2025-03-01T12:00:00",
            "0 * * * *",
            "UTC",
            RUN_ONCE,
            ["2025-03-04T13:00:00"],
        ),
        ("2025-03-04T13:20:00", "2025-03-01T12:00:00", "0 * * * *", "UTC", SKIP, []),
        # 02:00 in Shanghai is 18:00 UTC the day before
        (
            "2025-03-01T18:00:30",
            "2025-02-28T18:00:00",
            "0 2 * * *",
            "Asia/Shanghai",
            RUN_ONCE,
            ["2025-03-01T18:00:00"],
        ),
        ("2025-03-01T17:59:59", "2025-02-28T18:00:00", "0 2 * * *", "Asia/Shanghai", RUN_ONCE, []),
    ],
)
def test_due_slots(
    now: str, last: str | None, cron: str, tz: str, policy: str, expected: list[str]
) -> None:
    found = due_slots(utc(now), utc(last) if last else None, cron, tz, policy)
    assert found == [utc(e) for e in expected]


def test_due_slots_refuses_unknown_policies() -> None:
    with pytest.raises(ValueError, match="missed-slot policy"):
        due_slots(utc("2025-03-01T12:00:00"), None, "0 * * * *", "UTC", "catch_up")


class Clock:
    """A settable clock."""

    def __init__(self, start: str):
        self.now = utc(start)

    def __call__(self) -> datetime:
        return self.now


def fired(engine: RecordingEngine, schedule: str) -> list[str]:
    return [
        c.kwargs["detail"]["slot"]
        for c in engine.calls_named("deploy")
        if c.kwargs["detail"]["schedule"] == schedule
    ]


NIGHTLY = "app.nightly"  # 0 2 * * * Asia/Shanghai = 18:00 UTC, missed: run_once
HOURLY = "app.hourly-skip"  # 30 * * * * UTC, missed: skip


async def test_a_slot_fires_once_and_not_again_after_a_restart(
    engine: RecordingEngine, database: Database, tmp_path: Path
) -> None:
    clock = Clock("2025-03-01T12:00:00")
    scheduler = Scheduler(database, clock=clock)
    await scheduler.tick(engine)  # first sight: baseline, nothing fires
    assert engine.calls == []
    clock.now = utc("2025-03-01T18:00:05")
    await scheduler.tick(engine)
    await scheduler.tick(engine)
    assert fired(engine, NIGHTLY) == ["2025-03-01T18:00:00Z"]
    (call,) = [c for c in engine.calls_named("deploy") if c.kwargs["detail"]["schedule"] == NIGHTLY]
    assert call.args == ("app", "dev", None) and call.kwargs["trigger"] is Trigger.SCHEDULE

    restarted_db = Database(database.path)  # a restarted process: new connection, same file
    try:
        restarted = Scheduler(restarted_db, clock=clock)
        await restarted.tick(engine)
        assert fired(engine, NIGHTLY) == ["2025-03-01T18:00:00Z"]
        clock.now = utc("2025-03-02T18:00:01")
        await restarted.tick(engine)
        assert fired(engine, NIGHTLY) == ["2025-03-01T18:00:00Z", "2025-03-02T18:00:00Z"]
        state = restarted.store.get(NIGHTLY)
        assert state is not None
        assert (state.last_run, state.next_run, state.last_status) == (
            "2025-03-02T18:00:01Z",
            "2025-03-03T18:00:00Z",
            "success",
        )
    finally:
        restarted_db.close()


def test_two_schedulers_on_one_database_fire_each_slot_once(
    api_repo: ConfigRepo, tmp_path: Path
) -> None:
    path = tmp_path / "shared" / "quicflow.db"
    databases = [Database(path), Database(path)]
    engines = [RecordingEngine(db, api_repo.path) for db in databases]
    clock = Clock("2025-03-01T12:00:00")
    schedulers = [Scheduler(db, clock=clock) for db in databases]
    try:
        for _ in range(15):
            barrier = threading.Barrier(2)

            def tick(i: int, barrier: threading.Barrier = barrier) -> None:
                barrier.wait()
                asyncio.run(schedulers[i].tick(engines[i]))

            threads = [threading.Thread(target=tick, args=(i,)) for i in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            clock.now += timedelta(minutes=30)
        slots = sorted(fired(engines[0], HOURLY) + fired(engines[1], HOURLY))
        assert len(slots) == len(set(slots)) == 7  # 12:30 … 18:30, each by exactly one scheduler
        nightly = fired(engines[0], NIGHTLY) + fired(engines[1], NIGHTLY)
        assert nightly == ["2025-03-01T18:00:00Z"]
    finally:
        for db in databases:
            db.close()


async def test_missed_slots_run_once_or_are_skipped_by_policy(
    engine: RecordingEngine, database: Database
) -> None:
    clock = Clock("2025-03-01T12:00:00")
    scheduler = Scheduler(database, clock=clock)
    await scheduler.tick(engine)
    clock.now = utc("2025-03-04T09:45:00")  # three days of downtime
    await scheduler.tick(engine)
    assert fired(engine, NIGHTLY) == [
        "2025-03-03T18:00:00Z"
    ]  # run_once: only the newest missed slot
    assert fired(engine, HOURLY) == []  # skip: nothing after downtime …
    skipped = scheduler.store.get(HOURLY)
    assert skipped is not None and skipped.last_status == "skipped" and skipped.last_run == ""
    clock.now = utc("2025-03-04T10:30:10")
    await scheduler.tick(engine)
    assert fired(engine, HOURLY) == ["2025-03-04T10:30:00Z"]  # … then on time again


async def test_a_changed_cron_starts_again_without_firing(
    api_repo: ConfigRepo, engine: RecordingEngine, database: Database
) -> None:
    clock = Clock("2025-03-01T12:00:00")
    scheduler = Scheduler(database, clock=clock)
    await scheduler.tick(engine)
    project = api_repo.read("projects/app/project.yaml").replace(
        'cron: "0 2 * * *"', 'cron: "0 9 * * *"'
    )
    api_repo.commit({"projects/app/project.yaml": project}, message="nightly at 09:00")
    engine.reload()
    clock.now = utc("2025-03-02T12:00:00")
    await scheduler.tick(engine)
    assert fired(engine, NIGHTLY) == []
    clock.now = utc("2025-03-03T01:00:00")  # 09:00 in Shanghai
    await scheduler.tick(engine)
    assert fired(engine, NIGHTLY) == ["2025-03-03T01:00:00Z"]


async def test_schedules_api_shows_next_and_last_run(
    server: LiveServer, app: Starlette, engine: RecordingEngine, tokens: dict[str, str]
) -> None:
    scheduler: Scheduler = app.state.scheduler
    await scheduler.tick(engine)
    async with server.client(tokens["vic"]) as viewer, server.client(tokens["nora"]) as outsider:
        items = (await viewer.get("/api/release/schedules")).json()["items"]
        other = (await outsider.get("/api/release/schedules")).json()["items"]
    nightly = next(s for s in items if s["id"] == NIGHTLY)
    assert nightly["next_run"].endswith("T18:00:00Z") and nightly["last_run"] is None
    assert nightly["timezone"] == "Asia/Shanghai" and nightly["missed"] == "run_once"
    assert other == []
