"""Trigger records and claimed webhook deliveries in the operational store.

``trigger_records`` says what each delivery (or schedule firing) led to — refused
deliveries from one source are counted in one record (``occurrences``, ``last_at``)
once they repeat; ``webhook_deliveries`` holds the delivery ids already taken, each
with the SHA-256 of the body it came with, so a replay or a provider's redelivery is
acted on once and a delivery id reused for another body is recognised. Verifying, filtering and acting on a delivery
are ``reconciler.trigger.deliveries``'s.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from reconciler.store import database, paging, rows

#: The status of a record whose delivery id was seen before (the trigger's "skipped").
DUPLICATE = "skipped"

_RECORDS = paging.Query("trigger_records", order=("id DESC",))
_FIELDS = frozenset(
    {
        "project",
        "source",
        "event",
        "delivery_id",
        "kind",
        "branch",
        "tag",
        "commit_id",
        "committer",
        "run_id",
        "source_ip",
    }
)


@dataclass(frozen=True, slots=True)
class TriggerRecord:
    """What one delivery (or schedule firing) led to."""

    id: int
    at: str
    trigger_id: str
    project: str
    source: str
    event: str
    delivery_id: str
    kind: str
    branch: str
    tag: str
    commit: str
    committer: str
    status: str
    reason: str
    run_id: str
    source_ip: str
    occurrences: int = 1
    last_at: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The record as the API shows it."""
        return {
            "id": self.id,
            "triggered_at": self.at,
            "trigger_id": self.trigger_id,
            "project": self.project or None,
            "source": self.source,
            "event": self.event,
            "delivery_id": self.delivery_id,
            "kind": self.kind or None,
            "branch": self.branch or None,
            "tag": self.tag or None,
            "commit": self.commit or None,
            "committer": self.committer or None,
            "status": self.status,
            "reason": self.reason,
            "run_id": self.run_id or None,
            "source_ip": self.source_ip or None,
            "count": self.occurrences,
            "last_at": self.last_at or self.at,
        }


class TriggerRecords:
    """The ``trigger_records`` and ``webhook_deliveries`` tables."""

    def __init__(self, db: database.Database):
        self.db = db

    def add(
        self, at: datetime, trigger_id: str, status: str, reason: str = "", **fields: str
    ) -> int:
        """Append one record; returns its id."""
        with self.db.transaction() as conn:
            return _insert_record(conn, at, trigger_id, status, reason, fields)

    def claim_and_add(
        self,
        at: datetime,
        trigger_id: str,
        claim: str,
        status: str,
        reason: str = "",
        body_sha256: str = "",
        **fields: str,
    ) -> tuple[str, int]:
        """Claim delivery id ``claim`` and record the outcome in one transaction: (reason, id).

        For deliveries that start nothing (filtered out): one write instead of two on the
        commonest path. A delivery seen before is recorded as the duplicate it is.
        """
        with self.db.transaction() as conn:
            if not _claim(conn, trigger_id, claim, at, body_sha256):
                status, reason = DUPLICATE, f"duplicate delivery {claim}: already handled"
            return reason, _insert_record(conn, at, trigger_id, status, reason, fields)

    def update(self, record_id: int, status: str, reason: str, run_id: str = "") -> None:
        """Say what a delivery led to after all (a queued deploy started or was superseded)."""
        self.db.execute(
            "UPDATE trigger_records SET status = ?, reason = ?, run_id = ? WHERE id = ?",
            (status, reason, run_id, record_id),
        )

    def tally(self, record_id: int, occurrences: int, last_at: datetime, reason: str) -> None:
        """Set how many refusals one aggregate record stands for, and the newest one's time."""
        self.db.execute(
            "UPDATE trigger_records SET occurrences = ?, last_at = ?, reason = ? WHERE id = ?",
            (occurrences, _at(last_at), reason, record_id),
        )

    def get(self, record_id: int) -> TriggerRecord | None:
        """One record by id."""
        row = _RECORDS.equal("id", record_id).first(self.db)
        return _record(row) if row else None

    def list(
        self,
        trigger_id: str | None = None,
        projects: builtins.list[str] | None = None,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[builtins.list[TriggerRecord], int]:
        """Records newest first with the total count; ``projects`` None means all."""
        found, total = (
            _RECORDS.equal("trigger_id", trigger_id or None)
            .among("project", projects)
            .equal("status", status or None)
            .page(self.db, limit, offset)
        )
        return [_record(r) for r in found], total

    def claim_delivery(
        self, trigger_id: str, delivery_id: str, at: datetime, body_sha256: str = ""
    ) -> bool:
        """Take a delivery id; False when it was seen before (a replay or a redelivery)."""
        with self.db.transaction() as conn:
            return _claim(conn, trigger_id, delivery_id, at, body_sha256)

    def claimed_body(self, trigger_id: str, delivery_id: str) -> str | None:
        """The body digest a taken delivery id came with ('' unknown), None when not taken."""
        found = self.db.query(
            "SELECT body_sha256 FROM webhook_deliveries WHERE trigger_id = ? AND delivery_id = ?",
            (trigger_id, delivery_id),
        )
        return str(found[0]["body_sha256"]) if found else None

    def release_delivery(self, trigger_id: str, delivery_id: str) -> None:
        """Forget a delivery id so a redelivery is acted on."""
        self.db.execute(
            "DELETE FROM webhook_deliveries WHERE trigger_id = ? AND delivery_id = ?",
            (trigger_id, delivery_id),
        )


def _at(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="milliseconds")


def _claim(
    conn: database.Connection, trigger_id: str, delivery_id: str, at: datetime, body_sha256: str
) -> bool:
    cursor = conn.execute(
        "INSERT INTO webhook_deliveries (trigger_id, delivery_id, received_at, body_sha256)"
        " VALUES (?, ?, ?, ?) ON CONFLICT (trigger_id, delivery_id) DO NOTHING",
        (trigger_id, delivery_id, at.astimezone(UTC).isoformat(timespec="seconds"), body_sha256),
    )
    return cursor.rowcount == 1


def _insert_record(
    conn: database.Connection,
    at: datetime,
    trigger_id: str,
    status: str,
    reason: str,
    fields: dict[str, str],
) -> int:
    unknown = set(fields) - _FIELDS
    if unknown:
        raise ValueError(f"trigger records have no column {', '.join(sorted(unknown))}")
    columns = ["at", "trigger_id", "status", "reason", *fields]
    values = [_at(at), trigger_id, status, reason]
    sql = (
        f"INSERT INTO trigger_records ({', '.join(columns)})"
        f" VALUES ({', '.join('?' * len(columns))}) RETURNING id"
    )
    return int(conn.execute(sql, [*values, *fields.values()]).fetchall()[0]["id"])


def _record(row: database.Row) -> TriggerRecord:
    return rows.into(TriggerRecord, row, commit=row["commit_id"])
