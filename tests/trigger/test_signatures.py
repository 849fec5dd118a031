"""Webhook verification with real signed bodies for GitHub, GitLab and Gitee."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import pytest

from reconciler.trigger.signatures import (
    Provider,
    VerifiedDelivery,
    WebhookRejected,
    detect_provider,
    gitee_signature,
    github_signature,
    verify,
    verify_gitee,
    verify_github,
    verify_gitlab,
)

SECRET = "s3cr3t-✓"
BODY = b'{"ref": "refs/heads/main", "after": "' + b"a" * 40 + b'"}'
NOW = datetime(2026, 11, 29, 9, 30, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)


def github_sign(body: bytes, secret: str = SECRET) -> str:
    """Computed here independently of the module under test."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def gitee_sign(timestamp: int, secret: str = SECRET) -> str:
    message = f"{timestamp}\n{secret}".encode()
    return base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest()).decode()


def github_headers(**overrides: str | None) -> dict[str, str]:
    headers = {
        "X-Hub-Signature-256": github_sign(BODY),
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
    }
    return _apply(headers, overrides)


def gitlab_headers(**overrides: str | None) -> dict[str, str]:
    headers = {
        "X-Gitlab-Token": SECRET,
        "X-Gitlab-Event": "Push Hook",
        "Idempotency-Key": "f2c1c4d0-1b4a-4b8e-9a57-0c6c3a4c7b10",
    }
    return _apply(headers, overrides)


def gitee_headers(**overrides: str | None) -> dict[str, str]:
    headers = {
        "X-Gitee-Token": gitee_sign(NOW_MS),
        "X-Gitee-Timestamp": str(NOW_MS),
        "X-Gitee-Event": "Push Hook",
    }
    return _apply(headers, overrides)


def _apply(headers: dict[str, str], overrides: dict[str, str | None]) -> dict[str, str]:
    for key, value in overrides.items():
        name = key.replace("_", "-")
        match = next((h for h in headers if h.lower() == name.lower()), name)
        headers.pop(match, None)
        if value is not None:
            headers[name] = value
    return headers


# --------------------------------------------------------------------------- GitHub


def test_github_accepts_a_real_signature() -> None:
    delivery = verify_github(github_headers(), BODY, SECRET)
    assert delivery == VerifiedDelivery(
        Provider.GITHUB, "push", "72d3162e-cc78-11e3-81ab-4c9367dc0958"
    )
    assert github_signature(BODY, SECRET) == github_sign(BODY)


def test_github_headers_are_case_insensitive() -> None:
    lowered = {name.lower(): value for name, value in github_headers().items()}
    assert verify_github(lowered, BODY, SECRET).event == "push"
    shouting = {name.upper(): value for name, value in github_headers().items()}
    assert verify_github(shouting, BODY, SECRET.encode()).provider is Provider.GITHUB


@pytest.mark.parametrize(
    ("headers", "body", "secret", "header", "reason"),
    [
        (github_headers(X_Hub_Signature_256=None), BODY, SECRET, "X-Hub-Signature-256", "missing"),
        (github_headers(X_Hub_Signature_256=""), BODY, SECRET, "X-Hub-Signature-256", "missing"),
        (
            github_headers(X_Hub_Signature_256=github_sign(BODY, "wrong")),
            BODY,
            SECRET,
            "X-Hub-Signature-256",
            "does not match",
        ),
        (github_headers(), BODY + b" ", SECRET, "X-Hub-Signature-256", "does not match"),
        (
            github_headers(X_Hub_Signature_256=github_sign(BODY)[7:]),
            BODY,
            SECRET,
            "X-Hub-Signature-256",
            "must start with 'sha256='",
        ),
        (
            # the legacy SHA-1 header alone is not enough
            github_headers(
                X_Hub_Signature_256=None,
                X_Hub_Signature="sha1=" + hmac.new(SECRET.encode(), BODY, "sha1").hexdigest(),
            ),
            BODY,
            SECRET,
            "X-Hub-Signature-256",
            "missing",
        ),
        (
            github_headers(
                X_Hub_Signature_256=github_sign(BODY).upper().replace("SHA256", "sha256")
            ),
            BODY,
            SECRET,
            "X-Hub-Signature-256",
            "does not match",
        ),
        (
            github_headers(X_Hub_Signature_256="sha256=é" + "0" * 63),
            BODY,
            SECRET,
            "X-Hub-Signature-256",
            "does not match",
        ),
        (github_headers(X_GitHub_Event=None), BODY, SECRET, "X-GitHub-Event", "missing"),
        (github_headers(X_GitHub_Delivery=None), BODY, SECRET, "X-GitHub-Delivery", "missing"),
        (github_headers(), BODY, "", "X-Hub-Signature-256", "no secret is configured"),
    ],
)
def test_github_rejections(
    headers: dict[str, str], body: bytes, secret: str, header: str, reason: str
) -> None:
    with pytest.raises(WebhookRejected) as caught:
        verify_github(headers, body, secret)
    assert caught.value.header == header
    assert reason in caught.value.reason
    assert str(caught.value).startswith(header + ": ")


# --------------------------------------------------------------------------- GitLab


@pytest.mark.parametrize(
    ("overrides", "event", "delivery_id"),
    [
        ({}, "Push Hook", "f2c1c4d0-1b4a-4b8e-9a57-0c6c3a4c7b10"),
        (
            {"X_Gitlab_Event": "Tag Push Hook"},
            "Tag Push Hook",
            "f2c1c4d0-1b4a-4b8e-9a57-0c6c3a4c7b10",
        ),
        (
            {
                "Idempotency_Key": None,
                "X_Gitlab_Event_UUID": "13792a34-cac6-4fda-95a8-c58e00a3954e",
            },
            "Push Hook",
            "13792a34-cac6-4fda-95a8-c58e00a3954e",
        ),
    ],
)
def test_gitlab_accepts_the_token(
    overrides: dict[str, str | None], event: str, delivery_id: str
) -> None:
    delivery = verify_gitlab(gitlab_headers(**overrides), BODY, SECRET)
    assert delivery == VerifiedDelivery(Provider.GITLAB, event, delivery_id)


def test_gitlab_without_delivery_header_derives_a_stable_id() -> None:
    headers = gitlab_headers(Idempotency_Key=None)
    first = verify_gitlab(headers, BODY, SECRET).delivery_id
    assert first == verify_gitlab(headers, BODY, SECRET).delivery_id
    assert first != verify_gitlab(headers, BODY + b"\n", SECRET).delivery_id
    assert first.startswith("gitlab-")


@pytest.mark.parametrize(
    ("headers", "secret", "header", "reason"),
    [
        (gitlab_headers(X_Gitlab_Token=None), SECRET, "X-Gitlab-Token", "missing"),
        (gitlab_headers(X_Gitlab_Token="nope"), SECRET, "X-Gitlab-Token", "does not match"),
        (gitlab_headers(X_Gitlab_Token=SECRET + "x"), SECRET, "X-Gitlab-Token", "does not match"),
        (gitlab_headers(), "other", "X-Gitlab-Token", "does not match"),
        (gitlab_headers(), "", "X-Gitlab-Token", "no secret is configured"),
        (gitlab_headers(X_Gitlab_Event=None), SECRET, "X-Gitlab-Event", "missing"),
    ],
)
def test_gitlab_rejections(headers: dict[str, str], secret: str, header: str, reason: str) -> None:
    with pytest.raises(WebhookRejected) as caught:
        verify_gitlab(headers, BODY, secret)
    assert caught.value.header == header
    assert reason in caught.value.reason


# --------------------------------------------------------------------------- Gitee


@pytest.mark.parametrize(
    ("overrides", "now"),
    [
        ({}, NOW),  # signature mode
        ({"X_Gitee_Token": SECRET}, NOW),  # password mode
        ({}, NOW + timedelta(minutes=4, seconds=59)),  # just inside the skew
        ({}, NOW - timedelta(minutes=4)),  # clocks disagree the other way
        ({"X_Gitee_Event": "Tag Push Hook"}, NOW),
    ],
)
def test_gitee_accepts_password_or_signature(
    overrides: dict[str, str | None], now: datetime
) -> None:
    delivery = verify_gitee(gitee_headers(**overrides), BODY, SECRET, now=now)
    assert delivery.provider is Provider.GITEE
    assert delivery.event == overrides.get("X_Gitee_Event", "Push Hook")
    assert delivery.delivery_id.startswith("gitee-")


def test_gitee_signature_helper_matches_the_documented_algorithm() -> None:
    assert gitee_signature(NOW_MS, SECRET) == gitee_sign(NOW_MS)
    assert gitee_signature(str(NOW_MS), SECRET.encode()) == gitee_sign(NOW_MS)


def test_gitee_replay_has_the_same_delivery_id() -> None:
    first = verify_gitee(gitee_headers(), BODY, SECRET, now=NOW)
    again = verify_gitee(gitee_headers(), BODY, SECRET, now=NOW + timedelta(seconds=30))
    assert first.delivery_id == again.delivery_id
    later = NOW_MS + 1000
    other = verify_gitee(
        gitee_headers(X_Gitee_Token=gitee_sign(later), X_Gitee_Timestamp=str(later)),
        BODY,
        SECRET,
        now=NOW,
    )
    assert other.delivery_id != first.delivery_id


@pytest.mark.parametrize(
    ("headers", "now", "max_skew", "header", "reason"),
    [
        (gitee_headers(X_Gitee_Token=None), NOW, None, "X-Gitee-Token", "missing"),
        (
            gitee_headers(X_Gitee_Token="wrong"),
            NOW,
            None,
            "X-Gitee-Token",
            "neither the password nor a valid signature",
        ),
        (
            # a signature for another timestamp does not verify
            gitee_headers(X_Gitee_Token=gitee_sign(NOW_MS - 1)),
            NOW,
            None,
            "X-Gitee-Token",
            "neither the password nor a valid signature",
        ),
        (
            gitee_headers(X_Gitee_Token=gitee_sign(NOW_MS, "other")),
            NOW,
            None,
            "X-Gitee-Token",
            "neither the password nor a valid signature",
        ),
        (gitee_headers(X_Gitee_Timestamp=None), NOW, None, "X-Gitee-Timestamp", "missing"),
        (
            gitee_headers(X_Gitee_Timestamp="2026-11-29T09:30:00Z"),
            NOW,
            None,
            "X-Gitee-Timestamp",
            "milliseconds",
        ),
        (
            gitee_headers(X_Gitee_Timestamp="-5"),
            NOW,
            None,
            "X-Gitee-Timestamp",
            "milliseconds",
        ),
        (
            gitee_headers(),
            NOW + timedelta(minutes=5, seconds=1),
            None,
            "X-Gitee-Timestamp",
            "301 s away from now (at most 300 s allowed)",
        ),
        (
            gitee_headers(),
            NOW - timedelta(hours=1),
            None,
            "X-Gitee-Timestamp",
            "3600 s away",
        ),
        (
            # a stale delivery is refused in password mode too
            gitee_headers(X_Gitee_Token=SECRET),
            NOW + timedelta(days=1),
            None,
            "X-Gitee-Timestamp",
            "away from now",
        ),
        (
            gitee_headers(),
            NOW + timedelta(seconds=11),
            timedelta(seconds=10),
            "X-Gitee-Timestamp",
            "at most 10 s allowed",
        ),
        (gitee_headers(X_Gitee_Event=None), NOW, None, "X-Gitee-Event", "missing"),
    ],
)
def test_gitee_rejections(
    headers: dict[str, str],
    now: datetime,
    max_skew: timedelta | None,
    header: str,
    reason: str,
) -> None:
    options = {} if max_skew is None else {"max_skew": max_skew}
    with pytest.raises(WebhookRejected) as caught:
        verify_gitee(headers, BODY, SECRET, now=now, **options)
    assert caught.value.header == header
    assert reason in caught.value.reason


def test_gitee_empty_secret_is_refused() -> None:
    # an empty token never matches an empty secret: it is simply missing
    with pytest.raises(WebhookRejected, match="header is missing"):
        verify_gitee(gitee_headers(X_Gitee_Token=""), BODY, "", now=NOW)
    with pytest.raises(WebhookRejected, match="no secret is configured"):
        verify_gitee(gitee_headers(), BODY, "", now=NOW)


# --------------------------------------------------------------------------- dispatch


@pytest.mark.parametrize(
    ("provider", "headers"),
    [
        (Provider.GITHUB, github_headers()),
        ("gitlab", gitlab_headers()),
        ("gitee", gitee_headers()),
    ],
)
def test_verify_dispatches_by_provider(provider: str, headers: dict[str, str]) -> None:
    delivery = verify(provider, headers, BODY, SECRET, now=NOW)
    assert delivery.provider == provider
    assert detect_provider(headers) == provider


def test_verify_for_the_wrong_provider_names_its_header() -> None:
    with pytest.raises(WebhookRejected) as caught:
        verify("github", gitlab_headers(), BODY, SECRET, now=NOW)
    assert caught.value.header == "X-Hub-Signature-256"


def test_unknown_provider() -> None:
    with pytest.raises(ValueError):
        verify("bitbucket", github_headers(), BODY, SECRET, now=NOW)
    assert detect_provider({"Content-Type": "application/json"}) is None


def test_gitee_needs_an_aware_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_gitee(gitee_headers(), BODY, SECRET, now=NOW.replace(tzinfo=None))
