"""The credential audit: who created, used, updated or deleted which credential, when.

Rows live in ``credential_audit`` of the operational store
(``reconciler.store.credentials``); a ``use`` also moves the credential's
``last_used_at`` in the same transaction, so the two never disagree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from reconciler.store import credentials as stored
from reconciler.store import database as store_database


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

    def __init__(self, database: store_database.Database):
        self.database = database
        self.records = stored.CredentialAudit(database)

    def record(
        self,
        credential_id: str,
        action: Action,
        actor: str,
        at: str,
        source_ip: str | None = None,
    ) -> AuditEntry:
        """Append one entry (and, for a use, update last_used_at)."""
        entry_id = self.records.append(
            credential_id,
            str(action),
            actor,
            at,
            source_ip,
            used=action is Action.USE,
            deleted=action is Action.DELETE,
        )
        return AuditEntry(entry_id, credential_id, action, actor, source_ip, at)

    def entries(self, credential_id: str, limit: int = 100) -> list[AuditEntry]:
        """The newest ``limit`` entries for a credential, newest first."""
        return [
            AuditEntry(
                id=row["id"],
                credential_id=row["credential_id"],
                action=Action(row["action"]),
                actor=row["actor"],
                source_ip=row["source_ip"],
                at=row["at"],
            )
            for row in self.records.entries(credential_id, limit)
        ]

    def last_used(self, credential_ids: Iterable[str] | None = None) -> dict[str, str]:
        """``last_used_at`` per credential id (all, or those asked for)."""
        last_used = self.records.last_used()
        if credential_ids is None:
            return last_used
        return {i: last_used[i] for i in set(credential_ids) if i in last_used}
