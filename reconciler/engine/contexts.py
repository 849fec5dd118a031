"""The context a run works with: stores, executors, clock and its secrets, resolved.

``RunContexts`` is the one ``ContextFactory`` of a reconciler: the lifecycle asks it
for each run it executes, and retirement for the later step of a blue-green run. The
run's secrets are resolved (and their Masker made) here, so a run that cannot have
its credentials fails before it touches a target.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler.builder.building import Builder
from reconciler.credential.resolving import CredentialResolver
from reconciler.engine.bus import EventBus
from reconciler.engine.running import RunContext
from reconciler.gitops import model
from reconciler.log.store import LogStore
from reconciler.runs import Run
from reconciler.store.runs import RunStore
from reconciler.targets.resolving import Executors


def builds(env: model.Environment) -> bool:
    """Whether ``env``'s pipeline has a ``uses: build`` task."""
    return any(t.uses == "build" for s in env.pipeline.stages for t in s.tasks)


class RunContexts:
    """Makes the ``RunContext`` of a run; implements ``running.ContextFactory``."""

    def __init__(
        self,
        runs: RunStore,
        logs: LogStore,
        bus: EventBus,
        *,
        executors: Executors,
        data_dir: Path,
        now: Callable[[], dt.datetime],
        sleep: Callable[[float], Any],
        credentials: CredentialResolver,
        builder: Callable[[], Builder],
    ):
        self.runs = runs
        self.logs = logs
        self.bus = bus
        self.executors = executors
        self.data_dir = data_dir
        self.now = now
        self.sleep = sleep
        self.credentials = credentials
        self.builder = builder  # made on first use: only runs that build need one

    async def __call__(
        self, run: Run, env: model.Environment, desired: model.DesiredState, build: bool = True
    ) -> RunContext:
        """What ``run`` works with; ``build`` False leaves out the Builder (retirement)."""
        values, masker = await self.credentials.resolve(env, desired)
        return RunContext(
            run=run,
            env=env,
            desired=desired,
            store=self.runs,
            logs=self.logs,
            bus=self.bus,
            executors=self.executors,
            data_dir=self.data_dir,
            now=self.now,
            masker=masker,
            secrets=values,
            sleep=self.sleep,
            builder=self.builder() if build and builds(env) else None,
        )
