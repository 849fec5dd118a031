"""The build endpoints: start a build of a project, read its record, follow its log (SSE).

``POST /projects/{project}/build`` {version | commit, env?} starts a build (202) with the
build settings of ``env`` (default: the first environment, by name, that enables
builds); ``GET /builds/{id}`` answers the record and its image artifact;
``GET /builds/{id}/logs/stream`` follows the build log like a run's; ``POST
/builds/{id}/cancel`` cancels it; ``GET /projects/{project}/builds`` lists recent builds.
The Builder is the engine's own (``Reconciler.builder``: one per reconciler, followed by
image automation); for an engine without one, a Builder on the engine's operational
store is made on first use, so a server that never builds starts nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from reconciler import streaming
from reconciler.api import auth, routes
from reconciler.auth import permissions
from reconciler.builder.building import Builder, BuildError, BuildRequest
from reconciler.builds import BuildRecord
from reconciler.engine.control import EngineControl
from reconciler.gitops import model

P = auth.API_PREFIX


class BuildApi:
    """Build endpoints over one lazily made Builder."""

    def __init__(self, engine: EngineControl, settings: Any, streams: streaming.Streams):
        self.engine = engine
        self.settings = settings
        self.streams = streams
        self._builder: Builder | None = None

    def routes(self) -> list[Route]:
        """The routes to add to the application."""
        build = P + "/builds/{build_id}"
        return [
            Route(P + "/projects/{project}/build", self.start, methods=["POST"]),
            Route(P + "/projects/{project}/builds", self.list_builds),
            Route(build, self.get_build),
            Route(build + "/cancel", self.cancel, methods=["POST"]),
            Route(build + "/logs/stream", self.logs_stream),
        ]

    @property
    def builder(self) -> Builder:
        """The engine's Builder when it has one (the Reconciler does), else one made on first use."""
        shared = getattr(self.engine, "builder", None)
        if isinstance(shared, Builder):
            return shared
        if self._builder is None:
            database = self.engine.logs.db
            credentials = getattr(self.settings, "credentials", None)
            desired = self.engine.desired
            self._builder = Builder(
                database,
                self.engine.logs,
                Path(database.path).parent if database.path != ":memory:" else Path(".quicflow"),
                credentials=(
                    (lambda name, project: credentials.get(name, project, actor="builder"))
                    if credentials is not None
                    else None
                ),
                max_concurrent=desired.settings.max_concurrent_builds if desired else 2,
            )
        return self._builder

    def _authorize(self, request: Request, project: str, build: bool) -> model.Project:
        principal = routes.principal_of(request)
        found = auth.authorize(principal, self.engine.desired, project, "view")
        if not build:
            return found
        verdict = permissions.may_trigger_build(principal.actor(found), project)
        if not verdict.allowed:
            raise auth.refused(verdict, "project", project)
        return found

    def _record(self, request: Request) -> BuildRecord:
        build_id = request.path_params["build_id"]
        record = self.builder.get(build_id)
        if record is None:
            raise auth.not_found("build", build_id)
        self._authorize(request, record.project, build=False)
        return record

    def _view(self, record: BuildRecord) -> dict[str, Any]:
        artifact = self.builder.store.artifact(record.id)
        return {**record.as_dict(), "artifact": artifact.as_dict() if artifact else None}

    async def start(self, request: Request) -> Response:
        """POST /projects/{project}/build {version?, commit?, env?}: start a build (202)."""
        name = request.path_params["project"]
        project = self._authorize(request, name, build=True)
        body = await routes._json_body(request)
        version = routes._field(body, "version", str, None)
        commit = routes._field(body, "commit", str, None)
        env_name = routes._field(body, "env", str, None)
        if not version and not commit:
            raise auth.ApiError(400, "invalid_field", "give a version or a commit", "version")
        if env_name is not None:
            env = project.environments.get(env_name)
            if env is None:
                raise auth.not_found("environment", f"{name}/{env_name}", "env")
        else:
            enabled = [e for _, e in sorted(project.environments.items()) if e.build.enabled]
            env = enabled[0] if enabled else None
        if env is None or not env.build.enabled:
            raise auth.ApiError(409, "conflict", f"project {name} has no enabled build settings")
        if project.repo is None:
            raise auth.ApiError(409, "conflict", f"project {name} names no application repo")
        user = routes.principal_of(request).user
        try:
            record = self.builder.start(
                BuildRequest(
                    project=name,
                    version=version or (commit or "")[:12],
                    build=env.build,
                    repo=project.repo,
                    commit=commit,
                    actor=user.username if user else "",
                )
            )
        except BuildError as exc:
            raise auth.ApiError(409, "conflict", str(exc)) from None
        return JSONResponse(self._view(record), status_code=202)

    async def list_builds(self, request: Request) -> Response:
        """GET /projects/{project}/builds?limit=: recent builds, newest first."""
        name = request.path_params["project"]
        self._authorize(request, name, build=False)
        limit = routes._int_param(request, "limit", 50, 1, routes.MAX_LIMIT)
        items = [self._view(r) for r in self.builder.store.list(name, limit)]
        return JSONResponse({"items": items, "total": len(items), "limit": limit, "offset": 0})

    async def get_build(self, request: Request) -> Response:
        """GET /builds/{id}: the build record and its image artifact."""
        return JSONResponse(self._view(self._record(request)))

    async def cancel(self, request: Request) -> Response:
        """POST /builds/{id}/cancel: cancel a running build."""
        record = self._record(request)
        self._authorize(request, record.project, build=True)
        if not await self.builder.cancel(record.id):
            raise auth.ApiError(409, "conflict", f"build {record.id} is not running here")
        return JSONResponse(self._view(self.builder.get(record.id) or record))

    async def logs_stream(self, request: Request) -> Response:
        """GET /builds/{id}/logs/stream: SSE of the build log from ``Last-Event-ID`` on."""
        record = self._record(request)
        return routes.sse_response(
            streaming.log_events(
                self.engine, record.id, routes.last_event_id(request), self.streams.closing
            )
        )
