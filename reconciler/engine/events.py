"""Typed run events and the in-process bus that history, alerts, metrics and live views read.

Publishing never blocks the engine on a slow subscriber: each subscriber has its own
bounded queue drained by its own task; a subscriber that falls too far behind loses
the oldest events and is told how many (``Event.dropped`` on the next one it gets).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

_log = logging.getLogger(__name__)


class EventType(StrEnum):
    RUN_STARTED = "run_started"
    RUN_SUCCEEDED = "run_succeeded"
    RUN_FAILED = "run_failed"
    RUN_CANCELLED = "run_cancelled"
    RUN_WAITING = "run_waiting"
    STAGE_STARTED = "stage_started"
    STAGE_SUCCEEDED = "stage_succeeded"
    STAGE_FAILED = "stage_failed"
    TASK_STARTED = "task_started"
    TASK_SUCCEEDED = "task_succeeded"
    TASK_FAILED = "task_failed"
    TASK_TIMED_OUT = "task_timed_out"
    APPROVAL_REQUESTED = "approval_requested"
    APPROVED = "approved"
    REJECTED = "rejected"
    CANARY_STEP = "canary_step"
    CANARY_FAILED = "canary_failed"
    ROLLED_BACK = "rolled_back"
    DEPLOY_FAILED = "deploy_failed"
    DEPLOY_TIMEOUT = "deploy_timeout"
    BUILD_SUCCEEDED = "build_succeeded"
    BUILD_FAILED = "build_failed"

    @property
    def is_failure(self) -> bool:
        return self in _FAILURES


_FAILURES = frozenset(
    {
        EventType.RUN_FAILED,
        EventType.STAGE_FAILED,
        EventType.TASK_FAILED,
        EventType.TASK_TIMED_OUT,
        EventType.CANARY_FAILED,
        EventType.ROLLED_BACK,
        EventType.DEPLOY_FAILED,
        EventType.DEPLOY_TIMEOUT,
        EventType.BUILD_FAILED,
    }
)


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened to a run (or a build). ``data`` holds masked, JSON-able details."""

    type: EventType
    at: str
    run_id: str = ""
    project: str = ""
    env: str = ""
    version: str = ""
    stage: str = ""
    task: str = ""
    target: str = ""
    error: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)
    dropped: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "type": self.type.value,
            "at": self.at,
            "run_id": self.run_id,
            "project": self.project,
            "env": self.env,
            "version": self.version,
            "stage": self.stage,
            "task": self.task,
            "target": self.target,
            "error": self.error,
            "data": dict(self.data),
        }


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
