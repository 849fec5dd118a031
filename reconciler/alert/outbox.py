"""The outbox: notifications waiting to be delivered, and one record per delivery attempt.

This module holds the values; ``reconciler.store.outbox.Outbox`` keeps them in the
operational store (tables ``alert_outbox`` and ``alert_deliveries``). A notification
is written there — in the same transaction as the alert record it announces — before
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

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from reconciler.alert.retries import RetryPolicy


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
