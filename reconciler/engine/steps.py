"""The resumable step machine: every step of a run has a key and a recorded outcome.

``Steps.once(key, fn)`` runs ``fn`` only if the step is not already recorded as done,
records its result, and returns it — so a run replayed after a restart, an approval or
a pause skips straight past everything it already did and never repeats a finished
step. Steps are idempotent by key.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

from reconciler.runs import Step, StepStatus
from reconciler.store.runs import RunStore

Clock = Callable[[], str]


class Steps:
    """Keyed, recorded steps of one run."""

    def __init__(self, store: RunStore, run_id: str, now: Clock):
        self.store = store
        self.run_id = run_id
        self.now = now

    def get(self, key: str) -> Step | None:
        return self.store.step(self.run_id, key)

    def is_done(self, key: str) -> bool:
        step = self.get(key)
        return step is not None and step.status.is_done

    async def once(
        self, key: str, fn: Callable[[], Awaitable[Mapping[str, Any] | None]]
    ) -> Mapping[str, Any]:
        """Run ``fn`` unless ``key`` already succeeded; record the outcome either way."""
        existing = self.get(key)
        if existing is not None and existing.status.is_done:
            return existing.result
        started = self.now()
        attempts = (existing.attempts if existing else 0) + 1
        step = Step(self.run_id, key, StepStatus.RUNNING, started, attempts=attempts)
        self.store.put_step(step)
        try:
            result = dict(await fn() or {})
        except BaseException as exc:
            self.store.put_step(
                replace(
                    step,
                    status=StepStatus.FAILED,
                    finished_at=self.now(),
                    error=str(exc) or type(exc).__name__,
                )
            )
            raise
        self.store.put_step(
            replace(step, status=StepStatus.SUCCEEDED, finished_at=self.now(), result=result)
        )
        return result

    def mark(
        self, key: str, status: StepStatus, result: Mapping[str, Any] | None = None, error: str = ""
    ) -> None:
        existing = self.get(key)
        started = existing.started_at if existing else self.now()
        self.store.put_step(
            Step(
                self.run_id,
                key,
                status,
                started,
                self.now(),
                existing.attempts if existing else 0,
                dict(result or {}),
                error,
            )
        )
