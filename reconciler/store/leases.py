"""Leases on project/environments and replica heartbeats in a shared store.

Replicas of the reconciler that share one PostgreSQL database divide the
project/environments between them: a replica reconciles only the keys it holds a
lease on. A lease has an owner, an expiry and a fencing token that grows each time the
lease changes hands, so work stamped with an older token can be told from the new
owner's. Taking a lease is one atomic upsert — it succeeds when the key is free, its
lease expired, or the caller already holds it (a renewal keeps the token) — so two
replicas never both hold one. Heartbeats (``replicas``) say which replicas are alive,
for the assignment (``reconciler.engine.sharding``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.store import database

_TAKE = (
    "INSERT INTO leases (key, owner, token, expires_at) VALUES (?, ?, 1, ?)"
    " ON CONFLICT (key) DO UPDATE SET owner = excluded.owner,"
    " token = CASE WHEN leases.owner = excluded.owner THEN leases.token ELSE leases.token + 1 END,"
    " expires_at = excluded.expires_at"
    " WHERE leases.owner = excluded.owner OR leases.expires_at < ?"
    " RETURNING token"
)


@dataclass(frozen=True, slots=True)
class Lease:
    key: str
    owner: str
    token: int
    expires_at: float


class Leases:
    """Leases and heartbeats of the replicas sharing this store."""

    def __init__(self, db: database.Database):
        self.db = db

    def beat(self, owner: str, now: float) -> None:
        """Record that replica ``owner`` is alive at ``now``."""
        self.db.write(
            "INSERT INTO replicas (owner, seen_at) VALUES (?, ?)"
            " ON CONFLICT (owner) DO UPDATE SET seen_at = excluded.seen_at",
            (owner, now),
        )

    def live(self, now: float, ttl: float) -> list[str]:
        """Replicas seen within ``ttl`` seconds of ``now``, sorted."""
        rows = self.db.query(
            "SELECT owner FROM replicas WHERE seen_at >= ? ORDER BY owner", (now - ttl,)
        )
        return [r["owner"] for r in rows]

    def take(self, key: str, owner: str, now: float, ttl: float) -> int | None:
        """Take or renew the lease on ``key`` until ``now + ttl``: its token, or None if held."""
        with self.db.transaction() as conn:
            row = conn.execute(_TAKE, (key, owner, now + ttl, now)).fetchone()
        return None if row is None else int(row["token"])

    def release(self, keys: Iterable[str], owner: str) -> None:
        """Give up ``owner``'s leases on ``keys``: expired at once, so another replica
        may take them (with the next token: fencing tokens only ever grow)."""
        with self.db.transaction() as conn:
            for key in keys:
                conn.execute(
                    "UPDATE leases SET expires_at = 0 WHERE key = ? AND owner = ?", (key, owner)
                )

    def leave(self, owner: str) -> None:
        """A replica that stops cleanly: its heartbeat goes and its leases expire at once."""
        with self.db.transaction() as conn:
            conn.execute("UPDATE leases SET expires_at = 0 WHERE owner = ?", (owner,))
            conn.execute("DELETE FROM replicas WHERE owner = ?", (owner,))

    def all(self) -> dict[str, Lease]:
        """Every lease, by key."""
        rows = self.db.query("SELECT key, owner, token, expires_at FROM leases")
        return {
            r["key"]: Lease(r["key"], r["owner"], int(r["token"]), float(r["expires_at"]))
            for r in rows
        }
