"""The reconciler: observe → load → plan → run, forever or once; and the engine's control surface.

One pass fetches the config repo, loads the newest commit (an invalid commit keeps the
last good desired state in force), plans against the state ref, and starts a run for
each deploy action — one run at a time per project/environment. Waiting runs
(approval, manual promotion, release window) are resumed when their gate opens; a
newer desired state supersedes a waiting run, never a running one. On start, runs
left ``running`` by a killed process are marked ``interrupted`` and their finished
steps carried into the run that replaces them, so no finished step runs twice.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import logging
import re
import secrets
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from reconciler.auth import permissions
from reconciler.builder.building import Builder
from reconciler.credential.manager import CredentialManager
from reconciler.drivers import StepFailed, for_deploy
from reconciler.engine import image_builds, observing, owners
from reconciler.engine.bus import EventBus
from reconciler.engine.running import Outcome, RunContext, RunExecutor, iso, name_of
from reconciler.errors import ConfigProblem, PermanentError, PermissionDenied, QuicFlowError
from reconciler.events import Event, EventType
from reconciler.gitops import model, planning
from reconciler.gitops.history import History, RunOutcome
from reconciler.gitops.loading import Loader
from reconciler.gitops.repository import GitRepository
from reconciler.log.masking import Masker
from reconciler.log.store import LogStore
from reconciler.rules import windows
from reconciler.runs import Decision, Run, RunState, Trigger
from reconciler.store.database import Database
from reconciler.store.runs import RunStore
from reconciler.targets.resolving import Executors
from reconciler.targets.resolving import resolve as resolve_targets

_log = logging.getLogger(__name__)
_FINAL_FOR_HISTORY = {RunState.SUCCEEDED, RunState.FAILED, RunState.ROLLED_BACK, RunState.CANCELLED}
ROLLBACK_TRAILER = "Quicflow-Rollback:"


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
        return [
            r
            for r in self.runs
            if r.state in (RunState.FAILED, RunState.ROLLED_BACK, RunState.CANCELLED)
        ]

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
        self.loader = Loader(repo)
        self.db = Database.open(self.data_dir)
        self.runs = RunStore(self.db)
        self.logs = LogStore(self.db)
        self.bus = EventBus()
        self.history = History(repo, push=bool(push))
        self._planner = planning.Planner()
        self._push_override = push
        self.executors = executors or Executors()
        self.now = now
        self.sleep = sleep
        self._environ = environ
        self._desired: model.DesiredState | None = None
        self._problems: tuple[ConfigProblem, ...] = ()
        self._tasks: dict[tuple[str, str], asyncio.Task[Run]] = {}
        self._history_pending: list[tuple[RunOutcome, asyncio.Future[None]]] = []
        self._history_writer: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(max_parallel_runs)
        self._wake = asyncio.Event()
        self._recovered = False
        self._owner = owners.current()
        self._credentials: CredentialManager | None = None
        self._credentials_commit: str | None = None
        self._credentials_lock = threading.Lock()
        self.hub: Any = None
        self._builder: Builder | None = None

    @property
    def builder(self) -> Builder:
        """The one Builder of this reconciler (made on first use; image automation listens)."""
        if self._builder is None:

            def credential(name: str, project: str) -> Any:
                desired = self._desired
                if desired is None:
                    raise KeyError(name)
                manager = self._credential_manager(desired)
                return manager.get(name, project, actor="builder")

            automation = image_builds.ImageAutomation(
                self.repo, lambda: self._desired, self.reconcile_now
            )
            settings = self._desired.settings if self._desired else None
            self._builder = Builder(
                self.db,
                self.logs,
                self.data_dir,
                credentials=credential,
                max_concurrent=settings.max_concurrent_builds if settings else 2,
                now=self.now,
                on_finished=automation.after_build,
            )
        return self._builder

    # -- EngineControl: state --------------------------------------------------------

    @property
    def desired(self) -> model.DesiredState | None:
        return self._desired

    @property
    def problems(self) -> tuple[ConfigProblem, ...]:
        return self._problems

    def deployed(self) -> dict[tuple[str, str], planning.DeployedRecord]:
        return self.history.deployed()[1]

    def plan(self) -> planning.Plan:
        if self._desired is None:
            return planning.Plan(())
        state, deployed = self.history.deployed()
        return self._planner.plan(self._desired, deployed, self._observations(), state_commit=state)

    def _observations(self) -> list[planning.Observation]:
        """The agents' running containers (for drift), when a QUIC hub runs in this process."""
        if self.hub is None:
            return []
        reports = [(a.name, self.hub.status(a.name)) for a in self.hub.agents()]
        live_colors: dict[tuple[str, str], str] = {}
        for run in self.runs.list(states=[RunState.SUCCEEDED], limit=200)[0]:  # newest first
            if run.detail.get("color"):
                live_colors.setdefault(run.key, str(run.detail["color"]))
        return observing.observations(reports, live_colors)

    # -- observing -------------------------------------------------------------------

    async def refresh(self) -> tuple[str, tuple[ConfigProblem, ...]]:
        """Fetch and load the newest commit; keep the last good desired state if it is invalid."""
        branch = self._desired.settings.branch if self._desired else "main"

        def load() -> Any:
            if self.repo.has_remote:
                self.repo.fetch()
            rev = branch if self._has_branch(branch) else "HEAD"
            return self.loader.load(rev)

        result = await asyncio.to_thread(load)
        if result.ok:
            if self._desired is None:
                # The model is long-lived: keep the collector from re-scanning it on every
                # pass (full collections over it showed up as 200 ms spikes).
                gc.collect()
                gc.freeze()
            self._desired = result.desired
            self._problems = ()
            if self._push_override is None:
                self.history.push = result.desired.settings.push_history and self.repo.has_remote
        else:
            self._problems = result.problems
            _log.warning(
                "config commit %s is invalid; keeping %s",
                result.commit[:10],
                self._desired.commit[:10] if self._desired else "nothing",
            )
        return result.commit, result.problems

    def _has_branch(self, branch: str) -> bool:
        return self.repo.ref_target(f"refs/heads/{branch}") is not None

    # -- recovery --------------------------------------------------------------------

    def recover(self) -> list[Run]:
        """Mark runs a dead process left running as interrupted (waiting runs stay waiting)."""
        interrupted = []
        for run in self.runs.active():
            if (
                run.state in (RunState.RUNNING, RunState.PENDING)
                and run.key not in self._tasks
                and not self._owned_elsewhere(run)
            ):
                done = [s.key for s in self.runs.steps(run.id) if s.status.is_done]
                run = self.runs.update(
                    run,
                    state=RunState.INTERRUPTED,
                    finished_at=iso(self.now()),
                    error="the reconciler stopped during this run",
                    detail={**run.detail, "done_steps": done},
                )
                self.logs.append(
                    run.id,
                    [
                        (
                            iso(self.now()),
                            "engine",
                            "system",
                            f"interrupted; finished steps: {', '.join(done) or 'none'}",
                        )
                    ],
                )
                self.logs.close_stream(run.id)
                interrupted.append(run)
        self._recovered = True
        return interrupted

    # -- one pass --------------------------------------------------------------------

    async def reconcile_once(self, only: str | None = None, wait: bool = True) -> PassReport:
        """One pass: refresh, plan, start or resume runs; with ``wait``, until they finish or wait."""
        if not self._recovered:
            self.recover()
        commit, problems = await self.refresh()
        report = PassReport(commit, problems)
        if self._desired is None:
            return report
        started: list[asyncio.Task[Run]] = []
        project_only, _, env_only = (only or "").partition("/")

        def wanted(project: str, env: str) -> bool:
            return (not project_only or project == project_only) and (
                not env_only or env == env_only
            )

        await self._retire_due(wanted)
        rolled_back = self._rolled_back()
        for action in self.plan().actions:
            if (
                not wanted(action.project, action.env)
                or action.kind is not planning.ActionKind.DEPLOY
            ):
                continue
            env = self._desired.environment(action.project, action.env)
            assert env is not None
            reason = self.unrunnable(env)
            if reason:
                report.skipped.append((env.key, reason))
                continue
            latest = self.runs.latest(env.project, env.name)
            if latest is not None and self._owned_elsewhere(latest):
                report.skipped.append(
                    (env.key, f"run {latest.id} is in progress in another process")
                )
                continue
            trigger = Trigger.ROLLBACK if env.key in rolled_back else Trigger.POLL
            task = self._schedule(env, trigger, None, action.from_version)
            if task is not None:
                started.append(task)
            else:
                latest = self.runs.latest(env.project, env.name)
                if latest is not None and latest.state.is_waiting:
                    report.runs.append(latest)
        reported = {r.id for r in report.runs}
        for run in self.runs.active():
            if run.state.is_waiting and wanted(run.project, run.env) and run.key not in self._tasks:
                task = self._resume(run)
                if task is not None:
                    started.append(task)
                    reported.add(run.id)
                elif run.id not in reported:
                    report.runs.append(run)
        if wait and started:
            finished = list(await asyncio.gather(*started))
            report.runs = [
                r for r in report.runs if r.id not in {f.id for f in finished}
            ] + finished
        return report

    def unrunnable(self, env: model.Environment) -> str | None:
        """Why this process cannot run ``env`` at all (so no run is created and failed), or None."""
        if env.deploy.type not in (
            model.DeployType.SCRIPT,
            model.DeployType.GIT_PULL,
            model.DeployType.CONTAINER,
        ):
            return f"deploy type {env.deploy.type.value!r} is not available in this build"
        if any(t.agent or t.selector for t in env.targets):
            if self.executors.agents is None or self.hub is None:
                return "its targets are agents and no QUIC hub runs in this process (use 'quicflow serve')"
            desired = self._desired
            assert desired is not None
            wanted = [
                t.name for t in resolve_targets(env, desired, self.data_dir) if t.kind == "agent"
            ]
            connected = {a.name for a in self.hub.select(names=wanted)}
            missing = [name for name in wanted if name not in connected]
            if missing:
                return f"agent{'s' if len(missing) > 1 else ''} {', '.join(missing)} not connected"
        return None

    def _owned_elsewhere(self, run: Run) -> bool:
        """Whether another live process (``serve`` beside an ``apply``) is executing ``run``."""
        if run.state not in (RunState.RUNNING, RunState.PENDING):
            return False
        owner = str(run.detail.get("owner", ""))
        return owner != self._owner and owners.alive(owner)

    def _rolled_back(self) -> frozenset[str]:
        """Environments (``project/env``) that a rollback commit at the head names.

        Read once per pass. Only those environments run with trigger ``rollback``; other
        changes released in the same pass are ordinary releases (a ``when: trigger !=
        'rollback'`` must still run for them).
        """
        desired = self._desired
        if desired is None:
            return frozenset()
        message = self.repo.commit(desired.commit).message
        return frozenset(
            line.removeprefix(ROLLBACK_TRAILER).strip()
            for line in message.splitlines()
            if line.startswith(ROLLBACK_TRAILER)
        )

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Reconcile every ``poll_interval`` and whenever asked, until ``stop`` is set."""
        while not stop.is_set():
            try:
                await self.reconcile_once(wait=False)
            except QuicFlowError as exc:
                _log.error("reconcile pass failed: %s", exc)
            interval = self._desired.settings.poll_interval if self._desired else 60.0
            self._wake.clear()
            waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
            await asyncio.wait(waiters, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()

    async def reconcile_now(self, reason: str) -> None:
        _log.info("reconcile requested: %s", reason)
        self._wake.set()

    async def wait_idle(self) -> None:
        """Wait until no run task of this process is in flight (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)
        if self._builder is not None:
            await self._builder.close()
        await self.bus.close()
        if self._credentials is not None:
            self._credentials.close()
        self.db.close()

    # -- runs ------------------------------------------------------------------------

    def _schedule(
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
        if key in self._tasks:
            return None  # running: the next pass re-plans after it
        current = self.runs.latest(*key)
        if current is not None and current.state.is_waiting:
            if (current.version, current.config_hash) == (
                version,
                env.config_hash,
            ) and trigger is not Trigger.MANUAL:
                return self._resume(current)
            self.runs.update(
                current,
                state=RunState.SUPERSEDED,
                finished_at=iso(self.now()),
                error=f"superseded by a newer desired state ({version})",
            )
        now = self.now()
        run = Run(
            id=_run_id(now),
            project=env.project,
            env=env.name,
            version=version,
            config_commit=self._desired.commit if self._desired else "",
            config_hash=env.config_hash,
            trigger=trigger,
            previous_version=previous,
            actor=actor.username if actor else "",
            strategy=env.strategy.type.value,
            created_at=iso(now),
            forced=force,
            detail={**(detail or {}), "owner": self._owner},
        )
        if (
            current is not None
            and current.state is RunState.INTERRUPTED
            and (current.version, current.config_hash) == (version, env.config_hash)
        ):
            run = replace(run, resumes=current.id)
            self.runs.create(run)
            self.runs.copy_done_steps(
                current.id,
                run.id,
                (
                    "stage:",
                    "task:",
                    "deploy:",
                    "verify:",
                    "analysis:",
                    "switch",
                    "batch:",
                    "approval:",
                ),
            )
        else:
            self.runs.create(run)
        if env.release_windows and not force and not windows.is_open(env.release_windows, now):
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
            self._publish(run, EventType.RUN_WAITING, data={"reason": "release window"})
            return None
        return self._start(run, env)

    def _resume(self, run: Run) -> asyncio.Task[Run] | None:
        desired = self._desired
        env = desired.environment(run.project, run.env) if desired else None
        if env is None:
            return None
        if (
            run.state is RunState.WAITING_WINDOW
            and env.release_windows
            and not run.forced
            and not windows.is_open(env.release_windows, self.now())
        ):
            return None
        if run.state is RunState.WAITING_APPROVAL:
            gate = str(run.detail.get("gate", ""))
            if (
                gate
                and self.runs.decision(run.id, gate) is None
                and not self._approval_may_expire(run)
            ):
                return None
        return self._start(run, env)

    def _approval_may_expire(self, run: Run) -> bool:
        # A waiting approval with a timeout is replayed so the executor can time it out.
        return bool(run.detail.get("approval_timeout"))

    def _start(self, run: Run, env: model.Environment) -> asyncio.Task[Run]:
        task = asyncio.get_running_loop().create_task(self._execute(run, env))
        self._tasks[run.key] = task
        task.add_done_callback(lambda _t, key=run.key: self._tasks.pop(key, None))
        return task

    async def _execute(self, run: Run, env: model.Environment) -> Run:
        async with self._slots:
            desired = self._desired
            assert desired is not None
            first_start = not run.started_at
            run = self.runs.update(
                run,
                state=RunState.RUNNING,
                started_at=run.started_at or iso(self.now()),
                detail={**run.detail, "owner": self._owner},
            )
            if first_start:
                self._publish(run, EventType.RUN_STARTED)
            try:
                ctx = await self._context(run, env, desired)
            except QuicFlowError as exc:
                return await self._finish(
                    run, env, Outcome(RunState.FAILED, str(exc), "deploy_failed")
                )
            masker = ctx.masker
            seed = self._seed(run, env)
            try:
                outcome = await RunExecutor(ctx, seed).execute()
            except asyncio.CancelledError:
                await asyncio.shield(
                    self._finish(run, env, Outcome(RunState.CANCELLED, "cancelled"))
                )
                raise
            except Exception as exc:  # noqa: BLE001 - a bug fails its run, never the whole pass
                _log.exception("run %s crashed", run.id)
                outcome = Outcome(
                    RunState.FAILED, masker.mask(f"internal error: {type(exc).__name__}: {exc}")
                )
            return await self._finish(run, env, outcome)

    def _seed(self, run: Run, env: model.Environment) -> dict[str, Any]:
        """What a strategy must know from earlier runs (the live blue-green color)."""
        if env.strategy.type is not model.StrategyType.BLUE_GREEN:
            return {}
        found, _ = self.runs.list(run.project, run.env, states=[RunState.SUCCEEDED], limit=1)
        live = found[0].detail.get("color") if found else None
        seed: dict[str, Any] = {"live_color": live} if live else {}
        if run.detail.get("color"):
            seed["color"] = run.detail["color"]
        return seed

    async def _secrets(
        self, env: model.Environment, desired: model.DesiredState
    ) -> tuple[dict[str, str], Masker]:
        refs: dict[str, model.SecretRef] = {}
        for mapping in [
            env.variables,
            *[t.variables for s in env.pipeline.stages for t in s.tasks],
        ]:
            for value in mapping.values():
                if isinstance(value, model.SecretRef):
                    refs[name_of(value)] = value
        # The container driver logs in to the registry with this credential's two fields.
        registry = env.deploy.spec.get("registry_credential") or env.build.registry_credential
        if env.deploy.type is model.DeployType.CONTAINER and registry:
            for part in ("username", "password"):
                refs[name_of(model.SecretRef(registry, part))] = model.SecretRef(registry, part)
        if not refs:
            return {}, Masker([])
        manager = await asyncio.to_thread(self._credential_manager, desired)
        values: dict[str, str] = {}
        for key, ref in refs.items():
            try:
                credential = manager.get(ref.credential, env.project, actor=f"run:{env.key}")
                values[key] = credential.value(ref.field)
            except (KeyError, QuicFlowError) as exc:
                raise PermanentError(f"variable secret {ref.credential!r}: {exc}") from None
        return values, Masker(manager.secret_values(env.project))

    def _credential_manager(self, desired: model.DesiredState) -> CredentialManager:
        # Runs of several environments ask at once, from threads: load each commit's files once.
        with self._credentials_lock:
            return self._load_credentials(desired)

    def _load_credentials(self, desired: model.DesiredState) -> CredentialManager:
        if self._credentials is None:
            self._credentials = CredentialManager.open(self.data_dir, self._environ)
        if self._credentials_commit != desired.commit:
            files = {}
            sources = [c.source for c in desired.credentials.values()]
            sources += [
                c.source for creds in desired.project_credentials.values() for c in creds.values()
            ]
            for source in {s.path: s for s in sources}.values():
                files[source.path] = self.repo.blob(source.blob).decode()
            from reconciler.credential import age

            identities = age.identities_from_env(self._environ)
            self._credentials.load_git(files, identities or None)
            self._credentials_commit = desired.commit
        return self._credentials

    async def _finish(self, run: Run, env: model.Environment, outcome: Outcome) -> Run:
        now = iso(self.now())
        detail = {**run.detail, **{k: v for k, v in outcome.result.items() if _jsonable(v)}}
        if outcome.state.is_waiting:
            if outcome.gate:
                detail["gate"] = outcome.gate
            detail["waiting"] = outcome.error
            run = self.runs.update(run, state=outcome.state, detail=detail)
            self._publish(
                run, EventType.RUN_WAITING, data={"reason": outcome.error, "gate": outcome.gate}
            )
            return run
        if outcome.state is RunState.SUCCEEDED and detail.get("rollback_window") is not None:
            due = self.now() + dt.timedelta(seconds=float(detail["rollback_window"]))
            detail["retire_due"] = iso(due)
        run = self.runs.update(
            run, state=outcome.state, finished_at=now, error=outcome.error, detail=detail
        )
        self.logs.close_stream(run.id)
        kind = {
            RunState.SUCCEEDED: EventType.RUN_SUCCEEDED,
            RunState.CANCELLED: EventType.RUN_CANCELLED,
        }.get(outcome.state, EventType.RUN_FAILED)
        self._publish(run, kind, error=outcome.error)
        if outcome.state in _FINAL_FOR_HISTORY:
            await self._record(run, env, outcome)
        return run

    async def _record(self, run: Run, env: model.Environment, outcome: Outcome) -> None:
        pin = None
        if run.detail.get("pin") and outcome.state is RunState.SUCCEEDED:
            pin = planning.Pin(
                run.version,
                str(run.detail["pin_desired_version"]),
                str(run.detail["pin_desired_hash"]),
            )
        record = RunOutcome(
            run_id=run.id,
            project=run.project,
            env=run.env,
            config_commit=run.config_commit,
            version=run.version,
            config_hash=run.config_hash,
            outcome=outcome.state.value,
            strategy=run.strategy,
            trigger=run.trigger.value,
            started_at=run.started_at,
            finished_at=run.finished_at,
            targets=outcome.touched or tuple(t.label for t in env.targets),
            previous_version=run.previous_version,
            error=outcome.error,
            forced=run.forced,
            pin=pin,
            image_digest=str(run.detail["image_digest"])
            if run.detail.get("image_digest")
            else None,
        )
        # Runs that finish while a batch is being written join the next batch: one state
        # commit each, but one ref update and one note write per batch.
        done = asyncio.get_running_loop().create_future()
        self._history_pending.append((record, done))
        if self._history_writer is None or self._history_writer.done():
            self._history_writer = asyncio.create_task(self._write_history())
        await done

    async def _write_history(self) -> None:
        while self._history_pending:
            batch, self._history_pending = self._history_pending, []
            try:
                await asyncio.to_thread(self.history.record_runs, [outcome for outcome, _ in batch])
            except QuicFlowError as exc:
                ids = ", ".join(outcome.run_id for outcome, _ in batch)
                _log.error("could not record run(s) %s in Git: %s", ids, exc)
            finally:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)

    async def _retire_due(self, wanted: Callable[[str, str], bool]) -> None:
        """Retire old blue-green colors whose rollback window has passed (driver ``retire``)."""
        now = self.now()
        desired = self._desired
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
            if env is None or (latest and latest[0].id != run.id):
                # A newer release owns the environment now; it retires what it replaced.
                self.runs.update(run, detail={**run.detail, "retired": "superseded"})
                continue
            notes = await self._retire(run, env, str(color))
            self.runs.update(run, detail={**run.detail, "retired": iso(now), "retire_notes": notes})
            self.logs.append(
                run.id,
                [
                    (
                        iso(now),
                        "engine",
                        "system",
                        f"rollback window over: old color {color} retired ({notes})",
                    )
                ],
            )

    async def _context(
        self, run: Run, env: model.Environment, desired: model.DesiredState, build: bool = True
    ) -> RunContext:
        """What a run (or a later step of it, like retirement) works with; secrets resolved."""
        secrets_, masker = await self._secrets(env, desired)
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
            secrets=secrets_,
            sleep=self.sleep,
            builder=self.builder if build and _builds(env) else None,
        )

    async def _retire(self, run: Run, env: model.Environment, color: str) -> str:
        desired = self._desired
        assert desired is not None
        project = desired.projects[env.project]
        driver = for_deploy(env.deploy, env.strategy, project.repo.url if project.repo else None)
        try:
            ctx = await self._context(run, env, desired, build=False)
        except QuicFlowError as exc:
            return f"not retired: {exc}"
        failed = []
        for target in resolve_targets(env, desired, self.data_dir):
            try:
                await driver.retire(ctx, target, color)
            except (StepFailed, QuicFlowError) as exc:
                failed.append(f"{target.name}: {exc}")
        return "; ".join(failed) if failed else "all targets"

    def _publish(
        self, run: Run, kind: EventType, error: str = "", data: Mapping[str, Any] | None = None
    ) -> None:
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

    # -- EngineControl: actions ------------------------------------------------------

    def _env(self, project: str, env: str) -> model.Environment:
        desired = self._desired
        found = desired.environment(project, env) if desired else None
        if found is None:
            raise KeyError(f"unknown environment {project}/{env}")
        return found

    def _authorize(
        self, actor: model.User | None, project: str, action: permissions.Action, protected: bool
    ) -> None:
        if actor is None:
            return  # the system itself (poll, webhook, schedule)
        desired = self._desired
        assert desired is not None
        role = desired.projects[project].role_of(actor.username)
        if not permissions.allowed(role, action, protected, actor.is_admin):
            needed = " or ".join(r.value for r in permissions.roles_allowed(action, protected))
            raise PermissionDenied(
                f"{actor.username} ({role or 'not a member'}) may not {action.value} in "
                f"{project}{' (protected)' if protected else ''}: needs {needed}"
            )

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
        target = self._env(project, env)
        self._authorize(actor, project, permissions.Action.DEPLOY, target.protected)
        if force:
            desired = self._desired
            assert desired is not None
            role = desired.projects[project].role_of(actor.username) if actor else None
            if actor is not None and not (actor.is_admin or role == "owner"):
                raise PermissionDenied(
                    f"only an owner may force a deploy outside the release window of {project}/{env}"
                )
        elif (
            target.release_windows
            and not windows.is_open(target.release_windows, self.now())
            and trigger is Trigger.MANUAL
        ):
            opening = windows.next_opening(target.release_windows, self.now())
            raise PermanentError(
                f"{project}/{env} is outside its release window (next opening "
                f"{iso(opening) if opening else 'never'}); an owner may force it"
            )
        latest = self.runs.latest(project, env)
        if (project, env) in self._tasks or (latest is not None and self._owned_elsewhere(latest)):
            raise PermanentError(f"a run is in progress for {project}/{env}; cancel it or wait")
        record = self.deployed().get((project, env))
        task = self._schedule(
            target, trigger, actor, record.version if record else None, version, force, detail
        )
        if task is None:
            latest = self.runs.latest(project, env)
            assert latest is not None
            return latest
        await asyncio.sleep(0)
        latest = self.runs.latest(project, env)
        assert latest is not None
        return latest

    def _waiting_run(self, run_id: str) -> tuple[Run, model.Environment]:
        run = self.runs.get(run_id)
        if run is None:
            raise KeyError(f"unknown run {run_id}")
        if run.state is not RunState.WAITING_APPROVAL:
            raise PermanentError(f"run {run_id} is {run.state.value}, not waiting for approval")
        return run, self._env(run.project, run.env)

    async def _decide(
        self,
        run_id: str,
        actor: model.User,
        approved: bool,
        comment: str,
        promote: bool,
        resume: bool = True,
    ) -> Run:
        run, env = self._waiting_run(run_id)
        gate = str(run.detail.get("gate", ""))
        if promote != gate.startswith("promote:"):
            raise PermanentError(
                f"run {run_id} waits at {gate!r}; use {'promote' if not promote else 'approve'}"
            )
        self._authorize(actor, run.project, permissions.Action.APPROVE, env.protected)
        if gate.startswith("approval:") and not actor.is_admin:
            stage = next((s for s in env.pipeline.stages if f"approval:{s.name}" == gate), None)
            role = (
                self._desired.projects[run.project].role_of(actor.username)
                if self._desired
                else None
            )
            if (
                stage is not None
                and stage.approval is not None
                and role not in stage.approval.roles
            ):
                raise PermissionDenied(
                    f"{actor.username} ({role or 'not a member'}) may not approve stage "
                    f"{stage.name!r}: needs {' or '.join(stage.approval.roles)}"
                )
        if not self.runs.decide(
            Decision(run.id, gate, approved, actor.username, iso(self.now()), comment)
        ):
            raise PermanentError(f"gate {gate!r} of run {run_id} is already decided")
        self._publish(
            run, EventType.APPROVED if approved else EventType.REJECTED, data={"by": actor.username}
        )
        task = self._resume(run) if resume else None
        if task is None:
            return self.runs.get(run.id) or run
        await asyncio.sleep(0)
        return self.runs.get(run.id) or run

    async def approve(
        self, run_id: str, actor: model.User, comment: str = "", resume: bool = True
    ) -> Run:
        """Approve the gate the run waits at; ``resume`` continues it in this process."""
        return await self._decide(run_id, actor, True, comment, promote=False, resume=resume)

    async def reject(
        self, run_id: str, actor: model.User, comment: str = "", resume: bool = True
    ) -> Run:
        run = self.runs.get(run_id)
        promote = bool(run and str(run.detail.get("gate", "")).startswith("promote:"))
        return await self._decide(run_id, actor, False, comment, promote=promote, resume=resume)

    async def promote(self, run_id: str, actor: model.User, resume: bool = True) -> Run:
        return await self._decide(run_id, actor, True, "", promote=True, resume=resume)

    async def cancel(self, run_id: str, actor: model.User) -> Run:
        run = self.runs.get(run_id)
        if run is None:
            raise KeyError(f"unknown run {run_id}")
        env = self._env(run.project, run.env)
        self._authorize(actor, run.project, permissions.Action.DEPLOY, env.protected)
        if run.state.is_final:
            raise PermanentError(f"run {run_id} already ended {run.state.value}")
        task = self._tasks.get(run.key)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return self.runs.get(run_id) or run
        run = self.runs.update(
            run,
            state=RunState.CANCELLED,
            finished_at=iso(self.now()),
            error=f"cancelled by {actor.username}",
        )
        self.logs.close_stream(run.id)
        self._publish(run, EventType.RUN_CANCELLED)
        return run

    async def rollback(
        self,
        project: str,
        env: str,
        *,
        actor: model.User | None,
        to_version: str | None = None,
        pin: bool = False,
    ) -> Run | str:
        target = self._env(project, env)
        self._authorize(actor, project, permissions.Action.ROLLBACK, target.protected)
        version = to_version or self.previous_good_version(project, env)
        if version is None:
            raise PermanentError(
                f"{project}/{env} has no earlier successful version to roll back to"
            )
        if pin:
            return await self.deploy(
                project,
                env,
                version,
                actor=actor,
                trigger=Trigger.ROLLBACK,
                detail={
                    "pin": "true",
                    "pin_desired_version": target.version,
                    "pin_desired_hash": target.config_hash,
                },
            )
        return await asyncio.to_thread(self._commit_revert, target, version, actor)

    def previous_good_version(self, project: str, env: str) -> str | None:
        current = self.deployed().get((project, env))
        for entry in self.history.entries(project, env, limit=200):
            record = entry.record
            if record and record.version and (current is None or record.version != current.version):
                return record.version
        return None

    def _commit_revert(self, env: model.Environment, version: str, actor: model.User | None) -> str:
        desired = self._desired
        assert desired is not None
        path = env.source.path
        text = self.repo.blob(env.source.blob).decode()
        new_text, count = re.subn(r"(?m)^version:.*$", f'version: "{version}"', text, count=1)
        if not count:
            raise PermanentError(f"{path}: no top-level 'version:' line to change")
        who = actor.username if actor else "quicflow"
        message = f"Roll back {env.key} to {version}\n\nRequested by {who}.\n\n{ROLLBACK_TRAILER} {env.key}\n"
        commit = self.repo.update_file_on_branch(
            desired.settings.branch, path, new_text.encode(), message
        )
        if self.repo.has_remote:
            self.repo.push_branch(desired.settings.branch)
        return commit


def _run_id(now: dt.datetime) -> str:
    return f"r-{now.strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}"


def _builds(env: model.Environment) -> bool:
    """Whether ``env``'s pipeline has a ``uses: build`` task."""
    return any(t.uses == "build" for s in env.pipeline.stages for t in s.tasks)


def _jsonable(value: Any) -> bool:
    return isinstance(value, str | int | float | bool | list | dict | type(None))
