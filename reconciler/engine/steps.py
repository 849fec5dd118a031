"""The resumable step machine: every step of a run has a typed key and a recorded outcome.

``Steps.once(key, fn)`` runs ``fn`` only if the step is not already recorded as done,
records its result, and returns it — so a run replayed after a restart, an approval or
a pause skips straight past everything it already did and never repeats a finished
step. Steps are idempotent by key. A step that has to wait for a person (``Waiting``)
is recorded as waiting, not failed; a timed pause is a step whose start is kept, so a
run resumed in the middle of a pause waits only for the rest of it.
"""

from __future__ import annotations

import contextvars
import datetime as dt
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

from reconciler.errors import PermanentError
from reconciler.log import scopes
from reconciler.runs import Step, StepKey, StepStatus
from reconciler.store.runs import RunStore

Clock = Callable[[], str]

#: The step the running coroutine works for — its key, attempt, and the run that issued
#: the attempt's commands: commands are named after it, so a run resuming a step that
#: was in flight asks the target for the same commands again (and gets the journalled
#: result, or the still running process) instead of running them twice.
current_step: contextvars.ContextVar[tuple[str, int, str] | None] = contextvars.ContextVar(
    "current_step", default=None
)


class Waiting(Exception):  # noqa: N818 - a control-flow signal, not an error
    """The run must pause: for an approval, a manual promotion or a release window."""

    def __init__(self, state: str, gate: str, reason: str, detail: dict[str, Any] | None = None):
        super().__init__(reason)
        self.state = state
        self.gate = gate
        self.reason = reason
        self.detail = detail or {}


class Rejected(PermanentError):
    """A person rejected a gate (an approval, a canary promotion): the run ends, undone.

    Not a deploy failure: no ``deploy_failed``/``canary_failed`` event is raised for it
    (the ``rejected`` event was, when the decision was taken).
    """


class Steps:
    """Keyed, recorded steps of one run."""

    def __init__(self, store: RunStore, run_id: str, now: Clock):
        self.store = store
        self.run_id = run_id
        self.now = now

    def get(self, key: StepKey) -> Step | None:
        return self.store.step(self.run_id, str(key))

    def is_done(self, key: StepKey) -> bool:
        step = self.get(key)
        return step is not None and step.status.is_done

    def all(self) -> list[Step]:
        """Every recorded step of the run, in the order they were first recorded."""
        return self.store.steps(self.run_id)

    async def once(
        self, key: StepKey, fn: Callable[[], Awaitable[Mapping[str, Any] | None]]
    ) -> Mapping[str, Any]:
        """Run ``fn`` unless ``key`` already succeeded; record the outcome either way."""
        existing = self.get(key)
        if existing is not None and existing.status.is_done:
            return existing.result
        started = self.now()
        origin = existing.result.get("in_flight_of") if existing else None
        if existing is not None and existing.status is StepStatus.RUNNING and origin:
            # In flight when the run this one resumes died: the same attempt, re-issued.
            attempts, issuer = existing.attempts, str(origin)
        else:
            attempts, issuer = (existing.attempts if existing else 0) + 1, self.run_id
        step = Step(self.run_id, str(key), StepStatus.RUNNING, started, attempts=attempts)
        self.store.put_step(step)
        token = current_step.set((str(key), attempts, issuer))
        try:
            with scopes.entered(str(key)):  # log lines written inside name their stage/task/target
                result = dict(await fn() or {})
        except Waiting as wait:
            # Paused for a person or a window: the step resumes later, it did not fail.
            self.store.put_step(replace(step, status=StepStatus.WAITING, error=wait.reason))
            raise
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
        finally:
            current_step.reset(token)
        self.store.put_step(
            replace(step, status=StepStatus.SUCCEEDED, finished_at=self.now(), result=result)
        )
        return result

    async def pause(
        self, key: StepKey, seconds: float, sleep: Callable[[float], Awaitable[Any]]
    ) -> None:
        """Pause for ``seconds`` as a step: counted from its first start, done once."""
        existing = self.get(key)
        if existing is not None and existing.status.is_done:
            return
        started = existing.started_at if existing and existing.started_at else self.now()
        step = Step(
            self.run_id,
            str(key),
            StepStatus.RUNNING,
            started,
            attempts=(existing.attempts if existing else 0) + 1,
            result={"seconds": seconds},
        )
        self.store.put_step(step)
        elapsed = (_parse(self.now()) - _parse(started)).total_seconds()
        await sleep(max(0.0, seconds - max(0.0, elapsed)))
        self.store.put_step(
            replace(
                step,
                status=StepStatus.SUCCEEDED,
                finished_at=self.now(),
                result={"paused": seconds},
            )
        )

    def mark(
        self,
        key: StepKey,
        status: StepStatus,
        result: Mapping[str, Any] | None = None,
        error: str = "",
    ) -> None:
        existing = self.get(key)
        started = existing.started_at if existing else self.now()
        ended = status not in (StepStatus.RUNNING, StepStatus.WAITING)
        self.store.put_step(
            Step(
                self.run_id,
                str(key),
                status,
                started,
                self.now() if ended else "",
                existing.attempts if existing else 0,
                dict(result or {}),
                error,
            )
        )


def _parse(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
