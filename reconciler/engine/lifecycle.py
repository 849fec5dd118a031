"""The life of a run in this process: scheduled, started, executed, finished — or resumed.

One run at a time per project/environment: ``schedule`` creates a run unless one is
executing here. A newer desired state supersedes a *waiting* run (approval, manual
promotion, release window), never an executing one. A run due outside its release
window is saved waiting for the window; ``resume`` starts a waiting run once its gate
is open. At most ``max_parallel_runs`` runs execute at once.

Crash safety: every run records its owner process. On start, ``recover`` marks runs
left running by a dead process ``interrupted`` with the keys of their finished steps,
and the run that replaces an interrupted one (same version and config) is created with
those steps carried over — so no finished step runs twice. A run whose owner is still
alive (``serve`` beside an ``apply``) is left to it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import replace
from typing import Any, Protocol

from reconciler.engine import owners, recording
from reconciler.engine.bus import EventBus
from reconciler.engine.running import ContextFactory, Outcome, RunExecutor, iso
from reconciler.errors import QuicFlowError
from reconciler.events import Event, EventType
from reconciler.gitops import model
from reconciler.log.store import LogStore
from reconciler.rules import windows
from reconciler.runs import Run, RunState, StepKind, Trigger, carried_over
from reconciler.store.runs import RunStore

_log = logging.getLogger(__name__)


class LocalSteps(Protocol):
    """The journal of local step processes (``targets.resolving.Executors``)."""

    def sweep(self, keep: Callable[[str], bool]) -> tuple[str, ...]: ...

    def abandon(self, run: str) -> tuple[str, ...]: ...


class RunLifecycle:
    """Schedules, executes and finishes the runs of this process; recovers a dead one's."""

    def __init__(
        self,
        runs: RunStore,
        logs: LogStore,
        bus: EventBus,
        *,
        now: Callable[[], dt.datetime],
        desired: Callable[[], model.DesiredState | None],
        context: ContextFactory,
        record: Callable[[Run, model.Environment, Outcome], Awaitable[None]],
        max_parallel_runs: int = 16,
        owner: str | None = None,
        on_ended: Callable[[], None] | None = None,
        claim: Callable[[Run], Awaitable[str]] | None = None,
        live_color: Callable[[str, str], str | None] | None = None,
        local_steps: LocalSteps | None = None,
    ):
        self.runs = runs
        self.logs = logs
        self.bus = bus
        self.now = now
        self.desired = desired
        self.context = context
        self.record = record
        self.owner = owner or owners.current()
        self.tasks: dict[tuple[str, str], asyncio.Task[Run]] = {}
        self.recovered = False
        self._slots = asyncio.Semaphore(max_parallel_runs)
        self._on_ended = on_ended
        self._deferred: set[tuple[str, str]] = set()
        # One writer: the environment is claimed in Git before a run's first step
        # (``claiming``); the blue-green color serving comes from the state ref.
        self.claim = claim
        self.live_color = live_color
        # The processes of local steps, found again after a crash (``targets.processes``).
        self.local_steps = local_steps

    # -- ownership and recovery ------------------------------------------------------

    def owned_elsewhere(self, run: Run) -> bool:
        """Whether another live process (``serve`` beside an ``apply``) is executing ``run``."""
        if run.state not in (RunState.RUNNING, RunState.PENDING):
            return False
        owner = str(run.detail.get("owner", ""))
        return owner != self.owner and owners.alive(owner)

    def recover(self, taken: Collection[tuple[str, str]] | None = None) -> list[Run]:
        """Mark runs a dead process left running as interrupted (waiting runs stay waiting).

        With ``taken`` (replicas sharing a store), only the runs of those project/envs,
        whose leases this replica just took over: their previous holder stopped renewing,
        so it is dead (or cut off) wherever it ran, and its runs are interrupted here
        whatever its host. Without, every run whose owner process is gone from this host.
        """
        interrupted = []
        for run in self.runs.active():
            if taken is not None:
                ours = run.key in taken and str(run.detail.get("owner", "")) != self.owner
            else:
                ours = not self.owned_elsewhere(run)
            if (
                run.state in (RunState.RUNNING, RunState.PENDING)
                and run.key not in self.tasks
                and ours
            ):
                done = [s.key for s in self.runs.steps(run.id) if s.status.is_done]
                run = self.runs.update(
                    run,
                    state=RunState.INTERRUPTED,
                    finished_at=iso(self.now()),
                    error="the reconciler stopped during this run",
                    detail={**run.detail, "done_steps": done},
                )
                line = f"interrupted; finished steps: {', '.join(done) or 'none'}"
                self.logs.append(run.id, [(iso(self.now()), "engine", "system", line)])
                self.logs.close_stream(run.id)
                interrupted.append(run)
        if not self.recovered:
            self.recovered = True
            self.sweep_local_steps()
        return interrupted

    def sweep_local_steps(self) -> None:
        """Once, at start: kill the local steps a dead process of this data dir left running
        for runs that will not resume (a run that may resume adopts its step)."""
        if self.local_steps is None:
            return
        keep = self._issuers(self.runs.active() + self.runs.resumable())
        for command in self.local_steps.sweep(keep.__contains__):
            _log.warning("killed local step %s: its run will not resume", command)

    def _issuers(self, runs: list[Run]) -> set[str]:
        """The run ids whose commands ``runs`` may re-issue: their own, and those in flight."""
        issuers = set()
        for run in runs:
            issuers.add(run.id)
            for step in self.runs.steps(run.id):
                origin = step.result.get("in_flight_of")
                if origin:
                    issuers.add(str(origin))
        return issuers

    def _abandon(self, run: Run) -> None:
        """``run`` will never resume: what still runs of its local steps is killed."""
        if self.local_steps is None:
            return
        for issuer in sorted(self._issuers([run])):
            for command in self.local_steps.abandon(issuer):
                _log.warning("killed local step %s: run %s was replaced", command, run.id)

    # -- scheduling ------------------------------------------------------------------

    def schedule(
        self,
        env: model.Environment,
        trigger: Trigger,
        actor: model.User | None,
        previous: str | None,
        version: str | None = None,
        force: bool = False,
        detail: Mapping[str, Any] | None = None,
    ) -> asyncio.Task[Run] | None:
        """Create a run for ``env`` unless one is running; supersede a waiting one."""
        key = (env.project, env.name)
        version = version or env.version
        if key in self.tasks:
            # Running: remember that a pass wanted this environment, so the run's end
            # starts a pass that re-plans it (a push that landed mid-run is not lost).
            self._deferred.add(key)
            return None
        current = self.runs.latest(*key)
        if current is not None and current.state.is_waiting:
            same = (current.version, current.config_hash) == (version, env.config_hash)
            # A forced request (an emergency rollback) replaces the same release waiting
            # for its window unforced; anything else resumes it.
            if same and trigger is not Trigger.MANUAL and (current.forced or not force):
                return self.resume(current)
            self._supersede(current, version, "superseded by a forced run" if same else "")
        now = self.now()
        desired = self.desired()
        run = Run(
            id=_run_id(now),
            project=env.project,
            env=env.name,
            version=version,
            config_commit=desired.commit if desired else "",
            config_hash=env.config_hash,
            trigger=trigger,
            previous_version=previous,
            actor=actor.username if actor else "",
            strategy=env.strategy.type.value,
            created_at=iso(now),
            forced=force,
            # What Git asked for when the run was created: a waiting run follows Git.
            detail={**(detail or {}), "owner": self.owner, "git_version": env.version},
        )
        if (
            current is not None
            and current.state is RunState.INTERRUPTED
            and (current.version, current.config_hash) == (version, env.config_hash)
        ):
            run = replace(run, resumes=current.id)
            self._carry_done_steps(current, run)
        else:
            if current is not None and current.state is RunState.INTERRUPTED:
                self._abandon(current)
            self.runs.create(run)
        if env.release_windows and not force and not windows.is_open(env.release_windows, now):
            self._wait_for_window(run, env, now)
            return None
        return self._start(run, env)

    def _supersede(self, waiting: Run, version: str, why: str = "") -> None:
        run = self.runs.update(
            waiting,
            state=RunState.SUPERSEDED,
            finished_at=iso(self.now()),
            error=why or f"superseded by a newer desired state ({version})",
        )
        self.logs.append(run.id, [(iso(self.now()), "engine", "system", run.error)])
        self.logs.close_stream(run.id)
        self.publish(run, EventType.RUN_SUPERSEDED, error=run.error)

    def _git_moved_on(self, run: Run, env: model.Environment | None) -> str:
        """Why Git no longer asks for what the waiting ``run`` would roll out ('' if it does)."""
        if env is None:
            return f"superseded: {run.project}/{run.env} is no longer in the config repo"
        asked = str(run.detail.get("git_version") or run.version)
        if env.version != asked:
            return (
                f"superseded: Git now asks for {env.version} (this run was for {asked}); "
                "a promotion or approval would have rolled out a version Git no longer wants"
            )
        if env.config_hash != run.config_hash:
            return "superseded: the environment's configuration changed in Git"
        return ""

    def _carry_done_steps(self, interrupted: Run, run: Run) -> None:
        """Create ``run`` with what still holds of the ``interrupted`` run it replaces.

        The steps ``runs.carried_over`` keeps (never a deploy a rollback undid) and every
        decision people took on its gates, so an approval or a promotion given before
        the crash is not asked for again.
        """
        self.runs.create(run)
        steps, decisions = carried_over(
            self.runs.steps(interrupted.id), self.runs.decisions(interrupted.id)
        )
        self.runs.carry_over(interrupted.id, run.id, steps, decisions)

    def _wait_for_window(self, run: Run, env: model.Environment, now: dt.datetime) -> None:
        opening = windows.next_opening(env.release_windows, now)
        run = self.runs.update(
            run,
            state=RunState.WAITING_WINDOW,
            detail={
                **run.detail,
                "waiting": "release window",
                "next_opening": iso(opening) if opening else "",
            },
        )
        self.publish(run, EventType.RUN_WAITING, data={"reason": "release window"})

    def resume(self, run: Run) -> asyncio.Task[Run] | None:
        """Start a waiting run whose gate is open now (None while it must wait)."""
        desired = self.desired()
        if desired is None:
            return None
        env = desired.environment(run.project, run.env)
        moved_on = self._git_moved_on(run, env)
        if moved_on:
            # Waiting runs follow Git: a revert or a newer version while a run waits for a
            # person (or a window) ends it, so a late approval never deploys what Git left;
            # what it deployed already (a canary waiting for its promote) is undone.
            if env is not None and self._deployed_something(run):
                return self._start(run, env, abort=moved_on)
            self._supersede(run, env.version if env else "", moved_on)
            return None
        assert env is not None
        if (
            run.state is RunState.WAITING_WINDOW
            and env.release_windows
            and not run.forced
            and not windows.is_open(env.release_windows, self.now())
        ):
            return None
        if run.state is RunState.WAITING_APPROVAL:
            gate = str(run.detail.get("gate", ""))
            # A waiting approval with a timeout is replayed so the executor can time it out.
            may_expire = bool(run.detail.get("approval_timeout"))
            if gate and self.runs.decision(run.id, gate) is None and not may_expire:
                return None
        return self._start(run, env)

    # -- executing -------------------------------------------------------------------

    def _deployed_something(self, run: Run) -> bool:
        return any(s.key.startswith(f"{StepKind.DEPLOY.value}:") for s in self.runs.steps(run.id))

    def _start(self, run: Run, env: model.Environment, abort: str = "") -> asyncio.Task[Run]:
        task = asyncio.get_running_loop().create_task(self._execute(run, env, abort))
        self.tasks[run.key] = task
        task.add_done_callback(lambda _t, key=run.key: self._ended(key))
        return task

    def _ended(self, key: tuple[str, str]) -> None:
        self.tasks.pop(key, None)
        # A pass that came while this run ran skipped its environment: plan again now,
        # so a push that landed mid-run is released without waiting for the next poll.
        if key in self._deferred:
            self._deferred.discard(key)
            if self._on_ended is not None:
                self._on_ended()

    async def _execute(self, run: Run, env: model.Environment, abort: str = "") -> Run:
        async with self._slots:
            desired = self.desired()
            assert desired is not None
            first_start = not run.started_at
            run = self.runs.update(
                run,
                state=RunState.RUNNING,
                started_at=run.started_at or iso(self.now()),
                detail={**run.detail, "owner": self.owner},
            )
            if first_start:
                self.publish(run, EventType.RUN_STARTED)
            # -- one writer: claim the environment before anything touches a target --
            lost = await self._claim(run)
            if lost:
                self.logs.append(run.id, [(iso(self.now()), "engine", "system", lost)])
                return await self._finish(run, env, Outcome(RunState.SUPERSEDED, lost))
            # -- end of the claim --
            try:
                ctx = await self.context(run, env, desired)
            except QuicFlowError as exc:
                return await self._finish(
                    run, env, Outcome(RunState.FAILED, str(exc), "deploy_failed")
                )
            try:
                executor = RunExecutor(ctx, self._seed(run, env))
                outcome = await (executor.abort(abort) if abort else executor.execute())
            except asyncio.CancelledError:
                await asyncio.shield(
                    self._finish(run, env, Outcome(RunState.CANCELLED, "cancelled"))
                )
                raise
            except Exception as exc:  # noqa: BLE001 - a bug fails its run, never the whole pass
                _log.exception("run %s crashed", run.id)
                error = ctx.masker.mask(f"internal error: {type(exc).__name__}: {exc}")
                outcome = Outcome(RunState.FAILED, error)
            return await self._finish(run, env, outcome)

    async def _claim(self, run: Run) -> str:
        """'' once ``run`` holds its environment (or nothing claims here), else why it may not run."""
        if self.claim is None:
            return ""
        try:
            return await self.claim(run)
        except QuicFlowError as exc:
            return f"could not claim {run.project}/{run.env} in Git, so it must not deploy: {exc}"

    def _seed(self, run: Run, env: model.Environment) -> dict[str, Any]:
        """What a strategy must know from earlier runs (the live blue-green color).

        The state ref says which color serves (any data dir sees it, a fresh one too);
        this store's newest succeeded run only stands in for records written before
        the state ref named colors.
        """
        if env.strategy.type is not model.StrategyType.BLUE_GREEN:
            return {}
        live = self.live_color(run.project, run.env) if self.live_color else None
        if not live:
            found, _ = self.runs.list(run.project, run.env, states=[RunState.SUCCEEDED], limit=1)
            live = found[0].detail.get("color") if found else None
        seed: dict[str, Any] = {"live_color": live} if live else {}
        if run.detail.get("color"):
            seed["color"] = run.detail["color"]
        return seed

    async def _finish(self, run: Run, env: model.Environment, outcome: Outcome) -> Run:
        now = iso(self.now())
        detail = {**run.detail, **{k: v for k, v in outcome.result.items() if _jsonable(v)}}
        if outcome.state.is_waiting:
            if outcome.gate:
                detail["gate"] = outcome.gate
            detail["waiting"] = outcome.error
            run = self.runs.update(run, state=outcome.state, detail=detail)
            self.publish(
                run, EventType.RUN_WAITING, data={"reason": outcome.error, "gate": outcome.gate}
            )
            return run
        if outcome.state is RunState.SUCCEEDED and detail.get("rollback_window") is not None:
            due = self.now() + dt.timedelta(seconds=float(detail["rollback_window"]))
            detail["retire_due"] = iso(due)
        run = self.runs.update(
            run,
            state=outcome.state,
            finished_at=now,
            error=outcome.error,
            detail=detail,
        )
        self.logs.close_stream(run.id)
        kind = {
            RunState.SUCCEEDED: EventType.RUN_SUCCEEDED,
            RunState.CANCELLED: EventType.RUN_CANCELLED,
            RunState.SUPERSEDED: EventType.RUN_SUPERSEDED,
        }.get(outcome.state, EventType.RUN_FAILED)
        self.publish(run, kind, error=outcome.error)
        if outcome.state in recording.RECORDED:
            await self.record(run, env, outcome)
        return run

    # -- events and shutdown ---------------------------------------------------------

    def publish(
        self, run: Run, kind: EventType, error: str = "", data: Mapping[str, Any] | None = None
    ) -> None:
        """Publish a run-level event (``trigger`` and ``state`` always in its data)."""
        self.bus.publish(
            Event(
                kind,
                iso(self.now()),
                run.id,
                run.project,
                run.env,
                run.version,
                error=error,
                data={"trigger": run.trigger.value, "state": run.state.value, **(data or {})},
            )
        )

    async def cancel(self, run: Run) -> bool:
        """Cancel ``run``'s task when it executes here (it finishes ``cancelled``); whether it did."""
        task = self.tasks.get(run.key)
        if task is None:
            return False
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return True

    async def wait_idle(self) -> None:
        """Wait until no run task of this process is in flight (tests, shutdown)."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks.values()), return_exceptions=True)

    async def close(self) -> None:
        """Cancel every run executing here and wait for them to finish ``cancelled``."""
        for task in list(self.tasks.values()):
            task.cancel()
        await asyncio.gather(*list(self.tasks.values()), return_exceptions=True)


def _run_id(now: dt.datetime) -> str:
    return f"r-{now.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"


def _jsonable(value: Any) -> bool:
    return isinstance(value, str | int | float | bool | list | dict | type(None))
