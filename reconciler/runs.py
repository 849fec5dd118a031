"""Runs and their steps: the vocabulary of the engine's state, as frozen values.

A run deploys one version of one project/environment. Its progress is a list of
steps, each keyed by a typed ``StepKey`` (stored as text: ``stage:release``,
``task:release/deploy``, ``deploy:web-1@green``, ``switch``, …) and recorded with an
outcome, so a restarted engine can continue a run and never repeat a finished step.
``carried_over`` says which steps of an interrupted run still hold for the run that
replaces it. Pure data: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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


class StepKind(StrEnum):
    """What a step does; the part of its key before the colon."""

    STAGE = "stage"  # a pipeline stage (its tasks are steps of their own)
    TASK = "task"  # a task of a stage: ``stage/task``
    ON_TARGET = "on"  # one target's share of an ``on: targets`` task: ``stage/task/target``
    APPROVAL = "approval"  # a stage's approval gate
    DEPLOY = "deploy"  # the driver's deploy on one target (``@color`` for blue-green)
    VERIFY = "verify"  # its health check
    BATCH = "batch"  # a rolling batch finished
    ANALYSIS = "analysis"  # a canary step's analysis window
    PROMOTE = "promote"  # a canary step's manual promotion gate
    PAUSE = "pause"  # a timed pause between batches or canary steps
    SWITCH = "switch"  # the blue-green traffic switch
    ROLLBACK = "rollback"  # the auto-rollback of one target
    RETIRE = "retire"  # stopping one target's colour


#: Steps that change what runs on targets (or observe it): the rollout of a deploy task.
ROLLOUT_KINDS = frozenset(
    {
        StepKind.DEPLOY,
        StepKind.VERIFY,
        StepKind.BATCH,
        StepKind.ANALYSIS,
        StepKind.PROMOTE,
        StepKind.PAUSE,
        StepKind.SWITCH,
        StepKind.ROLLBACK,
        StepKind.RETIRE,
    }
)
#: Steps that undo a rollout's deploys: once one has started, those deploys no longer hold.
UNDOING_KINDS = frozenset({StepKind.ROLLBACK, StepKind.RETIRE})


@dataclass(frozen=True, slots=True, order=True)
class StepKey:
    """A step's typed key: its kind, its name and (blue-green) the colour it acts on."""

    kind: StepKind
    name: str = ""
    color: str = ""

    def __str__(self) -> str:
        text = f"{self.kind.value}:{self.name}" if self.name else self.kind.value
        return f"{text}@{self.color}" if self.color else text

    @classmethod
    def parse(cls, text: str) -> StepKey:
        """The key stored as ``text`` (ValueError for a kind this version does not know)."""
        head, _, color = text.partition("@")
        kind, _, name = head.partition(":")
        return cls(StepKind(kind), name, color)

    @classmethod
    def stage(cls, stage: str) -> StepKey:
        return cls(StepKind.STAGE, stage)

    @classmethod
    def task(cls, stage: str, task: str) -> StepKey:
        return cls(StepKind.TASK, f"{stage}/{task}")

    @classmethod
    def on_target(cls, stage: str, task: str, target: str) -> StepKey:
        return cls(StepKind.ON_TARGET, f"{stage}/{task}/{target}")

    @classmethod
    def approval(cls, stage: str) -> StepKey:
        return cls(StepKind.APPROVAL, stage)

    @classmethod
    def deploy(cls, target: str, color: str | None = None) -> StepKey:
        return cls(StepKind.DEPLOY, target, color or "")

    @classmethod
    def verify(cls, target: str, color: str | None = None) -> StepKey:
        return cls(StepKind.VERIFY, target, color or "")

    @classmethod
    def rollback(cls, target: str) -> StepKey:
        return cls(StepKind.ROLLBACK, target)

    @classmethod
    def retire(cls, target: str, color: str) -> StepKey:
        return cls(StepKind.RETIRE, target, color)

    @classmethod
    def numbered(cls, kind: StepKind, number: int | str) -> StepKey:
        """A batch, analysis, promotion or pause step: ``batch:2``, ``pause:batch-1``."""
        return cls(kind, str(number))

    @classmethod
    def switch(cls) -> StepKey:
        return cls(StepKind.SWITCH)


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


def carried_over(
    steps: Iterable[Step], decisions: Iterable[Decision] = ()
) -> tuple[list[Step], list[Decision]]:
    """The steps and decisions of an interrupted run that still hold for its successor.

    Finished steps carry over, and so do the decisions people took on its gates, so an
    approval given before the crash is not asked for again. Steps still running when
    the process died carry over as running: the new run waits only for the rest of a
    timed pause, and re-issues a command that was in flight under the name it had
    (``in_flight_of``), so an executor that journals commands hands back its result or
    adopts the process instead of running it twice. A rollout that began to be
    undone (a rollback or a retirement started, finished or not) no longer holds at
    all: none of its steps carry over, nor the promotions given to it, and the new run
    rolls out again from its first target, so it never reports a deploy that a rollback
    reverted. Keys this version does not know are dropped (their step runs again).
    """
    known: list[tuple[StepKey, Step]] = []
    for step in steps:
        try:
            known.append((StepKey.parse(step.key), step))
        except ValueError:
            continue
    undone = any(key.kind in UNDOING_KINDS for key, _ in known)
    carried = []
    for key, step in known:
        if undone and key.kind in ROLLOUT_KINDS:
            continue
        if step.status.is_done or step.status is StepStatus.RUNNING:
            carried.append(step)
    kept = [
        d for d in decisions if not (undone and d.gate.startswith(f"{StepKind.PROMOTE.value}:"))
    ]
    return carried, kept
