"""The reconciler: refresh → plan → dispatch → record, forever or once.

A pass loads the newest config commit (an invalid one keeps the last good desired state
in force; ``refreshing``), plans it against the state ref and what the agents run,
dispatches a run per deploy action and resumes waiting runs whose gate opened
(``dispatching``); runs execute one at a time per environment and record themselves in
Git as they end (``lifecycle``, ``recording``). Blue-green retirement (``retiring``)
and the control actions with their permission checks (``actions``) are modules of
their own. ``Reconciler`` wires the parts and implements ``EngineControl``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.builder.building import Builder
from reconciler.credential.resolving import CredentialResolver
from reconciler.engine import (
    actions,
    claiming,
    clusters,
    contexts,
    dispatching,
    image_builds,
    lifecycle,
    observing,
    recording,
    refreshing,
    retiring,
    sharding,
    timing,
)
from reconciler.engine.bus import EventBus
from reconciler.errors import ConfigError, ConfigProblem, QuicFlowError
from reconciler.gitops import model, planning, reverting
from reconciler.gitops.claims import Claims
from reconciler.gitops.history import History
from reconciler.gitops.repository import GitRepository
from reconciler.log.store import LogStore
from reconciler.runs import Run, RunState
from reconciler.store.database import Database
from reconciler.store.leases import Leases
from reconciler.store.runs import RunStore
from reconciler.targets.resolving import Executors

_log = logging.getLogger(__name__)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class PassReport:
    """What one reconcile pass did."""

    commit: str = ""
    problems: tuple[ConfigProblem, ...] = ()
    runs: list[Run] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def failed(self) -> list[Run]:
        ended = (RunState.FAILED, RunState.ROLLED_BACK, RunState.CANCELLED)
        return [r for r in self.runs if r.state in ended]

    @property
    def waiting(self) -> list[Run]:
        return [r for r in self.runs if r.state.is_waiting]


class Reconciler:
    """Makes the world match the config repo; implements ``EngineControl``."""

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
    ):
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
            sharding.Shards(Leases(self.db), self.lifecycle.owner, sharding.ttl_from(environ))
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

    def plan(self) -> planning.Plan:
        desired = self.source.desired
        if desired is None:
            return planning.Plan(())
        state, deployed = self.history.deployed()
        return self._planner.plan(desired, deployed, self._observations(), state_commit=state)

    def _observations(self) -> list[planning.Observation]:
        """The agents' running containers (for drift), when a QUIC hub runs in this process."""
        if self.hub is None:
            return list(self._cluster_observations)
        reports = [(a.name, self.hub.status(a.name)) for a in self.hub.agents()]
        succeeded, _ = self.runs.list(states=[RunState.SUCCEEDED], limit=200)  # newest first
        found = observing.observations(reports, observing.live_colors(succeeded))
        return found + self._cluster_observations

    def reconciled_elsewhere(self, project: str, env: str) -> str:
        """Replicas on a shared store: the one holding ``project/env`` if not this one, else ''."""
        return self.shards.holder(project, env) if self.shards is not None else ""

    def unrunnable(self, env: model.Environment) -> str | None:
        """Why this process cannot run ``env`` at all (so no run is created and failed), or None."""
        desired = self.source.desired
        assert desired is not None
        return dispatching.unrunnable(env, desired, self.executors, self.hub, self.data_dir)

    # -- the pass: refresh → plan → dispatch → record ---------------------------------

    async def refresh(self) -> tuple[str, tuple[ConfigProblem, ...]]:
        """Fetch and load the newest commit; keep the last good desired state if it is invalid."""
        return await self.source.refresh()

    def recover(self) -> list[Run]:
        """Mark runs a dead process left running as interrupted (waiting runs stay waiting)."""
        return self.lifecycle.recover()

    async def reconcile_once(self, only: str | None = None, wait: bool = True) -> PassReport:
        """One pass: refresh, plan, start or resume runs; with ``wait``, until they finish or wait."""
        if not self.lifecycle.recovered and self.shards is None:
            self.recover()
        report = PassReport(*await self.refresh())
        desired = self.source.desired
        if desired is None:
            return report
        project_only, _, env_only = (only or "").partition("/")
        owned = self._claim_share(desired)

        def wanted(project: str, env: str) -> bool:
            mine = owned is None or (project, env) in owned
            return mine and project_only in ("", project) and env_only in ("", env)

        await self.retirer.retire_due(wanted)
        rollbacks = reverting.rollback_of(self.repo.commit(desired.commit).message)
        self._cluster_observations = await clusters.observe(
            desired, self.history.deployed()[1], self.credentials
        )
        planning_started = time.perf_counter()
        plan = self.plan()
        self.pass_timings.planned(time.perf_counter() - planning_started)
        out = self.dispatcher.dispatch(
            desired,
            plan.actions,
            wanted,
            rollbacks.envs,
            self.hub,
            forced=rollbacks.forced,
            rollback_actor=rollbacks.actor,
        )
        report.runs, report.skipped = out.waiting, out.skipped
        if wait and out.recorded_again:
            await asyncio.gather(*out.recorded_again)
        if wait and out.started:
            finished = list(await asyncio.gather(*out.started))  # each recorded as it ends
            ids = {f.id for f in finished}
            report.runs = [r for r in report.runs if r.id not in ids] + finished
        return report

    def _claim_share(self, desired: model.DesiredState) -> set[tuple[str, str]] | None:
        """Replicas on a shared store: the project/envs this one holds now (None: all);
        the runs of those it took over from a replica that stopped are interrupted here,
        so this pass resumes them."""
        if self.shards is None:
            return None
        if self.repo.has_remote and not self.history.push:
            raise ConfigError(
                "replicas sharing a store need settings.push_history: true (the config repo "
                "is mirrored from a URL): otherwise each keeps a deployment history of its own"
            )
        owned, taken = self.shards.share(desired.environments(), self.lifecycle.tasks)
        self.lifecycle.recover(taken)
        return owned

    # -- running ---------------------------------------------------------------------

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Reconcile every ``poll_interval`` and whenever asked, until ``stop`` is set."""
        renewing = None
        if self.shards is not None:
            renewing = asyncio.ensure_future(self.shards.keep_renewed(stop, self._wake.set))
        try:
            await self._loop(stop)
        finally:
            if renewing is not None:
                renewing.cancel()

    async def _loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            # Cleared before the pass, not after: a request that arrives mid-pass (a config
            # webhook for a commit this pass did not fetch yet) must start another pass.
            self._wake.clear()
            try:
                await self.reconcile_once(wait=False)
                self.pass_timings.finished(time.time())
            except QuicFlowError as exc:
                _log.error("reconcile pass failed: %s", exc)
            desired = self.source.desired
            interval = desired.settings.poll_interval if desired else 60.0
            waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
            await asyncio.wait(waiters, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()

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
