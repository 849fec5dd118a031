"""Dispatching a pass: the plan's deploy actions become runs, and waiting runs resume.

For each deploy action of the plan in the pass's selection, a run is scheduled — unless
this process cannot run the environment at all (a deploy type not built in, agents not
reachable over its hub: a run created only to fail would page someone for nothing),
or another live process is executing one there, or another reconciler holds the
environment's claim (``claiming``); those are reported as skipped, with the reason. A
head commit made by ``rollback`` names the environments that run with trigger
``rollback``; everything else released in the same pass is a ``poll``. Then
every waiting run whose gate has opened (approval decided, release window open) is
resumed; the others are reported as still waiting.

Requests outlive a crash. A run the reconciler stopped during (``interrupted``) is
replaced with what was asked of it — its trigger, actor and request detail (webhook
delivery, pin) — not as a ``poll``; and a *pinned* one (``rollback --pin``, or a
webhook/API deploy that could not be committed) is carried on even though the plan
holds, as long as Git still asks for what it was pinned against: a pending pin is
never silently dropped. Environments a webhook or API deploy is committing or
starting right now (``held``) are left to it.

A release is never repeated because Git forgot it. When the plan would deploy what the
newest run of this process already deployed — same version and configuration,
succeeded, later than what the state ref records — the state ref lost that record (a
ref deleted or rewritten by hand, a mirror wiped, a history write that failed): the run
is recorded again (``rerecord``) and nothing is deployed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.engine import actions
from reconciler.engine.lifecycle import RunLifecycle
from reconciler.gitops import model, planning
from reconciler.runs import Run, RunState, Trigger
from reconciler.targets.resolving import Executors
from reconciler.targets.resolving import resolve as resolve_targets

_log = logging.getLogger(__name__)

#: Deploy types with a driver in this build.
AVAILABLE = frozenset(
    {
        model.DeployType.SCRIPT,
        model.DeployType.GIT_PULL,
        model.DeployType.CONTAINER,
        model.DeployType.KUBERNETES,
    }
)


def _kubernetes_installed() -> bool:
    """Whether the kubernetes client (the ``quicflow[kubernetes]`` extra) can be imported."""
    try:
        return importlib.util.find_spec("kubernetes") is not None
    except (ImportError, ValueError):
        return False


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
    if env.deploy.type is model.DeployType.KUBERNETES:
        # Its one target is the cluster, reached from here through the API server.
        if not desired.settings.features.get("kubernetes", True):
            return "deploy type 'kubernetes' is turned off (settings.features.kubernetes)"
        if not _kubernetes_installed():
            return (
                "deploy type 'kubernetes' needs the kubernetes client "
                "(pip install 'quicflow[kubernetes]')"
            )
        return None
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
    recorded_again: list[asyncio.Task[None]] = field(default_factory=list)


def already_deployed(
    latest: Run | None, env: model.Environment, record: planning.DeployedRecord | None
) -> bool:
    """Whether ``latest`` (this process's newest run of ``env``) deployed what Git asks
    for now, after what the state ref ``record`` says: the state ref lost its record."""
    if latest is None or latest.state is not RunState.SUCCEEDED or latest.detail.get("pin"):
        return False
    if (latest.version, latest.config_hash) != (env.version, env.config_hash):
        return False
    if record is None:
        return True
    if (record.version, record.config_hash) == (env.version, env.config_hash):
        return False  # recorded: whatever the plan says (drift), it is not a lost record
    return record.run_id != latest.id and record.finished_at < latest.finished_at


class Dispatcher:
    """Turns deploy actions into runs of one lifecycle, and resumes its waiting runs."""

    def __init__(
        self,
        lifecycle: RunLifecycle,
        executors: Executors,
        data_dir: Path,
        claimed: Callable[[tuple[str, str]], str | None] | None = None,
        recorded: Callable[[str, str], planning.DeployedRecord | None] | None = None,
        rerecord: Callable[[Run, model.Environment], Awaitable[None]] | None = None,
        fence: Callable[[str, str], str] | None = None,
    ):
        self.lifecycle = lifecycle
        self.runs = lifecycle.runs
        self.executors = executors
        self.data_dir = data_dir
        self.claimed = claimed  # why another reconciler holds an environment now, or None
        # Environments a webhook or API deploy is committing or starting (``actions``).
        self.held: set[tuple[str, str]] = set()
        # What the state ref records, and how a run it lost is recorded again.
        self.recorded = recorded
        self.rerecord = rerecord
        # Replicas: why this one no longer holds an environment's lease ('' while it does),
        # asked right before a run is created or resumed there.
        self.fence = fence
        self._recording_again: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._forced: frozenset[str] = frozenset()
        self._rollback_actor = ""

    def dispatch(
        self,
        desired: model.DesiredState,
        actions: Iterable[planning.Action],
        wanted: Callable[[str, str], bool],
        rolled_back: frozenset[str],
        hub: Any,
        forced: frozenset[str] = frozenset(),
        rollback_actor: str = "",
    ) -> Dispatched:
        """Dispatch the deploy ``actions`` that are ``wanted(project, env)``, then resume.

        ``rolled_back``: environments the head commit rolls back (by ``rollback_actor``);
        ``forced``: those of them an owner forced past a closed release window.
        """
        out = Dispatched()
        self._forced, self._rollback_actor = forced, rollback_actor
        for action in actions:
            if action.kind is planning.ActionKind.ORPHAN or not wanted(action.project, action.env):
                continue
            env = desired.environment(action.project, action.env)
            assert env is not None
            carried = self._interrupted_request(env)
            if carried is not None and pin_holds(carried, env):
                self._deploy(desired, env, carried.trigger, action.from_version, hub, out, carried)
            elif action.kind is planning.ActionKind.DEPLOY:
                if carried is not None and (carried.version, carried.config_hash) != (
                    env.version,
                    env.config_hash,
                ):
                    carried = None  # it asked for something else than this deploy
                if carried is None and self._recorded_again(env, action, out):
                    continue
                trigger = Trigger.ROLLBACK if env.key in rolled_back else Trigger.POLL
                trigger = carried.trigger if carried is not None else trigger
                self._deploy(desired, env, trigger, action.from_version, hub, out, carried)
        reported = {r.id for r in out.waiting}
        for run in self.runs.active():
            if run.state.is_waiting and wanted(*run.key) and run.key not in self.lifecycle.tasks:
                if self.fence is not None and self.fence(*run.key):
                    continue
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
        carried: Run | None = None,
    ) -> None:
        """Schedule ``env`` (again what ``carried``, an interrupted run, asked for) or say why not."""
        reason = unrunnable(env, desired, self.executors, hub, self.data_dir)
        if reason is None and (env.project, env.name) in self.held:
            reason = "a webhook or API deploy is starting there"
        latest = self.runs.latest(env.project, env.name) if reason is None else None
        if latest is not None and self.lifecycle.owned_elsewhere(latest):
            reason = f"run {latest.id} is in progress in another process"
        if reason is None and self.claimed is not None:
            # Another reconciler deploys it now: a run made here would only lose the claim.
            reason = self.claimed((env.project, env.name))
        if not reason and self.fence is not None:
            reason = self.fence(env.project, env.name)
        if reason:
            out.skipped.append((env.key, reason))
            return
        if carried is None:
            rollback = trigger is Trigger.ROLLBACK
            actor = None
            if rollback and self._rollback_actor:
                name = self._rollback_actor
                actor = desired.users.get(name) or model.User(username=name, email="")
            force = rollback and env.key in self._forced
            task = self.lifecycle.schedule(env, trigger, actor, previous, force=force)
        else:
            task = self.lifecycle.schedule(
                env,
                trigger,
                desired.users.get(carried.actor) if carried.actor else None,
                previous,
                carried.version,
                carried.forced,
                {k: v for k, v in carried.detail.items() if k in actions.REQUEST_DETAIL},
            )
        if task is not None:
            out.started.append(task)
            return
        latest = self.runs.latest(env.project, env.name)
        if latest is not None and latest.state.is_waiting:
            out.waiting.append(latest)

    def _recorded_again(
        self, env: model.Environment, action: planning.Action, out: Dispatched
    ) -> bool:
        """Whether ``action`` would repeat a release this process made and the state ref
        lost; if so, that run is recorded again instead (once at a time)."""
        if self.recorded is None or self.rerecord is None or action.reason is planning.Reason.DRIFT:
            return False
        key = (env.project, env.name)
        busy = self._recording_again.get(key)
        if busy is not None and not busy.done():
            return True
        latest = self.runs.latest(*key)
        if key in self.lifecycle.tasks or not already_deployed(latest, env, self.recorded(*key)):
            return False
        assert latest is not None
        _log.warning(
            "%s %s was already deployed by run %s, but the state ref does not record it "
            "(lost from Git); recording it again instead of deploying it again",
            env.key,
            env.version,
            latest.id,
        )
        task = asyncio.get_running_loop().create_task(self.rerecord(latest, env))
        self._recording_again[key] = task
        task.add_done_callback(lambda _t, key=key: self._recording_again.pop(key, None))
        out.recorded_again.append(task)
        return True

    def _interrupted_request(self, env: model.Environment) -> Run | None:
        """The newest run of ``env`` if the reconciler stopped during it (its request is pending)."""
        latest = self.runs.latest(env.project, env.name)
        if latest is None or latest.state is not RunState.INTERRUPTED:
            return None
        return latest


def pin_holds(run: Run, env: model.Environment) -> bool:
    """Whether ``run`` pins and Git still asks for the version it was pinned against
    (a configuration change alone does not end a pin)."""
    return bool(run.detail.get("pin")) and str(run.detail.get("pin_desired_version")) == (
        env.version
    )
