"""Retiring the old color of a blue-green release once its rollback window is over.

A blue-green run that switched traffic keeps the old color running for the
environment's ``rollback_window`` (the run records ``retire_due`` and
``retire_color``), so switching back is instant. Each pass, ``Retirer.retire_due``
asks the driver to retire the colors whose window has passed, on every target, and
notes the result on the run. A newer release of the environment owns the targets by
then and retires what it replaced itself, so an older run is only marked superseded.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

from reconciler.drivers import StepFailed, for_deploy
from reconciler.engine.running import ContextFactory, iso
from reconciler.errors import QuicFlowError
from reconciler.gitops import model
from reconciler.log.store import LogStore
from reconciler.runs import Run, RunState
from reconciler.store.runs import RunStore
from reconciler.targets.resolving import resolve as resolve_targets


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
    ):
        self.runs = runs
        self.logs = logs
        self.now = now
        self.desired = desired
        self.context = context
        self.data_dir = data_dir

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
            notes = await self._retire(run, env, desired, str(color))
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
        for target in resolve_targets(env, desired, self.data_dir):
            try:
                await driver.retire(ctx, target, color)
            except (StepFailed, QuicFlowError) as exc:
                failed.append(f"{target.name}: {exc}")
        return "; ".join(failed) if failed else "all targets"
