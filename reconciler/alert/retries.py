"""Retry policy of a callback and the verdict on a receiver's reply. Pure: no I/O.

Backoff is exponential with "equal jitter", as ``reconciler.rules.backoff`` computes it
(the engine's task retries use the same rule).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.rules import backoff

# The schema's defaults (also applied by reconciler.gitops.building).
DEFAULT_ATTEMPTS = 3
DEFAULT_BACKOFF = 2.0
DEFAULT_MAX_BACKOFF = 60.0
DEFAULT_TIMEOUT = 10.0

# 4xx replies that say "not now" rather than "never": worth another attempt.
_RETRYABLE_CLIENT_ERRORS = frozenset({408, 409, 425, 429})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently one callback is tried (seconds)."""

    attempts: int = DEFAULT_ATTEMPTS
    backoff: float = DEFAULT_BACKOFF
    max_backoff: float = DEFAULT_MAX_BACKOFF
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None) -> RetryPolicy:
        """The policy of a callback's ``retry`` block (missing keys take the defaults)."""
        raw = raw or {}

        def number(key: str, default: float) -> float:
            value = raw.get(key)
            return default if value is None else float(value)

        return cls(
            attempts=max(1, int(raw.get("attempts") or DEFAULT_ATTEMPTS)),
            backoff=number("backoff", DEFAULT_BACKOFF),
            max_backoff=number("max_backoff", DEFAULT_MAX_BACKOFF),
            timeout=number("timeout", DEFAULT_TIMEOUT),
        )

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view (stored with each outbox item)."""
        return {
            "attempts": self.attempts,
            "backoff": self.backoff,
            "max_backoff": self.max_backoff,
            "timeout": self.timeout,
        }

    def bounds(self, attempt: int) -> tuple[float, float]:
        """The (lowest, highest) wait after failed attempt number ``attempt``."""
        return backoff.bounds(attempt, self.backoff, self.max_backoff)

    def delay(self, attempt: int, jitter: float) -> float:
        """The wait after failed attempt ``attempt``; ``jitter`` is a draw from [0, 1)."""
        return backoff.delay(attempt, self.backoff, self.max_backoff, jitter)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a reply means: delivered, or failed (and whether trying again may help)."""

    ok: bool
    retryable: bool = False
    error: str = ""


def judge_reply(channel: str, status: int, body: bytes) -> Verdict:
    """Judge an HTTP reply of a ``webhook`` or ``feishu`` receiver."""
    if not 200 <= status < 300:
        retryable = status >= 500 or status in _RETRYABLE_CLIENT_ERRORS
        return Verdict(False, retryable, f"HTTP {status}: {_snippet(body)}")
    if channel != "feishu":
        return Verdict(True)
    # Feishu answers HTTP 200 even when it refuses a message; the JSON ``code`` (or the
    # older ``StatusCode``) says whether it was accepted.
    try:
        reply = json.loads(body or b"{}")
    except ValueError:
        return Verdict(False, True, f"feishu reply is not JSON: {_snippet(body)}")
    if not isinstance(reply, dict):
        return Verdict(False, True, f"feishu reply is not an object: {_snippet(body)}")
    code = reply.get("code", reply.get("StatusCode", 0))
    if code in (0, None):
        return Verdict(True)
    message = reply.get("msg") or reply.get("StatusMessage") or ""
    # Feishu uses the same field for rate limits and transient faults as for bad
    # requests, so every refusal is retried within the callback's attempts.
    return Verdict(False, True, f"feishu code {code}: {message}".rstrip(": "))


def _snippet(body: bytes, limit: int = 200) -> str:
    text = body.decode("utf-8", "replace").strip()
    return text if len(text) <= limit else text[:limit] + "…"
