"""Signatures of outgoing notifications: webhook HMAC header and Feishu's sign."""

from __future__ import annotations

import base64
import hashlib
import hmac

from reconciler.alert import signing


def test_webhook_signature_matches_the_published_hmac_sha256_vector() -> None:
    # The worked example of GitHub's "validating webhook deliveries" guide: the same
    # scheme (hex HMAC-SHA256 of the raw body, "sha256=" prefix) as ours.
    signature = signing.webhook_signature("It's a Secret to Everybody", b"Hello, World!")
    assert signature == "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def test_webhook_signature_verifies_and_rejects_a_changed_body() -> None:
    header = signing.webhook_signature("s3cret", b'{"a":1}')
    assert signing.verify_webhook_signature("s3cret", b'{"a":1}', header)
    assert not signing.verify_webhook_signature("s3cret", b'{"a":2}', header)
    assert not signing.verify_webhook_signature("other", b'{"a":1}', header)
    assert not signing.verify_webhook_signature("s3cret", b'{"a":1}', None)


def test_webhook_headers_carry_the_key_always_and_the_signature_only_with_a_secret() -> None:
    unsigned = signing.webhook_headers(b"{}", key="k-1", event="run_failed")
    assert unsigned["Idempotency-Key"] == "k-1"
    assert unsigned["X-QuicFlow-Event"] == "run_failed"
    assert unsigned["Content-Type"] == "application/json"
    assert "X-QuicFlow-Signature-256" not in unsigned
    signed = signing.webhook_headers(b"{}", key="k-1", secret="s3cret")
    assert signed["X-QuicFlow-Signature-256"] == signing.webhook_signature("s3cret", b"{}")


def test_feishu_sign_is_hmac_keyed_with_timestamp_newline_secret_over_nothing() -> None:
    timestamp, secret = 1599360473, "demo-secret"
    expected = base64.b64encode(
        hmac.new(f"{timestamp}\n{secret}".encode(), b"", hashlib.sha256).digest()
    ).decode()
    assert signing.feishu_sign(secret, timestamp) == expected
    body = signing.feishu_signed({"msg_type": "text"}, secret, timestamp)
    assert body == {"msg_type": "text", "timestamp": "1599360473", "sign": expected}
