"""The verdict on a receiver's reply: delivered, worth another attempt, or refused. Pure.

The retry policy itself (attempts, backoff, timeout) is a stored value:
``reconciler.notifications.RetryPolicy``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

# 4xx replies that say "not now" rather than "never": worth another attempt.
_RETRYABLE_CLIENT_ERRORS = frozenset({408, 409, 425, 429})


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
