"""Delivery against real HTTP receivers on loopback: signatures, retries, backoff,
timeouts, Feishu error codes, and one delivery record per attempt."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator

import pytest
from alert.receivers import FEISHU_SECRET, WEBHOOK_SECRET, Receiver, SleepRecorder

from reconciler.alert.delivering import Deliverer
from reconciler.notifications import AttemptStatus, Message, RetryPolicy, State
from reconciler.store.database import Database
from reconciler.store.outbox import Outbox


def _message(
    url: str,
    key: str = "key-1",
    *,
    channel: str = "webhook",
    secret: str | None = "hook-key",
    attempts: int = 3,
    backoff: float = 0.01,
    max_backoff: float = 0.05,
    timeout: float = 2.0,
) -> Message:
    body = (
        {"msg_type": "text", "content": {"text": "hello"}}
        if channel == "feishu"
        else {"schema": "quicflow.notification/v1", "id": key, "text": "hello"}
    )
    return Message(
        key=key,
        callback="ops",
        scope="",
        channel=channel,
        url=url,
        body=json.dumps(body),
        policy=RetryPolicy(attempts, backoff, max_backoff, timeout),
        secret=secret,
        event="run_failed",
    )


def _secrets(message: Message) -> str:
    return {"hook-key": WEBHOOK_SECRET, "feishu-bot": FEISHU_SECRET}[message.secret or ""]


def _randoms(*values: float) -> Callable[[], float]:
    it: Iterator[float] = iter(values)
    return lambda: next(it)


async def _deliver(database: Database, *messages: Message, **options: object) -> Outbox:
    outbox = Outbox(database)
    for message in messages:
        assert outbox.enqueue(message, 0.0)
    options.setdefault("secrets", _secrets)
    options.setdefault("sleep", SleepRecorder())
    deliverer = Deliverer(outbox, **options)  # type: ignore[arg-type]
    await deliverer.start()
    try:
        await deliverer.drain()
    finally:
        await deliverer.close()
    return outbox


def _attempts(outbox: Outbox, key: str) -> list[tuple[int, AttemptStatus, int | None]]:
    return [(d.attempt, d.status, d.response_code) for d in reversed(outbox.deliveries(key=key))]


async def test_a_signed_webhook_is_delivered_once_and_recorded(
    receiver: Receiver, database: Database
) -> None:
    outbox = await _deliver(database, _message(receiver.url("/webhook")))
    assert receiver.bad_signatures == 0
    assert receiver.accepted == {"key-1": 1}
    request = receiver.requests[0]
    assert request["headers"]["idempotency-key"] == "key-1"
    assert request["headers"]["x-quicflow-event"] == "run_failed"
    assert json.loads(request["raw"])["text"] == "hello"
    (record,) = outbox.deliveries()
    assert (record.attempt, record.status, record.response_code, record.error) == (
        1,
        AttemptStatus.DELIVERED,
        200,
        "",
    )
    assert record.latency_ms > 0
    item = outbox.get("key-1")
    assert item is not None and item.state is State.DELIVERED and item.attempts == 1


async def test_without_a_secret_no_signature_header_is_sent(
    receiver: Receiver, database: Database
) -> None:
    await _deliver(database, _message(receiver.url("/unsigned"), secret=None))
    assert receiver.accepted == {"key-1": 1}
    assert "x-quicflow-signature-256" not in receiver.requests[0]["headers"]


async def test_failing_first_attempts_are_retried_with_bounded_exponential_backoff(
    receiver: Receiver, database: Database
) -> None:
    receiver.fail_first = 3
    sleep = SleepRecorder()
    message = _message(receiver.url("/webhook"), attempts=5, backoff=0.2, max_backoff=0.5)
    outbox = await _deliver(database, message, sleep=sleep, random=_randoms(0.0, 0.999, 0.5))
    assert _attempts(outbox, "key-1") == [
        (1, AttemptStatus.FAILED, 503),
        (2, AttemptStatus.FAILED, 503),
        (3, AttemptStatus.FAILED, 503),
        (4, AttemptStatus.DELIVERED, 200),
    ]
    # caps 0.2, 0.4, min(0.8, 0.5): each wait drawn from [cap/2, cap].
    assert sleep.delays == pytest.approx([0.1, 0.2 + 0.2 * 0.999, 0.25 + 0.25 * 0.5])
    for attempt, delay in enumerate(sleep.delays, start=1):
        low, high = message.policy.bounds(attempt)
        assert low <= delay <= high <= 0.5
    assert receiver.accepted == {"key-1": 1}
    assert outbox.deliveries()[-1].error.startswith("HTTP 503")


async def test_real_jitter_stays_within_bounds(receiver: Receiver, database: Database) -> None:
    receiver.fail_first = 4
    sleep = SleepRecorder()
    message = _message(receiver.url("/webhook"), attempts=5, backoff=0.1, max_backoff=0.3)
    await _deliver(database, message, sleep=sleep)
    assert len(sleep.delays) == 4
    for attempt, delay in enumerate(sleep.delays, start=1):
        low, high = message.policy.bounds(attempt)
        assert low <= delay <= high


async def test_gives_up_after_the_last_attempt(receiver: Receiver, database: Database) -> None:
    receiver.fail_first = 99
    outbox = await _deliver(database, _message(receiver.url("/webhook"), attempts=3))
    assert [a[1] for a in _attempts(outbox, "key-1")] == [AttemptStatus.FAILED] * 3
    item = outbox.get("key-1")
    assert item is not None and item.state is State.FAILED and item.attempts == 3
    assert item.last_error.startswith("HTTP 503")
    assert receiver.accepted == {}


async def test_a_client_error_is_not_retried(receiver: Receiver, database: Database) -> None:
    receiver.reject_with = 422
    outbox = await _deliver(database, _message(receiver.url("/webhook"), attempts=5))
    assert _attempts(outbox, "key-1") == [(1, AttemptStatus.FAILED, 422)]
    assert outbox.get("key-1").state is State.FAILED  # type: ignore[union-attr]


async def test_a_wrong_secret_is_refused_by_the_receiver(
    receiver: Receiver, database: Database
) -> None:
    outbox = await _deliver(
        database, _message(receiver.url("/webhook"), attempts=2), secrets=lambda m: "not-the-secret"
    )
    assert receiver.bad_signatures == 1  # 401 is final: no second attempt
    assert _attempts(outbox, "key-1") == [(1, AttemptStatus.FAILED, 401)]


async def test_each_attempt_times_out_after_the_per_attempt_timeout(
    receiver: Receiver, database: Database
) -> None:
    outbox = await _deliver(database, _message(receiver.url("/slow"), attempts=2, timeout=0.2))
    records = list(reversed(outbox.deliveries(key="key-1")))
    assert [(r.attempt, r.status, r.response_code) for r in records] == [
        (1, AttemptStatus.TIMEOUT, None),
        (2, AttemptStatus.TIMEOUT, None),
    ]
    for record in records:
        assert 150 <= record.latency_ms < 1500
        assert record.error == "no answer within 0.2s"
    assert len(receiver.requests) == 2
    assert outbox.get("key-1").state is State.FAILED  # type: ignore[union-attr]


async def test_an_unreachable_receiver_is_an_error_and_retried(database: Database) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before anyone connects
    outbox = await _deliver(database, _message(f"http://127.0.0.1:{port}/hook", attempts=2))
    records = outbox.deliveries(key="key-1")
    assert [r.status for r in records] == [AttemptStatus.ERROR] * 2
    assert "ConnectError" in records[0].error


async def test_a_missing_secret_fails_the_attempt_without_sending(
    receiver: Receiver, database: Database
) -> None:
    def missing(message: Message) -> str:
        raise KeyError(message.secret)

    outbox = await _deliver(
        database, _message(receiver.url("/webhook"), attempts=2), secrets=missing
    )
    assert receiver.requests == []
    assert [r.status for r in outbox.deliveries()] == [AttemptStatus.ERROR] * 2
    assert "hook-key" in outbox.deliveries()[0].error


@pytest.mark.parametrize("old_style", [False, True])
async def test_feishu_is_signed_and_its_error_codes_count_as_failures(
    receiver: Receiver, database: Database, old_style: bool
) -> None:
    receiver.fail_first = 2
    receiver.old_style_feishu = old_style
    message = _message(receiver.url("/feishu"), channel="feishu", secret="feishu-bot", attempts=4)
    outbox = await _deliver(database, message)
    assert receiver.bad_signatures == 0
    assert _attempts(outbox, "key-1") == [
        (1, AttemptStatus.FAILED, 200),
        (2, AttemptStatus.FAILED, 200),
        (3, AttemptStatus.DELIVERED, 200),
    ]
    assert outbox.deliveries()[-1].error == "feishu code 9499: too many request"
    body = receiver.bodies["key-1"]
    assert body["msg_type"] == "text" and body["content"] == {"text": "hello"}
    assert body["timestamp"].isdigit() and body["sign"]


async def test_a_feishu_signature_with_the_wrong_secret_is_refused_each_time(
    receiver: Receiver, database: Database
) -> None:
    message = _message(receiver.url("/feishu"), channel="feishu", secret="feishu-bot", attempts=2)
    outbox = await _deliver(database, message, secrets=lambda m: "wrong")
    assert receiver.bad_signatures == 2
    assert [r.error.split(":")[0] for r in outbox.deliveries()] == ["feishu code 19021"] * 2
    assert outbox.get("key-1").state is State.FAILED  # type: ignore[union-attr]


async def test_enqueuing_a_known_key_again_is_a_no_op(
    receiver: Receiver, database: Database
) -> None:
    outbox = await _deliver(database, _message(receiver.url("/webhook")))
    assert not outbox.enqueue(_message(receiver.url("/webhook")), 1.0)
    assert len(outbox.items()) == 1
    assert receiver.accepted == {"key-1": 1} and receiver.duplicates == 0
