"""Alert records: every alert raised, with its count, and whether it was notified.

The records are kept by ``reconciler.store.alerts.AlertLog`` in the operational
store; they are also the state of folding and of digests, so both survive a restart.
This module holds only the values (no I/O).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reconciler.alert import rules
from reconciler.alert.outbox import iso_time


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
    def key(self) -> rules.AlertKey:
        """What makes a repeat of this alert."""
        return rules.AlertKey(self.rule, self.project, self.env, self.version)

    @property
    def fold(self) -> rules.Fold:
        """This alert as folding sees it."""
        return rules.Fold(self.created_at, self.count, frozenset(self.run_ids))

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
