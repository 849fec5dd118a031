"""A recording ``EngineControl`` for the API tests, over the real stores and a real config repo.

The real engine (``reconciler.engine.reconciling.Reconciler``) is being written beside
this; until it lands, the API is tested against this small implementation that keeps
the parts the API reads real — ``RunStore``, ``LogStore``, ``EventBus`` on a SQLite
``Database``, ``History`` and the ``DesiredState`` loaded from a Git config repo — and
records every action it is asked to do (``calls``), creating plain runs for deploys.

What it assumes of ``EngineControl`` (and so what the API relies on):

- ``deploy`` returns the created ``Run`` at once (the run proceeds in the background);
- run actions raise ``KeyError`` for unknown runs and ``PermanentError`` when the run is
  not in a state that allows the action;
- ``rollback`` returns a commit id (revert committed to Git) unless ``pin``, then a Run;
- the log stream of a run is named by the run id.

To run the same tests against the real engine, make the ``engine`` fixture in
``conftest.py`` build it instead; nothing else refers to this class.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler import errors
from reconciler.engine.bus import EventBus
from reconciler.errors import ConfigProblem
from reconciler.events import Event, EventType
from reconciler.gitops import model, planning
from reconciler.gitops.history import History
from reconciler.gitops.loading import Loader
from reconciler.gitops.planning import DeployedRecord, Plan
from reconciler.gitops.repository import GitRepository
from reconciler.log.store import LogStore
from reconciler.runs import Run, RunState, Step, StepStatus, Trigger
from reconciler.store.database import Database
from reconciler.store.runs import RunStore


@dataclass(frozen=True)
class Call:
    """One action the API asked of the engine."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class RecordingEngine:
    """EngineControl over real stores; records actions, starts no real deployment."""

    def __init__(self, db: Database, repo_path: Path):
        self.db = db
        self.runs = RunStore(db)
        self.logs = LogStore(db)
        self.bus = EventBus()
        self.git = GitRepository.open(str(repo_path))
        self.history = History(self.git)
        self.loader = Loader(self.git)
        self._desired: model.DesiredState | None = self.loader.load().raise_for_problems()
        self._problems: tuple[ConfigProblem, ...] = ()
        self.calls: list[Call] = []
        self.fail_with: BaseException | None = None
        self._ids = itertools.count(1)

    # -- state ---------------------------------------------------------------------

    @property
    def desired(self) -> model.DesiredState | None:
        return self._desired

    @property
    def problems(self) -> tuple[ConfigProblem, ...]:
        return self._problems

    def deployed(self) -> dict[tuple[str, str], DeployedRecord]:
        return self.history.deployed()[1]

    def plan(self) -> Plan:
        assert self._desired is not None
        state_commit, records = self.history.deployed()
        return planning.plan(self._desired, records, state_commit=state_commit)

    def reload(self) -> None:
        """Load the config repo's HEAD again (tests commit, then reload)."""
        self._desired = self.loader.load().raise_for_problems()

    def calls_named(self, name: str) -> list[Call]:
        return [c for c in self.calls if c.name == name]

    # -- actions -------------------------------------------------------------------

    def _record(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.calls.append(Call(name, args, kwargs))
        if self.fail_with is not None:
            raise self.fail_with

    async def reconcile_now(self, reason: str) -> None:
        self._record("reconcile_now", reason)

    async def deploy(
        self,
        project: str,
        env: str,
        version: str | None,
        *,
        actor: model.User | None,
        trigger: Trigger,
        force: bool = False,
        detail: dict[str, str] | None = None,
    ) -> Run:
        self._record(
            "deploy",
            project,
            env,
            version,
            actor=actor,
            trigger=trigger,
            force=force,
            detail=detail,
        )
        assert self._desired is not None
        environment = self._desired.environment(project, env)
        if environment is None:
            raise KeyError(f"environment {project}/{env} does not exist")
        return self.add_run(
            project,
            env,
            version or environment.version,
            trigger=trigger,
            actor=actor.username if actor else "",
            detail=detail or {},
        )

    def add_run(
        self,
        project: str,
        env: str,
        version: str,
        *,
        state: RunState = RunState.RUNNING,
        trigger: Trigger = Trigger.MANUAL,
        actor: str = "",
        steps: tuple[tuple[str, StepStatus], ...] = (),
        detail: dict[str, Any] | None = None,
    ) -> Run:
        """Create a run directly (and its steps), as the engine would."""
        assert self._desired is not None
        environment = self._desired.environment(project, env)
        run = Run(
            id=f"run-{next(self._ids):04d}",
            project=project,
            env=env,
            version=version,
            config_commit=self._desired.commit,
            config_hash=environment.config_hash if environment else "",
            trigger=trigger,
            state=state,
            actor=actor,
            strategy=environment.strategy.type.value if environment else "",
            created_at=_now(),
            started_at=_now(),
            detail=detail or {},
        )
        self.runs.create(run)
        for key, status in steps:
            self.runs.put_step(Step(run.id, key, status, started_at=_now(), attempts=1))
        self.bus.publish(Event(EventType.RUN_STARTED, _now(), run.id, project, env, version))
        return run

    def set_state(self, run_id: str, state: RunState) -> Run:
        run = self.runs.get(run_id)
        if run is None:
            raise KeyError(f"run {run_id} does not exist")
        updated = self.runs.save(
            replace(run, state=state, finished_at=_now() if state.is_final else "")
        )
        self.bus.publish(
            Event(
                EventType.RUN_WAITING if state.is_waiting else EventType.RUN_STARTED,
                _now(),
                run.id,
                run.project,
                run.env,
                run.version,
            )
        )
        return updated

    def _transition(self, run_id: str, allowed: tuple[RunState, ...], to: RunState) -> Run:
        run = self.runs.get(run_id)
        if run is None:
            raise KeyError(f"run {run_id} does not exist")
        if run.state not in allowed:
            raise errors.PermanentError(f"run {run_id} is {run.state.value}")
        return self.set_state(run_id, to)

    async def approve(self, run_id: str, actor: model.User, comment: str = "") -> Run:
        self._record("approve", run_id, actor=actor, comment=comment)
        return self._transition(run_id, (RunState.WAITING_APPROVAL,), RunState.RUNNING)

    async def reject(self, run_id: str, actor: model.User, comment: str = "") -> Run:
        self._record("reject", run_id, actor=actor, comment=comment)
        return self._transition(run_id, (RunState.WAITING_APPROVAL,), RunState.CANCELLED)

    async def promote(self, run_id: str, actor: model.User) -> Run:
        self._record("promote", run_id, actor=actor)
        return self._transition(
            run_id, (RunState.RUNNING, RunState.WAITING_APPROVAL), RunState.RUNNING
        )

    async def cancel(self, run_id: str, actor: model.User) -> Run:
        self._record("cancel", run_id, actor=actor)
        return self._transition(
            run_id, tuple(s for s in RunState if not s.is_final), RunState.CANCELLED
        )

    async def rollback(
        self,
        project: str,
        env: str,
        *,
        actor: model.User | None,
        to_version: str | None = None,
        pin: bool = False,
    ) -> Run | str:
        self._record("rollback", project, env, actor=actor, to_version=to_version, pin=pin)
        if pin:
            return self.add_run(
                project,
                env,
                to_version or "previous",
                trigger=Trigger.ROLLBACK,
                actor=actor.username if actor else "",
            )
        return "0123456789abcdef0123456789abcdef01234567"
