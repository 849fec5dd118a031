"""Retry policy (exponential backoff with jitter, capped) and the verdict on replies."""

from __future__ import annotations

import json

import pytest

from reconciler.alert.retries import judge_reply
from reconciler.notifications import RetryPolicy


def test_backoff_doubles_and_is_capped_and_jitter_stays_within_bounds() -> None:
    policy = RetryPolicy(attempts=8, backoff=1.0, max_backoff=5.0, timeout=1.0)
    assert [policy.bounds(n) for n in range(1, 6)] == [
        (0.5, 1.0),
        (1.0, 2.0),
        (2.0, 4.0),
        (2.5, 5.0),
        (2.5, 5.0),
    ]
    assert policy.delay(1, 0.0) == 0.5
    assert policy.delay(3, 0.5) == 3.0
    for attempt in range(1, 30):
        low, high = policy.bounds(attempt)
        for jitter in (0.0, 0.25, 0.999999):
            assert low <= policy.delay(attempt, jitter) <= high <= 5.0


def test_policy_from_a_callback_retry_block_takes_defaults_for_missing_keys() -> None:
    assert RetryPolicy.from_mapping({}) == RetryPolicy(3, 2.0, 60.0, 10.0)
    assert RetryPolicy.from_mapping({"attempts": 5, "backoff": 0.5}) == RetryPolicy(
        5, 0.5, 60.0, 10.0
    )


@pytest.mark.parametrize(
    ("channel", "status", "body", "ok", "retryable"),
    [
        ("webhook", 200, b"", True, False),
        ("webhook", 204, b"", True, False),
        ("webhook", 500, b"oops", False, True),
        ("webhook", 503, b"", False, True),
        ("webhook", 429, b"", False, True),
        ("webhook", 408, b"", False, True),
        ("webhook", 400, b"bad", False, False),
        ("webhook", 401, b"", False, False),
        ("webhook", 404, b"", False, False),
        ("feishu", 200, json.dumps({"code": 0, "msg": "success"}).encode(), True, False),
        ("feishu", 200, json.dumps({"StatusCode": 0}).encode(), True, False),
        (
            "feishu",
            200,
            json.dumps({"code": 9499, "msg": "too many request"}).encode(),
            False,
            True,
        ),
        (
            "feishu",
            200,
            json.dumps({"code": 19021, "msg": "sign match fail"}).encode(),
            False,
            True,
        ),
        (
            "feishu",
            200,
            json.dumps({"StatusCode": 19024, "StatusMessage": "x"}).encode(),
            False,
            True,
        ),
        ("feishu", 200, b"<html>", False, True),
        ("feishu", 502, b"", False, True),
    ],
)
def test_judge_reply(channel: str, status: int, body: bytes, ok: bool, retryable: bool) -> None:
    verdict = judge_reply(channel, status, body)
    assert (verdict.ok, verdict.retryable if not ok else False) == (ok, retryable)
    if not ok:
        assert verdict.error


def test_feishu_error_names_the_code_and_message() -> None:
    verdict = judge_reply("feishu", 200, b'{"code": 9499, "msg": "too many request"}')
    assert verdict.error == "feishu code 9499: too many request"
