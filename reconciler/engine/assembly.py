"""The parts of one engine and how they are wired together.

``EngineParts`` builds, from a config repo and a data dir, everything a reconciler
uses — the one ``Database`` and its stores, the event bus, Git history and claims, the
desired-state source, the run lifecycle, the dispatcher, blue-green retirement and the
control actions — hands each part the callbacks it needs of the others, and closes them
in order. It answers the read-only questions about the engine's state (what is in force,
what is deployed, who holds an environment). ``reconciling.Reconciler`` adds the
pipeline on top: refresh → plan → dispatch → record.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from reconciler.builder.building import Builder
from reconciler.credential.resolving import CredentialResolver
from reconciler.engine import (
    actions,
    claiming,
    contexts,
    dispatching,
    image_builds,
    lifecycle,
    recording,
    refreshing,
    retiring,
    sharding,
    timing,
)
from reconciler.engine.bus import EventBus
from reconciler.errors import ConfigProblem
from reconciler.gitops import model, planning
from reconciler.gitops.claims import Claims
from reconciler.gitops.history import History
from reconciler.gitops.repository import GitRepository
from reconciler.log.store import LogStore
from reconciler.runs import Run
from reconciler.store.database import Database
from reconciler.store.leases import Leases
from reconciler.store.runs import RunStore
from reconciler.targets.resolving import Executors

_log = logging.getLogger(__name__)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class EngineParts:
    """One engine's parts, wired; the state they hold; closing them in order."""

    def __init__(
        self,
        repo: GitRepository,
        data_dir: Path,
        *,
        executors: Executors | None = None,
        now: Callable[[], dt.datetime] = _utcnow,
        push: bool | None = None,
        max_parallel_runs: int = 16,
        sleep: Callable[[float], Any] = asyncio.sleep,
        environ: Mapping[str, str] | None = None,
        replica: str | None = None,
    ):
        """``replica``: this engine's name in the leases replicas share (default its
        process, ``host:pid:start``; two engines in one process need names of their own)."""
        self.repo = repo
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database.open(self.data_dir)
        self.runs = RunStore(self.db)
        self.logs = LogStore(self.db)
        self.bus = EventBus()
        self.history = History(repo, push=bool(push))
        self.executors = executors or Executors(data_dir=self.data_dir)
        self.now = now
        self.sleep = sleep
        self.hub: Any = None  # the QUIC hub, when one runs in this process
        self.credentials = CredentialResolver(repo, self.db, environ)
        self.source = refreshing.DesiredStateSource(repo, self.history, push)
        self._planner = planning.Planner()
        self._cluster_observations: list[planning.Observation] = []  # Kubernetes drift
        self._wake = asyncio.Event()
        self._builder: Builder | None = None
        self.pass_timings = timing.PassTimings()  # read by reconciler.metrics
        context = contexts.RunContexts(
            self.runs,
            self.logs,
            self.bus,
            executors=self.executors,
            data_dir=self.data_dir,
            now=now,
            sleep=sleep,
            credentials=self.credentials,
            builder=lambda: self.builder,
        )
        desired = self.source.current
        # One writer per environment across reconcilers: claims in Git, shared through
        # origin whenever history is pushed there.
        self.claims = claiming.Claimer(
            Claims(repo, shared=lambda: self.history.push),
            self.history,
            executing=lambda: self.lifecycle.tasks.keys(),
        )
        writer = recording.HistoryWriter(self.history, self.claims, decisions=self.runs.decisions)
        record = writer.record
        self.lifecycle = lifecycle.RunLifecycle(
            self.runs,
            self.logs,
            self.bus,
            now=now,
            desired=desired,
            context=context,
            record=record,
            max_parallel_runs=max_parallel_runs,
            on_ended=self._wake.set,
            claim=self.claims.claim,
            live_color=self._live_color,
            local_steps=self.executors,
        )
        # Replicas sharing a store divide the project/envs between them through leases.
        self.shards = (
            sharding.Shards(
                Leases(self.db), replica or self.lifecycle.owner, sharding.ttl_from(environ)
            )
            if self.db.shared
            else None
        )
        self.dispatcher = dispatching.Dispatcher(
            self.lifecycle,
            self.executors,
            self.data_dir,
            claimed=self.claims.held_elsewhere,
            recorded=self.history.record,
            rerecord=writer.rerecord,
            fence=self.shards.confirm if self.shards is not None else None,
        )
        self.retirer = retiring.Retirer(
            self.runs,
            self.logs,
            now=now,
            desired=desired,
            context=context,
            data_dir=self.data_dir,
            executing=lambda: self.lifecycle.tasks.keys(),
            record=self.history.record,
            claims=self.claims,
        )
        self.actions = actions.Actions(
            self.lifecycle,
            repo=repo,
            history=self.history,
            desired=desired,
            now=now,
            refresh=self.refresh,
            held=self.dispatcher.held,
            wake=self._wake.set,
            elsewhere=self.reconciled_elsewhere,
        )
        # EngineControl's actions are those of ``actions.Actions``, over this lifecycle.
        self.deploy = self.actions.deploy
        self.deploy_or_queue = self.actions.deploy_or_queue
        self.approve = self.actions.approve
        self.reject = self.actions.reject
        self.promote = self.actions.promote
        self.cancel = self.actions.cancel
        self.rollback = self.actions.rollback
        self.previous_good_version = self.actions.previous_good_version
        self.change_authors = self.actions.change_authors

    @property
    def builder(self) -> Builder:
        """The one Builder of this reconciler (made on first use; image automation listens)."""
        if self._builder is None:
            self._builder = image_builds.engine_builder(
                self.db,
                self.logs,
                self.data_dir,
                repo=self.repo,
                desired=self.source.current,
                credentials=self.credentials,
                now=self.now,
                reconcile_now=self.reconcile_now,
            )
        return self._builder

    # -- state -----------------------------------------------------------------------

    @property
    def desired(self) -> model.DesiredState | None:
        return self.source.desired

    @property
    def problems(self) -> tuple[ConfigProblem, ...]:
        return self.source.problems

    def config_status(self) -> refreshing.ConfigStatus:
        """The commit in force and, when the newest one was refused, it and its problems."""
        return self.source.status()

    def deployed(self) -> dict[tuple[str, str], planning.DeployedRecord]:
        return self.actions.deployed()

    def reconciled_elsewhere(self, project: str, env: str) -> str:
        """Replicas on a shared store: the one holding ``project/env`` if not this one, else ''."""
        return self.shards.holder(project, env) if self.shards is not None else ""

    def unrunnable(self, env: model.Environment) -> str | None:
        """Why this process cannot run ``env`` at all (so no run is created and failed), or None."""
        desired = self.source.desired
        assert desired is not None
        return dispatching.unrunnable(env, desired, self.executors, self.hub, self.data_dir)

    async def refresh(self) -> tuple[str, tuple[ConfigProblem, ...]]:
        """Fetch and load the newest commit; keep the last good desired state if it is invalid."""
        return await self.source.refresh()

    def recover(self) -> list[Run]:
        """Mark runs a dead process left running as interrupted (waiting runs stay waiting)."""
        return self.lifecycle.recover()

    async def reconcile_now(self, reason: str) -> None:
        _log.info("reconcile requested: %s", reason)
        self._wake.set()

    async def wait_idle(self) -> None:
        """Wait until no run task of this process is in flight (tests, shutdown)."""
        await self.lifecycle.wait_idle()

    def _live_color(self, project: str, env: str) -> str | None:
        """The blue-green color the state ref names as serving ``project/env``."""
        record = self.history.record(project, env)
        return record.color if record is not None else None

    async def close(self) -> None:
        self.actions.close()  # first: a run cancelled below must not start a queued deploy
        await self.lifecycle.close()
        await self.claims.close()  # after the runs ended: what they held is released
        if self.shards is not None:
            self.shards.leave()  # the other replicas take this one's share at once
        if self._builder is not None:
            await self._builder.close()
        await self.bus.close()
        self.credentials.close()
        self.db.close()
