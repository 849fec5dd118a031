"""The JSON API under ``/api/release``: read the release state, act on runs, follow logs.

Each endpoint translates HTTP into ``EngineControl`` calls and back, after the caller
was authenticated (``auth.AuthMiddleware``) and authorized for the project
(``auth.authorize``). Configuration is changed in Git, never here: the only writes are
run actions (approve, reject, promote, cancel, deploy, rollback) and, in ``webhooks``,
triggers. Lists page with ``limit``/``offset`` and answer ``{"items", "total", "limit",
"offset"}``; errors answer ``{"error": {"code", "message", "field"?}}``.

Engine refusals map onto status codes: unknown run/project/environment (``KeyError``)
→ 404, ``PermissionDenied`` → 403, ``ApprovalRequired`` / ``PermanentError`` → 409,
``TemporaryError`` → 503 with ``Retry-After``.

The view builders (``project_view``, ``run_view``, ``history_view``, …) are shared with
the status page so both show the same facts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from reconciler import errors
from reconciler.api import auth
from reconciler.engine.control import EngineControl
from reconciler.events import Event
from reconciler.gitops import model
from reconciler.gitops.planning import Action, DeployedRecord, Plan
from reconciler.log.store import LogLine
from reconciler.runs import Run, RunState, Step, Trigger
from reconciler.trigger.scheduling import Scheduler

P = auth.API_PREFIX
MAX_LIMIT = 500
HEARTBEAT_SECONDS = 15.0
T = TypeVar("T")


class Streams:
    """Live (SSE) responses in flight, so shutdown can end them instead of waiting."""

    def __init__(self) -> None:
        self.closing = asyncio.Event()

    def close(self) -> None:
        """End every live stream (call before asking uvicorn to exit)."""
        self.closing.set()


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
    except (errors.ApprovalRequired, errors.PermanentError, errors.ConfigError) as error:
        raise auth.ApiError(409, "conflict", str(error)) from None


# -- views shared with the status page -------------------------------------------------


def _last_run(run: Run | None) -> dict[str, Any] | None:
    if run is None:
        return None
    return {
        "id": run.id,
        "state": run.state.value,
        "version": run.version,
        "trigger": run.trigger.value,
        "created_at": run.created_at,
        "finished_at": run.finished_at or None,
    }


def environment_view(
    env: model.Environment, record: DeployedRecord | None, action: Action | None, last: Run | None
) -> dict[str, Any]:
    """One environment: desired vs deployed, drift and the last run."""
    deployed = record.version if record else None
    reason = action.reason.value if action else None
    return {
        "project": env.project,
        "name": env.name,
        "tier": env.tier,
        "protected": env.protected,
        "desired_version": env.version,
        "deployed_version": deployed,
        "in_sync": action is not None and not action.kind.is_change and reason == "unchanged",
        "drift": reason,
        "plan_action": action.kind.value if action else None,
        "plan_detail": action.detail if action else "",
        "strategy": env.strategy.type.value,
        "deploy_type": env.deploy.type.value,
        "targets": [t.label for t in env.targets],
        "pinned": bool(record and record.pin),
        "last_failure": (
            {
                "version": record.last_failure.version,
                "outcome": record.last_failure.outcome,
                "run_id": record.last_failure.run_id,
            }
            if record and record.last_failure
            else None
        ),
        "deployed_at": record.finished_at if record else None,
        "config_commit": record.config_commit if record else None,
        "last_run": _last_run(last),
    }


def project_view(
    engine: EngineControl,
    project: model.Project,
    principal: auth.Principal,
    deployed: dict[tuple[str, str], DeployedRecord],
    plan: Plan | None,
) -> dict[str, Any]:
    """One project with all its environments."""
    actions = {(a.project, a.env): a for a in plan.actions} if plan else {}
    envs = [
        environment_view(
            env,
            deployed.get((project.name, name)),
            actions.get((project.name, name)),
            engine.runs.latest(project.name, name),
        )
        for name, env in sorted(project.environments.items(), key=lambda kv: _env_order(kv[1]))
    ]
    role = project.role_of(principal.user.username) if principal.user else None
    return {
        "name": project.name,
        "description": project.description,
        "role": role,
        "environments": envs,
    }


TIER_ORDER = {
    "development": 0,
    "dev": 0,
    "test": 1,
    "testing": 1,
    "staging": 2,
    "production": 4,
    "prod": 4,
}


def _env_order(env: model.Environment) -> tuple[int, str]:
    # Environments read left to right as a release travels: dev → staging → prod.
    return (TIER_ORDER.get(env.tier, 3), env.name)


def _safe_plan(engine: EngineControl) -> Plan | None:
    try:
        return engine.plan()
    except Exception:  # noqa: BLE001 - the page still shows desired/deployed without a plan
        return None


def overview(engine: EngineControl, principal: auth.Principal) -> list[dict[str, Any]]:
    """Every project the caller may see, with environments (the grid)."""
    desired = engine.desired
    if desired is None:
        return []
    deployed = engine.deployed()
    plan = _safe_plan(engine)
    return [
        project_view(engine, p, principal, deployed, plan)
        for _, p in sorted(desired.projects.items())
        if auth.visible(principal, p)
    ]


def run_view(run: Run, steps: Iterable[Step]) -> dict[str, Any]:
    """A run with its steps grouped as stages → tasks, plus the strategy's progress.

    Step keys name their kind: ``stage:NAME``, ``task:STAGE/TASK``; every other step
    (``deploy:web-1``, ``canary:34``, ``batch:2``…) is a strategy/target step and counts
    towards ``progress``.
    """
    stages: dict[str, dict[str, Any]] = {}
    other: list[dict[str, Any]] = []
    for step in steps:
        kind, _, name = step.key.partition(":")
        item = step.as_dict()
        item["name"] = name
        if kind == "stage":
            stages.setdefault(name, {"name": name, "tasks": []}).update(item)
        elif kind == "task":
            stage, _, task = name.partition("/")
            item["name"] = task or name
            stages.setdefault(
                stage, {"name": stage, "key": f"stage:{stage}", "status": "pending", "tasks": []}
            )["tasks"].append(item)
        else:
            item["kind"] = kind
            other.append(item)
    done = sum(1 for s in other if s["status"] in ("succeeded", "skipped"))
    view = run.as_dict()
    view.update(
        {
            "stages": list(stages.values()),
            "steps": other,
            "final": run.state.is_final,
            "waiting": run.state.is_waiting,
            "progress": {
                "done": done,
                "total": len(other),
                "percent": round(100 * done / len(other))
                if other
                else (100 if run.state is RunState.SUCCEEDED else 0),
            },
        }
    )
    return view


def history_view(engine: EngineControl, project: str, env: str, limit: int) -> list[dict[str, Any]]:
    """State commits of one environment, newest first, with the config commit applied."""
    out = []
    for entry in engine.history.entries(project, env, limit):
        record = entry.record
        out.append(
            {
                "project": project,
                "environment": env,
                "state_commit": entry.commit.id,
                "time": entry.commit.time,
                "summary": entry.commit.summary,
                "version": record.version if record else None,
                "outcome": record.outcome if record else None,
                "config_commit": record.config_commit if record else None,
                "run_id": record.run_id if record else None,
                "strategy": record.strategy if record else None,
                "pinned": bool(record and record.pin),
                "last_failure": (
                    None
                    if not record or not record.last_failure
                    else {
                        "version": record.last_failure.version,
                        "outcome": record.last_failure.outcome,
                        "run_id": record.last_failure.run_id,
                    }
                ),
            }
        )
    return out


def agents_view(engine: EngineControl) -> list[dict[str, Any]]:
    """Connected agents when the engine has a hub; process command lines are not shown."""
    hub = getattr(engine, "hub", None)
    if hub is None:
        return []
    out = []
    for info in sorted(hub.agents(), key=lambda a: a.name):
        status = info.status
        out.append(
            {
                "name": info.name,
                "labels": dict(info.labels),
                "hostname": info.hostname,
                "os": info.os,
                "agent_version": info.agent_version,
                "address": info.address,
                "connected_since": info.connected_since,
                "last_heartbeat": info.last_heartbeat,
                "processes": len(status.processes) if status else None,
                "containers": len(status.containers) if status else None,
            }
        )
    return out


def _webhook_view(hook: model.WebhookTrigger) -> dict[str, Any]:
    # The secret is a credential *name*; its value never leaves the credential manager.
    return {
        "id": hook.id,
        "project": hook.project,
        "name": hook.name,
        "source": hook.source,
        "action": hook.action,
        "branches": list(hook.branches),
        "events": list(hook.events),
        "target_env": hook.target_env,
        "enabled": hook.enabled,
        "url": f"{P}/webhooks/{hook.id}/trigger",
    }


def _page(items: list[Any], total: int, limit: int, offset: int) -> dict[str, Any]:
    return {"items": items, "total": total, "limit": limit, "offset": offset}


# -- server-sent events ---------------------------------------------------------------


def sse_response(events: AsyncIterator[str]) -> StreamingResponse:
    """A ``text/event-stream`` answer that proxies must not buffer."""
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _with_heartbeat(
    source: AsyncIterator[T], closing: asyncio.Event, every: float = HEARTBEAT_SECONDS
) -> AsyncIterator[T | None]:
    """Items of ``source``; None after ``every`` idle seconds; stops when ``closing`` is set."""
    stop = asyncio.ensure_future(closing.wait())
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(source))  # type: ignore[arg-type]
            done, _ = await asyncio.wait(
                {pending, stop}, timeout=every, return_when=asyncio.FIRST_COMPLETED
            )
            if stop in done:
                return
            if pending in done:
                try:
                    item = pending.result()
                except StopAsyncIteration:
                    return
                pending = None
                yield item
            else:
                yield None  # idle: a comment keeps proxies from timing out, and reveals a gone client
    finally:
        stop.cancel()
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()


def _sse(event: str, data: Any, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def last_event_id(request: Request) -> int:
    """Where a (resuming) SSE client left off: ``Last-Event-ID``, else ``?after=``, else 0."""
    raw = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
    try:
        return max(int(raw), 0)
    except ValueError:
        raise auth.ApiError(
            400, "invalid_parameter", "Last-Event-ID must be a log sequence number", "Last-Event-ID"
        ) from None


async def log_events(
    engine: EngineControl,
    run_id: str,
    after: int,
    closing: asyncio.Event,
    heartbeat: float = HEARTBEAT_SECONDS,
) -> AsyncIterator[str]:
    """SSE of a run's log lines from ``after`` on: ``id:`` is the line's sequence number."""
    yield "retry: 2000\n\n"
    lines: AsyncIterator[LogLine] = engine.logs.follow(run_id, after)
    async for line in _with_heartbeat(lines, closing, heartbeat):
        if line is None:
            yield ": keep-alive\n\n"
            continue
        yield _sse("line", line.as_dict(), line.seq)
    if engine.logs.is_closed(run_id):
        yield _sse("end", {"run_id": run_id})


async def run_events(
    engine: EngineControl, run_id: str, closing: asyncio.Event, poll: float = 2.0
) -> AsyncIterator[str]:
    """SSE of a run's view whenever it changes (bus events wake it; a poll bounds the wait)."""
    changed = asyncio.Event()

    async def on_event(event: Event) -> None:
        if event.run_id == run_id:
            changed.set()

    unsubscribe = engine.bus.subscribe(on_event)
    stop = asyncio.ensure_future(closing.wait())
    try:
        yield "retry: 2000\n\n"
        last = ""
        while True:
            run = engine.runs.get(run_id)
            if run is None:
                return
            view = run_view(run, engine.runs.steps(run_id))
            text = json.dumps(view, separators=(",", ":"), sort_keys=True)
            if text != last:
                last = text
                yield f"event: run\ndata: {text}\n\n"
            else:
                yield ": keep-alive\n\n"
            if run.state.is_final:
                return
            changed.clear()
            wake = asyncio.ensure_future(changed.wait())
            await asyncio.wait({wake, stop}, timeout=poll, return_when=asyncio.FIRST_COMPLETED)
            wake.cancel()
            if stop.done():
                return
    finally:
        stop.cancel()
        unsubscribe()


# -- the API ---------------------------------------------------------------------------


class ReleaseApi:
    """The ``/api/release`` endpoints (webhooks live in ``webhooks``)."""

    def __init__(self, engine: EngineControl, scheduler: Scheduler, records: Any, streams: Streams):
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

    # -- projects and environments -------------------------------------------------

    async def me(self, request: Request) -> Response:
        """GET /me: the caller and their roles."""
        principal = principal_of(request)
        desired = self.engine.desired
        roles = {}
        if desired is not None and principal.user is not None:
            roles = {
                name: p.role_of(principal.user.username)
                for name, p in sorted(desired.projects.items())
                if p.role_of(principal.user.username)
            }
        user = principal.user
        return JSONResponse(
            {
                "username": principal.name,
                "anonymous": principal.is_anonymous,
                "via": principal.via,
                "display_name": user.display_name if user else "",
                "is_admin": bool(user and user.is_admin),
                "roles": roles,
            }
        )

    async def projects(self, request: Request) -> Response:
        """GET /projects: desired vs deployed per environment, drift, last run."""
        self._desired()
        items = overview(self.engine, principal_of(request))
        return JSONResponse(_page(items, len(items), len(items), 0))

    async def project(self, request: Request) -> Response:
        """GET /projects/{project}."""
        principal = principal_of(request)
        found = auth.authorize(
            principal, self.engine.desired, request.path_params["project"], "view"
        )
        view = project_view(
            self.engine, found, principal, self.engine.deployed(), _safe_plan(self.engine)
        )
        return JSONResponse(view)

    async def project_environments(self, request: Request) -> Response:
        """GET /projects/{project}/environments."""
        principal = principal_of(request)
        found = auth.authorize(
            principal, self.engine.desired, request.path_params["project"], "view"
        )
        view = project_view(
            self.engine, found, principal, self.engine.deployed(), _safe_plan(self.engine)
        )
        items = view["environments"]
        return JSONResponse(_page(items, len(items), len(items), 0))

    async def environment(self, request: Request) -> Response:
        """GET /projects/{project}/environments/{env}."""
        principal = principal_of(request)
        name, env = request.path_params["project"], request.path_params["env"]
        found = auth.authorize(principal, self.engine.desired, name, "view", env)
        view = project_view(
            self.engine, found, principal, self.engine.deployed(), _safe_plan(self.engine)
        )
        return JSONResponse(next(e for e in view["environments"] if e["name"] == env))

    async def environments(self, request: Request) -> Response:
        """GET /environments: every visible environment, flat."""
        self._desired()
        items = [e for p in overview(self.engine, principal_of(request)) for e in p["environments"]]
        return JSONResponse(_page(items, len(items), len(items), 0))

    async def members(self, request: Request) -> Response:
        """GET /projects/{project}/members: members and roles (from Git)."""
        principal = principal_of(request)
        found = auth.authorize(
            principal, self.engine.desired, request.path_params["project"], "view"
        )
        users = self._desired().users
        items = []
        for member in found.members:
            user = users.get(member.user)
            items.append(
                {
                    "user": member.user,
                    "role": member.role,
                    "added_by": member.added_by,
                    "display_name": user.display_name if user else "",
                    "is_admin": bool(user and user.is_admin),
                }
            )
        return JSONResponse(_page(items, len(items), len(items), 0))

    # -- run actions ----------------------------------------------------------------

    async def deploy(self, request: Request) -> Response:
        """POST …/deploy {version?, force?}: start a run now."""
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
        return JSONResponse(_page([r.as_dict() for r in found], total, limit, offset))

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
        return JSONResponse(run_view(run, self.engine.runs.steps(run.id)))

    async def run_stream(self, request: Request) -> Response:
        """GET /runs/{id}/events: SSE of the run view whenever it changes."""
        run, _ = self._run(request)
        return sse_response(run_events(self.engine, run.id, self.streams.closing))

    # -- logs ---------------------------------------------------------------------------

    async def logs(self, request: Request) -> Response:
        """GET /runs/{id}/logs?after=&contains=&limit=: stored (masked) lines."""
        run, _ = self._run(request)
        after = _int_param(request, "after", 0, 0)
        limit = _int_param(request, "limit", 1000, 1, 10_000)
        contains = request.query_params.get("contains") or None
        lines = self.engine.logs.read(run.id, after, limit, contains)
        return JSONResponse(
            {
                "run_id": run.id,
                "lines": [line.as_dict() for line in lines],
                "last_seq": lines[-1].seq if lines else after,
                "closed": self.engine.logs.is_closed(run.id),
            }
        )

    async def logs_export(self, request: Request) -> Response:
        """GET /runs/{id}/logs/export: the whole log as a text/plain download."""
        run, _ = self._run(request)
        contains = request.query_params.get("contains") or None
        out: list[str] = []
        after = 0
        while True:
            lines = self.engine.logs.read(run.id, after, 5000, contains)
            if not lines:
                break
            for line in lines:
                source = f" [{line.source}]" if line.source else ""
                out.append(f"{line.at}{source} {line.channel}: {line.line}\n")
            after = lines[-1].seq
        filename = f"{run.project}-{run.env}-{run.id}.log"
        return PlainTextResponse(
            "".join(out), headers={"Content-Disposition": f'attachment; filename="{filename}"'}
        )

    async def logs_stream(self, request: Request) -> Response:
        """GET /runs/{id}/logs/stream: SSE from ``Last-Event-ID`` (or ``?after=``) on."""
        run, _ = self._run(request)
        return sse_response(
            log_events(self.engine, run.id, last_event_id(request), self.streams.closing)
        )

    # -- history, triggers, schedules, agents ---------------------------------------------

    async def environment_history(self, request: Request) -> Response:
        """GET …/environments/{env}/history: state commits, newest first."""
        principal = principal_of(request)
        name, env = request.path_params["project"], request.path_params["env"]
        auth.authorize(principal, self.engine.desired, name, "view", env)
        limit = _int_param(request, "limit", 50, 1, MAX_LIMIT)
        items = history_view(self.engine, name, env, limit)
        return JSONResponse(_page(items, len(items), limit, 0))

    async def history(self, request: Request) -> Response:
        """GET /history?project=&env=&limit=: state commits of visible environments, newest first."""
        principal = principal_of(request)
        limit = _int_param(request, "limit", 50, 1, MAX_LIMIT)
        project = request.query_params.get("project") or None
        env = request.query_params.get("env") or None
        if project:
            auth.authorize(principal, self.engine.desired, project, "view", env)
        items = []
        for p in self._visible_projects(principal):
            if project and p.name != project:
                continue
            for name in sorted(p.environments):
                if env and name != env:
                    continue
                items += history_view(self.engine, p.name, name, limit)
        items.sort(key=lambda e: (e["time"], e["state_commit"]), reverse=True)
        return JSONResponse(_page(items[:limit], len(items), limit, 0))

    async def project_webhooks(self, request: Request) -> Response:
        """GET /projects/{project}/webhooks: declared webhook triggers."""
        principal = principal_of(request)
        found = auth.authorize(
            principal, self.engine.desired, request.path_params["project"], "view"
        )
        items = [_webhook_view(w) for w in found.webhooks]
        return JSONResponse(_page(items, len(items), len(items), 0))

    async def project_schedules(self, request: Request) -> Response:
        """GET /projects/{project}/schedules: with next_run / last_run."""
        principal = principal_of(request)
        found = auth.authorize(
            principal, self.engine.desired, request.path_params["project"], "view"
        )
        items = [self.scheduler.describe(s) for s in found.schedules]
        return JSONResponse(_page(items, len(items), len(items), 0))

    async def triggers(self, request: Request) -> Response:
        """GET /triggers: declared webhooks and schedules of visible projects."""
        projects = self._visible_projects(principal_of(request))
        return JSONResponse(
            {
                "webhooks": [_webhook_view(w) for p in projects for w in p.webhooks],
                "schedules": [self.scheduler.describe(s) for p in projects for s in p.schedules],
            }
        )

    async def trigger_records(self, request: Request) -> Response:
        """GET /triggers/records?trigger=&project=&status=&limit=&offset=."""
        principal = principal_of(request)
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
        return JSONResponse(_page([r.as_dict() for r in found], total, limit, offset))

    async def schedules(self, request: Request) -> Response:
        """GET /schedules: every visible schedule with next_run / last_run."""
        projects = self._visible_projects(principal_of(request))
        items = [self.scheduler.describe(s) for p in projects for s in p.schedules]
        return JSONResponse(_page(items, len(items), len(items), 0))

    async def agents(self, request: Request) -> Response:
        """GET /agents: connected agents (empty without a hub)."""
        principal_of(request)
        items = agents_view(self.engine)
        return JSONResponse(_page(items, len(items), len(items), 0))


async def healthz(request: Request) -> Response:
    """GET /healthz: the process answers."""
    return JSONResponse({"status": "ok"})


def readiness(engine: EngineControl) -> Callable[[Request], Awaitable[Response]]:
    """GET /readyz: ready once a valid desired state is loaded."""

    async def readyz(request: Request) -> Response:
        desired = engine.desired
        problems = len(engine.problems)
        if desired is None:
            return JSONResponse(
                {
                    "status": "not_ready",
                    "reason": "no valid desired state loaded",
                    "problems": problems,
                },
                status_code=503,
            )
        return JSONResponse({"status": "ready", "commit": desired.commit, "problems": problems})

    return readyz
