"""API tokens and browser sessions: issued once, stored only as SHA-256, checked with expiry.

A token is ``qft_`` + 256 random bits (``secrets``), so a plain SHA-256 is enough and a
slow password hash would only slow every request down. The plain token is shown once,
when it is issued; the store (``reconciler.store.tokens``) keeps its digest, its kind
(``api`` or ``session``), its expiry and when it was last used.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from reconciler.store import database
from reconciler.store import tokens as stored

TOKEN_PREFIX = "qft_"


def _utc(now: datetime) -> str:
    return now.astimezone(UTC).isoformat(timespec="seconds")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _utc_now() -> datetime:
    return datetime.now(UTC)


class TokenStore:
    """API tokens and browser sessions, stored as SHA-256 digests."""

    def __init__(self, db: database.Database, clock: Callable[[], datetime] = _utc_now):
        self.db = db
        self.clock = clock
        self.rows = stored.ApiTokens(db)

    def create(self, username: str, kind: str = "api", ttl: timedelta | None = None) -> str:
        """Issue a token for ``username``; the plain token is returned once and never stored."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        digest = _digest(token)
        now = self.clock()
        expires = _utc(now + ttl) if ttl else ""
        self.rows.add(digest[:12], username, digest, kind, _utc(now), expires)
        return token

    def lookup(self, token: str, kind: str = "api") -> str | None:
        """The username a valid, unexpired token belongs to, else None."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        # Looking up by digest is safe from timing attacks: the attacker controls the
        # preimage, not the digest; compare_digest below is belt and braces.
        digest = _digest(token)
        row = self.rows.find(digest, kind)
        if row is None or not hmac.compare_digest(row["hash"], digest):
            return None
        now = _utc(self.clock())
        if row["expires_at"] and row["expires_at"] <= now:
            return None
        if kind == "api" and row["last_used_at"][:16] != now[:16]:
            # At most one write per token and minute: a busy script must not turn
            # every read into a write.
            self.rows.touch(row["id"], now)
        return str(row["username"])

    def revoke(self, token_or_id: str) -> bool:
        """Delete a token (given itself or its id); True when one was deleted."""
        if token_or_id.startswith(TOKEN_PREFIX):
            return self.rows.delete_digest(_digest(token_or_id))
        return self.rows.delete_api_token(token_or_id)

    def revoke_user(self, username: str) -> int:
        """Delete every token and session of ``username``; how many were deleted."""
        return self.rows.delete_user(username)

    def list(self, username: str | None = None) -> builtins.list[stored.TokenInfo]:
        """API tokens (not sessions), optionally of one user."""
        return self.rows.api_tokens(username or None)

    def purge_expired(self) -> int:
        """Delete expired sessions and tokens."""
        return self.rows.delete_expired(_utc(self.clock()))
