"""The outbox: notifications waiting to be delivered, and one record per delivery attempt.

Tables of component ``alert.outbox`` in the operational store (SQLite). A notification
is written here — in the same transaction as the alert record it announces — before
anything is sent, so a restart never loses one. Each row is keyed by its idempotency
key (``UNIQUE``): enqueuing the same notification again is a no-op, so an event
handled twice, or a digest flushed twice, is still sent once.

Exactly once per key, as seen by a receiver that honours ``Idempotency-Key``: a row is
marked delivered in the transaction that records the successful attempt; a process
that stops between the receiver's answer and that commit sends the row again after a
restart, with the same key, and the receiver drops the repeat.

A process works on a row under a lease (``lease_until``), so two reconcilers sharing
the database never deliver one row at the same time; a clean shutdown releases its
leases, a crash lets them expire. The body is stored already masked and unsigned:
secrets are looked up (by credential name) and signatures made at each attempt.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from reconciler.alert.retries import RetryPolicy
from reconciler.store.database import Database

COMPONENT = "alert.outbox"

MIGRATIONS = [
    """
    CREATE TABLE alert_outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        key TEXT NOT NULL UNIQUE,
        callback TEXT NOT NULL,
        scope TEXT NOT NULL DEFAULT '',
        channel TEXT NOT NULL,
        url TEXT NOT NULL,
        secret TEXT,
        event TEXT NOT NULL DEFAULT '',
        body TEXT NOT NULL,
        policy TEXT NOT NULL,
        alert_id INTEGER,
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        lease_until REAL NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        finished_at REAL,
        last_error TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX alert_outbox_due ON alert_outbox (state, next_attempt_at);
    CREATE TABLE alert_deliveries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        outbox_id INTEGER NOT NULL REFERENCES alert_outbox (id),
        key TEXT NOT NULL,
        callback TEXT NOT NULL,
        scope TEXT NOT NULL DEFAULT '',
        attempt INTEGER NOT NULL,
        status TEXT NOT NULL,
        response_code INTEGER,
        latency_ms REAL NOT NULL,
        error TEXT NOT NULL DEFAULT '',
        at REAL NOT NULL
    );
    CREATE INDEX alert_deliveries_outbox ON alert_deliveries (outbox_id, attempt);
    CREATE INDEX alert_deliveries_callback ON alert_deliveries (callback, id)
    """
]


class State(StrEnum):
    """Where an outbox item is: waiting (or between attempts), delivered, or given up."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class AttemptStatus(StrEnum):
    """The outcome of one delivery attempt."""

    DELIVERED = "delivered"
    FAILED = "failed"  # the receiver answered with an error (HTTP status or Feishu code)
    TIMEOUT = "timeout"  # no answer within the callback's per-attempt timeout
    ERROR = "error"  # no answer at all: refused connection, DNS, TLS, missing secret


@dataclass(frozen=True, slots=True)
class Message:
    """One notification for one callback, as the notifier hands it to the outbox."""

    key: str
    callback: str
    scope: str  # the callback's project ('' for a global callback): its credential scope
    channel: str  # webhook | feishu
    url: str
    body: str  # JSON text, masked, unsigned
    policy: RetryPolicy
    secret: str | None = None  # credential name
    event: str = ""
    alert_id: int | None = None


@dataclass(frozen=True, slots=True)
class Item:
    """An outbox row: a message and where its delivery stands."""

    id: int
    message: Message
    state: State
    attempts: int
    next_attempt_at: float
    created_at: float
    finished_at: float | None
    last_error: str

    @property
    def key(self) -> str:
        """The idempotency key."""
        return self.message.key

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view (no body: it may be long; secrets never were in it)."""
        m = self.message
        return {
            "id": self.id,
            "key": m.key,
            "callback": m.callback,
            "project": m.scope or None,
            "channel": m.channel,
            "event": m.event,
            "alert_id": m.alert_id,
            "state": self.state.value,
            "attempts": self.attempts,
            "max_attempts": m.policy.attempts,
            "next_attempt_at": iso_time(self.next_attempt_at)
            if self.state is State.PENDING
            else None,
            "created_at": iso_time(self.created_at),
            "finished_at": iso_time(self.finished_at) if self.finished_at else None,
            "last_error": self.last_error,
        }


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one delivery attempt did."""

    status: AttemptStatus
    response_code: int | None
    latency_ms: float
    error: str = ""
    retryable: bool = True

    @property
    def ok(self) -> bool:
        """Whether the receiver took the message."""
        return self.status is AttemptStatus.DELIVERED


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """The record of one attempt, as the API shows it."""

    id: int
    key: str
    callback: str
    project: str | None
    attempt: int
    status: AttemptStatus
    response_code: int | None
    latency_ms: float
    error: str
    at: float

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {
            "id": self.id,
            "key": self.key,
            "callback": self.callback,
            "project": self.project,
            "attempt": self.attempt,
            "status": self.status.value,
            "response_code": self.response_code,
            "latency_ms": round(self.latency_ms, 3),
            "error": self.error,
            "at": iso_time(self.at),
        }


def iso_time(epoch: float) -> str:
    """An epoch time as ISO 8601 UTC with a ``Z``."""
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


class Outbox:
    """Pending notifications and delivery records in the operational store."""

    def __init__(self, database: Database):
        self.database = database
        database.migrate(COMPONENT, MIGRATIONS)

    # ------------------------------------------------------------------ writing

    def enqueue(self, message: Message, now: float, conn: Any = None) -> bool:
        """Add ``message`` unless its key is already known; True when it was added.

        Pass ``conn`` (from ``Database.transaction``) to enqueue inside a caller's
        transaction.
        """
        if conn is None:
            with self.database.transaction() as own:
                return self.enqueue(message, now, own)
        cursor = conn.execute(
            "INSERT OR IGNORE INTO alert_outbox (key, callback, scope, channel, url, secret,"
            " event, body, policy, alert_id, next_attempt_at, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
    ) -> list[Item]:
        """Lease the pending items due by ``now`` (oldest first) to this process."""
        with self.database.transaction() as conn:
            rows = conn.execute(
                "SELECT * FROM alert_outbox WHERE state = 'pending' AND next_attempt_at <= ?"
                " AND lease_until <= ? ORDER BY next_attempt_at, id LIMIT ?",
                (now, now, limit + len(exclude)),
            ).fetchall()
            skip = set(exclude)
            rows = [r for r in rows if r["id"] not in skip][:limit]
            conn.executemany(
                "UPDATE alert_outbox SET lease_until = ? WHERE id = ?",
                [(now + lease, r["id"]) for r in rows],
            )
        return [_item(r) for r in rows]

    def record(
        self,
        item: Item,
        attempt_number: int,
        attempt: Attempt,
        now: float,
        *,
        state: State,
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
                    None if state is State.PENDING else now,
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
        rows = self.database.query(
            "SELECT id, MAX(next_attempt_at, lease_until) AS due FROM alert_outbox"
            " WHERE state = 'pending' ORDER BY due LIMIT ?",
            (len(exclude) + 1,),
        )
        skip = set(exclude)
        for row in rows:
            if row["id"] not in skip:
                return float(row["due"])
        return None

    def due_count(self, now: float) -> int:
        """How many pending items could be claimed at ``now``."""
        row = self.database.query(
            "SELECT COUNT(*) AS n FROM alert_outbox WHERE state = 'pending'"
            " AND next_attempt_at <= ? AND lease_until <= ?",
            (now, now),
        )[0]
        return int(row["n"])

    def get(self, key: str) -> Item | None:
        """The item with idempotency key ``key``."""
        rows = self.database.query("SELECT * FROM alert_outbox WHERE key = ?", (key,))
        return _item(rows[0]) if rows else None

    def items(self, state: State | None = None, limit: int = 100, offset: int = 0) -> list[Item]:
        """Items, newest first, optionally only those in ``state``."""
        where, params = ("WHERE state = ?", [state.value]) if state else ("", [])
        rows = self.database.query(
            f"SELECT * FROM alert_outbox {where} ORDER BY id DESC LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return [_item(r) for r in rows]

    def deliveries(
        self,
        limit: int = 50,
        offset: int = 0,
        *,
        callback: str | None = None,
        key: str | None = None,
        project: str | None = None,
    ) -> list[DeliveryRecord]:
        """Delivery records, newest first, filtered by callback, key or project."""
        clauses, params = [], []
        for column, value in (("callback", callback), ("key", key), ("scope", project)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.database.query(
            f"SELECT * FROM alert_deliveries {where} ORDER BY id DESC LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return [
            DeliveryRecord(
                id=r["id"],
                key=r["key"],
                callback=r["callback"],
                project=r["scope"] or None,
                attempt=r["attempt"],
                status=AttemptStatus(r["status"]),
                response_code=r["response_code"],
                latency_ms=r["latency_ms"],
                error=r["error"],
                at=r["at"],
            )
            for r in rows
        ]


def _item(row: Any) -> Item:
    policy = json.loads(row["policy"])
    return Item(
        id=row["id"],
        message=Message(
            key=row["key"],
            callback=row["callback"],
            scope=row["scope"],
            channel=row["channel"],
            url=row["url"],
            body=row["body"],
            policy=RetryPolicy(**policy),
            secret=row["secret"],
            event=row["event"],
            alert_id=row["alert_id"],
        ),
        state=State(row["state"]),
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        created_at=row["created_at"],
        finished_at=row["finished_at"],
        last_error=row["last_error"],
    )
