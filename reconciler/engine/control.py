"""What callers outside the engine (API, CLI, webhooks, schedules) may ask of it.

``EngineControl`` is the narrow interface the HTTP layer and triggers are written
against; ``reconciler.engine.reconciling.Reconciler`` implements it (its actions are
``reconciler.engine.actions``). Permission checks for run actions happen behind it,
by the rules of ``reconciler.auth.permissions`` (the engine knows members, protected
environments and the roles a stage gate names); it raises ``PermissionDenied`` naming
the role that was needed, ``PermanentError`` for refused actions, and ``KeyError`` for
unknown runs, projects or environments.
"""

from __future__ import annotations

from typing import Protocol

from reconciler.engine.bus import EventBus
from reconciler.engine.queueing import HandedOver, Listener, QueuedDeploy
from reconciler.engine.refreshing import ConfigStatus
from reconciler.errors import ConfigProblem
from reconciler.gitops import model
from reconciler.gitops.history import History
from reconciler.gitops.planning import DeployedRecord, Plan
from reconciler.log.store import LogStore
from reconciler.runs import Run, Trigger
from reconciler.store.runs import RunStore


class EngineControl(Protocol):
    """The engine as seen by the API, the CLI, webhooks and schedules."""

    runs: RunStore
    logs: LogStore
    bus: EventBus
    history: History

    @property
    def desired(self) -> model.DesiredState | None:
        """The last valid desired state (bad config never replaces it)."""

    @property
    def problems(self) -> tuple[ConfigProblem, ...]:
        """Problems of the newest commit when it was invalid, else empty."""

    def config_status(self) -> ConfigStatus:
        """The commit in force and, when the newest one was refused, it and its problems."""

    def deployed(self) -> dict[tuple[str, str], DeployedRecord]:
        """What the state ref says is deployed."""

    def plan(self) -> Plan:
        """The current plan (desired vs deployed vs live)."""

    async def reconcile_now(self, reason: str) -> None:
        """Fetch the config repo and reconcile at once (instead of waiting for the poll)."""

    def unrunnable(self, env: model.Environment) -> str | None:
        """Why this reconciler cannot run ``env`` at all (reported as skipped), or None."""

    def reconciled_elsewhere(self, project: str, env: str) -> str:
        """Replicas on a shared store: the replica holding ``project/env`` if not this one."""

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
        """Start a run for ``version`` (None: the desired one). ``actor`` None means the system.

        A webhook or manual deploy of a version other than Git's is committed to the
        config repo first, or pins the environment where it cannot be.
        """

    async def deploy_or_queue(
        self,
        project: str,
        env: str,
        version: str | None,
        *,
        actor: model.User | None,
        trigger: Trigger,
        detail: dict[str, str] | None = None,
        listener: Listener | None = None,
    ) -> Run | QueuedDeploy | HandedOver:
        """``deploy`` — or, while a run of the environment executes, queue it behind that run.

        On a replica that does not reconcile the environment, the version is committed to
        Git for the one that does (``HandedOver``).

        Newest wins: a newer request replaces a queued one. ``listener`` hears what a
        queued request became (started with its run, superseded, failed).
        """

    async def approve(self, run_id: str, actor: model.User, comment: str = "") -> Run: ...

    def change_authors(self, run_id: str) -> dict[str, str]:
        """Users who wrote the config commits a run applies → their newest such commit
        (what the four-eyes rule keeps from approving it). Reads Git: blocking."""

    async def reject(self, run_id: str, actor: model.User, comment: str = "") -> Run: ...

    async def promote(self, run_id: str, actor: model.User) -> Run:
        """Let a canary paused for manual promotion go to its next step."""

    async def cancel(self, run_id: str, actor: model.User) -> Run: ...

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

        ``force`` (owners) runs it outside a closed release window; it is recorded.
        """
