"""Delivery of outbox items over HTTP: signing, per-attempt timeout, retries, records.

The only module of the package that imports httpx. One task per item runs its attempts
in turn; between attempts it records the outcome and the time of the next try in the
outbox, then sleeps (``sleep`` and ``random`` are parameters, so tests control
backoff), so a restart continues from the recorded attempt instead of starting over.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random as random_module
import time
from collections.abc import Awaitable, Callable

import httpx

from reconciler.alert import retries, signing
from reconciler.notifications import (
    DEFAULT_TIMEOUT,
    Attempt,
    AttemptStatus,
    Item,
    Message,
    RetryPolicy,
    State,
)
from reconciler.store.outbox import Outbox

_log = logging.getLogger(__name__)

#: Looks up the secret value of a message's callback (by its credential name).
SecretLookup = Callable[[Message], str]
Client = httpx.AsyncClient

# A claimed item stays ours this long beyond its attempt's timeout; a crashed process's
# items become claimable again after it.
LEASE_MARGIN = 30.0
# Longest idle wait between outbox scans (new items wake the loop at once).
IDLE_WAIT = 5.0


class Deliverer:
    """Sends the outbox's pending items and records every attempt."""

    def __init__(
        self,
        outbox: Outbox,
        *,
        secrets: SecretLookup | None = None,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        random: Callable[[], float] = random_module.random,
        concurrency: int = 8,
        lease_margin: float = LEASE_MARGIN,
        idle_wait: float | None = None,
    ):
        self.outbox = outbox
        self._secrets = secrets
        self._client = client
        self._own_client = client is None
        self._clock = clock
        self._sleep = sleep
        self._random = random
        self._slots = asyncio.Semaphore(concurrency)
        self._lease_margin = lease_margin
        self._idle_wait = IDLE_WAIT if idle_wait is None else idle_wait
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: dict[int, asyncio.Task[None]] = {}

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        """Start delivering: pending items left by an earlier process are resumed."""
        if self._client is None:
            # Redirects are not followed: a callback URL that moved is a config change.
            self._client = httpx.AsyncClient(follow_redirects=False)
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Stop: cancel attempts in flight and release their leases for the next process."""
        in_flight = list(self._tasks)  # done callbacks empty the dict as tasks end
        tasks = [t for t in (self._loop_task, *self._tasks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.outbox.release(in_flight)
        self._tasks.clear()
        self._loop_task = None
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    def wake(self) -> None:
        """Look at the outbox now (new items were added)."""
        self._wake.set()

    async def drain(self, within: float = 0.0) -> None:
        """Wait until nothing is in flight and nothing is due within ``within`` seconds."""
        if self._loop_task is None:
            raise RuntimeError("the deliverer is not started")
        while True:
            if self._tasks:
                await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)
                continue
            if self.outbox.due_count(self._clock() + within) == 0:
                return
            self.wake()
            await asyncio.sleep(0.005)

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            now = self._clock()
            try:
                for item in self.outbox.claim(now, self._lease(), exclude=list(self._tasks)):
                    task = asyncio.get_running_loop().create_task(self._deliver(item))
                    self._tasks[item.id] = task
                    task.add_done_callback(functools.partial(self._forget, item.id))
                due = self.outbox.next_due(exclude=list(self._tasks))
            except Exception:  # noqa: BLE001 - a store hiccup must not end delivery for good
                _log.exception("outbox scan failed")
                due = None
            wait = self._idle_wait if due is None else min(max(due - now, 0.005), self._idle_wait)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    def _forget(self, item_id: int, _task: asyncio.Task[None]) -> None:
        self._tasks.pop(item_id, None)

    def _lease(self, policy: RetryPolicy | None = None) -> float:
        return (policy.timeout if policy else DEFAULT_TIMEOUT * 6) + self._lease_margin

    async def _deliver(self, item: Item) -> None:
        policy = item.message.policy
        number = item.attempts
        while True:
            number += 1
            async with self._slots:
                attempt = await self.attempt(item.message)
            now = self._clock()
            if attempt.ok:
                self.outbox.record(item, number, attempt, now, state=State.DELIVERED)
                return
            if not attempt.retryable or number >= policy.attempts:
                self.outbox.record(item, number, attempt, now, state=State.FAILED)
                _log.warning(
                    "callback %s gave up on %s after %d attempts: %s",
                    item.message.callback,
                    item.key,
                    number,
                    attempt.error,
                )
                return
            delay = policy.delay(number, self._random())
            self.outbox.record(
                item,
                number,
                attempt,
                now,
                state=State.PENDING,
                next_attempt_at=now + delay,
                lease_until=now + delay + self._lease(policy),
            )
            await self._sleep(delay)

    # ------------------------------------------------------------------ one attempt

    async def attempt(self, message: Message) -> Attempt:
        """POST ``message`` once (signed when its callback has a secret) and judge the reply."""
        try:
            secret = self._secrets(message) if message.secret and self._secrets else None
        except Exception as exc:  # noqa: BLE001 - a missing credential may be added later
            return Attempt(AttemptStatus.ERROR, None, 0.0, f"secret {message.secret!r}: {exc}")
        if message.secret and not secret:
            return Attempt(
                AttemptStatus.ERROR, None, 0.0, f"secret {message.secret!r} is not available"
            )
        body, headers = self._request(message, secret)
        client = self._client
        if client is None:
            raise RuntimeError("the deliverer is not started")
        timeout = message.policy.timeout
        started = time.perf_counter()
        try:
            # httpx's timeout bounds each phase; asyncio.timeout bounds the whole attempt,
            # so a receiver trickling its answer cannot hold it longer.
            async with asyncio.timeout(timeout):
                response = await client.post(
                    message.url, content=body, headers=headers, timeout=timeout
                )
        except (TimeoutError, httpx.TimeoutException):
            return Attempt(
                AttemptStatus.TIMEOUT, None, _ms(started), f"no answer within {timeout:g}s"
            )
        except httpx.HTTPError as exc:
            return Attempt(AttemptStatus.ERROR, None, _ms(started), f"{type(exc).__name__}: {exc}")
        latency = _ms(started)
        verdict = retries.judge_reply(message.channel, response.status_code, response.content)
        if verdict.ok:
            return Attempt(AttemptStatus.DELIVERED, response.status_code, latency)
        return Attempt(
            AttemptStatus.FAILED, response.status_code, latency, verdict.error, verdict.retryable
        )

    def _request(self, message: Message, secret: str | None) -> tuple[bytes, dict[str, str]]:
        if message.channel == "feishu":
            body = message.body.encode()
            if secret:
                signed = signing.feishu_signed(json.loads(message.body), secret, int(self._clock()))
                body = json.dumps(signed, ensure_ascii=False).encode()
            headers = {
                "Content-Type": "application/json; charset=utf-8",
                "User-Agent": signing.USER_AGENT,
                signing.IDEMPOTENCY_HEADER: message.key,
            }
            return body, headers
        body = message.body.encode()
        headers = signing.webhook_headers(body, key=message.key, event=message.event, secret=secret)
        return body, headers


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0
