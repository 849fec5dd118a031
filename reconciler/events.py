"""The event vocabulary: what happened to a run, as typed, frozen values.

A leaf module: history, alerts, metrics and live views read these; the asyncio bus
that carries them lives in ``reconciler.engine.bus``. No I/O, no asyncio.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class EventType(StrEnum):
    RUN_STARTED = "run_started"
    RUN_SUCCEEDED = "run_succeeded"
    RUN_FAILED = "run_failed"
    RUN_CANCELLED = "run_cancelled"
    RUN_WAITING = "run_waiting"
    RUN_SUPERSEDED = "run_superseded"  # a waiting run Git moved on from
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
