"""Retiring the old color of a blue-green release once its rollback window is over.

A blue-green run that switched traffic keeps the old color running for the
environment's ``rollback_window`` (the run records ``retire_due`` and
``retire_color``), so switching back is instant. Each pass, ``Retirer.retire_due``
asks the driver to retire the colors whose window has passed, on every target, and
notes the result on the run. A newer release of the environment owns the targets by
then and retires what it replaced itself, so an older run is only marked superseded.

A color is never stopped under a run that deploys onto it or switches to it: while a
newer run of the environment is executing or waiting (here, or — holding the
environment's claim — in another reconciler), retirement waits; it holds the claim
itself while it stops the color, so no run starts meanwhile; and it only retires when
the state ref still names this run as the release in force and another color as the
one serving (a release recorded by another data dir supersedes it).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection
from pathlib import Path

from reconciler.drivers import StepFailed, for_deploy, targets_of
from reconciler.engine.claiming import Claimer
from reconciler.engine.running import ContextFactory, iso
from reconciler.errors import QuicFlowError
from reconciler.gitops import model
from reconciler.gitops.planning import DeployedRecord
from reconciler.log.store import LogStore
from reconciler.runs import Run, RunState
from reconciler.store.runs import RunStore

#: States of a newer run that may deploy onto, or switch to, the color due for retirement.
_BUSY = frozenset({RunState.PENDING, RunState.RUNNING}) | {
    state for state in RunState if state.is_waiting
}


class Retirer:
    """Retires old blue-green colors whose rollback window has passed (driver ``retire``)."""

    def __init__(
        self,
        runs: RunStore,
        logs: LogStore,
        *,
        now: Callable[[], dt.datetime],
        desired: Callable[[], model.DesiredState | None],
        context: ContextFactory,
        data_dir: Path,
        executing: Callable[[], Collection[tuple[str, str]]] = frozenset,
        record: Callable[[str, str], DeployedRecord | None] | None = None,
        claims: Claimer | None = None,
    ):
        self.runs = runs
        self.logs = logs
        self.now = now
        self.desired = desired
        self.context = context
        self.data_dir = data_dir
        self.executing = executing  # the environments a run of this process executes in
        self.record = record  # the state ref's record of an environment
        self.claims = claims

    async def retire_due(self, wanted: Callable[[str, str], bool]) -> None:
        """Retire what is due in the environments ``wanted(project, env)`` selects."""
        now = self.now()
        desired = self.desired()
        found, _ = self.runs.list(states=[RunState.SUCCEEDED], limit=200)
        for run in found:
            due = run.detail.get("retire_due")
            color = run.detail.get("retire_color")
            if (
                not due
                or not color
                or run.detail.get("retired")
                or not wanted(run.project, run.env)
            ):
                continue
            if dt.datetime.fromisoformat(str(due).replace("Z", "+00:00")) > now:
                continue
            env = desired.environment(run.project, run.env) if desired else None
            latest, _ = self.runs.list(run.project, run.env, states=[RunState.SUCCEEDED], limit=1)
            if env is None or desired is None or (latest and latest[0].id != run.id):
                # A newer release owns the environment now; it retires what it replaced.
                self.runs.update(run, detail={**run.detail, "retired": "superseded"})
                continue
            if self._newer_run_busy(run):
                continue  # it may be deploying onto this very color: look again next pass
            if self.claims is None:
                await self._retire_now(run, env, desired, str(color), now)
                continue
            async with self.claims.holding(run.key, f"retire:{run.id}") as held_elsewhere:
                if held_elsewhere:
                    continue  # another reconciler is deploying here: not now
                await self._retire_now(run, env, desired, str(color), now)

    def _newer_run_busy(self, run: Run) -> bool:
        """Whether a run newer than ``run`` executes or waits in its environment (here)."""
        if run.key in self.executing():
            return True
        active, _ = self.runs.list(run.project, run.env, states=list(_BUSY), limit=20)
        return any(other.id != run.id and other.created_at >= run.created_at for other in active)

    async def _retire_now(
        self,
        run: Run,
        env: model.Environment,
        desired: model.DesiredState,
        color: str,
        now: dt.datetime,
    ) -> None:
        # Under the claim: what the state ref says now is what holds (another data dir's
        # release is in it, and no one can move it on meanwhile).
        record = self.record(run.project, run.env) if self.record else None
        if record is not None and record.run_id and record.run_id != run.id:
            why = f"superseded: run {record.run_id} is the release in force (state ref)"
            self.runs.update(run, detail={**run.detail, "retired": "superseded"})
            self.logs.append(run.id, [(iso(now), "engine", "system", f"not retired: {why}")])
            return
        if record is not None and record.color == color:
            why = f"the state ref names {color} as the color serving"
            self.runs.update(run, detail={**run.detail, "retired": "superseded"})
            self.logs.append(run.id, [(iso(now), "engine", "system", f"not retired: {why}")])
            return
        notes = await self._retire(run, env, desired, color)
        self.runs.update(run, detail={**run.detail, "retired": iso(now), "retire_notes": notes})
        line = f"rollback window over: old color {color} retired ({notes})"
        self.logs.append(run.id, [(iso(now), "engine", "system", line)])

    async def _retire(
        self, run: Run, env: model.Environment, desired: model.DesiredState, color: str
    ) -> str:
        """Retire ``color`` on every target of ``env``; what happened, for the run's notes."""
        project = desired.projects[env.project]
        driver = for_deploy(env.deploy, env.strategy, project.repo.url if project.repo else None)
        try:
            ctx = await self.context(run, env, desired, build=False)
        except QuicFlowError as exc:
            return f"not retired: {exc}"
        failed = []
        for target in targets_of(env, desired, self.data_dir):
            try:
                await driver.retire(ctx, target, color)
            except (StepFailed, QuicFlowError) as exc:
                failed.append(f"{target.name}: {exc}")
        return "; ".join(failed) if failed else "all targets"
