"""The outbox in the operational store: one row per key, leases, attempt records."""

from __future__ import annotations

from reconciler.notifications import Attempt, AttemptStatus, Message, RetryPolicy, State
from reconciler.store.outbox import Outbox
from reconciler.store.sqlite import SQLiteDatabase as Database


def _message(key: str) -> Message:
    return Message(
        key=key,
        callback="ops",
        scope="shop",
        channel="webhook",
        url="http://127.0.0.1:9/hook",
        body="{}",
        policy=RetryPolicy(3, 1.0, 4.0, 2.0),
        secret="hook-key",
        event="run_failed",
        alert_id=7,
    )


def test_a_key_is_queued_once_and_survives_reopening(database: Database) -> None:
    outbox = Outbox(database)
    assert outbox.enqueue(_message("k1"), 100.0)
    assert not outbox.enqueue(_message("k1"), 101.0)
    reopened = Outbox(Database(database.path))
    try:
        item = reopened.get("k1")
        assert item is not None and item.message == _message("k1")
        assert (item.state, item.attempts, item.next_attempt_at) == (State.PENDING, 0, 100.0)
    finally:
        reopened.database.close()


def test_a_claimed_item_is_leased_until_it_expires_or_is_released(database: Database) -> None:
    outbox = Outbox(database)
    outbox.enqueue(_message("k1"), 100.0)
    outbox.enqueue(_message("k2"), 200.0)
    assert [i.key for i in outbox.claim(150.0, lease=60.0)] == ["k1"]
    # Another process (or a later scan) does not get k1 while the lease holds.
    assert outbox.claim(150.0, lease=60.0) == []
    assert outbox.due_count(150.0) == 0
    assert outbox.next_due() == 200.0  # k2; k1 is leased until 210
    # A crashed owner's lease expires.
    assert [i.key for i in outbox.claim(211.0, lease=60.0)] == ["k1", "k2"]
    outbox.release([i.id for i in outbox.items()])
    assert outbox.due_count(211.0) == 2


def test_attempts_are_recorded_and_move_the_item(database: Database) -> None:
    outbox = Outbox(database)
    outbox.enqueue(_message("k1"), 100.0)
    (item,) = outbox.claim(100.0, lease=60.0)
    failed = Attempt(AttemptStatus.FAILED, 503, 12.5, "HTTP 503: busy")
    outbox.record(
        item, 1, failed, 101.0, state=State.PENDING, next_attempt_at=103.0, lease_until=140.0
    )
    pending = outbox.get("k1")
    assert pending is not None
    assert (pending.state, pending.attempts, pending.next_attempt_at, pending.last_error) == (
        State.PENDING,
        1,
        103.0,
        "HTTP 503: busy",
    )
    outbox.record(
        pending, 2, Attempt(AttemptStatus.DELIVERED, 200, 3.0), 104.0, state=State.DELIVERED
    )
    done = outbox.get("k1")
    assert done is not None and done.state is State.DELIVERED and done.finished_at == 104.0
    assert outbox.due_count(1e12) == 0 and outbox.next_due() is None
    records = [r.as_dict() for r in outbox.deliveries()]
    assert [(r["attempt"], r["status"], r["response_code"]) for r in records] == [
        (2, "delivered", 200),
        (1, "failed", 503),
    ]
    assert records[1]["error"] == "HTTP 503: busy" and records[1]["project"] == "shop"
    assert outbox.deliveries(callback="other") == []
    assert len(outbox.deliveries(key="k1", project="shop")) == 2
    view = done.as_dict()
    assert view["state"] == "delivered" and view["attempts"] == 2 and view["alert_id"] == 7
    assert "body" not in view
