"""Image builds as the engine starts them, and image automation after them.

Which build settings a project builds with (``build_environment``), the request for a
build (``request_for``), and what follows a successful build: for every environment of
the project with ``auto_update: true`` whose version differs, the version bump is
committed to the config repo's branch (author "quicflow", a message naming the build
and its trailers), pushed when there is a remote, and a reconcile is asked for — so Git
records the change and the normal reconcile deploys it. Builds made by a pipeline deploy
themselves and are not followed. The commits are ``reconciler.gitops.bumping``'s, the
same as a webhook or API deploy makes, run in a thread. ``engine_builder`` makes the one Builder
of a reconciler, with image automation listening to it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from reconciler.builder.building import Builder, BuildRequest
from reconciler.builds import BuildRecord, BuildStatus
from reconciler.credential.resolving import CredentialResolver
from reconciler.errors import QuicFlowError
from reconciler.gitops import bumping, model
from reconciler.gitops.repository import GitRepository
from reconciler.log.store import LogStore
from reconciler.store.database import Database

_log = logging.getLogger(__name__)
PIPELINE = "pipeline"


def build_environment(project: model.Project, env_name: str | None = None) -> model.Environment:
    """The environment whose build settings a build of ``project`` uses.

    ``env_name`` when given, else the first environment (by name) that enables builds.
    KeyError for an unknown ``env_name``; ValueError when no build is enabled there.
    """
    if env_name is not None:
        env = project.environments.get(env_name)
        if env is None:
            raise KeyError(f"unknown environment {project.name}/{env_name}")
    else:
        enabled = [e for _, e in sorted(project.environments.items()) if e.build.enabled]
        env = enabled[0] if enabled else None
    if env is None or not env.build.enabled:
        raise ValueError(f"project {project.name} has no enabled build settings")
    return env


def request_for(
    project: model.Project,
    env: model.Environment,
    version: str,
    commit: str | None = None,
    actor: str = "",
    trigger: str = "api",
) -> BuildRequest:
    """The build request of ``project`` at ``version`` (or ``commit``) with ``env``'s settings."""
    if project.repo is None:
        raise ValueError(f"project {project.name} names no application repo")
    return BuildRequest(
        project=project.name,
        version=version,
        build=env.build,
        repo=project.repo,
        commit=commit,
        actor=actor,
        trigger=trigger,
    )


def bumped(text: str, version: str) -> str | None:
    """``text`` of an environment file with its top-level version set, or None if it has none."""
    return bumping.with_version(text, version)


def auto_update_environments(
    desired: model.DesiredState, project: str, version: str
) -> list[model.Environment]:
    """The environments of ``project`` that follow its builds and are not at ``version`` yet."""
    found = desired.projects.get(project)
    if found is None:
        return []
    return [
        env
        for _, env in sorted(found.environments.items())
        if env.auto_update and env.version != version
    ]


class ImageAutomation:
    """Commits version bumps after successful builds; a ``Builder`` listener."""

    def __init__(
        self,
        repo: GitRepository,
        desired: Callable[[], model.DesiredState | None],
        reconcile_now: Callable[[str], Awaitable[None]],
    ):
        self.repo = repo
        self.desired = desired
        self.reconcile_now = reconcile_now
        self._lock = asyncio.Lock()  # one bump at a time: each commit builds on the last

    async def after_build(self, record: BuildRecord, request: BuildRequest) -> list[str]:
        """Bump every auto-updating environment to the built version; the new commits."""
        desired = self.desired()
        if record.status is not BuildStatus.SUCCESS or request.trigger == PIPELINE:
            return []
        if desired is None:
            return []
        envs = auto_update_environments(desired, record.project, record.version)
        if not envs:
            return []
        async with self._lock:
            commits = await asyncio.to_thread(self._commit, desired.settings.branch, envs, record)
        if commits:
            await self.reconcile_now(f"build {record.id}: {record.project} {record.version}")
        return commits

    def _commit(self, branch: str, envs: list[model.Environment], record: BuildRecord) -> list[str]:
        commits = []
        for env in envs:
            try:
                commits.append(
                    bumping.commit_version(
                        self.repo,
                        branch,
                        env,
                        record.version,
                        bumping.build_message(record.version, env.key, record.id),
                    )
                )
            except QuicFlowError as exc:
                _log.error("image automation: cannot bump %s: %s", env.source.path, exc)
        return commits


def engine_builder(
    db: Database,
    logs: LogStore,
    data_dir: Path,
    *,
    repo: GitRepository,
    desired: Callable[[], model.DesiredState | None],
    credentials: CredentialResolver,
    now: Callable[[], Any],
    reconcile_now: Callable[[str], Awaitable[None]],
) -> Builder:
    """The Builder of one reconciler: credentials of the desired state in force, and
    image automation committing version bumps after its builds."""

    def credential(name: str, project: str) -> Any:
        current = desired()
        if current is None:
            raise KeyError(name)
        return credentials.manager(current).get(name, project, actor="builder")

    automation = ImageAutomation(repo, desired, reconcile_now)
    current = desired()
    return Builder(
        db,
        logs,
        data_dir,
        credentials=credential,
        max_concurrent=current.settings.max_concurrent_builds if current else 2,
        now=now,
        on_finished=automation.after_build,
    )
