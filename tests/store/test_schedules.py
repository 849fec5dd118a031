"""Schedule state: a baseline moves only when the spec changes; a slot is claimed once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from reconciler.store import database, schedules

T0 = datetime(2026, 1, 1, 2, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def test_stamps_round_trip_and_sort_as_text() -> None:
    assert schedules.stamp(T0) == "2026-01-01T02:00:00Z"
    assert schedules.parse_stamp(schedules.stamp(T0)) == T0
    assert schedules.stamp(T0) < schedules.stamp(T0 + HOUR)


def test_baseline_claim_and_finish(db: database.Database) -> None:
    store = schedules.ScheduleStore(db)
    store.baseline("s", "0 * * * *|UTC", T0, T0 + HOUR)
    store.baseline("s", "0 * * * *|UTC", T0 + HOUR, T0 + 2 * HOUR)  # same spec: kept
    state = store.get("s")
    assert state is not None and state.last_slot == schedules.stamp(T0)
    assert store.claim("s", "0 * * * *|UTC", T0 + HOUR, T0 + 2 * HOUR)
    assert not store.claim("s", "0 * * * *|UTC", T0 + HOUR, T0 + 2 * HOUR)  # taken
    assert not store.claim("s", "other", T0 + 2 * HOUR, T0 + 3 * HOUR)  # spec changed
    store.finish("s", T0 + HOUR, "skipped", "why")
    store.finish("s", T0 + HOUR, "success", run_id="r-1")
    store.set_next("s", T0 + 5 * HOUR)
    state = store.all()["s"]
    assert (state.last_status, state.last_run_id, state.next_run) == (
        "success",
        "r-1",
        schedules.stamp(T0 + 5 * HOUR),
    )
    store.baseline("s", "30 * * * *|UTC", T0, T0 + HOUR)  # spec changed: restarted
    restarted = store.get("s")
    assert restarted is not None and restarted.spec == "30 * * * *|UTC"
