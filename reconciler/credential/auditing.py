"""The credential audit: who created, used, updated or deleted which credential, when.

Rows live in ``credential_audit`` of ``credentials.db``; a ``use`` also moves the
credential's ``last_used_at`` in the same transaction, so the two never disagree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from reconciler.credential.database import Database


class Action(StrEnum):
    """What was done with a credential."""

    CREATE = "create"
    USE = "use"
    UPDATE = "update"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One recorded action on a credential."""

    id: int
    credential_id: str
    action: Action
    actor: str  # "user:NAME" or "run:ID" (whatever the caller identifies itself as)
    source_ip: str | None
    at: str  # ISO 8601, UTC

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready view (for the API)."""
        return {
            "id": self.id,
            "credential_id": self.credential_id,
            "action": str(self.action),
            "actor": self.actor,
            "source_ip": self.source_ip,
            "at": self.at,
        }


class AuditLog:
    """Append-only log of credential actions."""

    def __init__(self, database: Database):
        self.database = database

    def record(
        self,
        credential_id: str,
        action: Action,
        actor: str,
        at: str,
        source_ip: str | None = None,
    ) -> AuditEntry:
        """Append one entry (and, for a use, update last_used_at)."""
        with self.database.transaction() as db:
            cursor = db.execute(
                "INSERT INTO credential_audit (credential_id, action, actor, source_ip, at) "
                "VALUES (?, ?, ?, ?, ?)",
                (credential_id, str(action), actor, source_ip, at),
            )
            if action is Action.USE:
                db.execute(
                    "INSERT INTO credential_usage (credential_id, last_used_at) VALUES (?, ?) "
                    "ON CONFLICT (credential_id) DO UPDATE SET last_used_at = excluded.last_used_at",
                    (credential_id, at),
                )
            elif action is Action.DELETE:
                db.execute("DELETE FROM credential_usage WHERE credential_id = ?", (credential_id,))
            entry_id = int(cursor.lastrowid or 0)
        return AuditEntry(entry_id, credential_id, action, actor, source_ip, at)

    def entries(self, credential_id: str, limit: int = 100) -> list[AuditEntry]:
        """The newest ``limit`` entries for a credential, newest first."""
        rows = self.database.query(
            "SELECT id, credential_id, action, actor, source_ip, at FROM credential_audit "
            "WHERE credential_id = ? ORDER BY id DESC LIMIT ?",
            (credential_id, limit),
        )
        return [
            AuditEntry(
                id=row["id"],
                credential_id=row["credential_id"],
                action=Action(row["action"]),
                actor=row["actor"],
                source_ip=row["source_ip"],
                at=row["at"],
            )
            for row in rows
        ]

    def last_used(self, credential_ids: Iterable[str] | None = None) -> dict[str, str]:
        """``last_used_at`` per credential id (all, or those asked for)."""
        rows = self.database.query("SELECT credential_id, last_used_at FROM credential_usage")
        wanted = None if credential_ids is None else set(credential_ids)
        return {
            row["credential_id"]: row["last_used_at"]
            for row in rows
            if wanted is None or row["credential_id"] in wanted
        }
