"""The VictoriaLogs sink: batched NDJSON to ``/insert/jsonline``, queries in LogsQL.

Written against VictoriaLogs' documented HTTP API (data ingestion "JSON stream API" and
"HTTP parameters"; querying ``/select/logsql/query``):

- a line is one JSON object: ``message`` (the masked text) and ``time`` (RFC 3339 with
  nanoseconds), named by the ``_msg_field`` and ``_time_field`` query arguments, and
  the fields of ``reconciler.log.logsql.FIELDS``; ``_stream_fields`` names the fields
  that make a VictoriaLogs stream (``project,env`` by default);
- the tenant goes in the ``AccountID`` and ``ProjectID`` headers, on ingestion and on
  queries alike; bodies are gzip-compressed (``Content-Encoding: gzip``) unless told not;
- ``write`` only queues: a background task sends a batch when ``batch_size`` lines are
  waiting or ``flush_interval`` has passed. A failed request is retried a bounded
  number of times with exponential backoff (``reconciler.backoff``); then the batch
  goes to the on-disk spool (``reconciler.log.spooling``) and the sink waits, backing
  off up to ``MAX_BACKOFF``, before it tries again. While batches are spooled, new ones
  go behind them: the spool is replayed oldest first, each batch removed once
  VictoriaLogs answered 2xx, so an outage loses nothing the spool could hold and
  repeats nothing. Lines queued in memory are bounded too (``MAX_QUEUED`` batches);
  past that they are spooled at once.

A 4xx answer other than 429 will not get better by retrying: the batch is dropped and
counted (VictoriaLogs rejected it), so one bad batch never blocks the ones behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import random
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from reconciler import backoff
from reconciler.log import logsql, records
from reconciler.log.queries import LogQuery
from reconciler.log.records import LogLine
from reconciler.log.settings import VictoriaLogsSettings
from reconciler.log.spooling import Spool

_log = logging.getLogger(__name__)
ATTEMPTS = 3  # per batch before it is spooled
BACKOFF = 0.5
MAX_BACKOFF = 30.0
MAX_QUEUED = 20  # batches in memory before new lines go straight to the spool


class QueryFailed(Exception):
    """VictoriaLogs could not answer a query (unreachable, or it refused the query)."""


def document(line: LogLine) -> dict[str, Any]:
    """The JSON object a line is shipped as."""
    return {
        "message": line.line,
        "time": records.format_ns(line.time_ns),
        "line_id": line.id,
        "stream_id": line.stream,
        "seq": line.seq,
        "run_id": line.run_id,
        "build_id": line.build_id,
        "project": line.project,
        "env": line.env,
        "stage": line.stage,
        "task": line.task,
        "target": line.target,
        "source": line.source,
        "channel": line.channel,
        "level": line.level,
    }


def line_of(entry: dict[str, Any]) -> LogLine:
    """A line read back from a query answer (every field arrives as a string)."""

    def text(name: str) -> str:
        return str(entry.get(name, ""))

    def number(name: str) -> int:
        try:
            return int(entry.get(name) or 0)
        except ValueError:
            return 0

    at = text("_time")
    try:
        time_ns = records.parse_time(at)
    except ValueError:
        time_ns = 0
    return LogLine(
        stream=text("stream_id"),
        seq=number("seq"),
        at=at,
        source=text("source"),
        channel=text("channel") or "stdout",
        line=text("_msg"),
        time_ns=time_ns,
        run_id=text("run_id"),
        build_id=text("build_id"),
        project=text("project"),
        env=text("env"),
        stage=text("stage"),
        task=text("task"),
        target=text("target"),
        level=text("level") or "info",
        id=number("line_id"),
    )


class VictoriaLogsSink:
    """Ships lines to one VictoriaLogs and answers queries from it."""

    name = "victorialogs"

    def __init__(
        self,
        settings: VictoriaLogsSettings,
        spool_dir: Path,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ):
        self.settings = settings
        self.spool = Spool(spool_dir, settings.spool_max_bytes)
        self.shipped = 0
        self.rejected = 0
        self.failures = 0
        self._queue: deque[bytes] = deque()  # encoded lines not yet in a batch
        self._wake = asyncio.Event()
        self._sleep = sleep
        self._jitter = jitter
        self._client = httpx.AsyncClient(
            base_url=settings.base, timeout=settings.timeout, transport=transport
        )
        self._task: asyncio.Task[None] | None = None
        self._in_flight: list[bytes] | None = None
        self._down_since_attempt = 0

    # -- writing ------------------------------------------------------------------------

    @property
    def dropped(self) -> int:
        """Lines lost: spooled past the spool's bound, or rejected by VictoriaLogs."""
        return self.spool.dropped + self.rejected

    @property
    def queued(self) -> int:
        """Lines in memory, not yet sent or spooled."""
        return len(self._queue)

    def write(self, lines: Sequence[LogLine]) -> None:
        """Queue lines for shipping (never blocks on the network)."""
        for line in lines:
            self._queue.append(json.dumps(document(line), ensure_ascii=False).encode() + b"\n")
        size = self.settings.batch_size
        while len(self._queue) > size * MAX_QUEUED:
            self._spool(self._take(size))
        if len(self._queue) >= size:
            self._wake.set()

    def _take(self, count: int) -> list[bytes]:
        return [self._queue.popleft() for _ in range(min(count, len(self._queue)))]

    def _spool(self, batch: list[bytes]) -> None:
        if batch:
            self.spool.put(b"".join(batch), len(batch))

    # -- the sender ---------------------------------------------------------------------

    def start(self) -> None:
        """Start shipping in the background."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="victorialogs")

    async def close(self, deadline: float = 5.0) -> None:
        """Send what is queued (for at most ``deadline`` s); spool what could not be sent."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._requeue()
        with contextlib.suppress(TimeoutError, httpx.HTTPError, OSError):
            await asyncio.wait_for(self._drain(), deadline)
        self._requeue()
        while self._queue:
            self._spool(self._take(self.settings.batch_size))
        await self._client.aclose()

    def _requeue(self) -> None:
        """Put a batch whose sending was cut short back at the head of the queue."""
        if self._in_flight:
            self._queue.extendleft(reversed(self._in_flight))
        self._in_flight = None

    async def _drain(self) -> None:
        while self.spool.oldest() is not None or self._queue:
            if not await self._send_next(attempts=1):
                return

    async def _run(self) -> None:
        while True:
            if not self._queue and self.spool.oldest() is None:
                self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.flush_interval)
            while self.spool.oldest() is not None or self._queue:
                if not await self._send_next(ATTEMPTS):
                    # Away: wait, longer each time, then try the oldest batch again.
                    self._down_since_attempt += 1
                    await self._sleep(
                        backoff.delay(
                            self._down_since_attempt, BACKOFF * 4, MAX_BACKOFF, self._jitter()
                        )
                    )
                    break
                self._down_since_attempt = 0
                if self.spool.oldest() is None and len(self._queue) < self.settings.batch_size:
                    break  # a partial batch waits for the flush interval

    async def _send_next(self, attempts: int) -> bool:
        """Send the oldest batch (spooled first); False when VictoriaLogs stayed away."""
        spooled = self.spool.oldest()
        if spooled is not None:
            if not await self._post(spooled.read(), attempts):
                return False
            self.shipped += spooled.lines
            self.spool.remove(spooled)
            return True
        batch = self._take(self.settings.batch_size)
        if not batch:
            return True
        self._in_flight = batch  # put back by close() if this send is cut short
        delivered = await self._post(b"".join(batch), attempts)
        self._in_flight = None
        if not delivered:
            self._spool(batch)
            return False
        self.shipped += len(batch)
        return True

    def _headers(self) -> dict[str, str]:
        return {"AccountID": self.settings.account_id, "ProjectID": self.settings.project_id}

    async def _post(self, body: bytes, attempts: int) -> bool:
        """POST one batch; True once VictoriaLogs took it (or rejected it for good)."""
        headers = {**self._headers(), "Content-Type": "application/stream+json"}
        lines = body.count(b"\n")
        if self.settings.gzip:
            body = gzip.compress(body, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        params = {
            "_msg_field": "message",
            "_time_field": "time",
            "_stream_fields": ",".join(self.settings.stream_fields),
        }
        for attempt in range(1, attempts + 1):
            try:
                response = await self._client.post(
                    "/insert/jsonline", content=body, params=params, headers=headers
                )
            except httpx.HTTPError as exc:
                self.failures += 1
                _log.warning(
                    "VictoriaLogs at %s: %s (attempt %d)", self.settings.base, exc, attempt
                )
            else:
                if response.is_success:
                    return True
                self.failures += 1
                if 400 <= response.status_code < 500 and response.status_code != 429:
                    self.rejected += lines
                    _log.error(
                        "VictoriaLogs at %s refused a batch (%d): %s",
                        self.settings.base,
                        response.status_code,
                        response.text[:200],
                    )
                    return True
                _log.warning(
                    "VictoriaLogs at %s answered %d (attempt %d)",
                    self.settings.base,
                    response.status_code,
                    attempt,
                )
            if attempt < attempts:
                await self._sleep(backoff.delay(attempt, BACKOFF, MAX_BACKOFF, self._jitter()))
        return False

    # -- querying -----------------------------------------------------------------------

    async def query(self, query: LogQuery) -> list[LogLine]:
        """Lines matching ``query``, from VictoriaLogs."""
        text = logsql.build(query)
        try:
            response = await self._client.post(
                "/select/logsql/query",
                data={"query": text, "limit": str(query.limit)},
                headers=self._headers(),
            )
        except httpx.HTTPError as exc:
            raise QueryFailed(
                f"VictoriaLogs at {self.settings.base} is unreachable: {exc}"
            ) from None
        if not response.is_success:
            raise QueryFailed(
                f"VictoriaLogs at {self.settings.base} answered {response.status_code}: "
                f"{response.text[:200]}"
            )
        out = []
        for raw in response.text.splitlines():
            if raw.strip():
                out.append(line_of(json.loads(raw)))
        return out
