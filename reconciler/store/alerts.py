"""Alert records in the operational store: the ``alert_records`` table.

The records are also the state of folding and of digests, so both survive a restart:
the open alert of a key is its newest record, and a digest's waiting alerts are its
records not yet sent. Methods taking ``conn`` run inside the caller's transaction, so
an alert and the notifications announcing it commit together.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from reconciler import notifications
from reconciler.store import database, paging, rows

_RECORDS = paging.Query("alert_records", order=("id DESC",))


class AlertLog:
    """Alert records in the operational store."""

    def __init__(self, database: database.Database):
        self.database = database

    def latest(
        self, key: notifications.AlertKey, conn: database.Connection | None = None
    ) -> notifications.AlertRecord | None:
        """The newest record of ``key`` (the open alert, if its window has not passed)."""
        query = (
            _RECORDS.equal("rule", key.rule)
            .equal("project", key.project)
            .equal("env", key.env)
            .equal("version", key.version)
        )
        if conn is None:
            row = query.first(self.database)
        else:
            row = conn.execute(*query.select(1)).fetchone()
        return _record(row) if row else None

    def insert(self, conn: database.Connection, alert: notifications.NewAlert, now: float) -> int:
        """Record a new alert (count 1) inside the caller's transaction; return its id."""
        row = conn.execute(
            "INSERT INTO alert_records (rule, rule_event, event, mode, project, env, version,"
            " severity, title, message, error, run_id, run_ids, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
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
        ).fetchall()[0]
        return int(row["id"])

    def fold_into(
        self,
        conn: database.Connection,
        record_id: int,
        fold: notifications.Fold,
        error: str,
        now: float,
    ) -> None:
        """Store a repeat: the new count and runs, and the latest error."""
        conn.execute(
            "UPDATE alert_records SET count = ?, run_ids = ?, error = CASE WHEN ? = '' THEN error"
            " ELSE ? END, updated_at = ? WHERE id = ?",
            (fold.count, json.dumps(sorted(fold.run_ids)), error, error, now, record_id),
        )

    def mark_sent(
        self, conn: database.Connection, ids: Iterable[int], notified: bool, now: float
    ) -> None:
        """Mark alerts as handed to the outbox (``notified``) or as having nobody to tell."""
        conn.executemany(
            "UPDATE alert_records SET sent_at = ?, notified = ? WHERE id = ?",
            [(now, int(notified), i) for i in ids],
        )

    def waiting(self) -> list[notifications.Waiting]:
        """Digest alerts not yet sent."""
        found = (
            paging.Query("alert_records", order=("id",), columns=("id", "rule", "created_at"))
            .equal("mode", "digest")
            .where("sent_at IS NULL")
            .rows(self.database)
        )
        return [notifications.Waiting(r["id"], r["rule"], r["created_at"]) for r in found]

    def get_many(self, ids: Sequence[int]) -> list[notifications.AlertRecord]:
        """The records ``ids``, in that order."""
        if not ids:
            return []
        by_id = {r["id"]: _record(r) for r in _RECORDS.among("id", ids).rows(self.database)}
        return [by_id[i] for i in ids if i in by_id]

    def history(
        self,
        limit: int = 50,
        offset: int = 0,
        *,
        project: str | None = None,
        rule: str | None = None,
    ) -> list[notifications.AlertRecord]:
        """Records, newest first, optionally of one project or rule."""
        query = _RECORDS.equal("project", project).equal("rule", rule)
        return [_record(r) for r in query.rows(self.database, limit, offset)]


def _record(row: database.Row) -> notifications.AlertRecord:
    return rows.into(
        notifications.AlertRecord,
        row,
        run_ids=tuple(json.loads(row["run_ids"])),
        notified=bool(row["notified"]),
    )
