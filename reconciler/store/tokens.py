"""API tokens and browser sessions in the operational store: the ``api_tokens`` table.

Only SHA-256 digests are stored (``hash``); issuing, hashing and deciding whether a
token is still good are ``reconciler.auth.tokens``'s.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.store import database, paging, rows

_TOKENS = paging.Query("api_tokens", order=("created_at",))


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What may be shown about a token: never the token itself."""

    id: str
    username: str
    kind: str
    created_at: str
    expires_at: str
    last_used_at: str


class ApiTokens:
    """The ``api_tokens`` table."""

    def __init__(self, db: database.Database):
        self.db = db

    def add(
        self, token_id: str, username: str, digest: str, kind: str, created_at: str, expires_at: str
    ) -> None:
        """Store a new token's digest."""
        self.db.execute(
            "INSERT INTO api_tokens (id, username, hash, kind, created_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (token_id, username, digest, kind, created_at, expires_at),
        )

    def find(self, digest: str, kind: str) -> database.Row | None:
        """The token of ``kind`` with SHA-256 ``digest``, if stored."""
        return _TOKENS.equal("hash", digest).equal("kind", kind).first(self.db)

    def touch(self, token_id: str, at: str) -> None:
        """Record that a token was used at ``at``."""
        self.db.execute("UPDATE api_tokens SET last_used_at = ? WHERE id = ?", (at, token_id))

    def delete_digest(self, digest: str) -> bool:
        """Delete the token or session with ``digest``; True when there was one."""
        return self.db.execute("DELETE FROM api_tokens WHERE hash = ?", (digest,)) > 0

    def delete_api_token(self, token_id: str) -> bool:
        """Delete the API token (not session) with id ``token_id``; True when there was one."""
        deleted = self.db.execute(
            "DELETE FROM api_tokens WHERE id = ? AND kind = 'api'", (token_id,)
        )
        return deleted > 0

    def delete_user(self, username: str) -> int:
        """Delete every token and session of ``username``; how many."""
        return self.db.execute("DELETE FROM api_tokens WHERE username = ?", (username,))

    def delete_expired(self, now: str) -> int:
        """Delete the tokens and sessions expired at ``now``; how many."""
        return self.db.execute(
            "DELETE FROM api_tokens WHERE expires_at != '' AND expires_at <= ?", (now,)
        )

    def api_tokens(self, username: str | None = None) -> list[TokenInfo]:
        """API tokens (not sessions), oldest first, optionally of one user."""
        query = _TOKENS.equal("kind", "api").equal("username", username)
        return [rows.into(TokenInfo, r) for r in query.rows(self.db)]
