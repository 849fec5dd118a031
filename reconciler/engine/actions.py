"""The control actions of the engine: deploy, approve, reject, promote, cancel, rollback.

What the API, the CLI, webhooks and schedules ask of ``EngineControl`` beyond reading.
Each action first asks ``reconciler.auth.permissions`` whether the actor may (``None``
is the system itself) and raises ``PermissionDenied`` with its reason; the rules live
there, not here. Then it acts through the run lifecycle: a deploy schedules a run
(outside a release window only when forced), a decision records itself and resumes the
run waiting at that gate, a cancel stops the run's task or ends a waiting run, and a
rollback commits a revert to Git (``reconciler.gitops.reverting``) — or, pinned,
deploys the old version at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable

from reconciler.auth import permissions
from reconciler.engine.lifecycle import RunLifecycle
from reconciler.engine.running import iso
from reconciler.errors import PermanentError, PermissionDenied
from reconciler.events import EventType
from reconciler.gitops import model, planning, reverting
from reconciler.gitops.history import History
from reconciler.gitops.repository import GitRepository
from reconciler.rules import windows
from reconciler.runs import Decision, Run, RunState, Trigger


def _check(verdict: permissions.Verdict) -> None:
    if not verdict.allowed:
        raise PermissionDenied(verdict.reason)


class Actions:
    """The run actions of ``EngineControl`` over one run lifecycle."""

    def __init__(
        self,
        lifecycle: RunLifecycle,
        *,
        repo: GitRepository,
        history: History,
        desired: Callable[[], model.DesiredState | None],
        now: Callable[[], dt.datetime],
    ):
        self.lifecycle = lifecycle
        self.runs = lifecycle.runs
        self.repo = repo
        self.history = history
        self.desired = desired
        self.now = now

    # -- who and where ---------------------------------------------------------------

    def _env(self, project: str, env: str) -> model.Environment:
        desired = self.desired()
        found = desired.environment(project, env) if desired else None
        if found is None:
            raise KeyError(f"unknown environment {project}/{env}")
        return found

    def _actor(self, user: model.User | None, project: str) -> permissions.Actor | None:
        """``user`` as the permission rules see them on ``project`` (None: the system)."""
        if user is None:
            return None
        desired = self.desired()
        assert desired is not None
        role = desired.projects[project].role_of(user.username)
        return permissions.Actor.on_project(user.username, role, user.is_admin)

    # -- deploying -------------------------------------------------------------------

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
        """Start a run for ``version`` (None: the desired one); ``force`` ignores release windows."""
        target = self._env(project, env)
        who = self._actor(actor, project)
        _check(permissions.may_deploy(who, project, env, target.protected, force=force))
        if (
            not force
            and target.release_windows
            and not windows.is_open(target.release_windows, self.now())
            and trigger is Trigger.MANUAL
        ):
            opening = windows.next_opening(target.release_windows, self.now())
            raise PermanentError(
                f"{project}/{env} is outside its release window (next opening "
                f"{iso(opening) if opening else 'never'}); an owner may force it"
            )
        latest = self.runs.latest(project, env)
        if (project, env) in self.lifecycle.tasks or (
            latest is not None and self.lifecycle.owned_elsewhere(latest)
        ):
            raise PermanentError(f"a run is in progress for {project}/{env}; cancel it or wait")
        record = self.deployed().get((project, env))
        task = self.lifecycle.schedule(
            target, trigger, actor, record.version if record else None, version, force, detail
        )
        if task is not None:
            await asyncio.sleep(0)  # let the run start, so it is returned running
        latest = self.runs.latest(project, env)
        assert latest is not None
        return latest

    def deployed(self) -> dict[tuple[str, str], planning.DeployedRecord]:
        """What the state ref says is deployed."""
        return self.history.deployed()[1]

    # -- gates -----------------------------------------------------------------------

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
        who = self._actor(actor, run.project)
        if promote:
            _check(permissions.may_promote(who, run.project, env.protected))
        else:
            stage = next((s for s in env.pipeline.stages if f"approval:{s.name}" == gate), None)
            roles = stage.approval.roles if stage and stage.approval else None
            rule = permissions.may_approve if approved else permissions.may_reject
            _check(
                rule(
                    who,
                    run.project,
                    env.protected,
                    stage=stage.name if stage else "",
                    stage_roles=tuple(roles) if roles is not None else None,
                )
            )
        if not self.runs.decide(
            Decision(run.id, gate, approved, actor.username, iso(self.now()), comment)
        ):
            raise PermanentError(f"gate {gate!r} of run {run_id} is already decided")
        kind = EventType.APPROVED if approved else EventType.REJECTED
        self.lifecycle.publish(run, kind, data={"by": actor.username})
        if resume and self.lifecycle.resume(run) is not None:
            await asyncio.sleep(0)  # let the run start, so it is returned running
        return self.runs.get(run.id) or run

    async def approve(
        self, run_id: str, actor: model.User, comment: str = "", resume: bool = True
    ) -> Run:
        """Approve the gate the run waits at; ``resume`` continues it in this process."""
        return await self._decide(run_id, actor, True, comment, promote=False, resume=resume)

    async def reject(
        self, run_id: str, actor: model.User, comment: str = "", resume: bool = True
    ) -> Run:
        """Reject the gate (or the manual promotion) the run waits at; the run fails."""
        run = self.runs.get(run_id)
        promote = bool(run and str(run.detail.get("gate", "")).startswith("promote:"))
        return await self._decide(run_id, actor, False, comment, promote=promote, resume=resume)

    async def promote(self, run_id: str, actor: model.User, resume: bool = True) -> Run:
        """Let a canary paused for manual promotion go to its next step."""
        return await self._decide(run_id, actor, True, "", promote=True, resume=resume)

    # -- stopping and going back -----------------------------------------------------

    async def cancel(self, run_id: str, actor: model.User) -> Run:
        """Stop a run executing here, or end a waiting one."""
        run = self.runs.get(run_id)
        if run is None:
            raise KeyError(f"unknown run {run_id}")
        env = self._env(run.project, run.env)
        _check(permissions.may_cancel(self._actor(actor, run.project), run.project, env.protected))
        if run.state.is_final:
            raise PermanentError(f"run {run_id} already ended {run.state.value}")
        if await self.lifecycle.cancel(run):
            return self.runs.get(run_id) or run
        run = self.runs.update(
            run,
            state=RunState.CANCELLED,
            finished_at=iso(self.now()),
            error=f"cancelled by {actor.username}",
        )
        self.lifecycle.logs.close_stream(run.id)
        self.lifecycle.publish(run, EventType.RUN_CANCELLED)
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
        """Roll back: by default commit a revert to Git (returns the commit id); ``pin`` runs it now."""
        target = self._env(project, env)
        who = self._actor(actor, project)
        _check(permissions.may_rollback(who, project, target.protected))
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
        desired = self.desired()
        assert desired is not None
        return await asyncio.to_thread(
            reverting.commit_revert,
            self.repo,
            desired.settings.branch,
            target,
            version,
            actor.username if actor else "quicflow",
        )

    def previous_good_version(self, project: str, env: str) -> str | None:
        """The newest version history recorded for ``project``/``env`` other than the current one."""
        current = self.deployed().get((project, env))
        for entry in self.history.entries(project, env, limit=200):
            record = entry.record
            if record and record.version and (current is None or record.version != current.version):
                return record.version
        return None
