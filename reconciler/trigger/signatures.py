"""Webhook verification for GitHub, GitLab and Gitee: headers + raw body in, verdict out.

Each provider proves a delivery differently:

- **GitHub** signs the raw body: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256>``
  keyed with the webhook secret; ``X-GitHub-Event`` names the event and
  ``X-GitHub-Delivery`` is a unique id (GUID) that stays the same on redelivery.
- **GitLab** sends the secret token itself: ``X-Gitlab-Token``; ``X-Gitlab-Event`` is
  ``Push Hook``, ``Tag Push Hook``, …; ``Idempotency-Key`` (or, on older servers,
  ``X-Gitlab-Event-UUID``) identifies the delivery.
- **Gitee** sends ``X-Gitee-Token`` either as the plain password or as a signature
  ``Base64(HMAC-SHA256(key=secret, msg=f"{timestamp}\\n{secret}"))``, with the
  timestamp in milliseconds in ``X-Gitee-Timestamp`` and the event in
  ``X-Gitee-Event``. Gitee signs no body and sends no delivery id, so the timestamp is
  the only replay protection: deliveries older (or newer) than ``max_skew`` are
  rejected.

  **The risk.** The signature covers the timestamp only: whoever captures one
  delivery's headers (a proxy log, a leaked request dump) can send *any body* with
  them until the timestamp is ``max_skew`` old; in password mode, with any timestamp,
  forever. So: prefer Gitee's signing mode (``mode`` says which one a delivery used;
  password deliveries are accepted but their trigger record says so); the delivery id
  is derived from the token and timestamp, and the delivery path binds it to the body
  it first came with, so the captured pair cannot carry a second body; and the commit
  a Gitee push names is looked up in the project's app repo before anything is built
  or deployed (``reconciler.trigger.commits``).

Every secret comparison uses ``hmac.compare_digest``. A rejection names the header at
fault, so the trigger record can say exactly why a delivery was refused. Nothing here
reads the clock: ``now`` is a parameter. Body size limits are the HTTP layer's job,
before the body is read.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from reconciler import errors

#: How far a Gitee timestamp may be from ``now`` in either direction.
DEFAULT_MAX_SKEW = timedelta(minutes=5)

GITHUB_SIGNATURE = "X-Hub-Signature-256"
GITHUB_EVENT = "X-GitHub-Event"
GITHUB_DELIVERY = "X-GitHub-Delivery"
GITLAB_TOKEN = "X-Gitlab-Token"
GITLAB_EVENT = "X-Gitlab-Event"
GITLAB_IDEMPOTENCY_KEY = "Idempotency-Key"
GITLAB_EVENT_UUID = "X-Gitlab-Event-UUID"
GITEE_TOKEN = "X-Gitee-Token"
GITEE_TIMESTAMP = "X-Gitee-Timestamp"
GITEE_EVENT = "X-Gitee-Event"


class Provider(StrEnum):
    """A Git hosting service that sends webhooks."""

    GITHUB = "github"
    GITLAB = "gitlab"
    GITEE = "gitee"


class WebhookRejected(errors.QuicFlowError):
    """A delivery failed verification; ``header`` names the header at fault (if any)."""

    def __init__(self, reason: str, header: str | None = None):
        self.reason = reason
        self.header = header
        super().__init__(f"{header}: {reason}" if header else reason)


@dataclass(frozen=True, slots=True)
class VerifiedDelivery:
    """A delivery whose origin was proven: who sent it, which event, its unique id."""

    provider: Provider
    event: str
    delivery_id: str
    mode: str = "signature"  # Gitee: "signature" or "password" (the weaker one)


Headers = Mapping[str, str]


def _lowered(headers: Headers) -> dict[str, str]:
    # Works for plain dicts as well as case-insensitive header classes.
    return {name.lower(): value for name, value in headers.items()}


def _required(headers: dict[str, str], name: str) -> str:
    value = headers.get(name.lower(), "").strip()
    if not value:
        raise WebhookRejected("header is missing", name)
    return value


def _secret_bytes(secret: str | bytes, header: str) -> bytes:
    if not secret:
        # An empty key would make every signature "valid" for anyone who knows that.
        raise WebhookRejected("no secret is configured for this webhook", header)
    return secret.encode() if isinstance(secret, str) else secret


def _same(given: str, expected: str) -> bool:
    # compare_digest refuses non-ASCII str; compare the UTF-8 bytes instead.
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode())


def detect_provider(headers: Headers) -> Provider | None:
    """Which provider a delivery claims to come from, by its event header."""
    lowered = _lowered(headers)
    if GITHUB_EVENT.lower() in lowered:
        return Provider.GITHUB
    if GITLAB_EVENT.lower() in lowered:
        return Provider.GITLAB
    if GITEE_EVENT.lower() in lowered:
        return Provider.GITEE
    return None


def github_signature(body: bytes, secret: str | bytes) -> str:
    """The ``X-Hub-Signature-256`` value GitHub would send for ``body``."""
    key = _secret_bytes(secret, GITHUB_SIGNATURE)
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def gitee_signature(timestamp_ms: int | str, secret: str | bytes) -> str:
    """The signed ``X-Gitee-Token`` value Gitee would send at ``timestamp_ms``."""
    key = _secret_bytes(secret, GITEE_TOKEN)
    message = str(timestamp_ms).encode() + b"\n" + key
    return base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode()


def verify_github(headers: Headers, body: bytes, secret: str | bytes) -> VerifiedDelivery:
    """Verify a GitHub delivery's HMAC-SHA256 body signature."""
    lowered = _lowered(headers)
    signature = _required(lowered, GITHUB_SIGNATURE)
    if not signature.startswith("sha256="):
        raise WebhookRejected("signature must start with 'sha256='", GITHUB_SIGNATURE)
    if not _same(signature, github_signature(body, secret)):
        raise WebhookRejected("signature does not match the body", GITHUB_SIGNATURE)
    event = _required(lowered, GITHUB_EVENT)
    delivery = _required(lowered, GITHUB_DELIVERY)
    return VerifiedDelivery(Provider.GITHUB, event, delivery)


def verify_gitlab(headers: Headers, body: bytes, secret: str | bytes) -> VerifiedDelivery:
    """Verify a GitLab delivery's secret token."""
    lowered = _lowered(headers)
    token = _required(lowered, GITLAB_TOKEN)
    expected = _secret_bytes(secret, GITLAB_TOKEN)
    if not hmac.compare_digest(token.encode("utf-8", "replace"), expected):
        raise WebhookRejected("token does not match", GITLAB_TOKEN)
    event = _required(lowered, GITLAB_EVENT)
    # Idempotency-Key survives GitLab's retries; the event UUID is the older fallback.
    delivery = (
        lowered.get(GITLAB_IDEMPOTENCY_KEY.lower(), "").strip()
        or lowered.get(GITLAB_EVENT_UUID.lower(), "").strip()
        or _body_id("gitlab", b"", body)
    )
    return VerifiedDelivery(Provider.GITLAB, event, delivery)


def verify_gitee(
    headers: Headers,
    body: bytes,
    secret: str | bytes,
    *,
    now: datetime,
    max_skew: timedelta = DEFAULT_MAX_SKEW,
) -> VerifiedDelivery:
    """Verify a Gitee delivery's password or timestamp signature, and its freshness."""
    lowered = _lowered(headers)
    token = _required(lowered, GITEE_TOKEN)
    raw_timestamp = _required(lowered, GITEE_TIMESTAMP)
    if not raw_timestamp.isdigit():
        raise WebhookRejected("timestamp must be milliseconds since the epoch", GITEE_TIMESTAMP)
    key = _secret_bytes(secret, GITEE_TOKEN)
    # Compute both candidates and combine without short-circuit, so timing does not tell
    # which mode the hook uses.
    as_password = hmac.compare_digest(token.encode("utf-8", "replace"), key)
    as_signature = _same(token, gitee_signature(raw_timestamp, key))
    if not (as_password | as_signature):
        raise WebhookRejected("token is neither the password nor a valid signature", GITEE_TOKEN)
    if now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")  # naive = local clock
    sent_ms = int(raw_timestamp)
    now_ms = int(now.timestamp() * 1000)
    if abs(now_ms - sent_ms) > max_skew.total_seconds() * 1000:
        raise WebhookRejected(
            f"timestamp is {abs(now_ms - sent_ms) / 1000:.0f} s away from now "
            f"(at most {max_skew.total_seconds():.0f} s allowed)",
            GITEE_TIMESTAMP,
        )
    event = _required(lowered, GITEE_EVENT)
    # The id names the signed request (token and timestamp), not the body: the delivery
    # path binds it to the first body it came with, so a captured pair carries no other.
    delivery_id = _body_id("gitee", raw_timestamp.encode(), token.encode())
    return VerifiedDelivery(
        Provider.GITEE, event, delivery_id, "signature" if as_signature else "password"
    )


def verify(
    provider: Provider | str,
    headers: Headers,
    body: bytes,
    secret: str | bytes,
    *,
    now: datetime,
    max_skew: timedelta = DEFAULT_MAX_SKEW,
) -> VerifiedDelivery:
    """Verify a delivery from the provider the webhook is configured for."""
    match Provider(provider):
        case Provider.GITHUB:
            return verify_github(headers, body, secret)
        case Provider.GITLAB:
            return verify_gitlab(headers, body, secret)
        case Provider.GITEE:
            return verify_gitee(headers, body, secret, now=now, max_skew=max_skew)


def _body_id(provider: str, salt: bytes, body: bytes) -> str:
    # Providers without a delivery id: an identical resend hashes to the same id.
    return f"{provider}-" + hashlib.sha256(salt + b"\n" + body).hexdigest()[:32]
