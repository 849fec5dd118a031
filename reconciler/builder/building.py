"""One image build from request to artifact, and the bounded queue of builds.

``Builder.start`` records a ``running`` build and runs it in a task: probe Docker →
open the app repo (pygit2, through ``reconciler.gitops.repository``) → resolve the
version to a commit → export the tree → check Dockerfile, target stage and build args
→ log in to the registry → build → push → record the artifact. Every check that can
fail without touching the registry runs before the build, so a bad request leaves
nothing half-pushed. Builds of one project run one at a time; ``max_concurrent``
bounds them all. Log lines go to the LogStore stream named by the build id, masked.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from reconciler.builder import docker_cli, dockerfiles
from reconciler.builds import BuildRecord, BuildStatus, ImageArtifact
from reconciler.errors import QuicFlowError
from reconciler.gitops import model
from reconciler.gitops.repository import GitRepository
from reconciler.log.masking import Masker
from reconciler.log.store import LogStore
from reconciler.rules import images
from reconciler.store.builds import BuildStore
from reconciler.store.database import Database

_log = logging.getLogger(__name__)
Now = Callable[[], dt.datetime]


class Login(Protocol):
    """What the builder needs of a credential (``reconciler.credential.model.Credential``)."""

    @property
    def username(self) -> str | None: ...

    @property
    def password(self) -> str | None: ...

    @property
    def token(self) -> str | None: ...


# (credential name, project) -> credential; the reconciler passes CredentialManager.get.
CredentialLookup = Callable[[str, str], Login]
# Called with every ended build (image automation listens here); its errors are logged.
BuildListener = Callable[["BuildRecord", "BuildRequest"], Awaitable[None]]


class BuildError(QuicFlowError):
    """A build failed for a reason the build record states."""


@dataclass(frozen=True, slots=True)
class BuildRequest:
    """What to build: a project's build config at a version (tag, branch) or commit."""

    project: str
    version: str
    build: model.BuildConfig
    repo: model.Repo
    commit: str | None = None
    actor: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)  # extra image labels
    # Who asked: "api", "webhook", "schedule" or "pipeline" (a run that deploys it itself).
    trigger: str = "api"


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Builder:
    """Runs builds: one per project at a time, at most ``max_concurrent`` in all."""

    def __init__(
        self,
        db: Database,
        logs: LogStore,
        data_dir: Path,
        credentials: CredentialLookup | None = None,
        docker: docker_cli.DockerCli | None = None,
        max_concurrent: int = 2,
        now: Now = _utc_now,
        on_finished: BuildListener | None = None,
    ):
        self.store = BuildStore(db)
        self.on_finished = on_finished
        self.logs = logs
        self.data_dir = Path(data_dir)
        self.credentials = credentials
        self.docker = docker or docker_cli.DockerCli()
        self.now = now
        self._slots = asyncio.Semaphore(max_concurrent)
        self._project_locks: dict[str, asyncio.Lock] = {}
        self._tasks: dict[str, asyncio.Task[BuildRecord]] = {}
        for stale in self.store.interrupted():
            # A build cannot survive its process: say so instead of showing it running forever.
            self.store.save(
                replace(
                    stale,
                    status=BuildStatus.FAILED,
                    error="interrupted: the reconciler stopped during the build",
                    completed_at=_iso(self.now()),
                )
            )

    # -- public ------------------------------------------------------------------

    def start(self, request: BuildRequest) -> BuildRecord:
        """Record a running build and start it in the background; return the record."""
        if not request.build.enabled:
            raise BuildError(f"project {request.project}: build is not enabled")
        record = BuildRecord(
            id=f"b-{self.now().strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(3)}",
            project=request.project,
            version=request.version,
            status=BuildStatus.RUNNING,
            started_at=_iso(self.now()),
            commit=request.commit or "",
            actor=request.actor,
        )
        self.store.insert(record)
        task = asyncio.get_running_loop().create_task(self._run(record, request))
        self._tasks[record.id] = task
        task.add_done_callback(lambda _: self._tasks.pop(record.id, None))
        return record

    async def build(self, request: BuildRequest) -> BuildRecord:
        """Start a build and wait for its end."""
        return await self.wait(self.start(request).id)

    async def wait(self, build_id: str) -> BuildRecord:
        """The build's final record, once it has ended."""
        task = self._tasks.get(build_id)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)
        record = self.store.get(build_id)
        if record is None:
            raise KeyError(build_id)
        return record

    async def cancel(self, build_id: str) -> bool:
        """Cancel a running build; False when it is not running in this process."""
        task = self._tasks.get(build_id)
        if task is None or task.done():
            return False
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return True

    def get(self, build_id: str) -> BuildRecord | None:
        """A build record, or None."""
        return self.store.get(build_id)

    async def close(self) -> None:
        """Cancel every build still running."""
        for build_id in list(self._tasks):
            await self.cancel(build_id)

    # -- one build ---------------------------------------------------------------

    async def _run(self, record: BuildRecord, request: BuildRequest) -> BuildRecord:
        masker = Masker([])
        started = time.monotonic()
        work = self.data_dir / "builds" / record.id
        lock = self._project_locks.setdefault(request.project, asyncio.Lock())
        state: dict[str, Any] = {}
        try:
            if lock.locked():
                self._log(record.id, masker, "waiting for the project's previous build")
            async with lock, self._slots:
                build_timeout = request.build.timeout
                async with asyncio.timeout(build_timeout):
                    masker = await self._steps(record, request, work, masker, state)
            final = replace(
                record,
                status=BuildStatus.SUCCESS,
                commit=state.get("commit", ""),
                image=state.get("image", ""),
                digest=state.get("digest", ""),
                builder=state.get("builder", ""),
            )
            self._log(record.id, masker, f"build succeeded: {final.image}@{final.digest}")
        except asyncio.CancelledError:
            masker = state.get("masker", masker)
            final = replace(
                record, status=BuildStatus.CANCELLED, error="cancelled", **_partial(state)
            )
            self._log(record.id, masker, "build cancelled")
            self._finish(final, started, work)
            raise
        except TimeoutError:
            masker = state.get("masker", masker)
            message = f"build timed out after {request.build.timeout:g}s"
            final = replace(record, status=BuildStatus.FAILED, error=message, **_partial(state))
            self._log(record.id, masker, message)
        except (BuildError, docker_cli.DockerError, QuicFlowError) as exc:
            masker = state.get("masker", masker)
            message = masker.mask(str(exc))
            final = replace(record, status=BuildStatus.FAILED, error=message, **_partial(state))
            self._log(record.id, masker, f"build failed: {message}")
        except Exception as exc:  # noqa: BLE001 - a bug fails its build, never the server
            _log.exception("build %s crashed", record.id)
            masker = state.get("masker", masker)
            message = masker.mask(f"internal error: {type(exc).__name__}: {exc}")
            final = replace(record, status=BuildStatus.FAILED, error=message, **_partial(state))
            self._log(record.id, masker, message)
        final = self._finish(final, started, work)
        if self.on_finished is not None:
            try:
                await self.on_finished(final, request)
            except Exception:  # noqa: BLE001 - a listener's failure never changes the build
                _log.exception("after build %s: listener failed", final.id)
        return final

    def _finish(self, final: BuildRecord, started: float, work: Path) -> BuildRecord:
        final = replace(
            final, duration=round(time.monotonic() - started, 3), completed_at=_iso(self.now())
        )
        self.store.save(final)
        self.logs.close_stream(final.id)
        # The checkout and the login config (which holds the registry auth) go away.
        shutil.rmtree(work, ignore_errors=True)
        return final

    async def _steps(
        self,
        record: BuildRecord,
        request: BuildRequest,
        work: Path,
        masker: Masker,
        state: dict[str, Any],
    ) -> Masker:
        build = request.build
        # Credentials first: the masker must know every secret before anything is logged.
        registry_login = self._credential(build.registry_credential, request.project, "registry")
        repo_login = self._credential(request.repo.credential, request.project, "repository")
        masker = Masker(
            [
                v
                for c in (registry_login, repo_login)
                if c is not None
                for v in (c.password, c.token)
                if v
            ]
        )
        state["masker"] = masker  # errors raised from here on are masked with it too
        log = lambda text: self._log(record.id, masker, text)  # noqa: E731

        capabilities = await self.docker.probe()
        state["builder"] = "buildkit" if capabilities.buildkit else "classic"
        log(
            f"docker {capabilities.client_version} (daemon {capabilities.server_version}, "
            f"API {capabilities.api_version}), builder: {state['builder']}"
        )
        if capabilities.warning:
            log(f"warning: {capabilities.warning}")

        repo = await asyncio.to_thread(self._open_repo, request.repo, repo_login)
        commit = await asyncio.to_thread(_resolve, repo, request)
        state["commit"] = commit
        source = work / "source"
        count = await asyncio.to_thread(repo.export_tree, commit, source)
        log(f"checked out {request.repo.url} at {commit[:12]} ({count} files)")

        context = (source / build.context).resolve()
        if not context.is_relative_to(source.resolve()) or not context.is_dir():
            raise BuildError(f"build.context {build.context!r}: no such directory at {commit[:12]}")
        dockerfile = (context / build.dockerfile).resolve()
        if not dockerfile.is_relative_to(source.resolve()) or not dockerfile.is_file():
            raise BuildError(
                f"build.dockerfile {build.dockerfile!r}: no such file in {request.repo.url} "
                f"at {commit[:12]} (context {build.context!r})"
            )
        text = dockerfile.read_text(errors="replace")
        args = {k: str(v) for k, v in build.args.items()}
        unknown = dockerfiles.unknown_args(text, args)
        if unknown:
            raise BuildError(
                f"build.args {', '.join(unknown)}: not declared by an ARG in "
                f"{build.dockerfile} (Docker would ignore {'it' if len(unknown) == 1 else 'them'})"
            )
        if build.target and build.target not in dockerfiles.stages(text):
            raise BuildError(
                f"build.target {build.target!r}: no stage of that name in {build.dockerfile} "
                f"(stages: {', '.join(dockerfiles.stages(text)) or 'none named'})"
            )
        if not build.target_image:
            raise BuildError("build.target_image is not set: nowhere to push the image")
        try:
            image = images.render_image(
                build.target_image,
                {
                    "version": images.tag_safe(request.version),
                    "commit": commit,
                    "short_commit": commit[:7],
                },
            )
        except ValueError as exc:
            raise BuildError(str(exc)) from None
        state["image"] = image

        config_dir = work / "docker-config"
        config_dir.mkdir(parents=True, mode=0o700)
        registry = images.registry_of(image)
        if registry_login is not None:
            if not registry_login.username or not registry_login.password:
                raise BuildError(
                    f"build.registry_credential {build.registry_credential!r} "
                    "has no username and password"
                )
            await self.docker.login(
                registry, registry_login.username, registry_login.password, config_dir
            )
            log(f"logged in to {registry} as {registry_login.username}")

        previous = self.store.latest_artifact(request.project)
        cache_from = [previous.image] if build.cache and previous is not None else []
        if cache_from:
            log(f"cache from {previous.image if previous else ''}")
        argv = docker_cli.build_args(
            context=str(context),
            dockerfile=str(dockerfile),
            tag=image,
            args=args,
            target=build.target,
            labels={
                "quicflow.project": request.project,
                "quicflow.version": request.version,
                "quicflow.commit": commit,
                **request.labels,
            },
            cache_from=cache_from,
            buildkit=capabilities.buildkit,
        )
        log(
            f"docker build --tag {image} ({state['builder']}, target {build.target or 'last stage'})"
        )
        out = await self.docker.run(
            argv,
            # The login config goes to the build too: --cache-from reads the registry.
            env={
                "DOCKER_BUILDKIT": "1" if capabilities.buildkit else "0",
                "DOCKER_CONFIG": str(config_dir),
            },
            on_line=lambda line: self._output(record.id, masker, "build", line),
            cwd=str(context),
        )
        if out.exit_code != 0:
            raise BuildError(f"docker build failed (exit {out.exit_code}): {out.tail(4)}")

        digest, _ = await self.docker.push(
            image, config_dir, lambda line: self._output(record.id, masker, "push", line)
        )
        state["digest"] = digest
        inspected = await self.docker.inspect_image(image)
        self.store.add_artifact(
            ImageArtifact(
                build_id=record.id,
                project=request.project,
                version=request.version,
                image=image,
                digest=digest,
                size=int(inspected.get("Size") or 0),
                created=_iso(self.now()),
            )
        )
        return masker

    def _credential(self, name: str | None, project: str, what: str) -> Login | None:
        if not name:
            return None
        if self.credentials is None:
            raise BuildError(f"{what} credential {name!r}: no credential store configured")
        try:
            return self.credentials(name, project)
        except (KeyError, QuicFlowError) as exc:
            raise BuildError(f"{what} credential {name!r}: {exc}") from None

    def _open_repo(self, repo: model.Repo, login: Login | None) -> GitRepository:
        return GitRepository.open(
            repo.url,
            cache_dir=self.data_dir / "app-repos",
            token=(login.token or login.password) if login else None,
            username=login.username if login else None,
        )

    def _log(self, build_id: str, masker: Masker, text: str) -> None:
        self._output(build_id, masker, "builder", text, channel="system")

    def _output(
        self, build_id: str, masker: Masker, source: str, line: str, channel: str = "stdout"
    ) -> None:
        self.logs.append(build_id, [(_iso(self.now()), source, channel, masker.mask(line))])


def _partial(state: Mapping[str, Any]) -> dict[str, Any]:
    return {k: state[k] for k in ("commit", "image", "builder") if k in state}


def _resolve(repo: GitRepository, request: BuildRequest) -> str:
    """The commit to build: the explicit commit, else the version as tag, v-tag or branch."""
    if request.commit:
        return repo.resolve(request.commit)
    candidates = [
        f"refs/tags/{request.version}",
        f"refs/tags/v{request.version}",
        f"refs/heads/{request.version}",
        request.version,
    ]
    for rev in candidates:
        with contextlib.suppress(QuicFlowError):
            return repo.resolve(rev)
    raise BuildError(
        f"version {request.version!r} is neither a tag, a branch nor a commit of {request.repo.url}"
    )
