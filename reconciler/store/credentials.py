"""Sealed credentials and their audit in the operational store.

``sealed_credentials`` holds ciphertexts only (sealing and opening are
``reconciler.credential.sealing``'s); ``credential_audit`` is append-only and
``credential_usage`` keeps each credential's last use, moved in the transaction that
records the use, so the two never disagree. Rows are returned as they are stored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from reconciler.store import database, paging

_SEALED = paging.Query("sealed_credentials", order=("id",))
_INFO_COLUMNS = ("id", "name", "project", "type", "description", "created_by", "created_at")
_AUDIT = paging.Query("credential_audit", order=("id DESC",)).selecting(
    "id", "credential_id", "action", "actor", "source_ip", "at"
)

#: Re-seals one record: (nonce, ciphertext) under the old key -> (key id, nonce, ciphertext).
Reseal = Callable[[bytes, bytes], tuple[str, bytes, bytes]]


class SealedCredentials:
    """The ``sealed_credentials`` table."""

    def __init__(self, db: database.Database):
        self.db = db

    def count_by_key(self) -> dict[str, int]:
        """How many records each key id sealed."""
        rows = self.db.query("SELECT key_id, COUNT(*) AS n FROM sealed_credentials GROUP BY key_id")
        return {row["key_id"]: int(row["n"]) for row in rows}

    def ids_under(self, key_ids: Iterable[str]) -> list[str]:
        """Ids of the records sealed with one of ``key_ids``."""
        query = _SEALED.among("key_id", key_ids)
        return [row["id"] for row in query.rows(self.db)]

    def not_under(self, key_id: str) -> list[database.Row]:
        """(id, type, key_id) of every record not sealed with ``key_id``, by id."""
        query = _SEALED.selecting("id", "type", "key_id").compare("key_id", "!=", key_id)
        return query.rows(self.db)

    def count_not_under(self, key_id: str) -> int:
        """How many records are not sealed with ``key_id``."""
        return _SEALED.compare("key_id", "!=", key_id).count(self.db)

    def reseal(self, credential_id: str, key_id: str, reseal: Reseal) -> bool:
        """Re-seal a record still under ``key_id`` with ``reseal``; False if it no longer is.

        Read and update in one transaction, the update guarded by the old key id, so two
        processes rotating at once never double-seal or lose a record.
        """
        with self.db.transaction() as conn:
            fresh = conn.execute(
                "SELECT nonce, ciphertext FROM sealed_credentials WHERE id = ? AND key_id = ?",
                (credential_id, key_id),
            ).fetchone()
            if fresh is None:
                return False
            new_key_id, nonce, ciphertext = reseal(fresh["nonce"], fresh["ciphertext"])
            conn.execute(
                "UPDATE sealed_credentials SET key_id = ?, nonce = ?, ciphertext = ? "
                "WHERE id = ? AND key_id = ?",
                (new_key_id, nonce, ciphertext, credential_id, key_id),
            )
        return True

    def put(
        self,
        credential_id: str,
        *,
        name: str,
        project: str | None,
        kind: str,
        description: str,
        actor: str,
        now: str,
        key_id: str | None,
        nonce: bytes,
        ciphertext: bytes,
    ) -> tuple[str, str, bool]:
        """Create or replace a record; its (created_by, created_at) and whether it is new.

        A replaced record keeps who created it and when.
        """
        with self.db.transaction() as conn:
            existing = conn.execute(
                "SELECT created_by, created_at FROM sealed_credentials WHERE id = ?",
                (credential_id,),
            ).fetchone()
            created_by, created_at = (
                (existing["created_by"], existing["created_at"]) if existing else (actor, now)
            )
            conn.execute(
                "INSERT INTO sealed_credentials (id, name, project, type, description,"
                " created_by, created_at, updated_at, key_id, nonce, ciphertext)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET name = excluded.name, project = excluded.project,"
                " type = excluded.type, description = excluded.description,"
                " updated_at = excluded.updated_at, key_id = excluded.key_id,"
                " nonce = excluded.nonce, ciphertext = excluded.ciphertext",
                (
                    credential_id,
                    name,
                    project,
                    kind,
                    description,
                    created_by,
                    created_at,
                    now,
                    key_id,
                    nonce,
                    ciphertext,
                ),
            )
        return created_by, created_at, existing is None

    def get(self, credential_id: str) -> database.Row | None:
        """The whole record ``credential_id``, if there is one."""
        return _SEALED.equal("id", credential_id).first(self.db)

    def infos(self) -> list[database.Row]:
        """The metadata columns of every record, by id (no ciphertexts)."""
        return _SEALED.selecting(*_INFO_COLUMNS).rows(self.db)

    def delete(self, credential_id: str) -> bool:
        """Remove a record; True if it existed."""
        return self.db.execute("DELETE FROM sealed_credentials WHERE id = ?", (credential_id,)) > 0


class CredentialAudit:
    """The ``credential_audit`` and ``credential_usage`` tables."""

    def __init__(self, db: database.Database):
        self.db = db

    def append(
        self,
        credential_id: str,
        action: str,
        actor: str,
        at: str,
        source_ip: str | None = None,
        *,
        used: bool = False,
        deleted: bool = False,
    ) -> int:
        """Append one entry and return its id; ``used`` also moves the last use to ``at``,
        ``deleted`` forgets it (same transaction)."""
        with self.db.transaction() as conn:
            entry = conn.execute(
                "INSERT INTO credential_audit (credential_id, action, actor, source_ip, at) "
                "VALUES (?, ?, ?, ?, ?) RETURNING id",
                (credential_id, action, actor, source_ip, at),
            ).fetchall()[0]
            if used:
                conn.execute(
                    "INSERT INTO credential_usage (credential_id, last_used_at) VALUES (?, ?) "
                    "ON CONFLICT (credential_id) DO UPDATE SET last_used_at = excluded.last_used_at",
                    (credential_id, at),
                )
            elif deleted:
                conn.execute(
                    "DELETE FROM credential_usage WHERE credential_id = ?", (credential_id,)
                )
        return int(entry["id"])

    def entries(self, credential_id: str, limit: int = 100) -> list[database.Row]:
        """The newest ``limit`` entries of a credential, newest first."""
        return _AUDIT.equal("credential_id", credential_id).rows(self.db, limit)

    def last_used(self) -> dict[str, str]:
        """``last_used_at`` per credential id."""
        rows = self.db.query("SELECT credential_id, last_used_at FROM credential_usage")
        return {row["credential_id"]: row["last_used_at"] for row in rows}
