"""The in-process event bus that history, alerts, metrics and live views read.

Publishing never blocks the engine on a slow subscriber: each subscriber has its own
bounded queue drained by its own task; a subscriber that falls too far behind loses
the oldest events and is told how many (``Event.dropped`` on the next one it gets).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace

from reconciler.events import Event

_log = logging.getLogger(__name__)


Handler = Callable[[Event], Awaitable[None]]


class _Subscriber:
    def __init__(self, handler: Handler, maxsize: int):
        self.handler = handler
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.dropped = 0
        self.task: asyncio.Task[None] | None = None

    async def drain(self) -> None:
        while True:
            event = await self.queue.get()
            try:
                await self.handler(event)
            except Exception:  # noqa: BLE001 - one broken subscriber must not stop the others
                _log.exception("event subscriber failed on %s", event.type)
            finally:
                self.queue.task_done()


class EventBus:
    """Fan-out of events to async subscribers, each with its own queue and task."""

    def __init__(self, maxsize: int = 10_000):
        self._maxsize = maxsize
        self._subscribers: list[_Subscriber] = []

    def subscribe(self, handler: Handler) -> Callable[[], None]:
        """Call ``handler`` for every event from now on; returns an unsubscribe function."""
        sub = _Subscriber(handler, self._maxsize)
        self._subscribers.append(sub)

        def unsubscribe() -> None:
            if sub in self._subscribers:
                self._subscribers.remove(sub)
            if sub.task is not None:
                sub.task.cancel()

        return unsubscribe

    def publish(self, event: Event) -> None:
        """Queue ``event`` for every subscriber (never blocks)."""
        for sub in list(self._subscribers):
            if sub.task is None:
                sub.task = asyncio.get_running_loop().create_task(sub.drain())
            if sub.queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    sub.queue.get_nowait()
                    sub.queue.task_done()
                sub.dropped += 1
            delivered = event
            if sub.dropped:
                delivered = replace(event, dropped=sub.dropped)
                sub.dropped = 0
            sub.queue.put_nowait(delivered)

    async def drain(self) -> None:
        """Wait until every queued event has been handled (tests, shutdown)."""
        for sub in list(self._subscribers):
            await sub.queue.join()

    async def close(self) -> None:
        await self.drain()
        for sub in self._subscribers:
            if sub.task is not None:
                sub.task.cancel()
        self._subscribers.clear()
