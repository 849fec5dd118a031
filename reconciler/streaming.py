"""Server-sent events of runs and logs: the text a live client is sent, without HTTP.

``log_events`` follows a run's (or build's) stored log lines: each ``lines`` event
carries the lines stored so far that the client has not had (a JSON array, up to a
page of them) and its ``id`` is the sequence number of the last, so a client that
reconnects with ``Last-Event-ID`` (parsed by ``last_event_id``) resumes without losing
or repeating a line — an event cut off by a dropped connection is never dispatched, so
its lines come again whole. ``run_events`` sends a run's view again whenever it
changes; ``snapshot_events`` sends any snapshot (the status page's overview) whenever
it changes. They send a comment when idle (a proxy keeps the
connection, a gone client is noticed) and end when ``Streams.close()`` is called, so a
shutdown never waits on a follower.

It lives beside the engine rather than in ``reconciler.log`` because it needs the
engine's run store and event bus as much as its log store. What it must not do: see
HTTP — it imports no web framework and reads no request; ``reconciler.api.routes``
wraps these generators in a streaming response — or decide what a run looks like (the
caller passes the view builder).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from reconciler.log.store import FOLLOW_PAGE

if TYPE_CHECKING:
    from reconciler.engine.control import EngineControl
    from reconciler.events import Event
    from reconciler.runs import Run, Step
    from reconciler.store.logs import EncodedLines

HEARTBEAT_SECONDS = 15.0
T = TypeVar("T")


class Streams:
    """Live (SSE) responses in flight, so shutdown can end them instead of waiting."""

    def __init__(self) -> None:
        self.closing = asyncio.Event()

    def close(self) -> None:
        """End every live stream (call before asking uvicorn to exit)."""
        self.closing.set()


def last_event_id(value: str | None) -> int:
    """Where a (resuming) client left off: a ``Last-Event-ID`` value, 0 when absent.

    Raises ValueError when ``value`` is not a sequence number.
    """
    return max(int(value or "0"), 0)


async def _with_heartbeat(
    source: AsyncIterator[T], closing: asyncio.Event, every: float = HEARTBEAT_SECONDS
) -> AsyncIterator[T | None]:
    """Items of ``source``; None after ``every`` idle seconds; stops when ``closing`` is set."""
    stop: asyncio.Future[Any] = asyncio.ensure_future(closing.wait())
    pending: asyncio.Future[Any] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(source))  # type: ignore[arg-type]
            done, _ = await asyncio.wait(
                {pending, stop}, timeout=every, return_when=asyncio.FIRST_COMPLETED
            )
            if stop in done:
                return
            if pending in done:
                try:
                    item = pending.result()
                except StopAsyncIteration:
                    return
                pending = None
                yield item
            else:
                yield None  # idle: a comment keeps proxies from timing out, and reveals a gone client
    finally:
        stop.cancel()
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def log_events(
    engine: EngineControl,
    run_id: str,
    after: int,
    closing: asyncio.Event,
    heartbeat: float = HEARTBEAT_SECONDS,
    page: int = FOLLOW_PAGE,
) -> AsyncIterator[str]:
    """SSE of a run's log lines from ``after`` on: ``lines`` events, ``id:`` the last's number."""
    yield "retry: 2000\n\n"
    # Many lines to an event, encoded by the database: an event, a dataclass, a dict and
    # an encoder call per line cost a follower five times as much CPU.
    pages: AsyncIterator[EncodedLines] = engine.logs.follow_json(run_id, after, page=page)
    async for found in _with_heartbeat(pages, closing, heartbeat):
        if found is None:
            yield ": keep-alive\n\n"
            continue
        yield f"id: {found.last_seq}\nevent: lines\ndata: {found.json}\n\n"
    if engine.logs.is_closed(run_id):
        yield _sse("end", {"run_id": run_id})


async def run_events(
    engine: EngineControl,
    run_id: str,
    closing: asyncio.Event,
    view: Callable[[Run, Iterable[Step]], dict[str, Any]],
    poll: float = 2.0,
) -> AsyncIterator[str]:
    """SSE of a run's ``view`` whenever it changes (bus events wake it; a poll bounds the wait)."""
    changed = asyncio.Event()

    async def on_event(event: Event) -> None:
        if event.run_id == run_id:
            changed.set()

    unsubscribe = engine.bus.subscribe(on_event)
    stop = asyncio.ensure_future(closing.wait())
    try:
        yield "retry: 2000\n\n"
        last = ""
        while True:
            run = engine.runs.get(run_id)
            if run is None:
                return
            text = json.dumps(
                view(run, engine.runs.steps(run_id)), separators=(",", ":"), sort_keys=True
            )
            if text != last:
                last = text
                yield f"event: run\ndata: {text}\n\n"
            else:
                yield ": keep-alive\n\n"
            if run.state.is_final:
                return
            changed.clear()
            wake = asyncio.ensure_future(changed.wait())
            await asyncio.wait({wake, stop}, timeout=poll, return_when=asyncio.FIRST_COMPLETED)
            wake.cancel()
            if stop.done():
                return
    finally:
        stop.cancel()
        unsubscribe()


async def snapshot_events(
    engine: EngineControl,
    closing: asyncio.Event,
    snapshot: Callable[[], Any],
    event: str = "snapshot",
    poll: float = 5.0,
    settle: float = 0.2,
) -> AsyncIterator[str]:
    """SSE of ``snapshot()`` (any JSON value) whenever it changes: every bus event wakes
    it, ``settle`` seconds gather a burst of events into one look, and a ``poll`` bounds
    the wait (for changes no event announces: a config commit, the clock's "3 h ago")."""
    changed = asyncio.Event()

    async def on_event(_: Event) -> None:
        changed.set()

    unsubscribe = engine.bus.subscribe(on_event)
    stop = asyncio.ensure_future(closing.wait())
    try:
        yield "retry: 2000\n\n"
        last = ""
        while True:
            text = json.dumps(snapshot(), separators=(",", ":"), sort_keys=True)
            if text != last:
                last = text
                yield f"event: {event}\ndata: {text}\n\n"
            else:
                yield ": keep-alive\n\n"
            changed.clear()
            wake = asyncio.ensure_future(changed.wait())
            await asyncio.wait({wake, stop}, timeout=poll, return_when=asyncio.FIRST_COMPLETED)
            wake.cancel()
            if stop.done():
                return
            if changed.is_set():
                await asyncio.wait({stop}, timeout=settle)
                if stop.done():
                    return
    finally:
        stop.cancel()
        unsubscribe()
