"""The reconciler: refresh → plan → dispatch → record, forever or once.

A pass loads the newest config commit (an invalid one keeps the last good desired state
in force; ``refreshing``), plans it against the state ref and what the agents run,
dispatches a run per deploy action and resumes waiting runs whose gate opened
(``dispatching``); runs execute one at a time per environment and record themselves in
Git as they end (``lifecycle``, ``recording``). Blue-green retirement (``retiring``)
and the control actions with their permission checks (``actions``) are modules of
their own; ``assembly`` builds and wires the parts. ``Reconciler`` is the pipeline over
them and implements ``EngineControl``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass, field

from reconciler.engine import assembly, clusters, observing
from reconciler.errors import ConfigError, ConfigProblem, QuicFlowError
from reconciler.gitops import model, planning, reverting
from reconciler.runs import Run, RunState
from reconciler.targets import resolving

_log = logging.getLogger(__name__)


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


class Reconciler(assembly.EngineParts):
    """Makes the world match the config repo; implements ``EngineControl``.

    Its parts, their wiring and the state they hold are ``assembly.EngineParts``.
    """

    def plan(self) -> planning.Plan:
        desired = self.source.desired
        if desired is None:
            return planning.Plan(())
        state, deployed = self.history.deployed()
        observed = self._observations(desired)
        return self._planner.plan(desired, deployed, observed, state_commit=state)

    def _observations(self, desired: model.DesiredState) -> list[planning.Observation]:
        """The agents' running containers (for drift), when a QUIC hub runs in this process."""
        if self.hub is None:
            return list(self._cluster_observations)

        # Resolved only for environments some container claims, once per plan.
        @functools.cache
        def targeted(project: str, env: str) -> frozenset[str]:
            environment = desired.environment(project, env)
            if environment is None:
                return frozenset()
            resolved = resolving.resolve(environment, desired, self.data_dir)
            return frozenset(t.name for t in resolved if t.kind == "agent")

        reports = [(a.name, self.hub.status(a.name)) for a in self.hub.agents()]
        succeeded, _ = self.runs.list(states=[RunState.SUCCEEDED], limit=200)  # newest first
        found = observing.observations(reports, targeted, observing.live_colors(succeeded))
        return found + self._cluster_observations

    # -- the pass: refresh → plan → dispatch → record ---------------------------------

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
