"""Alerts and the notifications that announce them: the values the store keeps.

A leaf of the import graph (it imports only the standard library and
``reconciler.backoff``), so ``reconciler.store.alerts`` and ``reconciler.store.outbox``
can return these values without importing ``reconciler.alert``, which sits above the
store and holds the behaviour: matching and folding (``alert.rules``), delivery
(``alert.delivering``) and the notifier.

The outbox: a notification is written there — in the same transaction as the alert
record it announces — before anything is sent, so a restart never loses one. Each row
is keyed by its idempotency key (``UNIQUE``): enqueuing the same notification again is
a no-op, so an event handled twice, or a digest flushed twice, is still sent once.

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

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from reconciler import backoff

# The schema's defaults (also applied by reconciler.gitops.building).
DEFAULT_ATTEMPTS = 3
DEFAULT_BACKOFF = 2.0
DEFAULT_MAX_BACKOFF = 60.0
DEFAULT_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently one callback is tried (seconds)."""

    attempts: int = DEFAULT_ATTEMPTS
    backoff: float = DEFAULT_BACKOFF
    max_backoff: float = DEFAULT_MAX_BACKOFF
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None) -> RetryPolicy:
        """The policy of a callback's ``retry`` block (missing keys take the defaults)."""
        raw = raw or {}

        def number(key: str, default: float) -> float:
            value = raw.get(key)
            return default if value is None else float(value)

        return cls(
            attempts=max(1, int(raw.get("attempts") or DEFAULT_ATTEMPTS)),
            backoff=number("backoff", DEFAULT_BACKOFF),
            max_backoff=number("max_backoff", DEFAULT_MAX_BACKOFF),
            timeout=number("timeout", DEFAULT_TIMEOUT),
        )

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view (stored with each outbox item)."""
        return {
            "attempts": self.attempts,
            "backoff": self.backoff,
            "max_backoff": self.max_backoff,
            "timeout": self.timeout,
        }

    def bounds(self, attempt: int) -> tuple[float, float]:
        """The (lowest, highest) wait after failed attempt number ``attempt``."""
        return backoff.bounds(attempt, self.backoff, self.max_backoff)

    def delay(self, attempt: int, jitter: float) -> float:
        """The wait after failed attempt ``attempt``; ``jitter`` is a draw from [0, 1)."""
        return backoff.delay(attempt, self.backoff, self.max_backoff, jitter)


@dataclass(frozen=True, slots=True)
class AlertKey:
    """What makes two alerts "the same": rule, project, environment, version."""

    rule: str
    project: str
    env: str
    version: str


@dataclass(frozen=True, slots=True)
class Fold:
    """An alert as folding sees it: when it opened, how often it happened, by which runs."""

    first_at: float
    count: int = 1
    run_ids: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Waiting:
    """An alert waiting for its digest: its record id, rule id and creation time."""

    record: int
    rule: str
    created_at: float


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


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """One alert (AlertRecord): which rule fired, how loud, about what, and how often."""

    id: int
    rule: str
    rule_event: str
    event: str
    mode: str
    project: str
    env: str
    version: str
    severity: str
    title: str
    message: str
    error: str
    run_id: str
    run_ids: tuple[str, ...]
    count: int
    notified: bool
    sent_at: float | None
    created_at: float
    updated_at: float

    @property
    def key(self) -> AlertKey:
        """What makes a repeat of this alert."""
        return AlertKey(self.rule, self.project, self.env, self.version)

    @property
    def fold(self) -> Fold:
        """This alert as folding sees it."""
        return Fold(self.created_at, self.count, frozenset(self.run_ids))

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view (for ``GET /api/release/alerts/history``)."""
        return {
            "id": self.id,
            "rule": self.rule,
            "rule_event": self.rule_event,
            "event": self.event,
            "mode": self.mode,
            "severity": self.severity,
            "title": self.title,
            "message": self.message,
            "project": self.project,
            "environment": self.env,
            "version": self.version,
            "run": self.run_id,
            "runs": list(self.run_ids),
            "count": self.count,
            "notified": self.notified,
            "sent_at": iso_time(self.sent_at) if self.sent_at else None,
            "created": iso_time(self.created_at),
            "updated": iso_time(self.updated_at),
        }


@dataclass(frozen=True, slots=True)
class NewAlert:
    """The fields of an alert about to be recorded."""

    rule: str
    rule_event: str
    event: str
    mode: str
    project: str
    env: str
    version: str
    severity: str
    title: str
    message: str
    error: str
    run_id: str
