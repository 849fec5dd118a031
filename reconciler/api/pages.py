"""The read-only status page: server-rendered Jinja2, a little JavaScript over SSE.

Pages: ``/`` (grid of projects × environments: desired vs deployed version, drift, last
run; recent runs), ``/runs/{id}`` (stages, tasks, steps, strategy progress — live over
``/api/release/runs/{id}/events``), ``/runs/{id}/logs`` (stored lines rendered, then
followed live over ``…/logs/stream`` from the last one shown), ``/history`` (state
commits with the config commit each applied), ``/agents`` (declared and connected
agents), and ``/login`` / ``/logout``.

Everything static works without JavaScript; the scripts only keep it current. The data
comes from the same view builders as the JSON API (``views``), so the page never shows
what the API would not, and everything shown comes from masked stores (log lines are
masked before they are stored; credentials appear by name only). Labels are English,
or Chinese with ``?lang=zh``. Scripts run under a per-response CSP nonce.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from reconciler.api import auth, routes, views
from reconciler.auth import limiting
from reconciler.auth import tokens as api_tokens
from reconciler.engine.control import EngineControl
from reconciler.log import queries as log_queries
from reconciler.log import records
from reconciler.log.victorialogs import QueryFailed

TEMPLATES = Path(__file__).parent / "templates"
LOGIN_BODY_LIMIT = 4096
LOG_LINES_SHOWN = 2000

LABELS: dict[str, dict[str, str]] = {
    "en": {
        "title": "QUIC-Flow status",
        "overview": "Overview",
        "history": "History",
        "agents": "Agents",
        "project": "Project",
        "environment": "Environment",
        "desired": "desired",
        "deployed": "deployed",
        "in_sync": "in sync",
        "drift": "drift",
        "last_run": "last run",
        "no_runs": "no runs yet",
        "recent_runs": "Recent runs",
        "run": "Run",
        "state": "State",
        "version": "Version",
        "previous": "previous",
        "trigger": "Trigger",
        "actor": "Actor",
        "started": "Started",
        "finished": "Finished",
        "created": "Created",
        "error": "Error",
        "stages": "Stages",
        "tasks": "tasks",
        "steps": "Steps",
        "progress": "Progress",
        "strategy": "Strategy",
        "logs": "Logs",
        "live": "live",
        "export": "Download",
        "filter": "Filter",
        "search_logs": "Search logs",
        "all_levels": "any level",
        "no_lines": "No line matches.",
        "more": "Older lines",
        "login": "Log in",
        "logout": "Log out",
        "token": "API token",
        "login_help": "Paste an API token made with: quicflow token create USER",
        "anonymous": "anonymous (read-only)",
        "protected": "protected",
        "config_commit": "Config commit",
        "state_commit": "State commit",
        "outcome": "Outcome",
        "time": "Time",
        "summary": "Summary",
        "name": "Name",
        "labels": "Labels",
        "address": "Address",
        "connected": "connected",
        "not_connected": "not connected",
        "heartbeat": "last heartbeat",
        "host": "Host",
        "no_hub": "No agent hub runs in this server.",
        "not_ready": "No valid desired state is loaded yet.",
        "problems": "The newest config commit has problems; the last valid one stays in force.",
        "nothing": "nothing here yet",
        "not_deployed": "not deployed",
        "pinned": "pinned",
        "waiting": "waiting",
        "processes": "processes",
        "containers": "containers",
        "key": "Key",
        "status": "Status",
        "attempts": "attempts",
        "log_end": "end of log",
        "lang_other": "中文",
        "login_failed": "That token is not valid.",
        "too_many": "Too many failed attempts; try again later.",
        "no_history": "No deployment has been recorded yet.",
        "back": "Back to the run",
        "decisions": "Decisions",
        "approved": "approved",
        "rejected": "rejected",
    },
    "zh": {
        "title": "QUIC-Flow 发布状态",
        "overview": "总览",
        "history": "历史",
        "agents": "客户端",
        "project": "项目",
        "environment": "环境",
        "desired": "期望",
        "deployed": "已部署",
        "in_sync": "已同步",
        "drift": "偏差",
        "last_run": "最近发布",
        "no_runs": "暂无发布",
        "recent_runs": "最近发布",
        "run": "发布",
        "state": "状态",
        "version": "版本",
        "previous": "上一版本",
        "trigger": "触发方式",
        "actor": "操作人",
        "started": "开始",
        "finished": "结束",
        "created": "创建",
        "error": "错误",
        "stages": "阶段",
        "tasks": "任务",
        "steps": "步骤",
        "progress": "进度",
        "strategy": "策略",
        "logs": "日志",
        "live": "实时",
        "export": "下载",
        "filter": "过滤",
        "search_logs": "搜索日志",
        "all_levels": "任意级别",
        "no_lines": "没有匹配的日志行。",
        "more": "更早的日志",
        "login": "登录",
        "logout": "退出",
        "token": "API 令牌",
        "login_help": "粘贴由 quicflow token create USER 生成的 API 令牌",
        "anonymous": "匿名（只读）",
        "protected": "受保护",
        "config_commit": "配置提交",
        "state_commit": "状态提交",
        "outcome": "结果",
        "time": "时间",
        "summary": "说明",
        "name": "名称",
        "labels": "标签",
        "address": "地址",
        "connected": "已连接",
        "not_connected": "未连接",
        "heartbeat": "最近心跳",
        "host": "主机",
        "no_hub": "本服务未运行客户端连接中心。",
        "not_ready": "尚未加载有效的期望状态。",
        "problems": "最新的配置提交有错误；仍使用上一个有效版本。",
        "nothing": "暂无内容",
        "not_deployed": "未部署",
        "pinned": "已锁定",
        "waiting": "等待中",
        "processes": "进程",
        "containers": "容器",
        "key": "键",
        "status": "状态",
        "attempts": "次尝试",
        "log_end": "日志结束",
        "lang_other": "English",
        "login_failed": "令牌无效。",
        "too_many": "失败次数过多，请稍后再试。",
        "no_history": "尚无发布记录。",
        "back": "返回发布详情",
        "decisions": "审批记录",
        "approved": "已批准",
        "rejected": "已驳回",
    },
}


def _timestamp(value: Any) -> str:
    """Epoch seconds or an ISO string, shown as UTC to the minute."""
    if value in (None, "", 0):
        return "—"
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = str(value)
    return text.replace("T", " ")[:16] + (" UTC" if len(text) >= 16 else "")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _timestamp
    env.filters["short"] = lambda value: (value or "")[:10]
    return env


def _safe_next(target: str | None) -> str:
    # Only same-site paths: "//evil.example" and "https://…" would be open redirects.
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


class Pages:
    """The status page routes."""

    def __init__(
        self,
        engine: EngineControl,
        tokens: api_tokens.TokenStore,
        limiter: limiting.FailureLimiter,
        session_seconds: int,
        secure_cookies: bool,
    ):
        self.engine = engine
        self.tokens = tokens
        self.limiter = limiter
        self.session_seconds = session_seconds
        self.secure_cookies = secure_cookies
        self.templates = _environment()

    def routes(self) -> list[Route]:
        """The page routes, explicitly listed."""
        return [
            Route("/", self.overview, name="overview"),
            Route("/runs/{run_id}", self.run, name="run"),
            Route("/runs/{run_id}/logs", self.logs, name="logs"),
            Route("/logs", self.log_search, name="log_search"),
            Route("/history", self.history, name="history"),
            Route("/agents", self.agents, name="agents"),
            Route("/login", self.login_form, methods=["GET"], name="login"),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"], name="logout"),
        ]

    # -- rendering ---------------------------------------------------------------------

    def render(
        self, request: Request, template: str, status_code: int = 200, **context: Any
    ) -> HTMLResponse:
        """Render ``template`` with labels, language links and a CSP nonce."""
        lang = "zh" if request.query_params.get("lang") == "zh" else "en"
        nonce = secrets.token_urlsafe(16)
        principal = request.scope.get("state", {}).get("principal")

        def link(path: str, **params: Any) -> str:
            query = {k: v for k, v in params.items() if v not in (None, "")}
            if lang == "zh":
                query["lang"] = "zh"
            return path + ("?" + urlencode(query) if query else "")

        other_params = dict(request.query_params)
        if lang == "zh":
            other_params.pop("lang", None)
        else:
            other_params["lang"] = "zh"
        desired = self.engine.desired
        html = self.templates.get_template(template).render(
            t=LABELS[lang],
            lang=lang,
            nonce=nonce,
            link=link,
            principal=principal,
            path=request.url.path,
            other_lang=request.url.path + ("?" + urlencode(other_params) if other_params else ""),
            ready=desired is not None,
            problems=len(self.engine.problems),
            config=views.config_view(self.engine),
            **context,
        )
        csp = (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; "
            "connect-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; "
            "base-uri 'none'"
        )
        return HTMLResponse(
            html,
            status_code=status_code,
            headers={
                "Content-Security-Policy": csp,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "same-origin",
                "Cache-Control": "no-store",
            },
        )

    def _principal(self, request: Request) -> auth.Principal:
        return routes.principal_of(request)

    # -- pages ----------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        """The grid of projects × environments and the newest runs."""
        principal = self._principal(request)
        projects = views.overview(self.engine, principal)
        columns: list[str] = []
        for project in projects:
            for env in project["environments"]:
                if env["name"] not in columns:
                    columns.append(env["name"])
        order = {name: i for i, name in enumerate(columns)}
        columns.sort(
            key=lambda name: (
                min(
                    _tier_rank(e) for p in projects for e in p["environments"] if e["name"] == name
                ),
                order[name],
            )
        )
        cells = {(p["name"], e["name"]): e for p in projects for e in p["environments"]}
        visible = [p["name"] for p in projects]
        recent = self._recent_runs(principal, visible)
        return self.render(
            request, "overview.html", projects=projects, columns=columns, cells=cells, recent=recent
        )

    def _recent_runs(
        self, principal: auth.Principal, visible: list[str], limit: int = 15
    ) -> list[dict[str, Any]]:
        if principal.sees_everything():
            runs, _ = self.engine.runs.list(limit=limit)
        else:
            runs = []
            for name in visible:
                runs += self.engine.runs.list(name, limit=limit)[0]
            runs.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        return [r.as_dict() for r in runs[:limit]]

    def _run_or_404(self, request: Request) -> dict[str, Any] | None:
        principal = self._principal(request)
        run_id = request.path_params["run_id"]
        run = self.engine.runs.get(run_id)
        desired = self.engine.desired
        project = desired.projects.get(run.project) if run and desired else None
        if run is None or project is None or not auth.visible(principal, project):
            return None
        return views.run_view(
            run, self.engine.runs.steps(run.id), self.engine.runs.decisions(run.id)
        )

    async def run(self, request: Request) -> Response:
        """One run: stages, tasks, steps and progress, kept live by a small script."""
        view = self._run_or_404(request)
        if view is None:
            return self.render(
                request, "missing.html", status_code=404, what=request.path_params["run_id"]
            )
        return self.render(request, "run.html", run=view)

    async def logs(self, request: Request) -> Response:
        """A run's log: the stored lines, then live ones over SSE."""
        view = self._run_or_404(request)
        if view is None:
            return self.render(
                request, "missing.html", status_code=404, what=request.path_params["run_id"]
            )
        contains = request.query_params.get("contains") or None
        last = self.engine.logs.last_seq(view["id"])
        after = max(last - LOG_LINES_SHOWN, 0) if not contains else 0
        lines = [
            line.as_dict()
            for line in self.engine.logs.read(view["id"], after, LOG_LINES_SHOWN, contains)
        ]
        return self.render(
            request,
            "logs.html",
            run=view,
            lines=lines,
            contains=contains or "",
            last_seq=lines[-1]["seq"] if lines else after,
            closed=self.engine.logs.is_closed(view["id"]),
        )

    async def log_search(self, request: Request) -> Response:
        """Search the stored lines of every run and build the caller may see."""
        principal = self._principal(request)
        params = request.query_params
        searched = any(
            params.get(k) for k in ("filter", "project", "env", "level", "run_id", "task_id")
        )
        lines: list[dict[str, Any]] = []
        error = ""
        next_cursor = None
        try:
            query = log_queries.from_params(params, time.time_ns())
        except log_queries.QueryError as exc:
            query, error = None, str(exc)
        desired = self.engine.desired
        visible = sorted(
            p.name
            for p in (desired.projects.values() if desired else ())
            if auth.visible(principal, p)
        )
        if query is not None and searched:
            allowed = None if principal.sees_everything() else tuple(visible)
            try:
                _, found = await self.engine.logs.query(replace(query, projects=allowed))
            except QueryFailed as exc:
                found, error = [], str(exc)
            lines = [line.as_dict() for line in found]
            if found and len(found) == query.limit:
                next_cursor = log_queries.cursor_of(found[-1].time_ns, found[-1].id)
        return self.render(
            request,
            "log_search.html",
            lines=lines,
            params={k: v for k, v in params.items() if k != "cursor"},
            projects=visible,
            levels=records.LEVELS,
            searched=searched,
            error=error,
            next_cursor=next_cursor,
        )

    async def history(self, request: Request) -> Response:
        """State commits of every visible environment, newest first."""
        principal = self._principal(request)
        desired = self.engine.desired
        projects = desired.projects if desired is not None else {}
        visible = [p for _, p in sorted(projects.items()) if auth.visible(principal, p)]
        entries = views.histories_view(self.engine, visible, 50)
        return self.render(request, "history.html", entries=entries[:200])

    async def agents(self, request: Request) -> Response:
        """Declared agents and, when a hub runs, which are connected (needs a login)."""
        principal = self._principal(request)
        if principal.is_anonymous:
            return RedirectResponse(
                "/login?next=" + quote(request.url.path, safe=""), status_code=303
            )
        connected = {a["name"]: a for a in views.agents_view(self.engine)}
        desired = self.engine.desired
        declared = sorted(desired.agents.values(), key=lambda a: a.name) if desired else []
        rows = []
        for agent in declared:
            rows.append(
                {
                    "name": agent.name,
                    "labels": dict(agent.labels),
                    "address": agent.address or "",
                    "live": connected.pop(agent.name, None),
                }
            )
        for name, live in sorted(connected.items()):
            rows.append(
                {"name": name, "labels": live["labels"], "address": live["address"], "live": live}
            )
        return self.render(
            request,
            "agents.html",
            agents=rows,
            has_hub=getattr(self.engine, "hub", None) is not None,
        )

    # -- login ----------------------------------------------------------------------------

    async def login_form(self, request: Request) -> Response:
        """GET /login: the token form."""
        return self.render(
            request, "login.html", next=_safe_next(request.query_params.get("next")), failure=""
        )

    async def login(self, request: Request) -> Response:
        """POST /login: exchange an API token for a session cookie."""
        address = auth.client_address(request.scope)
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > LOGIN_BODY_LIMIT:
                return self.render(
                    request, "login.html", status_code=413, next="/", failure="login_failed"
                )
        # The form is urlencoded; parsing it here avoids a multipart dependency.
        form = parse_qs(raw.decode("utf-8", "replace"), max_num_fields=4)
        token = (form.get("token") or [""])[0].strip()
        target = _safe_next((form.get("next") or ["/"])[0])
        username = self.tokens.lookup(token)
        desired = self.engine.desired
        if username is None or desired is None or username not in desired.users:
            # A good token always logs in; bad ones are limited per address.
            wait = self.limiter.retry_after(address)
            if wait is not None:
                response = self.render(
                    request, "login.html", status_code=429, next=target, failure="too_many"
                )
                response.headers["Retry-After"] = str(int(wait + 0.999))
                return response
            self.limiter.fail(address)
            return self.render(
                request, "login.html", status_code=401, next=target, failure="login_failed"
            )

        session = self.tokens.create(
            username, kind="session", ttl=timedelta(seconds=self.session_seconds)
        )
        response = RedirectResponse(target, status_code=303)
        response.headers["Set-Cookie"] = auth.session_cookie(
            session, self.session_seconds, self.secure_cookies
        )
        return response

    async def logout(self, request: Request) -> Response:
        """POST /logout: forget the session and clear its cookie."""
        session = auth.session_token(request.headers.get("cookie", ""))
        if session:
            self.tokens.revoke(session)
        response = RedirectResponse("/login", status_code=303)
        response.headers["Set-Cookie"] = auth.cleared_session_cookie(self.secure_cookies)
        return response


def _tier_rank(env: dict[str, Any]) -> int:
    return views.TIER_ORDER.get(env["tier"], 3)
