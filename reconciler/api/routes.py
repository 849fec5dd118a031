"""The JSON API under ``/api/release``: read the release state, act on runs, follow logs.

Each endpoint translates HTTP into ``EngineControl`` calls and back, after the caller
was authenticated (``auth.AuthMiddleware``) and authorized for the project
(``auth.authorize``). Configuration is changed in Git, never here: the only writes are
run actions (approve, reject, promote, cancel, deploy, rollback) and, in ``webhooks``,
triggers — and a deploy of a version Git does not name is itself recorded in Git by the
engine (a version-bump commit, or a visible pin where it cannot push), so the next poll
keeps it. Lists page with ``limit``/``offset`` and answer ``{"items", "total", "limit",
"offset"}``; errors answer ``{"error": {"code", "message", "field"?}}``.

Engine refusals map onto status codes: unknown run/project/environment (``KeyError``)
→ 404, ``PermissionDenied`` → 403, ``PermanentError`` → 409,
``TemporaryError`` → 503 with ``Retry-After``.

What is shown comes from ``views`` (shared with the status page, so both show the same
facts); live streams are the HTTP-free generators of ``reconciler.streaming``, wrapped
here by ``sse_response``. Nothing here decides anything: a handler parses the request,
calls the engine, a store or a view, and builds the response.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from reconciler import errors, streaming
from reconciler.api import auth, views
from reconciler.engine.control import EngineControl
from reconciler.gitops import model
from reconciler.runs import Run, RunState, Trigger
from reconciler.trigger.scheduling import Scheduler

P = auth.API_PREFIX
MAX_LIMIT = 500
T = TypeVar("T")


def principal_of(request: Request) -> auth.Principal:
    """The caller resolved by the middleware."""
    principal = request.scope.get("state", {}).get("principal")
    if principal is None:  # a route outside the middleware's reach: a bug, never "anonymous"
        raise auth.ApiError(401, "unauthenticated", "no caller was authenticated")
    return principal


def _int_param(
    request: Request, name: str, default: int, low: int = 0, high: int | None = None
) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise auth.ApiError(400, "invalid_parameter", f"{name} must be an integer", name) from None
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise auth.ApiError(400, "invalid_parameter", f"{name} must be {bound}", name)
    return value


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise auth.ApiError(400, "invalid_json", "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise auth.ApiError(400, "invalid_json", "the request body must be a JSON object")
    return body


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any) -> Any:
    value = body.get(name, default)
    if value is None or value is default:
        return value
    if not isinstance(value, kind) or (kind is str and not value):
        names = {str: "a non-empty string", bool: "true or false"}
        expected = names.get(kind, str(kind)) if isinstance(kind, type) else "a valid value"
        raise auth.ApiError(400, "invalid_field", f"{name} must be {expected}", name)
    return value


async def engine_call(call: Awaitable[T]) -> T:
    """Await an engine call, turning its refusals into API errors."""
    try:
        return await call
    except KeyError as error:
        message = error.args[0] if error.args else "not found"
        raise auth.ApiError(404, "not_found", str(message)) from None
    except errors.PermissionDenied as error:
        raise auth.ApiError(403, "forbidden", str(error)) from None
    except errors.TemporaryError as error:
        raise auth.ApiError(
            503,
            "try_again",
            str(error),
            headers={"Retry-After": str(max(1, math.ceil(error.delay)))},
        ) from None
    except (errors.PermanentError, errors.ConfigError) as error:
        raise auth.ApiError(409, "conflict", str(error)) from None


# -- server-sent events ---------------------------------------------------------------


def sse_response(events: AsyncIterator[str]) -> StreamingResponse:
    """A ``text/event-stream`` answer that proxies must not buffer."""
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def last_event_id(request: Request) -> int:
    """Where a (resuming) SSE client left off: ``Last-Event-ID``, else ``?after=``, else 0."""
    raw = request.headers.get("last-event-id") or request.query_params.get("after")
    try:
        return streaming.last_event_id(raw)
    except ValueError:
        raise auth.ApiError(
            400, "invalid_parameter", "Last-Event-ID must be a log sequence number", "Last-Event-ID"
        ) from None


# -- the API ---------------------------------------------------------------------------


class ReleaseApi:
    """The ``/api/release`` endpoints (webhooks live in ``webhooks``)."""

    def __init__(
        self, engine: EngineControl, scheduler: Scheduler, records: Any, streams: streaming.Streams
    ):
        self.engine = engine
        self.scheduler = scheduler
        self.records = records
        self.streams = streams

    def routes(self) -> list[Route]:
        """The API's routes, explicitly listed."""
        project = P + "/projects/{project}"
        env = project + "/environments/{env}"
        run = P + "/runs/{run_id}"
        return [
            Route(P + "/me", self.me),
            Route(P + "/config", self.config),
            Route(P + "/projects", self.projects),
            Route(project, self.project),
            Route(project + "/environments", self.project_environments),
            Route(env, self.environment),
            Route(env + "/deploy", self.deploy, methods=["POST"]),
            Route(env + "/rollback", self.rollback, methods=["POST"]),
            Route(env + "/history", self.environment_history),
            Route(project + "/members", self.members),
            Route(project + "/webhooks", self.project_webhooks),
            Route(project + "/schedules", self.project_schedules),
            Route(P + "/environments", self.environments),
            Route(P + "/runs", self.runs),
            Route(run, self.run),
            Route(run + "/approve", self.run_action("approve"), methods=["POST"]),
            Route(run + "/reject", self.run_action("reject"), methods=["POST"]),
            Route(run + "/promote", self.run_action("promote"), methods=["POST"]),
            Route(run + "/cancel", self.run_action("cancel"), methods=["POST"]),
            Route(run + "/events", self.run_stream),
            Route(run + "/logs", self.logs),
            Route(run + "/logs/export", self.logs_export),
            Route(run + "/logs/stream", self.logs_stream),
            Route(P + "/history", self.history),
            Route(P + "/triggers", self.triggers),
            Route(P + "/triggers/records", self.trigger_records),
            Route(P + "/schedules", self.schedules),
            Route(P + "/agents", self.agents),
        ]

    # -- helpers ------------------------------------------------------------------

    def _desired(self) -> model.DesiredState:
        desired = self.engine.desired
        if desired is None:
            raise auth.ApiError(503, "not_ready", "no valid desired state is loaded yet")
        return desired

    def _visible_projects(self, principal: auth.Principal) -> list[model.Project]:
        desired = self._desired()
        return [p for _, p in sorted(desired.projects.items()) if auth.visible(principal, p)]

    def _run(self, request: Request, action: str = "view") -> tuple[Run, auth.Principal]:
        principal = principal_of(request)
        run_id = request.path_params["run_id"]
        found = self.engine.runs.get(run_id)
        desired = self._desired()
        project = desired.projects.get(found.project) if found else None
        if found is None or project is None or not auth.visible(principal, project):
            raise auth.not_found("run", run_id)
        env = found.env if found.env in project.environments else None
        auth.authorize(principal, desired, found.project, action, env)
        return found, principal

    def _project_view(self, project: model.Project, principal: auth.Principal) -> dict[str, Any]:
        plan = views.safe_plan(self.engine)
        return views.project_view(self.engine, project, principal, self.engine.deployed(), plan)

    # -- projects and environments -------------------------------------------------

    async def me(self, request: Request) -> Response:
        """GET /me: the caller and their roles."""
        return JSONResponse(views.caller_view(principal_of(request), self.engine.desired))

    async def projects(self, request: Request) -> Response:
        """GET /projects: desired vs deployed per environment, drift, last run."""
        self._desired()
        items = views.overview(self.engine, principal_of(request))
        return JSONResponse(views.page(items, len(items), len(items), 0))

    async def project(self, request: Request) -> Response:
        """GET /projects/{project}."""
        principal = principal_of(request)
        found = auth.authorize(
            principal, self.engine.desired, request.path_params["project"], "view"
        )
        view = self._project_view(found, principal)
        return JSONResponse(view)

    async def project_environments(self, request: Request) -> Response:
        """GET /projects/{project}/environments."""
        principal = principal_of(request)
        found = auth.authorize(
            principal, self.engine.desired, request.path_params["project"], "view"
        )
        view = self._project_view(found, principal)
        items = view["environments"]
        return JSONResponse(views.page(items, len(items), len(items), 0))

    async def environment(self, request: Request) -> Response:
        """GET /projects/{project}/environments/{env}."""
        principal = principal_of(request)
        name, env = request.path_params["project"], request.path_params["env"]
        found = auth.authorize(principal, self.engine.desired, name, "view", env)
        view = self._project_view(found, principal)
        return JSONResponse(next(e for e in view["environments"] if e["name"] == env))

    async def environments(self, request: Request) -> Response:
        """GET /environments: every visible environment, flat."""
        self._desired()
        items = [
            e for p in views.overview(self.engine, principal_of(request)) for e in p["environments"]
        ]
        return JSONResponse(views.page(items, len(items), len(items), 0))

    async def members(self, request: Request) -> Response:
        """GET /projects/{project}/members: members and roles (from Git)."""
        principal = principal_of(request)
        found = auth.authorize(
            principal, self.engine.desired, request.path_params["project"], "view"
        )
        items = views.members_view(found, self._desired().users)
        return JSONResponse(views.page(items, len(items), len(items), 0))

    # -- run actions ----------------------------------------------------------------

    async def deploy(self, request: Request) -> Response:
        """POST …/deploy {version?, force?}: start a run now.

        The run's ``detail`` says how the version sticks: ``bump_commit`` (committed to
        the config repo) or ``pin`` with ``pin_reason`` (pinned until Git changes).
        """
        principal = principal_of(request)
        name, env = request.path_params["project"], request.path_params["env"]
        auth.authorize(principal, self.engine.desired, name, "deploy", env)
        body = await _json_body(request)
        version = _field(body, "version", str, None)
        force = _field(body, "force", bool, False)
        run = await engine_call(
            self.engine.deploy(
                name, env, version, actor=principal.user, trigger=Trigger.MANUAL, force=force
            )
        )
        return JSONResponse(run.as_dict(), status_code=202)

    async def rollback(self, request: Request) -> Response:
        """POST …/rollback {to_version?, pin?}: a revert commit (default) or a pinned run."""
        principal = principal_of(request)
        name, env = request.path_params["project"], request.path_params["env"]
        auth.authorize(principal, self.engine.desired, name, "rollback", env)
        body = await _json_body(request)
        to_version = _field(body, "to_version", str, None)
        pin = _field(body, "pin", bool, False)
        result = await engine_call(
            self.engine.rollback(name, env, actor=principal.user, to_version=to_version, pin=pin)
        )
        if isinstance(result, str):
            return JSONResponse({"commit": result, "run": None}, status_code=202)
        return JSONResponse({"commit": None, "run": result.as_dict()}, status_code=202)

    def run_action(self, action: str) -> Callable[[Request], Awaitable[Response]]:
        """POST /runs/{id}/{approve|reject|promote|cancel}."""

        async def endpoint(request: Request) -> Response:
            run, principal = self._run(request, action)
            body = await _json_body(request)
            user = principal.user
            assert user is not None  # authorize() refused anonymous actors
            if action in ("approve", "reject"):
                comment = _field(body, "comment", str, "") or ""
                method = self.engine.approve if action == "approve" else self.engine.reject
                updated = await engine_call(method(run.id, user, comment))
            elif action == "promote":
                updated = await engine_call(self.engine.promote(run.id, user))
            else:
                updated = await engine_call(self.engine.cancel(run.id, user))
            return JSONResponse(updated.as_dict())

        endpoint.__name__ = f"run_{action}"
        return endpoint

    # -- runs -------------------------------------------------------------------------

    async def runs(self, request: Request) -> Response:
        """GET /runs?project=&env=&state=&trigger=&limit=&offset=."""
        principal = principal_of(request)
        query = request.query_params
        limit = _int_param(request, "limit", 50, 1, MAX_LIMIT)
        offset = _int_param(request, "offset", 0, 0)
        project = query.get("project") or None
        env = query.get("env") or query.get("environment") or None
        states = None
        if query.get("state"):
            try:
                states = [RunState(s.strip()) for s in query["state"].split(",") if s.strip()]
            except ValueError:
                raise auth.ApiError(
                    400,
                    "invalid_parameter",
                    f"state must be one of {', '.join(s.value for s in RunState)}",
                    "state",
                ) from None
        trigger = query.get("trigger") or None
        if trigger is not None and trigger not in {t.value for t in Trigger}:
            raise auth.ApiError(
                400,
                "invalid_parameter",
                f"trigger must be one of {', '.join(t.value for t in Trigger)}",
                "trigger",
            )
        if env and not project:
            raise auth.ApiError(400, "invalid_parameter", "env needs project", "env")
        if project:
            auth.authorize(principal, self.engine.desired, project, "view")
            found, total = self.engine.runs.list(project, env, states, trigger, limit, offset)
        elif principal.sees_everything():
            found, total = self.engine.runs.list(None, None, states, trigger, limit, offset)
        else:
            found, total = self._runs_of(
                self._visible_projects(principal), states, trigger, limit, offset
            )
        return JSONResponse(views.page([r.as_dict() for r in found], total, limit, offset))

    def _runs_of(
        self,
        projects: list[model.Project],
        states: list[RunState] | None,
        trigger: str | None,
        limit: int,
        offset: int,
    ) -> tuple[list[Run], int]:
        # RunStore.list filters one project; merge the newest offset+limit of each.
        merged: list[Run] = []
        total = 0
        for project in projects:
            runs, count = self.engine.runs.list(
                project.name, None, states, trigger, offset + limit, 0
            )
            merged += runs
            total += count
        merged.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        return merged[offset : offset + limit], total

    async def run(self, request: Request) -> Response:
        """GET /runs/{id}: the run with stages, tasks, steps and progress."""
        run, _ = self._run(request)
        steps, decisions = self.engine.runs.steps(run.id), self.engine.runs.decisions(run.id)
        return JSONResponse(views.run_view(run, steps, decisions))

    async def run_stream(self, request: Request) -> Response:
        """GET /runs/{id}/events: SSE of the run view whenever it changes."""
        run, _ = self._run(request)
        return sse_response(
            streaming.run_events(
                self.engine,
                run.id,
                self.streams.closing,
                lambda found, steps: views.run_view(
                    found, steps, self.engine.runs.decisions(found.id)
                ),
            )
        )

    # -- logs ---------------------------------------------------------------------------

    async def logs(self, request: Request) -> Response:
        """GET /runs/{id}/logs?after=&contains=&limit=: stored (masked) lines."""
        run, _ = self._run(request)
        after = _int_param(request, "after", 0, 0)
        limit = _int_param(request, "limit", 1000, 1, 10_000)
        contains = request.query_params.get("contains") or None
        lines = self.engine.logs.read(run.id, after, limit, contains)
        return JSONResponse(views.log_view(self.engine, run.id, lines, after))

    async def logs_export(self, request: Request) -> Response:
        """GET /runs/{id}/logs/export: the whole log as a text/plain download."""
        run, _ = self._run(request)
        contains = request.query_params.get("contains") or None
        text = views.log_text(self.engine, run.id, contains)
        filename = f"{run.project}-{run.env}-{run.id}.log"
        return PlainTextResponse(
            text, headers={"Content-Disposition": f'attachment; filename="{filename}"'}
        )

    async def logs_stream(self, request: Request) -> Response:
        """GET /runs/{id}/logs/stream: SSE from ``Last-Event-ID`` (or ``?after=``) on."""
        run, _ = self._run(request)
        return sse_response(
            streaming.log_events(self.engine, run.id, last_event_id(request), self.streams.closing)
        )

    # -- history, triggers, schedules, agents ---------------------------------------------

    async def environment_history(self, request: Request) -> Response:
        """GET …/environments/{env}/history: state commits, newest first."""
        principal = principal_of(request)
        name, env = request.path_params["project"], request.path_params["env"]
        auth.authorize(principal, self.engine.desired, name, "view", env)
        limit = _int_param(request, "limit", 50, 1, MAX_LIMIT)
        items = views.history_view(self.engine, name, env, limit)
        return JSONResponse(views.page(items, len(items), limit, 0))

    async def history(self, request: Request) -> Response:
        """GET /history?project=&env=&limit=: state commits of visible environments, newest first."""
        principal = principal_of(request)
        limit = _int_param(request, "limit", 50, 1, MAX_LIMIT)
        project = request.query_params.get("project") or None
        env = request.query_params.get("env") or None
        if project:
            auth.authorize(principal, self.engine.desired, project, "view", env)
        projects = self._visible_projects(principal)
        items = views.histories_view(self.engine, projects, limit, project, env)
        return JSONResponse(views.page(items[:limit], len(items), limit, 0))

    async def project_webhooks(self, request: Request) -> Response:
        """GET /projects/{project}/webhooks: declared webhook triggers."""
        principal = principal_of(request)
        found = auth.authorize(
            principal, self.engine.desired, request.path_params["project"], "view"
        )
        items = [views.webhook_view(w) for w in found.webhooks]
        return JSONResponse(views.page(items, len(items), len(items), 0))

    async def project_schedules(self, request: Request) -> Response:
        """GET /projects/{project}/schedules: with next_run / last_run."""
        principal = principal_of(request)
        found = auth.authorize(
            principal, self.engine.desired, request.path_params["project"], "view"
        )
        items = [self.scheduler.describe(s) for s in found.schedules]
        return JSONResponse(views.page(items, len(items), len(items), 0))

    async def triggers(self, request: Request) -> Response:
        """GET /triggers: declared webhooks and schedules of visible projects."""
        projects = self._visible_projects(principal_of(request))
        return JSONResponse(
            {
                "webhooks": [views.webhook_view(w) for p in projects for w in p.webhooks],
                "schedules": [self.scheduler.describe(s) for p in projects for s in p.schedules],
            }
        )

    async def trigger_records(self, request: Request) -> Response:
        """GET /triggers/records?trigger=&project=&status=&limit=&offset=."""
        principal = principal_of(request)
        auth.require_login(principal, "trigger records")
        limit = _int_param(request, "limit", 50, 1, MAX_LIMIT)
        offset = _int_param(request, "offset", 0, 0)
        project = request.query_params.get("project") or None
        trigger = request.query_params.get("trigger") or None
        status = request.query_params.get("status") or None
        if project:
            auth.authorize(principal, self.engine.desired, project, "view")
            projects: list[str] | None = [project]
        elif principal.sees_everything():
            projects = None  # admins also see the config repo's own webhook ("project" empty)
        else:
            projects = [p.name for p in self._visible_projects(principal)]
        if trigger and trigger != "config":
            owner = trigger.partition(".")[0]
            auth.authorize(principal, self.engine.desired, owner, "view")
        found, total = self.records.list(trigger, projects, status, limit, offset)
        return JSONResponse(views.page([r.as_dict() for r in found], total, limit, offset))

    async def schedules(self, request: Request) -> Response:
        """GET /schedules: every visible schedule with next_run / last_run."""
        projects = self._visible_projects(principal_of(request))
        items = [self.scheduler.describe(s) for p in projects for s in p.schedules]
        return JSONResponse(views.page(items, len(items), len(items), 0))

    async def config(self, request: Request) -> Response:
        """GET /config: the commit in force; the newest commit's problems when it was refused."""
        principal_of(request)
        return JSONResponse(views.config_view(self.engine))

    async def agents(self, request: Request) -> Response:
        """GET /agents: connected agents (empty without a hub); anonymous readers get 401."""
        auth.require_login(principal_of(request), "the agent list")
        items = views.agents_view(self.engine)
        return JSONResponse(views.page(items, len(items), len(items), 0))


async def healthz(request: Request) -> Response:
    """GET /healthz: the process answers."""
    return JSONResponse({"status": "ok"})


def readiness(
    engine: EngineControl, lookup: Callable[[str], str | None] | None = None
) -> Callable[[Request], Awaitable[Response]]:
    """GET /readyz: ready once a valid desired state is loaded and history reaches origin
    (503 ``degraded`` while records made here could not be pushed).

    The config commit in force is shown only to callers sending a valid API token
    (``lookup`` says whose a token is): anonymous probes learn the status, its reason and
    the history's push state, not which commit runs.
    """

    async def readyz(request: Request) -> Response:
        desired = engine.desired
        problems = len(engine.problems)
        # Which config commit is in force is for callers with a token, not for anyone.
        authorization = request.headers.get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        known = scheme.lower() == "bearer" and lookup is not None and lookup(token.strip())
        if desired is None:
            return JSONResponse(
                {
                    "status": "not_ready",
                    "reason": "no valid desired state loaded",
                    "problems": problems,
                },
                status_code=503,
            )
        history = engine.history.status()
        if not history.healthy:
            # Deploys go on, but what they recorded is only on this host's disk: an
            # operator (and a probe) must see it, not a reassuring "ready".
            degraded: dict[str, Any] = {
                "status": "degraded",
                "reason": history.problem,
                "problems": problems,
                "history": history.as_dict(),
            }
            if known:
                degraded["commit"] = desired.commit
            return JSONResponse(degraded, status_code=503)
        ready: dict[str, Any] = {
            "status": "ready",
            "problems": problems,
            "history": history.as_dict(),
        }
        if known:
            ready["commit"] = desired.commit
        return JSONResponse(ready)

    return readyz
