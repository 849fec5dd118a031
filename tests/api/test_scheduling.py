"""Cron schedules: the pure ``due_slots`` table, and exactly-once firing on a real database.

Once per slot is checked across a restart (a new engine and ``Scheduler`` on the same
files) and across two engines with their schedulers on one data directory, ticking at
the same instant from two threads — the same locking two processes get. The clock is
injected; a fired slot is a real run of the real engine, whose detail names the slot.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from api.servers import LiveServer, real_engine
from gitrepos import ConfigRepo
from starlette.applications import Starlette

from reconciler.engine.reconciling import Reconciler
from reconciler.runs import RunState, Trigger
from reconciler.store.sqlite import SQLiteDatabase as Database
from reconciler.trigger.scheduling import (
    RUN_ONCE,
    SKIP,
    Scheduler,
    due_slots,
    newest_slot,
    next_slot,
)


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


@pytest.mark.parametrize(
    ("tz", "cron", "start", "expected"),
    [
        # 01:30 happens twice in New York on 2026-11-01: the first one fires, once.
        (
            "America/New_York",
            "30 1 * * *",
            "2026-11-01T04:00:00",
            ["2026-11-01T05:30:00", "2026-11-02T06:30:00"],
        ),
        ("Europe/Berlin", "15 2 * * *", "2026-10-24T23:00:00", ["2026-10-25T00:15:00"]),
        # 02:30 does not happen on 2026-03-08: it fires once, just after the jump.
        ("America/New_York", "30 2 * * *", "2026-03-08T05:00:00", ["2026-03-08T07:30:00"]),
    ],
)
def test_a_slot_on_a_daylight_saving_day_fires_once(
    tz: str, cron: str, start: str, expected: list[str]
) -> None:
    """Ticking every five minutes through the change, as a scheduler does."""
    now = utc(start)
    last = newest_slot(now, cron, tz)
    fired = []
    for _ in range(12 * 30):
        now += timedelta(minutes=5)
        for slot in due_slots(now, last, cron, tz):
            fired.append(slot)
            last = slot
    assert fired[: len(expected)] == [utc(e) for e in expected]
    assert len(fired) == len(set(fired)) <= 2
    assert next_slot(fired[0], cron, tz) > fired[0] + timedelta(hours=20)


class Clock:
    """A settable clock."""

    def __init__(self, start: str):
        self.now = utc(start)

    def __call__(self) -> datetime:
        return self.now


def fired(engine: Reconciler, schedule: str) -> list[str]:
    """The slots of ``schedule`` that started a run, oldest first."""
    runs, _ = engine.runs.list(trigger=Trigger.SCHEDULE, limit=100)
    return [r.detail["slot"] for r in reversed(runs) if r.detail["schedule"] == schedule]


async def tick(scheduler: Scheduler, engine: Reconciler) -> None:
    """One tick, then let the runs it started finish (a deploy refuses while one runs)."""
    await scheduler.tick(engine)
    await engine.wait_idle()


NIGHTLY = "app.nightly"  # 0 2 * * * Asia/Shanghai = 18:00 UTC, missed: run_once
HOURLY = "app.hourly-skip"  # 30 * * * * UTC, missed: skip


async def test_a_slot_fires_once_and_not_again_after_a_restart(
    engine: Reconciler,
    database: Database,
    api_repo: ConfigRepo,
    data_dir: Path,
    age_identity: tuple[str, str],
) -> None:
    clock = Clock("2025-03-01T12:00:00")
    scheduler = Scheduler(database, clock=clock)
    await tick(scheduler, engine)  # first sight: baseline, nothing fires
    assert engine.runs.list()[1] == 0
    clock.now = utc("2025-03-01T18:00:05")
    await tick(scheduler, engine)
    await tick(scheduler, engine)
    assert fired(engine, NIGHTLY) == ["2025-03-01T18:00:00Z"]
    (run,) = engine.runs.list(trigger=Trigger.SCHEDULE)[0]
    assert (run.project, run.env, run.version) == ("app", "dev", "1.0.0")  # the desired one
    assert run.trigger is Trigger.SCHEDULE and run.state is RunState.SUCCEEDED
    # Schedules leave trigger records as webhook deliveries do.
    (record,) = scheduler.records.list("app.nightly")[0]
    assert (record.status, record.run_id, record.source) == ("success", run.id, "schedule")
    assert record.delivery_id == "slot 2025-03-01T18:00:00Z" and record.project == "app"

    # A restarted process: a new engine and scheduler, new connections to the same files.
    async with real_engine(api_repo.path, data_dir, age_identity[0]) as again:
        restarted = Scheduler(again.db, clock=clock)
        await tick(restarted, again)
        assert fired(again, NIGHTLY) == ["2025-03-01T18:00:00Z"]
        clock.now = utc("2025-03-02T18:00:01")
        await tick(restarted, again)
        assert fired(again, NIGHTLY) == ["2025-03-01T18:00:00Z", "2025-03-02T18:00:00Z"]
        state = restarted.store.get(NIGHTLY)
        assert state is not None
        assert (state.last_run, state.next_run, state.last_status) == (
            "2025-03-02T18:00:01Z",
            "2025-03-03T18:00:00Z",
            "success",
        )
        assert state.last_run_id == again.runs.list(trigger=Trigger.SCHEDULE)[0][0].id


def test_two_schedulers_on_one_database_fire_each_slot_once(
    api_repo: ConfigRepo, data_dir: Path, age_identity: tuple[str, str]
) -> None:
    """Two engines, as two processes would run them, on one repo and data directory."""
    clock = Clock("2025-03-01T12:00:00")

    def advance() -> None:
        clock.now += timedelta(minutes=30)

    first_open = threading.Event()
    opened = threading.Barrier(2, timeout=30)
    ticked = threading.Barrier(2, action=advance, timeout=30)
    by_scheduler: list[list[str]] = [[], []]
    seen: list[tuple[list[str], list[str], set[RunState]]] = []

    async def process(i: int) -> None:
        if i == 1:
            # One after the other: two connections switching a new file to WAL at once can
            # fail with "database is locked" — a start-up race of its own, not the one here.
            first_open.wait(30)
        async with real_engine(api_repo.path, data_dir, age_identity[0]) as engine:
            first_open.set()
            scheduler = Scheduler(engine.db, clock=clock)
            opened.wait()
            for _ in range(15):  # both leave the barrier together: they tick at the same instant
                for schedule, slot in await scheduler.tick(engine):
                    if schedule == HOURLY:
                        by_scheduler[i].append(slot.strftime("%Y-%m-%dT%H:%M:%SZ"))
                await engine.wait_idle()
                ticked.wait()
            states = {r.state for r in engine.runs.list(limit=100)[0]}
            seen.append((fired(engine, HOURLY), fired(engine, NIGHTLY), states))

    def thread(i: int) -> None:
        try:
            asyncio.run(process(i))
        except BaseException:
            first_open.set()
            opened.abort()
            ticked.abort()
            raise

    threads = [threading.Thread(target=thread, args=(i,)) for i in range(2)]
    for each in threads:
        each.start()
    for each in threads:
        each.join()
    assert len(seen) == 2, "an engine's thread failed (its traceback is above)"
    # One database: both engines see every run.
    (hourly, nightly, states), other = seen
    assert other == seen[0]
    assert len(hourly) == len(set(hourly)) == 7  # 12:30 … 18:30, each by exactly one scheduler
    assert sorted(by_scheduler[0] + by_scheduler[1]) == sorted(hourly)
    assert nightly == ["2025-03-01T18:00:00Z"]
    assert states == {RunState.SUCCEEDED}


async def test_missed_slots_run_once_or_are_skipped_by_policy(
    engine: Reconciler, database: Database
) -> None:
    clock = Clock("2025-03-01T12:00:00")
    scheduler = Scheduler(database, clock=clock)
    await tick(scheduler, engine)
    clock.now = utc("2025-03-04T09:45:00")  # three days of downtime
    await tick(scheduler, engine)
    assert fired(engine, NIGHTLY) == [
        "2025-03-03T18:00:00Z"
    ]  # run_once: only the newest missed slot
    assert fired(engine, HOURLY) == []  # skip: nothing after downtime …
    skipped = scheduler.store.get(HOURLY)
    assert skipped is not None and skipped.last_status == "skipped" and skipped.last_run == ""
    clock.now = utc("2025-03-04T10:30:10")
    await tick(scheduler, engine)
    assert fired(engine, HOURLY) == ["2025-03-04T10:30:00Z"]  # … then on time again
    (hourly,) = engine.runs.list("app", "prod")[0]
    assert hourly.state is RunState.SUCCEEDED


async def test_a_changed_cron_starts_again_without_firing(
    api_repo: ConfigRepo, engine: Reconciler, database: Database
) -> None:
    clock = Clock("2025-03-01T12:00:00")
    scheduler = Scheduler(database, clock=clock)
    await tick(scheduler, engine)
    project = api_repo.read("projects/app/project.yaml").replace(
        'cron: "0 2 * * *"', 'cron: "0 9 * * *"'
    )
    api_repo.commit({"projects/app/project.yaml": project}, message="nightly at 09:00")
    await engine.refresh()
    clock.now = utc("2025-03-02T12:00:00")
    await tick(scheduler, engine)
    assert fired(engine, NIGHTLY) == []
    clock.now = utc("2025-03-03T01:00:00")  # 09:00 in Shanghai
    await tick(scheduler, engine)
    assert fired(engine, NIGHTLY) == ["2025-03-03T01:00:00Z"]


async def test_schedules_api_shows_next_and_last_run(
    server: LiveServer, app: Starlette, engine: Reconciler, tokens: dict[str, str]
) -> None:
    scheduler: Scheduler = app.state.scheduler
    await tick(scheduler, engine)
    async with server.client(tokens["vic"]) as viewer, server.client(tokens["nora"]) as outsider:
        items = (await viewer.get("/api/release/schedules")).json()["items"]
        other = (await outsider.get("/api/release/schedules")).json()["items"]
    nightly = next(s for s in items if s["id"] == NIGHTLY)
    assert nightly["next_run"].endswith("T18:00:00Z") and nightly["last_run"] is None
    assert nightly["timezone"] == "Asia/Shanghai" and nightly["missed"] == "run_once"
    assert other == []
