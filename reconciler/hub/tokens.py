"""Per-agent tokens, stored hashed in ``agent-tokens.json`` in the hub's data dir.

Tokens are 256-bit random strings, so a plain SHA-256 (compared in constant time) is
enough; a slow password hash would only slow down 200 agents reconnecting at once.  The file
may be changed by another process (``quicflow agent-token revoke``): the hub calls
``reload_if_changed`` periodically and disconnects agents whose token no longer verifies.

An agent serving several reconciler replicas says HELLO to each replica's hub with one
token: one hub issues it (``create``), the others take its hash (``register``).  Each
replica keeps its own file, so a revocation is per replica.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import time
from pathlib import Path

TOKENS_FILE = "agent-tokens.json"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# A registered token is stored as a plain SHA-256 too: it must be as hard to guess as the
# 256-bit ones ``create`` issues (43 characters after the prefix), not a password.
MIN_TOKEN_LENGTH = 32


class TokenStore:
    """Create, verify and revoke agent tokens kept in one JSON file."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / TOKENS_FILE
        self._entries: dict[str, dict[str, object]] = {}
        self._signature: tuple[int, int, int] | None = None
        self.reload_if_changed()

    def create(self, name: str) -> str:
        """Issue a new token for agent ``name`` (replacing any previous one) and return it."""
        check_name(name)
        token = "qfa_" + secrets.token_urlsafe(32)
        self._store(name, token)
        return token

    def register(self, name: str, token: str) -> None:
        """Accept ``token`` (issued by another replica's hub) for agent ``name``, replacing any."""
        check_name(name)
        if len(token) < MIN_TOKEN_LENGTH or any(character.isspace() for character in token):
            raise ValueError(
                f"not an agent token: it must be at least {MIN_TOKEN_LENGTH} characters without"
                " spaces, like those 'quicflow agent-token create NAME' prints"
            )
        self._store(name, token)

    def revoke(self, name: str) -> bool:
        """Remove the token of ``name``; return whether there was one."""
        self.reload_if_changed()
        if self._entries.pop(name, None) is None:
            return False
        self._save()
        return True

    def verify(self, name: str, token: str) -> bool:
        """True when ``token`` is the current token of agent ``name``."""
        entry = self._entries.get(name)
        if entry is None or not token:
            return False
        return hmac.compare_digest(str(entry["sha256"]), _digest(token))

    def knows(self, name: str) -> bool:
        """True when agent ``name`` has a token."""
        return name in self._entries

    def names(self) -> list[str]:
        """Names of agents that have a token."""
        return sorted(self._entries)

    def reload_if_changed(self) -> bool:
        """Re-read the file if another process changed it; return whether it changed."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            changed = self._signature is not None
            self._entries, self._signature = {}, None
            return changed
        signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if signature == self._signature:
            return False
        entries = json.loads(self.path.read_text() or "{}").get("agents", {})
        self._entries = {str(k): dict(v) for k, v in entries.items()}
        self._signature = signature
        return True

    def _store(self, name: str, token: str) -> None:
        self.reload_if_changed()
        self._entries[name] = {"sha256": _digest(token), "created": time.time()}
        self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            json.dump({"agents": self._entries}, handle, indent=2, sort_keys=True)
        # Atomic replace: a hub reading concurrently sees the old or the new file, never half.
        os.replace(temporary, self.path)
        stat = self.path.stat()
        self._signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def check_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` can name an agent."""
    if not NAME_PATTERN.match(name):
        raise ValueError(f"invalid agent name {name!r}: use letters, digits, '.', '_', '-'")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
