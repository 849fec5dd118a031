"""The control actions of the engine: deploy, approve, reject, promote, cancel, rollback.

What the API, the CLI, webhooks and schedules ask of ``EngineControl`` beyond reading.
Each action first asks ``reconciler.auth.permissions`` whether the actor may (``None``
is the system itself) and raises ``PermissionDenied`` with its reason; the rules live
there, not here. Then it acts through the run lifecycle: a deploy schedules a run
(outside a release window only when forced), a decision records itself and resumes the
run waiting at that gate, a cancel stops the run's task or ends a waiting run, and a
rollback commits a revert to Git (``reconciler.gitops.reverting``) — or, pinned,
deploys the old version at once.

Webhook and API deploys stick, the GitOps way. A deploy of a version other than Git's
first commits the version bump to the config repo (``reconciler.gitops.bumping``, with
trailers naming the trigger, webhook, delivery and actor), loads that commit and runs
from it, so the next poll finds Git and the state ref agreeing. Where the bump cannot
be made — the remote refuses the push (protected branch, read-only token, network) or
the file has no top-level ``version:`` line — the run pins the environment instead,
as ``rollback --pin`` does: the planner holds it (reason ``pinned``) until Git changes.
While the bump is committed and the run started, the dispatcher leaves the environment
alone (``held``), so the poll does not start the same release under another name.

A push that arrives while a run of its environment executes here is queued behind it
(``deploy_or_queue``; newest wins, ``reconciler.engine.queueing``) and started when
that run ends.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from reconciler.auth import permissions
from reconciler.engine import queueing
from reconciler.engine.lifecycle import RunLifecycle
from reconciler.engine.running import iso
from reconciler.errors import PermanentError, PermissionDenied, QuicFlowError
from reconciler.events import EventType
from reconciler.gitops import bumping, model, planning, reverting
from reconciler.gitops.history import History
from reconciler.gitops.repository import GitRepository
from reconciler.rules import windows
from reconciler.runs import Decision, Run, RunState, Trigger

_log = logging.getLogger(__name__)

#: How many config commits back the four-eyes rule looks for the authors of a change.
AUTHOR_COMMITS = 200

#: Triggers whose deploy of a version other than Git's is made to stick.
STICKY = frozenset({Trigger.MANUAL, Trigger.WEBHOOK})


#: What a run's detail says about the request that made it (carried to a run replacing
#: an interrupted one); everything else in it is the engine's own progress.
REQUEST_DETAIL = frozenset(
    {
        "pin",
        "pin_desired_version",
        "pin_desired_hash",
        "pin_reason",
        "bump_commit",
        "trigger_id",
        "delivery_id",
        "ref",
        "commit",
        "committer",
        "schedule",
        "slot",
    }
)


def pin_detail(env: model.Environment, why: str) -> dict[str, str]:
    """The run detail that pins ``env`` to the run's version while Git asks what it asks now."""
    return {
        "pin": "true",
        "pin_desired_version": env.version,
        "pin_desired_hash": env.config_hash,
        "pin_reason": why,
    }


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
        refresh: Callable[[], Awaitable[Any]] | None = None,
        held: set[tuple[str, str]] | None = None,
        wake: Callable[[], None] | None = None,
        elsewhere: Callable[[str, str], str] | None = None,
    ):
        self.lifecycle = lifecycle
        self.runs = lifecycle.runs
        self.repo = repo
        self.history = history
        self.desired = desired
        self.now = now
        self.refresh = refresh  # loads the newest config commit (after a version bump)
        # Environments a deploy is committing or starting: the dispatcher skips them.
        self.held = held if held is not None else set()
        self.wake = wake  # asks for a reconcile pass (one skipped a held environment)
        # Replicas: which other replica reconciles a project/env ('' when this one does).
        self.elsewhere = elsewhere or (lambda project, env: "")
        self.queue = queueing.DeployQueue()
        self._starting: set[tuple[str, str]] = set()
        self._starters: set[asyncio.Task[None]] = set()
        self._bumps = asyncio.Lock()  # one bump at a time: each commit builds on the last
        self._closed = False

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
        """Start a run for ``version`` (None: the desired one); ``force`` ignores release windows.

        A webhook or manual deploy of a version Git does not name is committed to Git
        first, or pinned where it cannot be (see the module docstring).
        """
        target = self._deployable(project, env, actor, trigger, force)
        self._refuse_if_busy(project, env)
        self._refuse_if_elsewhere(project, env)
        target, run_detail = await self._stick(target, version, actor, trigger, detail)
        self._refuse_if_busy(project, env, run_detail.get("bump_commit", ""))
        return await self._start(target, version, actor, trigger, force, run_detail)

    async def deploy_or_queue(
        self,
        project: str,
        env: str,
        version: str | None,
        *,
        actor: model.User | None,
        trigger: Trigger,
        detail: dict[str, str] | None = None,
        listener: queueing.Listener | None = None,
    ) -> Run | queueing.QueuedDeploy | queueing.HandedOver:
        """Deploy now — or, while a run of the environment executes here, queue the request.

        Queued, it is made to stick at once (bumped in Git or pinned) and waits in the
        environment's one slot: a newer request replaces it (its ``listener`` hears
        ``superseded``), and when the running run ends it starts (``started``, with
        the run) unless Git asks for something else by then. A run executing in
        another process cannot be waited for here: that stays a ``PermanentError``.
        On a replica that does not hold the environment, the version is committed to Git
        for the holder to deploy (``HandedOver``); where it cannot be, it is refused.
        """
        key = (project, env)
        target = self._deployable(project, env, actor, trigger, False)
        holder = self.elsewhere(project, env)
        if holder:
            return await self._hand_over(target, version, actor, trigger, detail, holder)
        latest = self.runs.latest(project, env)
        if not self._busy(key) and latest is not None and self.lifecycle.owned_elsewhere(latest):
            self._refuse_if_busy(project, env)
        target, run_detail = await self._stick(target, version, actor, trigger, detail)
        # Checked after the bump: a run may have started while it was committed.
        if not self._busy(key):
            self._refuse_if_busy(project, env, run_detail.get("bump_commit", ""))
            return await self._start(target, version, actor, trigger, False, run_detail)
        running = self.runs.latest(project, env)
        request = queueing.QueuedDeploy(
            project,
            env,
            version or target.version,
            trigger,
            running.id if running else "",
            target.version,
            run_detail,
        )
        replaced = self.queue.put(queueing.Entry(request, actor, listener))
        if replaced is not None:
            _tell(
                replaced.listener,
                queueing.QueueOutcome(
                    queueing.SUPERSEDED,
                    f"superseded by a newer request for {request.version} before it could start",
                ),
            )
        elif key not in self._starting:
            self._follow(key)
        return request

    def _deployable(
        self, project: str, env: str, actor: model.User | None, trigger: Trigger, force: bool
    ) -> model.Environment:
        """``project``/``env`` when ``actor`` may deploy it now (PermissionDenied, PermanentError)."""
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
        return target

    def _busy(self, key: tuple[str, str]) -> bool:
        """Whether a run executes at ``key`` in this process (or a queued one is starting)."""
        return key in self.lifecycle.tasks or key in self._starting

    async def _hand_over(
        self,
        target: model.Environment,
        version: str | None,
        actor: model.User | None,
        trigger: Trigger,
        detail: dict[str, str] | None,
        holder: str,
    ) -> queueing.HandedOver:
        """Commit ``version`` for ``holder``, the replica that runs ``target``: a pin here
        would hold on this replica only, so a deploy that cannot be committed is refused."""
        wanted = version or target.version
        if wanted == target.version:  # Git asks for it already: the holder deploys it anyway
            return queueing.HandedOver(target.project, target.name, wanted, holder, "")
        fresh, run_detail = await self._stick(target, version, actor, trigger, detail)
        commit = run_detail.get("bump_commit", "")
        if not commit or "pin" in run_detail:
            raise PermanentError(
                f"{target.key} is reconciled by replica {holder}, not this one, and "
                f"{wanted} could not be committed to Git for it: deploy through that replica"
            )
        _log.info("%s: %s committed as %s for replica %s", target.key, wanted, commit[:10], holder)
        return queueing.HandedOver(fresh.project, fresh.name, wanted, holder, commit)

    def _refuse_if_elsewhere(self, project: str, env: str) -> None:
        """Replicas: a run starts only on the replica that holds the environment's lease."""
        holder = self.elsewhere(project, env)
        if holder:
            raise PermanentError(
                f"{project}/{env} is reconciled by replica {holder}, not this one: deploy "
                "through that replica, or commit the version to Git"
            )

    def _refuse_if_busy(self, project: str, env: str, committed: str = "") -> None:
        latest = self.runs.latest(project, env)
        if self._busy((project, env)) or (
            latest is not None and self.lifecycle.owned_elsewhere(latest)
        ):
            also = (
                f"; the version is committed to Git ({committed[:10]}) and follows that run"
                if committed
                else ""
            )
            raise PermanentError(
                f"a run is in progress for {project}/{env}; cancel it or wait{also}"
            )

    async def _stick(
        self,
        target: model.Environment,
        version: str | None,
        actor: model.User | None,
        trigger: Trigger,
        detail: dict[str, str] | None,
    ) -> tuple[model.Environment, dict[str, str]]:
        """Make a deploy of ``version`` outlive the next poll: the environment to run, the detail.

        Commits the bump and runs from the commit that holds it; pins when it cannot.
        Nothing to do when Git already asks for ``version``, for triggers that follow
        Git (poll, schedule) and for a run that pins by itself (``rollback --pin``).
        """
        run_detail = dict(detail or {})
        if (
            trigger not in STICKY
            or version is None
            or version == target.version
            or "pin" in run_detail
        ):
            return target, run_detail
        desired = self.desired()
        assert desired is not None
        key = (target.project, target.name)
        message = bumping.deploy_message(
            target.key,
            version,
            trigger.value,
            actor.username if actor else run_detail.get("committer", ""),
            webhook=run_detail.get("trigger_id", ""),
            delivery=run_detail.get("delivery_id", ""),
        )
        self.held.add(key)
        try:
            async with self._bumps:
                try:
                    commit = await asyncio.to_thread(
                        bumping.commit_version,
                        self.repo,
                        desired.settings.branch,
                        target,
                        version,
                        message,
                    )
                except QuicFlowError as exc:
                    _log.warning("%s: %s pinned, not committed: %s", target.key, version, exc)
                    return target, {**run_detail, **pin_detail(target, f"not in Git: {exc}")}
                if self.refresh is not None:
                    try:
                        await self.refresh()
                    except QuicFlowError as exc:  # the commit stays; this run pins meanwhile
                        _log.warning("%s: could not load %s: %s", target.key, commit[:10], exc)
            fresh = self._env(target.project, target.name)
        finally:
            self.held.discard(key)
        run_detail["bump_commit"] = commit
        if fresh.version != version:
            # In Git, but not in force (a newer commit is invalid): pin until it is.
            why = f"committed to Git as {commit[:10]}, which is not the desired state in force"
            return target, {**run_detail, **pin_detail(target, why)}
        return fresh, run_detail

    async def _start(
        self,
        target: model.Environment,
        version: str | None,
        actor: model.User | None,
        trigger: Trigger,
        force: bool,
        detail: dict[str, str],
    ) -> Run:
        record = self.deployed().get((target.project, target.name))
        task = self.lifecycle.schedule(
            target, trigger, actor, record.version if record else None, version, force, detail
        )
        if task is not None:
            await asyncio.sleep(0)  # let the run start, so it is returned running
        latest = self.runs.latest(target.project, target.name)
        assert latest is not None
        return latest

    # -- the queue -------------------------------------------------------------------

    def _follow(self, key: tuple[str, str]) -> None:
        """Start the request queued at ``key`` once the run executing there ends (now if none)."""
        task = self.lifecycle.tasks.get(key)
        if task is None:
            self._release(key)
        else:
            # Called after the lifecycle's own callback, which forgets the task first.
            task.add_done_callback(lambda _task: self._release(key))

    def _release(self, key: tuple[str, str]) -> None:
        if self._closed:
            return
        entry = self.queue.take(key)
        if entry is None:
            return
        # Until its run exists, the environment counts as busy and the poll leaves it be.
        self._starting.add(key)
        self.held.add(key)
        starter = asyncio.get_running_loop().create_task(self._start_queued(entry))
        self._starters.add(starter)
        starter.add_done_callback(self._starters.discard)

    async def _start_queued(self, entry: queueing.Entry) -> None:
        request = entry.request
        key = request.key
        try:
            target = self._env(request.project, request.env)
            if target.version != request.git_version:
                outcome = queueing.QueueOutcome(
                    queueing.SUPERSEDED,
                    f"superseded: Git now asks for {target.version} (queued for "
                    f"{request.git_version})",
                )
            else:
                run = await self._start(
                    target,
                    request.version,
                    entry.actor,
                    request.trigger,
                    False,
                    dict(request.detail),
                )
                behind = f" (queued behind run {request.behind})" if request.behind else ""
                outcome = queueing.QueueOutcome(
                    queueing.STARTED, f"run {run.id} started{behind}", run.id
                )
        except Exception as exc:  # noqa: BLE001 - the listener hears every outcome
            _log.exception("queued deploy of %s/%s failed to start", *key)
            outcome = queueing.QueueOutcome(queueing.FAILED, f"{type(exc).__name__}: {exc}")
        finally:
            self._starting.discard(key)
            self.held.discard(key)
        _tell(entry.listener, outcome)
        if self.queue.get(key) is not None:  # a newer request came while this one started
            self._follow(key)
        elif outcome.status != queueing.STARTED and self.wake is not None:
            self.wake()  # a pass may have left the environment to this request: plan it again

    def close(self) -> None:
        """Stop starting queued requests (the reconciler is stopping); tell their listeners."""
        self._closed = True
        for entry in self.queue.drain():
            _tell(
                entry.listener,
                queueing.QueueOutcome(
                    queueing.FAILED,
                    "the reconciler stopped before the queued deploy could start",
                ),
            )

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
            if approved and env.four_eyes:
                authors = await asyncio.to_thread(self.change_authors, run.id)
                _check(
                    permissions.may_approve_change(
                        who,
                        run.project,
                        run.env,
                        four_eyes=True,
                        authors=authors,
                        started_by=run.actor,
                    )
                )
        if not self.runs.decide(
            Decision(run.id, gate, approved, actor.username, iso(self.now()), comment)
        ):
            raise PermanentError(f"gate {gate!r} of run {run_id} is already decided")
        kind = EventType.APPROVED if approved else EventType.REJECTED
        self.lifecycle.publish(run, kind, data={"by": actor.username})
        if self.elsewhere(*run.key):
            # Replicas: recorded in the shared store; the holder resumes it at its next pass.
            resume = False
        if resume and self.lifecycle.resume(run) is not None:
            await asyncio.sleep(0)  # let the run start, so it is returned running
        return self.runs.get(run.id) or run

    def change_authors(self, run_id: str) -> dict[str, str]:
        """Who wrote the change a run applies: username → the newest commit of theirs.

        The change is the config commits after the one the environment's deployed state
        applied, up to the run's, that touched the project's directory (at most
        ``AUTHOR_COMMITS`` of them, newest first); authors are matched to users by email.
        Blocking (reads Git): call it in a thread from async code.
        """
        run = self.runs.get(run_id)
        desired = self.desired()
        if run is None or desired is None or not run.config_commit:
            return {}
        record = self.deployed().get(run.key)
        base = record.config_commit if record and record.config_commit else None
        prefix = (self.repo.subdir + "/" if self.repo.subdir else "") + f"projects/{run.project}/"
        try:
            commits = self.repo.commits_between(base, run.config_commit)[-AUTHOR_COMMITS:]
        except (KeyError, ValueError):  # the commit is gone (force-pushed away)
            commits = []
        authors: dict[str, str] = {}
        for commit in reversed(commits):
            if commit.parents:
                paths = self.repo.changed_paths(commit.parents[0], commit.id)
                if not any(path.startswith(prefix) for path in paths):
                    continue
            user = desired.user_by_email(commit.author_email)
            if user is not None:
                authors.setdefault(user.username, commit.id)
        return authors

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
        force: bool = False,
    ) -> Run | str:
        """Roll back: by default commit a revert to Git (returns the commit id); ``pin`` runs it now.

        ``force`` (an owner's, as a forced deploy) runs it outside a closed release
        window — at once with ``pin``, at the next pass for a revert, whose commit says
        so (``Quicflow-Force``) — and history records the force and who asked.
        """
        target = self._env(project, env)
        who = self._actor(actor, project)
        _check(permissions.may_rollback(who, project, target.protected))
        if force:
            _check(permissions.may_deploy(who, project, env, target.protected, force=True))
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
                force=force,
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
            force,
        )

    def previous_good_version(self, project: str, env: str) -> str | None:
        """The newest version history recorded for ``project``/``env`` other than the current one."""
        current = self.deployed().get((project, env))
        for entry in self.history.entries(project, env, limit=200):
            record = entry.record
            if record and record.version and (current is None or record.version != current.version):
                return record.version
        return None


def _tell(listener: queueing.Listener | None, outcome: queueing.QueueOutcome) -> None:
    """Tell a queued request's listener what became of it; its failure is only logged."""
    if listener is None:
        return
    try:
        listener(outcome)
    except Exception:  # noqa: BLE001 - a listener's bug must not stop the queue
        _log.exception("queued deploy listener failed on %s", outcome)
