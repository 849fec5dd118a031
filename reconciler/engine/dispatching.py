"""Dispatching a pass: the plan's deploy actions become runs, and waiting runs resume.

For each deploy action of the plan in the pass's selection, a run is scheduled — unless
this process cannot run the environment at all (a deploy type not built in, agents not
reachable over its hub: a run created only to fail would page someone for nothing),
or another live process is executing one there; those are reported as skipped, with
the reason. A head commit made by ``rollback`` names the environments that run with
trigger ``rollback``; everything else released in the same pass is a ``poll``. Then
every waiting run whose gate has opened (approval decided, release window open) is
resumed; the others are reported as still waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.engine.lifecycle import RunLifecycle
from reconciler.gitops import model, planning
from reconciler.runs import Run, Trigger
from reconciler.targets.resolving import Executors
from reconciler.targets.resolving import resolve as resolve_targets

#: Deploy types with a driver in this build.
AVAILABLE = frozenset(
    {model.DeployType.SCRIPT, model.DeployType.GIT_PULL, model.DeployType.CONTAINER}
)


def unrunnable(
    env: model.Environment,
    desired: model.DesiredState,
    executors: Executors,
    hub: Any,
    data_dir: Path,
) -> str | None:
    """Why this process cannot run ``env`` (``hub``: the QUIC hub here, or None), or None."""
    if env.deploy.type not in AVAILABLE:
        return f"deploy type {env.deploy.type.value!r} is not available in this build"
    if not any(t.agent or t.selector for t in env.targets):
        return None
    if executors.agents is None or hub is None:
        return "its targets are agents and no QUIC hub runs in this process (use 'quicflow serve')"
    wanted = [t.name for t in resolve_targets(env, desired, data_dir) if t.kind == "agent"]
    connected = {a.name for a in hub.select(names=wanted)}
    missing = [name for name in wanted if name not in connected]
    if missing:
        return f"agent{'s' if len(missing) > 1 else ''} {', '.join(missing)} not connected"
    return None


@dataclass
class Dispatched:
    """What dispatching did: runs started, runs left waiting, environments skipped (why)."""

    started: list[asyncio.Task[Run]] = field(default_factory=list)
    waiting: list[Run] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


class Dispatcher:
    """Turns deploy actions into runs of one lifecycle, and resumes its waiting runs."""

    def __init__(self, lifecycle: RunLifecycle, executors: Executors, data_dir: Path):
        self.lifecycle = lifecycle
        self.runs = lifecycle.runs
        self.executors = executors
        self.data_dir = data_dir

    def dispatch(
        self,
        desired: model.DesiredState,
        actions: Iterable[planning.Action],
        wanted: Callable[[str, str], bool],
        rolled_back: frozenset[str],
        hub: Any,
    ) -> Dispatched:
        """Dispatch the deploy ``actions`` that are ``wanted(project, env)``, then resume."""
        out = Dispatched()
        for action in actions:
            if action.kind is planning.ActionKind.DEPLOY and wanted(action.project, action.env):
                env = desired.environment(action.project, action.env)
                assert env is not None
                trigger = Trigger.ROLLBACK if env.key in rolled_back else Trigger.POLL
                self._deploy(desired, env, trigger, action.from_version, hub, out)
        reported = {r.id for r in out.waiting}
        for run in self.runs.active():
            if run.state.is_waiting and wanted(*run.key) and run.key not in self.lifecycle.tasks:
                task = self.lifecycle.resume(run)
                if task is not None:
                    out.started.append(task)
                elif run.id not in reported:
                    out.waiting.append(run)
        return out

    def _deploy(
        self,
        desired: model.DesiredState,
        env: model.Environment,
        trigger: Trigger,
        previous: str | None,
        hub: Any,
        out: Dispatched,
    ) -> None:
        reason = unrunnable(env, desired, self.executors, hub, self.data_dir)
        latest = self.runs.latest(env.project, env.name) if reason is None else None
        if latest is not None and self.lifecycle.owned_elsewhere(latest):
            reason = f"run {latest.id} is in progress in another process"
        if reason:
            out.skipped.append((env.key, reason))
            return
        task = self.lifecycle.schedule(env, trigger, None, previous)
        if task is not None:
            out.started.append(task)
            return
        latest = self.runs.latest(env.project, env.name)
        if latest is not None and latest.state.is_waiting:
            out.waiting.append(latest)
