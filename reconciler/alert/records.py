"""Alert records: every alert raised, with its count, and whether it was notified.

Table of component ``alert.records`` in the operational store. The records are also
the state of folding and of digests, so both survive a restart: the open alert of a
key is its newest record, and a digest's waiting alerts are its records not yet sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.alert import rules
from reconciler.alert.outbox import iso_time
from reconciler.store.database import Database

COMPONENT = "alert.records"

MIGRATIONS = [
    """
    CREATE TABLE alert_records (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        rule TEXT NOT NULL,
        rule_event TEXT NOT NULL,
        event TEXT NOT NULL,
        mode TEXT NOT NULL,
        project TEXT NOT NULL,
        env TEXT NOT NULL,
        version TEXT NOT NULL,
        severity TEXT NOT NULL,
        title TEXT NOT NULL,
        message TEXT NOT NULL,
        error TEXT NOT NULL DEFAULT '',
        run_id TEXT NOT NULL DEFAULT '',
        run_ids TEXT NOT NULL DEFAULT '[]',
        count INTEGER NOT NULL DEFAULT 1,
        notified INTEGER NOT NULL DEFAULT 0,
        sent_at REAL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX alert_records_key ON alert_records (rule, project, env, version, id);
    CREATE INDEX alert_records_waiting ON alert_records (mode, sent_at)
    """
]


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


class AlertLog:
    """Alert records in the operational store."""

    def __init__(self, database: Database):
        self.database = database
        database.migrate(COMPONENT, MIGRATIONS)

    def latest(self, key: rules.AlertKey, conn: Any = None) -> AlertRecord | None:
        """The newest record of ``key`` (the open alert, if its window has not passed)."""
        sql = (
            "SELECT * FROM alert_records WHERE rule = ? AND project = ? AND env = ?"
            " AND version = ? ORDER BY id DESC LIMIT 1"
        )
        params = (key.rule, key.project, key.env, key.version)
        rows = conn.execute(sql, params).fetchall() if conn else self.database.query(sql, params)
        return _record(rows[0]) if rows else None

    def insert(self, conn: Any, alert: NewAlert, now: float) -> int:
        """Record a new alert (count 1) inside the caller's transaction; return its id."""
        cursor = conn.execute(
            "INSERT INTO alert_records (rule, rule_event, event, mode, project, env, version,"
            " severity, title, message, error, run_id, run_ids, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                alert.rule,
                alert.rule_event,
                alert.event,
                alert.mode,
                alert.project,
                alert.env,
                alert.version,
                alert.severity,
                alert.title,
                alert.message,
                alert.error,
                alert.run_id,
                json.dumps([alert.run_id] if alert.run_id else []),
                now,
                now,
            ),
        )
        return int(cursor.lastrowid or 0)

    def fold_into(
        self, conn: Any, record_id: int, fold: rules.Fold, error: str, now: float
    ) -> None:
        """Store a repeat: the new count and runs, and the latest error."""
        conn.execute(
            "UPDATE alert_records SET count = ?, run_ids = ?, error = CASE WHEN ? = '' THEN error"
            " ELSE ? END, updated_at = ? WHERE id = ?",
            (fold.count, json.dumps(sorted(fold.run_ids)), error, error, now, record_id),
        )

    def mark_sent(self, conn: Any, ids: Iterable[int], notified: bool, now: float) -> None:
        """Mark alerts as handed to the outbox (``notified``) or as having nobody to tell."""
        conn.executemany(
            "UPDATE alert_records SET sent_at = ?, notified = ? WHERE id = ?",
            [(now, int(notified), i) for i in ids],
        )

    def waiting(self) -> list[rules.Waiting]:
        """Digest alerts not yet sent."""
        rows = self.database.query(
            "SELECT id, rule, created_at FROM alert_records WHERE mode = 'digest'"
            " AND sent_at IS NULL ORDER BY id"
        )
        return [rules.Waiting(r["id"], r["rule"], r["created_at"]) for r in rows]

    def get_many(self, ids: Sequence[int]) -> list[AlertRecord]:
        """The records ``ids``, in that order."""
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = self.database.query(f"SELECT * FROM alert_records WHERE id IN ({marks})", ids)
        by_id = {r["id"]: _record(r) for r in rows}
        return [by_id[i] for i in ids if i in by_id]

    def history(
        self,
        limit: int = 50,
        offset: int = 0,
        *,
        project: str | None = None,
        rule: str | None = None,
    ) -> list[AlertRecord]:
        """Records, newest first, optionally of one project or rule."""
        clauses, params = [], []
        for column, value in (("project", project), ("rule", rule)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.database.query(
            f"SELECT * FROM alert_records {where} ORDER BY id DESC LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return [_record(r) for r in rows]


def _record(row: Any) -> AlertRecord:
    return AlertRecord(
        id=row["id"],
        rule=row["rule"],
        rule_event=row["rule_event"],
        event=row["event"],
        mode=row["mode"],
        project=row["project"],
        env=row["env"],
        version=row["version"],
        severity=row["severity"],
        title=row["title"],
        message=row["message"],
        error=row["error"],
        run_id=row["run_id"],
        run_ids=tuple(json.loads(row["run_ids"])),
        count=row["count"],
        notified=bool(row["notified"]),
        sent_at=row["sent_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )
