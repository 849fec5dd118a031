"""The outbox in the operational store: ``alert_outbox`` (one row per idempotency key) and
``alert_deliveries`` (one row per attempt).

What the rows mean — exactly once per key, leases, masked bodies — is told in
``reconciler.notifications``, which holds the values stored here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from reconciler import notifications
from reconciler.store import database, paging, rows

_ITEMS = paging.Query("alert_outbox", order=("id DESC",))
_DELIVERIES = paging.Query("alert_deliveries", order=("id DESC",))
_DUE = paging.Query("alert_outbox", order=("next_attempt_at", "id")).equal(
    "state", notifications.State.PENDING.value
)


class Outbox:
    """Pending notifications and delivery records in the operational store."""

    def __init__(self, database: database.Database):
        self.database = database

    # ------------------------------------------------------------------ writing

    def enqueue(
        self, message: notifications.Message, now: float, conn: database.Connection | None = None
    ) -> bool:
        """Add ``message`` unless its key is already known; True when it was added.

        Pass ``conn`` (from ``Database.transaction``) to enqueue inside a caller's
        transaction.
        """
        if conn is None:
            with self.database.transaction() as own:
                return self.enqueue(message, now, own)
        cursor = conn.execute(
            "INSERT INTO alert_outbox (key, callback, scope, channel, url, secret,"
            " event, body, policy, alert_id, next_attempt_at, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
            (
                message.key,
                message.callback,
                message.scope,
                message.channel,
                message.url,
                message.secret,
                message.event,
                message.body,
                json.dumps(message.policy.as_dict()),
                message.alert_id,
                now,
                now,
            ),
        )
        return cursor.rowcount == 1

    def claim(
        self, now: float, lease: float, exclude: Sequence[int] = (), limit: int = 100
    ) -> list[notifications.Item]:
        """Lease the pending items due by ``now`` (oldest first) to this process."""
        query = _DUE.compare("next_attempt_at", "<=", now).compare("lease_until", "<=", now)
        with self.database.transaction() as conn:
            found = conn.execute(*query.select(limit + len(exclude))).fetchall()
            skip = set(exclude)
            found = [r for r in found if r["id"] not in skip][:limit]
            conn.executemany(
                "UPDATE alert_outbox SET lease_until = ? WHERE id = ?",
                [(now + lease, r["id"]) for r in found],
            )
        return [_item(r) for r in found]

    def record(
        self,
        item: notifications.Item,
        attempt_number: int,
        attempt: notifications.Attempt,
        now: float,
        *,
        state: notifications.State,
        next_attempt_at: float | None = None,
        lease_until: float = 0.0,
    ) -> None:
        """Record one attempt and move the item to ``state`` (one transaction)."""
        m = item.message
        with self.database.transaction() as conn:
            conn.execute(
                "INSERT INTO alert_deliveries (outbox_id, key, callback, scope, attempt, status,"
                " response_code, latency_ms, error, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    item.id,
                    m.key,
                    m.callback,
                    m.scope,
                    attempt_number,
                    attempt.status.value,
                    attempt.response_code,
                    attempt.latency_ms,
                    attempt.error,
                    now,
                ),
            )
            conn.execute(
                "UPDATE alert_outbox SET state = ?, attempts = ?, next_attempt_at = ?,"
                " lease_until = ?, finished_at = ?, last_error = ? WHERE id = ?",
                (
                    state.value,
                    attempt_number,
                    next_attempt_at if next_attempt_at is not None else now,
                    lease_until,
                    None if state is notifications.State.PENDING else now,
                    attempt.error,
                    item.id,
                ),
            )

    def release(self, ids: Sequence[int]) -> None:
        """Give up the leases on ``ids`` (clean shutdown: another process may go on)."""
        if ids:
            with self.database.transaction() as conn:
                conn.executemany(
                    "UPDATE alert_outbox SET lease_until = 0 WHERE id = ? AND state = 'pending'",
                    [(i,) for i in ids],
                )

    # ------------------------------------------------------------------ reading

    def next_due(self, exclude: Sequence[int] = ()) -> float | None:
        """When the earliest pending item (not in ``exclude``) may be tried."""
        found = self.database.query(
            "SELECT id, CASE WHEN next_attempt_at > lease_until THEN next_attempt_at"
            " ELSE lease_until END AS due FROM alert_outbox"
            " WHERE state = 'pending' ORDER BY due LIMIT ?",
            (len(exclude) + 1,),
        )
        skip = set(exclude)
        for row in found:
            if row["id"] not in skip:
                return float(row["due"])
        return None

    def due_count(self, now: float) -> int:
        """How many pending items could be claimed at ``now``."""
        return (
            _DUE.compare("next_attempt_at", "<=", now)
            .compare("lease_until", "<=", now)
            .count(self.database)
        )

    def get(self, key: str) -> notifications.Item | None:
        """The item with idempotency key ``key``."""
        row = _ITEMS.equal("key", key).first(self.database)
        return _item(row) if row else None

    def items(
        self, state: notifications.State | None = None, limit: int = 100, offset: int = 0
    ) -> list[notifications.Item]:
        """Items, newest first, optionally only those in ``state``."""
        query = _ITEMS.equal("state", state.value if state else None)
        return [_item(r) for r in query.rows(self.database, limit, offset)]

    def deliveries(
        self,
        limit: int = 50,
        offset: int = 0,
        *,
        callback: str | None = None,
        key: str | None = None,
        project: str | None = None,
    ) -> list[notifications.DeliveryRecord]:
        """Delivery records, newest first, filtered by callback, key or project."""
        query = _DELIVERIES.equal("callback", callback).equal("key", key).equal("scope", project)
        return [
            rows.into(
                notifications.DeliveryRecord,
                r,
                project=r["scope"] or None,
                status=notifications.AttemptStatus(r["status"]),
            )
            for r in query.rows(self.database, limit, offset)
        ]


def _item(row: database.Row) -> notifications.Item:
    policy = notifications.RetryPolicy(**json.loads(row["policy"]))
    return rows.into(
        notifications.Item,
        row,
        message=rows.into(notifications.Message, row, policy=policy),
        state=notifications.State(row["state"]),
    )
