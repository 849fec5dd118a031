"""Execute one run: its pipeline, its strategy, its rollback, and its record.

``RunExecutor.execute`` replays the run's pipeline over its recorded steps: stages in
order, the tasks of a stage concurrently, ``when:`` conditions, approval gates,
per-task timeout and retries (with backoff between attempts, never shorter than a
``TemporaryError``'s ``delay``), ``uses: build`` building the run's version on the
engine's Builder (its image and digest go into the run detail, so a later ``uses:
deploy`` runs that digest), ``uses: deploy`` handing over to the strategy. A gate
that is not yet decided (approval, manual canary promotion) or a closed release
window raises ``Waiting``: the run is saved in a waiting state and resumed later by
the same replay. Every log line is masked before it is stored.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from reconciler import backoff
from reconciler.builder.building import Builder, BuildError
from reconciler.builds import BuildStatus
from reconciler.credential.resolving import name_of
from reconciler.drivers import StepFailed, for_deploy, targets_of
from reconciler.engine import image_builds, strategies
from reconciler.engine.bus import EventBus
from reconciler.engine.steps import Rejected, Steps, Waiting, current_step
from reconciler.engine.strategies import Rollout, RolloutFailed
from reconciler.errors import PermanentError, TemporaryError
from reconciler.events import Event, EventType
from reconciler.gitops import model
from reconciler.log.masking import Masker
from reconciler.log.store import LogStore
from reconciler.rules import expressions
from reconciler.runs import Decision, Run, RunState, StepKey, StepKind, StepStatus
from reconciler.store.runs import RunStore
from reconciler.targets.commands import CommandResult, Settling, TargetRef
from reconciler.targets.resolving import Executors

SecretResolver = Callable[[str, str | None, str], str]  # (credential, field, project) -> value
Now = Callable[[], dt.datetime]
_LINE_SPLIT = re.compile(r"\r?\n")
# The wait between a task's attempts (``retries:``): at most 1, 2, 4, … 30 s, at least half.
TASK_BACKOFF = 1.0
TASK_MAX_BACKOFF = 30.0
# How long a rollback waits for an agent lost mid-command to come back and report how the
# command ended, before giving that target up (it is then left as it is).
LOST_AGENT_WAIT = 300.0


def iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class RunContext:
    """Everything one run works with; implements the drivers' DeployContext."""

    run: Run
    env: model.Environment
    desired: model.DesiredState
    store: RunStore
    logs: LogStore
    bus: EventBus
    executors: Executors
    data_dir: Path
    now: Now
    masker: Masker
    secrets: Mapping[str, str] = field(default_factory=dict)
    variables_override: Mapping[str, model.Value] | None = None
    sleep: Callable[[float], Any] = asyncio.sleep
    builder: Builder | None = None  # for ``uses: build`` tasks
    jitter: Callable[[], float] = random.random  # draws for the backoff between retries
    # Commands whose target was lost while they ran, by target: (command id, step).
    lost_commands: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    _buffers: dict[tuple[str, str], str] = field(default_factory=dict)
    _calls: dict[str, int] = field(default_factory=dict)

    @property
    def version(self) -> str:
        return self.run.version

    @property
    def previous_version(self) -> str | None:
        return self.run.previous_version

    def for_task(self, task: model.Task) -> RunContext:
        """A view of this context whose variables are the task's (task level wins)."""
        return replace(
            self, variables_override=task.variables, _buffers=self._buffers, _calls=self._calls
        )

    # -- variables ------------------------------------------------------------------

    def builtins(self, target: TargetRef | None, version: str, color: str | None) -> dict[str, str]:
        work = (
            target.work_dir
            if target
            else str(self.data_dir / "work" / self.env.project / self.env.name)
        )
        values = {
            "QUICFLOW_RUN_ID": self.run.id,
            "QUICFLOW_PROJECT": self.env.project,
            "QUICFLOW_ENV": self.env.name,
            "QUICFLOW_VERSION": version,
            "QUICFLOW_PREVIOUS_VERSION": self.run.previous_version or "",
            "QUICFLOW_CONFIG_COMMIT": self.run.config_commit,
            "QUICFLOW_TRIGGER": self.run.trigger.value,
            "QUICFLOW_TARGET": target.name if target else "",
            "QUICFLOW_TARGET_ADDRESS": target.address if target else "",
            "QUICFLOW_TARGET_PORT": str(target.port or "") if target else "",
            "QUICFLOW_WORK_DIR": work,
            "QUICFLOW_APP_DIR": work,
            "QUICFLOW_COLOR": color or "",
            "QUICFLOW_IMAGE": str(self.run.detail.get("image", "")),
            "QUICFLOW_IMAGE_DIGEST": str(self.run.detail.get("image_digest", "")),
        }
        return values

    def variables(
        self, target: TargetRef | None, version: str, color: str | None = None
    ) -> dict[str, str]:
        merged = (
            self.variables_override if self.variables_override is not None else self.env.variables
        )
        out: dict[str, str] = {}
        for name, value in merged.items():
            if isinstance(value, model.SecretRef):
                out[name] = self.secrets[name_of(value)]
            elif value is None:
                out[name] = ""
            elif isinstance(value, bool):
                out[name] = "true" if value else "false"
            else:
                out[name] = str(value)
        # Built-ins last: user variables may not shadow them (the loader refuses it too).
        out.update(self.builtins(target, version, color))
        return out

    # -- commands and logs ------------------------------------------------------------

    async def execute(
        self,
        target: TargetRef,
        script: str,
        *,
        key: str,
        env: Mapping[str, str],
        timeout: float | None = None,
        cwd: str | None = None,
    ) -> CommandResult:
        source = f"{target.name}/{key}"
        executor = self.executors.for_target(target)
        self.log(source, f"$ {key} on {target.name}")
        command_id = self.command_id(source)
        result = await executor.run(
            target,
            command_id,
            script,
            env,
            timeout,
            lambda channel, text: self._output(source, channel, text),
            cwd,
        )
        self._flush(source)
        if result.lost:
            # It may still be running there: nothing undoes this target until it is known.
            step = current_step.get()
            what = step[0] if step else source
            self.lost_commands.setdefault(target.name, []).append((command_id, what))
        if not result.ok:
            reason = (
                "timed out"
                if result.timed_out
                else (result.error or f"exit code {result.exit_code}")
            )
            self.log(source, f"{key} on {target.name} {reason} after {result.duration:.2f}s")
        return result

    def command_id(self, source: str) -> str:
        """A name for the next command of ``source``, the same when a resumed run re-issues it.

        ``run:step#attempt:target/key#n`` — the run that issued the step's attempt, the
        step and attempt (``Steps.once``), and the how manyth command of that target and
        key within it. A run resuming a step that was in flight when its predecessor
        died names its commands after the predecessor's, so an executor with a journal
        (the agents, the local executor) hands back the result, or adopts the process
        while it runs, instead of running it twice; every other attempt, retry and
        check gets a name of its own. Outside a step a command's name is unique.
        """
        step = current_step.get()
        if step is None:
            return f"{self.run.id}:{source}#{secrets.token_hex(6)}"
        key, attempt, issuer = step
        prefix = f"{issuer}:{key}#{attempt}:{source}"
        self._calls[prefix] = self._calls.get(prefix, 0) + 1
        return f"{prefix}#{self._calls[prefix]}"

    async def settle(
        self, target: TargetRef, command_id: str, what: str, wait: float
    ) -> CommandResult:
        """How the lost ``command_id`` on ``target`` ended, waiting up to ``wait`` s for its
        agent to come back and report it (a restarted agent first kills what survived).

        Once known, the command is no longer among ``lost_commands``; while unknown the
        result is ``lost`` and it stays there (nothing may undo or repeat it yet).
        """
        executor = self.executors.for_target(target)
        if not isinstance(executor, Settling):
            return CommandResult(
                exit_code=None, duration=0.0, error="its executor cannot tell", lost=True
            )
        result = await executor.settle(target, command_id, wait)
        if result.lost:
            return result
        commands = self.lost_commands.get(target.name, [])
        if (command_id, what) in commands:
            commands.remove((command_id, what))
        how = result.error or (
            f"signal {result.signal}" if result.signal else f"exit code {result.exit_code}"
        )
        self.log("engine", f"agent {target.name} reported {what} (command {command_id}): {how}")
        return result

    def _output(self, source: str, channel: str, text: str) -> None:
        key = (source, channel)
        data = self._buffers.get(key, "") + text
        *lines, rest = _LINE_SPLIT.split(data)
        self._buffers[key] = rest
        if lines:
            at = iso(self.now())
            self.logs.append(
                self.run.id, [(at, source, channel, self.masker.mask(line)) for line in lines]
            )

    def _flush(self, source: str) -> None:
        for key in [k for k in self._buffers if k[0] == source]:
            rest = self._buffers.pop(key)
            if rest:
                self.logs.append(
                    self.run.id, [(iso(self.now()), source, key[1], self.masker.mask(rest))]
                )

    def log(self, source: str, text: str) -> None:
        self.logs.append(self.run.id, [(iso(self.now()), source, "system", self.masker.mask(text))])

    def emit(
        self,
        kind: str | EventType,
        *,
        stage: str = "",
        task: str = "",
        target: str = "",
        error: str = "",
        data: Mapping[str, Any] | None = None,
    ) -> None:
        self.bus.publish(
            Event(
                EventType(kind),
                iso(self.now()),
                self.run.id,
                self.env.project,
                self.env.name,
                self.run.version,
                stage,
                task,
                target,
                self.masker.mask(error),
                dict(data or {}),
            )
        )


class ContextFactory(Protocol):
    """Makes the context of a run (secrets resolved); ``build`` False leaves out the Builder."""

    async def __call__(
        self, run: Run, env: model.Environment, desired: model.DesiredState, build: bool = True
    ) -> RunContext: ...


def retry_wait(attempt: int, failure: BaseException, jitter: float) -> float:
    """How long to wait after failed attempt ``attempt`` of a task, before the next one.

    The ordinary backoff (``jitter`` a draw from [0, 1)), but never shorter than the
    ``delay`` a ``TemporaryError`` asks for (raised itself, or the cause of a failure).
    """
    asked = failure if isinstance(failure, TemporaryError) else failure.__cause__
    at_least = asked.delay if isinstance(asked, TemporaryError) else 0.0
    return backoff.delay(attempt, TASK_BACKOFF, TASK_MAX_BACKOFF, jitter, at_least)


class _Gates:
    """Approval decisions of a run, read from the store."""

    def __init__(self, store: RunStore, run_id: str):
        self.store = store
        self.run_id = run_id

    def decided(self, gate: str) -> bool | None:
        decision: Decision | None = self.store.decision(self.run_id, gate)
        return None if decision is None else decision.approved

    def request(self, gate: str, reason: str) -> None:  # recorded by the executor when it waits
        return None


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a run ended (or paused), for the reconciler and history."""

    state: RunState
    error: str = ""
    event: str = ""
    result: Mapping[str, Any] = field(default_factory=dict)
    gate: str = ""
    touched: tuple[str, ...] = ()


class RunExecutor:
    """Drives one run through its pipeline; resumable from its recorded steps."""

    def __init__(self, ctx: RunContext, rollout_seed: Mapping[str, Any] | None = None):
        self.ctx = ctx
        self.steps = Steps(ctx.store, ctx.run.id, lambda: iso(ctx.now()))
        self.gates = _Gates(ctx.store, ctx.run.id)
        self.seed = dict(rollout_seed or {})
        self.rollout: Rollout | None = None
        self.built: dict[str, str] = {}  # image, image_digest, build_id of a ``uses: build``
        self.targets = targets_of(ctx.env, ctx.desired, ctx.data_dir)

    async def execute(self) -> Outcome:
        ctx = self.ctx
        try:
            for stage in ctx.env.pipeline.stages:
                await self._stage(stage)
        except Waiting as wait:
            return Outcome(
                RunState(wait.state),
                wait.reason,
                gate=wait.gate,
                result={
                    **self.built,
                    **(self.rollout.result if self.rollout else {}),
                    **wait.detail,
                },
            )
        except Rejected as rejection:
            self.ctx.log("engine", f"run rejected: {rejection}")
            return await self._undo(str(rejection), "rejected")
        except RolloutFailed as failure:
            return await self._failed(str(failure), failure.event, timed_out=failure.timed_out)
        except StepFailed as failure:
            return await self._failed(str(failure), "deploy_failed", timed_out=failure.timed_out)
        except PermanentError as failure:
            return await self._failed(str(failure), "deploy_failed")
        except asyncio.CancelledError:
            await asyncio.shield(self._after_cancel())
            raise
        return Outcome(
            RunState.SUCCEEDED,
            result={**self.built, **(self.rollout.result if self.rollout else {})},
            touched=self._touched(),
        )

    def _touched(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.rollout.touched) if self.rollout else ()

    async def _after_cancel(self) -> None:
        self.ctx.log("engine", "run cancelled")

    # -- stages and tasks ------------------------------------------------------------

    def _context(self) -> dict[str, Any]:
        run = self.ctx.run
        merged = self.ctx.env.variables
        return {
            "project": run.project,
            "env": run.env,
            "version": run.version,
            "previous_version": run.previous_version,
            "trigger": run.trigger.value,
            "vars": {k: (None if isinstance(v, model.SecretRef) else v) for k, v in merged.items()},
        }

    def _when(self, text: str | None) -> bool:
        if not text:
            return True
        return expressions.is_true(expressions.compile_expression(text), self._context())

    async def _stage(self, stage: model.Stage) -> None:
        key = StepKey.stage(stage.name)
        if self.steps.is_done(key):
            return
        if not self._when(stage.when):
            self.steps.mark(key, StepStatus.SKIPPED, {"reason": f"when: {stage.when}"})
            return
        if stage.approval is not None and stage.approval.applies_to(self.ctx.env.name):
            gate = StepKey.approval(stage.name)
            decided = self.gates.decided(str(gate))
            if decided is None:
                if self.steps.get(gate) is None:
                    self.steps.mark(gate, StepStatus.WAITING, {"roles": list(stage.approval.roles)})
                    self.ctx.emit(
                        EventType.APPROVAL_REQUESTED,
                        stage=stage.name,
                        data={"roles": list(stage.approval.roles)},
                    )
                self._check_approval_timeout(gate, stage.approval)
                raise Waiting(
                    "waiting_approval",
                    str(gate),
                    f"stage {stage.name!r} waits for approval by "
                    f"{' or '.join(stage.approval.roles)}",
                    {"gate": str(gate), "approval_timeout": stage.approval.timeout},
                )
            if decided is False:
                decision = self.ctx.store.decision(self.ctx.run.id, str(gate))
                self.steps.mark(gate, StepStatus.FAILED, error="rejected")
                raise Rejected(
                    f"stage {stage.name!r} rejected by {decision.user if decision else '?'}"
                )
            self.steps.mark(gate, StepStatus.SUCCEEDED)
        if self.steps.get(key) is None:
            self.ctx.emit(EventType.STAGE_STARTED, stage=stage.name)
        self.steps.mark(key, StepStatus.RUNNING)
        results = await asyncio.gather(
            *(self._task(stage, t) for t in stage.tasks), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            waiting = [e for e in errors if isinstance(e, Waiting)]
            first = waiting[0] if waiting else errors[0]
            if not waiting:
                self.steps.mark(key, StepStatus.FAILED, error=str(first))
                if not isinstance(first, Rejected):
                    self.ctx.emit(EventType.STAGE_FAILED, stage=stage.name, error=str(first))
            raise first
        self.steps.mark(key, StepStatus.SUCCEEDED)
        self.ctx.emit(EventType.STAGE_SUCCEEDED, stage=stage.name)

    def _check_approval_timeout(self, gate: StepKey, approval: model.Approval) -> None:
        if approval.timeout is None:
            return
        step = self.steps.get(gate)
        if step is None or not step.started_at:
            return
        started = dt.datetime.fromisoformat(step.started_at.replace("Z", "+00:00"))
        if self.ctx.now() - started > dt.timedelta(seconds=approval.timeout):
            self.steps.mark(gate, StepStatus.FAILED, error="approval timed out")
            raise PermanentError(
                f"approval of {gate.name!r} timed out after {approval.timeout:.0f}s"
            )

    async def _task(self, stage: model.Stage, task: model.Task) -> None:
        key = StepKey.task(stage.name, task.name)
        if self.steps.is_done(key):
            return
        if not self._when(task.when):
            self.steps.mark(key, StepStatus.SKIPPED, {"reason": f"when: {task.when}"})
            return
        self.ctx.emit(EventType.TASK_STARTED, stage=stage.name, task=task.name)
        try:
            if task.uses == "deploy":
                await self._deploy_task(key, task)
            elif task.uses == "build":
                await self._build_task(key, task)
            else:
                await self._script_task(key, stage, task)
        except (Waiting, Rejected):
            raise
        except (RolloutFailed, StepFailed, PermanentError) as exc:
            timed_out = getattr(exc, "timed_out", False)
            self.ctx.emit(
                EventType.TASK_TIMED_OUT if timed_out else EventType.TASK_FAILED,
                stage=stage.name,
                task=task.name,
                error=str(exc),
            )
            raise
        self.ctx.emit(EventType.TASK_SUCCEEDED, stage=stage.name, task=task.name)

    async def _script_task(self, key: StepKey, stage: model.Stage, task: model.Task) -> None:
        ctx = self.ctx.for_task(task)
        if task.on != "targets":
            await self.steps.once(key, lambda: self._attempts(ctx, task, None))
            return

        async def on_every_target() -> dict[str, Any]:
            # One step per target: a resumed run skips the targets it already did.
            for target in self.targets:
                share = StepKey.on_target(stage.name, task.name, target.name)
                await self.steps.once(share, lambda t=target: self._attempts(ctx, task, t))
            return {"targets": [t.name for t in self.targets]}

        await self.steps.once(key, on_every_target)

    async def _attempts(
        self, ctx: RunContext, task: model.Task, place: TargetRef | None
    ) -> dict[str, Any]:
        """Run a script task once on ``place`` (None: the reconciler), with its retries."""
        target = place or TargetRef(
            "reconciler",
            "local",
            "127.0.0.1",
            None,
            str(ctx.data_dir / "work" / ctx.env.project / ctx.env.name),
        )

        async def attempt() -> dict[str, Any]:
            env = ctx.variables(place, ctx.version)
            result = await ctx.execute(
                target, task.run or "", key=task.name, env=env, timeout=task.timeout
            )
            if result.lost:
                result = await settle_before_retrying()
            if not result.ok:
                what = f"task {task.name!r}"
                raise StepFailed(
                    target.name,
                    f"{what} timed out"
                    if result.timed_out
                    else f"{what} exited {result.exit_code}",
                    timed_out=result.timed_out,
                )
            return {"targets": [target.name]}

        async def settle_before_retrying() -> CommandResult:
            # The agent went away mid-attempt and may still be running it (a network cut):
            # another attempt now could run beside it. Its own end decides instead.
            command_id, what = ctx.lost_commands[target.name][-1]
            ctx.log(
                f"{target.name}/{task.name}",
                f"agent {target.name} lost while running task {task.name!r} (command "
                f"{command_id}): no retry until it reports how that attempt ended (at most "
                f"{LOST_AGENT_WAIT:g}s)",
            )
            result = await ctx.settle(target, command_id, what, LOST_AGENT_WAIT)
            if result.lost:
                raise PermanentError(
                    f"task {task.name!r}: agent {target.name} lost while running it and its "
                    f"fate is unknown ({result.error}), so it was not retried: it may still "
                    "be running there"
                )
            return result

        for n in range(1, task.retries + 2):
            try:
                return await attempt()
            except StepFailed as failure:
                if n > task.retries:
                    raise
                wait = retry_wait(n, failure, ctx.jitter())
            except TemporaryError as failure:
                if n > task.retries:
                    # Out of attempts: the step fails like any other, with the reason.
                    raise PermanentError(f"task {task.name!r}: {failure}") from failure
                wait = retry_wait(n, failure, ctx.jitter())
            ctx.log(f"{target.name}/{task.name}", f"attempt {n} failed; retrying in {wait:.1f}s")
            await ctx.sleep(wait)
        raise AssertionError("unreachable")

    async def _build_task(self, key: StepKey, task: model.Task) -> None:
        ctx = self.ctx
        builder = ctx.builder
        project = ctx.desired.projects[ctx.env.project]
        source = f"reconciler/{task.name}"

        async def go() -> dict[str, Any]:
            if builder is None:
                raise PermanentError(f"task {task.name!r} (uses: build): no image builder here")
            try:
                request = image_builds.request_for(
                    project, ctx.env, ctx.version, actor=f"run:{ctx.run.id}", trigger="pipeline"
                )
                started = builder.start(request)
            except (ValueError, BuildError) as exc:
                raise PermanentError(f"task {task.name!r} (uses: build): {exc}") from None
            ctx.log(source, f"build {started.id} of {ctx.version} started")
            try:
                record = await builder.wait(started.id)
            except asyncio.CancelledError:
                await asyncio.shield(builder.cancel(started.id))  # a cancelled run stops its build
                raise
            if record.status is not BuildStatus.SUCCESS:
                raise PermanentError(
                    f"task {task.name!r}: build {record.id} {record.status.value}: {record.error}"
                )
            ctx.log(source, f"build {record.id} pushed {record.image}@{record.digest}")
            return {"build_id": record.id, "image": record.image, "image_digest": record.digest}

        result = await self.steps.once(key, go)
        self.built = {k: str(result[k]) for k in ("build_id", "image", "image_digest")}
        # Later tasks (the container driver) read the digest from the run's detail.
        ctx.run = replace(ctx.run, detail={**ctx.run.detail, **self.built})

    async def _deploy_task(self, key: StepKey, task: model.Task) -> None:
        if not self.targets:
            raise PermanentError(f"{self.ctx.env.key} has no targets")
        rollout = self.rollout = self._rollout_for(task)
        # What the rollout covers, for the run's progress (live, and kept in its detail).
        rollout.result["targets"] = [t.name for t in self.targets]
        self.ctx.run = self.ctx.store.update(
            self.ctx.run, detail={**self.ctx.run.detail, "targets": rollout.result["targets"]}
        )

        async def go() -> dict[str, Any]:
            return await strategies.run(rollout)

        result = await self.steps.once(key, go)
        rollout.result.update(result)

    def _rollout_for(self, task: model.Task) -> Rollout:
        ctx = self.ctx.for_task(task)
        deploy = task.deploy or ctx.env.deploy
        project = ctx.desired.projects[ctx.env.project]
        driver = for_deploy(deploy, ctx.env.strategy, project.repo.url if project.repo else None)
        return Rollout(
            ctx=ctx,
            driver=driver,
            targets=list(self.targets),
            steps=self.steps,
            strategy=ctx.env.strategy,
            version=ctx.version,
            gates=self.gates,
            sleep=ctx.sleep,
            emit=lambda kind, **kw: ctx.emit(kind, task=task.name, **kw),
            result=dict(self.seed),
        )

    def _deployed_targets(self) -> list[TargetRef]:
        """Targets a deploy step of this run started on — carried over from a crash included."""
        started = set()
        for step in self.steps.all():
            try:
                key = StepKey.parse(step.key)
            except ValueError:
                continue
            if key.kind is StepKind.DEPLOY:
                started.add(key.name)
        return [t for t in self.targets if t.name in started]

    # -- failure ---------------------------------------------------------------------

    async def _failed(self, error: str, event: str, timed_out: bool = False) -> Outcome:
        ctx = self.ctx
        ctx.log("engine", f"run failed: {error}")
        if timed_out:
            ctx.emit(EventType.DEPLOY_TIMEOUT, error=error)
        ctx.emit(
            EventType(event)
            if event in EventType.__members__.values()
            else EventType.DEPLOY_FAILED,
            error=error,
        )
        if event != "deploy_failed":
            ctx.emit(EventType.DEPLOY_FAILED, error=error)
        return await self._undo(error, event)

    async def abort(self, reason: str) -> Outcome:
        """End a waiting run Git moved on from: undo what it deployed; it ends superseded.

        A canary waiting for its promote when Git reverts its version must not stay
        half-deployed: its canary targets go back to the previous version. Only a failed
        undo leaves the run ``failed`` (an operator must look).
        """
        self.ctx.log("engine", reason)
        outcome = await self._undo(reason, "", announce=False)
        if outcome.state is RunState.FAILED and "failed on" in outcome.error:
            return outcome
        return replace(outcome, state=RunState.SUPERSEDED)

    def _pipeline_rollout(self) -> Rollout | None:
        """The rollout of this run, also when it failed before reaching its deploy task
        (a gate after a crash, say) but deploys carried over from the run it resumes
        changed targets."""
        rollout = self.rollout
        deployed = self._deployed_targets()
        if rollout is None and deployed:
            stages = self.ctx.env.pipeline.stages
            task = next((t for s in stages for t in s.tasks if t.uses == "deploy"), None)
            rollout = self.rollout = self._rollout_for(task) if task else None
        if rollout is not None:
            rollout.touched.extend(t for t in deployed if t not in rollout.touched)
        return rollout

    async def _undo(self, error: str, event: str, announce: bool = True) -> Outcome:
        """Put the targets this run changed back as they were (auto-rollback)."""
        ctx = self.ctx
        rollout = self._pipeline_rollout()
        touched = self._touched()
        if rollout is None or not rollout.touched:
            return Outcome(RunState.FAILED, error, event, touched=touched)
        if rollout.strategy.type is model.StrategyType.BLUE_GREEN and not rollout.result.get(
            "switched"
        ):
            # The old color never stopped serving: clean up the new one, nothing to restore.
            unknown = await self._settle_lost(rollout.touched)
            await self._retire(rollout, rollout.color or "", unknown)
            left = "".join(f"; {name} not retired: {why}" for name, why in unknown.items())
            return Outcome(
                RunState.FAILED, error + "; traffic never switched" + left, event, touched=touched
            )
        previous = ctx.run.previous_version
        if not rollout.strategy.auto_rollback or not previous:
            reason = "" if rollout.strategy.auto_rollback else " (auto_rollback is off)"
            return Outcome(
                RunState.FAILED,
                error + (reason or "; nothing deployed before, nothing to restore"),
                event,
                touched=touched,
            )
        unknown = await self._settle_lost(rollout.touched)
        restored, failed = [], []
        for target in rollout.touched:
            if target.name in unknown:
                why = unknown[target.name]
                self.steps.mark(StepKey.rollback(target.name), StepStatus.FAILED, error=why)
                failed.append(f"{target.name}: {why}")
                continue
            try:
                await self.steps.once(
                    StepKey.rollback(target.name), lambda t=target: _rollback(rollout, t, previous)
                )
                restored.append(target.name)
            except StepFailed as exc:
                failed.append(f"{target.name}: {exc}")
        if failed:
            return Outcome(
                RunState.FAILED,
                f"{error}; rollback failed on {', '.join(failed)}",
                event,
                touched=touched,
            )
        if announce:
            ctx.emit(
                EventType.ROLLED_BACK, error=error, data={"restored": restored, "version": previous}
            )
        ctx.log("engine", f"rolled back {', '.join(restored)} to {previous}")
        return Outcome(RunState.ROLLED_BACK, error, event, {"restored": restored}, touched=touched)

    async def _settle_lost(self, targets: list[TargetRef]) -> dict[str, str]:
        """Wait until the commands lost with any of ``targets`` are known to have ended.

        A target whose agent went away mid-command may still be running it, and undoing
        anything while it does -- there, or elsewhere in the run -- races it.  So the undo
        waits for those agents to come back and report (a restarted agent first kills
        what survived of the command), at most ``LOST_AGENT_WAIT`` s; cancelling the run
        stops the wait.  Returns why, by target, for each whose fate is still unknown:
        those are left as they are.
        """
        ctx = self.ctx
        lost = [t for t in targets if ctx.lost_commands.get(t.name)]
        if not lost:
            return {}
        wait = LOST_AGENT_WAIT
        for target in lost:
            for command_id, what in ctx.lost_commands[target.name]:
                ctx.log(
                    "engine",
                    f"agent {target.name} lost while running {what} (command {command_id}); "
                    "its fate is unknown: the rollback waits until the agent reports back "
                    f"(at most {wait:g}s; cancelling the run stops the wait)",
                )
        reasons = await asyncio.gather(*(self._settle_target(t, wait) for t in lost))
        return {t.name: why for t, why in zip(lost, reasons, strict=True) if why}

    async def _settle_target(self, target: TargetRef, wait: float) -> str:
        """'' once every lost command of ``target`` has ended, else why its fate is unknown."""
        ctx = self.ctx
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        for command_id, what in list(ctx.lost_commands[target.name]):
            result = await ctx.settle(target, command_id, what, max(0.0, deadline - loop.time()))
            if result.lost:
                return (
                    f"agent {target.name} lost while running {what}; its fate is unknown, so "
                    f"nothing was undone there ({result.error}): check the host before rolling back"
                )
        return ""

    async def _retire(
        self, rollout: Rollout, color: str, unknown: Mapping[str, str] | None = None
    ) -> None:
        for target in rollout.touched:
            if unknown and target.name in unknown:
                continue
            try:
                await self.steps.once(
                    StepKey.retire(target.name, color),
                    lambda t=target: _retire_one(rollout, t, color),
                )
            except StepFailed as exc:
                self.ctx.log("engine", f"could not retire {color} on {target.name}: {exc}")


async def _rollback(rollout: Rollout, target: TargetRef, version: str) -> dict[str, Any]:
    await rollout.driver.rollback(rollout.ctx, target, version, rollout.color)
    return {"version": version}


async def _retire_one(rollout: Rollout, target: TargetRef, color: str) -> dict[str, Any]:
    await rollout.driver.retire(rollout.ctx, target, color)
    return {"color": color}
