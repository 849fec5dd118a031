"""Runs and their steps: the vocabulary of the engine's state, as frozen values.

A run deploys one version of one project/environment. Its progress is a list of
steps, each keyed (``stage:release``, ``task:release/deploy``, ``deploy:web-1``, …) and
recorded with an outcome, so a restarted engine can continue a run and never repeat
a finished step. Pure data: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class RunState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING_APPROVAL = "waiting_approval"
    WAITING_WINDOW = "waiting_window"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ROLLED_BACK = "rolled_back"
    INTERRUPTED = "interrupted"
    SUPERSEDED = "superseded"

    @property
    def is_final(self) -> bool:
        return self in _FINAL

    @property
    def is_waiting(self) -> bool:
        return self in (RunState.WAITING_APPROVAL, RunState.WAITING_WINDOW)


_FINAL = frozenset(
    {
        RunState.SUCCEEDED,
        RunState.FAILED,
        RunState.CANCELLED,
        RunState.ROLLED_BACK,
        RunState.INTERRUPTED,
        RunState.SUPERSEDED,
    }
)


class Trigger(StrEnum):
    POLL = "poll"
    WEBHOOK = "webhook"
    SCHEDULE = "schedule"
    MANUAL = "manual"
    ROLLBACK = "rollback"


class StepStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    WAITING = "waiting"

    @property
    def is_done(self) -> bool:
        return self in (StepStatus.SUCCEEDED, StepStatus.SKIPPED)


@dataclass(frozen=True, slots=True)
class Run:
    """One deployment of a version to a project/environment."""

    id: str
    project: str
    env: str
    version: str
    config_commit: str
    config_hash: str
    trigger: Trigger
    state: RunState = RunState.PENDING
    previous_version: str | None = None
    actor: str = ""
    strategy: str = ""
    created_at: str = ""
    started_at: str = ""
    finished_at: str = ""
    error: str = ""
    forced: bool = False
    resumes: str = ""
    detail: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.project, self.env)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "project": self.project,
            "environment": self.env,
            "version": self.version,
            "previous_version": self.previous_version,
            "config_commit": self.config_commit,
            "config_hash": self.config_hash,
            "trigger": self.trigger.value,
            "state": self.state.value,
            "actor": self.actor,
            "strategy": self.strategy,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "error": self.error,
            "forced": self.forced,
            "resumes": self.resumes,
            "detail": dict(self.detail),
        }


@dataclass(frozen=True, slots=True)
class Step:
    """The recorded outcome of one keyed step of a run."""

    run_id: str
    key: str
    status: StepStatus
    started_at: str = ""
    finished_at: str = ""
    attempts: int = 0
    result: Mapping[str, Any] = field(default_factory=dict)
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "status": self.status.value,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "attempts": self.attempts,
            "result": dict(self.result),
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class Decision:
    """An approval or rejection of a run's gate by a user."""

    run_id: str
    gate: str
    approved: bool
    user: str
    at: str
    comment: str = ""
