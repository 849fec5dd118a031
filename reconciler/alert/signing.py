"""Signatures of outgoing notifications. Pure: no I/O, no clock (timestamps come in).

- **webhook**: ``X-QuicFlow-Signature-256: sha256=<hex HMAC-SHA256(key=secret, msg=body)>``
  over the exact bytes sent, when the callback has a secret; every request also
  carries ``Idempotency-Key`` (the same on every retry and after a restart), so a
  receiver can drop a repeat.
- **feishu** (custom bot, "signature verification" security setting): the JSON body
  gains ``timestamp`` (seconds, as a string) and
  ``sign = Base64(HMAC-SHA256(key = f"{timestamp}\\n{secret}", msg = b""))`` — Feishu
  keys the HMAC with the string and signs an empty message, and refuses a timestamp
  more than an hour away from its clock, so the signature is made at each attempt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

SIGNATURE_HEADER = "X-QuicFlow-Signature-256"
IDEMPOTENCY_HEADER = "Idempotency-Key"
EVENT_HEADER = "X-QuicFlow-Event"
USER_AGENT = "QUIC-Flow-Notifier/1"


def webhook_signature(secret: str, body: bytes) -> str:
    """The ``X-QuicFlow-Signature-256`` value for ``body``: ``sha256=<hex>``."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_webhook_signature(secret: str, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is the right signature of ``body`` (for receivers written in Python)."""
    if not header:
        return False
    return hmac.compare_digest(header.strip(), webhook_signature(secret, body))


def webhook_headers(
    body: bytes, *, key: str, event: str = "", secret: str | None = None
) -> dict[str, str]:
    """The headers of one webhook request; signed when ``secret`` is set."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        IDEMPOTENCY_HEADER: key,
    }
    if event:
        headers[EVENT_HEADER] = event
    if secret:
        headers[SIGNATURE_HEADER] = webhook_signature(secret, body)
    return headers


def feishu_sign(secret: str, timestamp: int) -> str:
    """Feishu's ``sign`` for ``timestamp`` (seconds since the epoch)."""
    key = f"{timestamp}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()


def feishu_signed(body: Mapping[str, Any], secret: str, timestamp: int) -> dict[str, Any]:
    """``body`` with Feishu's ``timestamp`` and ``sign`` fields added."""
    return {**body, "timestamp": str(timestamp), "sign": feishu_sign(secret, timestamp)}
