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

import re
import secrets
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import jinja2
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from reconciler import streaming
from reconciler.api import auth, routes, views
from reconciler.auth import limiting
from reconciler.auth import tokens as api_tokens
from reconciler.engine.control import EngineControl
from reconciler.hub import registry
from reconciler.log import queries as log_queries
from reconciler.log import records
from reconciler.log.victorialogs import QueryFailed
from reconciler.runs import RunState, Trigger

TEMPLATES = Path(__file__).parent / "templates"
LOGIN_BODY_LIMIT = 4096
LOG_LINES_SHOWN = 2000
HISTORY_PAGE = 50

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
        "kind": "Kind",
        "process": "process",
        "container": "container",
        "health": "Health",
        "cpu": "CPU",
        "memory": "Memory",
        "no_report": "no status report yet",
        "not_listed": "{n} more not listed",
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
        "attention": "Needs attention",
        "approvals_waiting": "Waiting for a decision",
        "failed_runs": "Failed or rolled back",
        "drifted": "Drifted",
        "running_runs": "In progress",
        "all_clear": "Nothing needs attention.",
        "gate": "Gate",
        "since": "since",
        "may_approve": "may decide",
        "how": "how",
        "roles": "roles",
        "four_eyes": "four-eyes rule: not the author of the change or the person who started the run",
        "excluded": "not",
        "just_now": "just now",
        "minutes_ago": "{n} min ago",
        "hours_ago": "{n} h ago",
        "days_ago": "{n} d ago",
        "changed_by": "by",
        "hide_scheduled": "Hide scheduled runs",
        "show_scheduled": "Show scheduled runs",
        "any": "any",
        "runs": "Runs",
        "deployments": "Deployments",
        "newer": "Newer",
        "older": "Older",
        "shown_of": "{first}–{last} of {total}",
        "live_off": "not live",
        "pending": "pending",
        "running": "running",
        "waiting_approval": "waiting approval",
        "waiting_window": "waiting window",
        "succeeded": "succeeded",
        "failed": "failed",
        "cancelled": "cancelled",
        "rolled_back": "rolled back",
        "interrupted": "interrupted",
        "superseded": "superseded",
        "skipped": "skipped",
        "never_deployed": "never deployed",
        "version_changed": "version changed",
        "config_changed": "config changed",
        "failed_before": "failed before",
        "unchanged": "unchanged",
        "orphaned": "orphaned",
        "poll": "poll",
        "webhook": "webhook",
        "schedule": "schedule",
        "manual": "manual",
        "rollback": "rollback",
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
        "kind": "类型",
        "process": "进程",
        "container": "容器",
        "health": "健康状况",
        "cpu": "CPU",
        "memory": "内存",
        "no_report": "尚未收到状态报告",
        "not_listed": "另有 {n} 项未列出",
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
        "attention": "需要处理",
        "approvals_waiting": "等待审批",
        "failed_runs": "失败或已回滚",
        "drifted": "存在偏差",
        "running_runs": "进行中",
        "all_clear": "暂无需要处理的事项。",
        "gate": "审批关卡",
        "since": "开始于",
        "may_approve": "可审批人",
        "how": "操作方式",
        "roles": "角色",
        "four_eyes": "四眼原则：变更作者和发起人不可审批",
        "excluded": "不含",
        "just_now": "刚刚",
        "minutes_ago": "{n} 分钟前",
        "hours_ago": "{n} 小时前",
        "days_ago": "{n} 天前",
        "changed_by": "操作人",
        "hide_scheduled": "隐藏定时发布",
        "show_scheduled": "显示定时发布",
        "any": "全部",
        "runs": "发布记录",
        "deployments": "部署记录",
        "newer": "较新",
        "older": "较旧",
        "shown_of": "第 {first}–{last} 条，共 {total} 条",
        "live_off": "未实时更新",
        "pending": "排队中",
        "running": "运行中",
        "waiting_approval": "等待审批",
        "waiting_window": "等待发布窗口",
        "succeeded": "成功",
        "failed": "失败",
        "cancelled": "已取消",
        "rolled_back": "已回滚",
        "interrupted": "已中断",
        "superseded": "已被取代",
        "skipped": "已跳过",
        "never_deployed": "从未部署",
        "version_changed": "版本变更",
        "config_changed": "配置变更",
        "failed_before": "上次失败",
        "unchanged": "无变化",
        "orphaned": "已移除",
        "poll": "轮询",
        "webhook": "Webhook",
        "schedule": "定时",
        "manual": "手动",
        "rollback": "回滚",
    },
}


def _instant(value: Any) -> datetime | None:
    """Epoch seconds or an ISO-8601 string as an aware UTC datetime (None: no time)."""
    if value in (None, "", 0):
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


def iso_time(value: Any) -> str:
    """The page's one time format: ISO-8601 in UTC to the second (2026-12-03T12:00:00Z)."""
    moment = _instant(value)
    if moment is None:
        return "—" if value in (None, "", 0) else str(value)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def age(value: Any, now: datetime, labels: dict[str, str]) -> str:
    """How long ago ``value`` was, coarsely ("3 h ago"), in the page's language."""
    moment = _instant(value)
    if moment is None:
        return "—"
    seconds = max((now - moment).total_seconds(), 0)
    if seconds < 60:
        return labels["just_now"]
    if seconds < 3600:
        return labels["minutes_ago"].format(n=int(seconds // 60))
    if seconds < 86400:
        return labels["hours_ago"].format(n=int(seconds // 3600))
    return labels["days_ago"].format(n=int(seconds // 86400))


_SHA_LIKE = re.compile(r"(?:sha256:)?[0-9a-f]{12,64}")
SHORT_SHA = 10


def shortened(value: Any) -> Markup:
    """A SHA-like value (a commit, a digest used as a version) cut to its first ten
    characters, the full value on hover; any other value as it is."""
    text = "" if value is None else str(value)
    if not _SHA_LIKE.fullmatch(text):
        return Markup("{}").format(text)
    return Markup('<span title="{}">{}</span>').format(text, text[:SHORT_SHA])


FAVICON = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32">'
    '<rect width="32" height="32" rx="7" fill="#1d2430"/>'
    '<path d="M8 17l5 5 11-12" fill="none" stroke="#8fb3ff" stroke-width="4" '
    'stroke-linecap="round" stroke-linejoin="round"/></svg>'
)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = iso_time
    env.filters["sha"] = shortened
    env.filters["short"] = lambda value: (value or "")[:SHORT_SHA]
    env.filters["size"] = lambda value: "—" if value is None else registry.size_text(value)
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
        streams: streaming.Streams | None = None,
    ):
        self.engine = engine
        self.streams = streams or streaming.Streams()
        self.tokens = tokens
        self.limiter = limiter
        self.session_seconds = session_seconds
        self.secure_cookies = secure_cookies
        self.templates = _environment()

    def routes(self) -> list[Route]:
        """The page routes, explicitly listed."""
        return [
            Route("/", self.overview, name="overview"),
            Route("/overview/events", self.overview_events, name="overview_events"),
            Route("/favicon.ico", self.favicon, name="favicon"),
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
        nonce = secrets.token_urlsafe(16)
        html = self.render_text(request, template, nonce=nonce, **context)
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

    def render_text(self, request: Request, template: str, nonce: str = "", **context: Any) -> str:
        """``template`` (a page, or a fragment a live stream sends) rendered for ``request``."""
        lang = "zh" if request.query_params.get("lang") == "zh" else "en"
        labels = LABELS[lang]
        principal = request.scope.get("state", {}).get("principal")
        now = datetime.now(UTC)

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
        return self.templates.get_template(template).render(
            t=labels,
            tr=lambda value: labels.get(str(value), str(value).replace("_", " ")),
            ago=lambda value: age(value, now, labels),
            favicon="data:image/svg+xml," + quote(FAVICON),
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

    def _principal(self, request: Request) -> auth.Principal:
        return routes.principal_of(request)

    # -- pages ----------------------------------------------------------------------------

    def _overview_context(self, request: Request) -> dict[str, Any]:
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
        hide_scheduled = request.query_params.get("scheduled") == "hide"
        return {
            "projects": projects,
            "columns": columns,
            "cells": cells,
            "recent": self._recent_runs(principal, visible, hide_scheduled=hide_scheduled),
            "attention": views.attention_view(self.engine, principal, projects),
            "hide_scheduled": hide_scheduled,
        }

    async def overview(self, request: Request) -> Response:
        """What needs attention, the grid of projects × environments and the newest runs;
        kept current over ``/overview/events``."""
        return self.render(request, "overview.html", **self._overview_context(request))

    async def overview_events(self, request: Request) -> Response:
        """SSE of the overview's live part (attention, grid, recent runs) as rendered HTML,
        sent whenever it changes; the page swaps it in without a reload."""

        def snapshot() -> dict[str, str]:
            return {
                "html": self.render_text(
                    request, "overview_live.html", **self._overview_context(request)
                )
            }

        return routes.sse_response(
            streaming.snapshot_events(self.engine, self.streams.closing, snapshot, "overview")
        )

    async def favicon(self, request: Request) -> Response:
        """The tab icon: a small SVG (browsers take SVG at /favicon.ico by content type)."""
        return Response(
            FAVICON,
            media_type="image/svg+xml",
            headers={"Cache-Control": "public, max-age=86400"},
        )

    def _recent_runs(
        self,
        principal: auth.Principal,
        visible: list[str],
        limit: int = 15,
        hide_scheduled: bool = False,
    ) -> list[dict[str, Any]]:
        triggers = (
            [t.value for t in Trigger if t is not Trigger.SCHEDULE] if hide_scheduled else None
        )
        projects = None if principal.sees_everything() else visible
        runs, _ = self.engine.runs.list(limit=limit, projects=projects, triggers=triggers)
        return [r.as_dict() for r in runs]

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
        """Runs and state commits of every visible environment, newest first, filtered by
        project, environment, state and trigger, a page at a time."""
        principal = self._principal(request)
        desired = self.engine.desired
        projects = desired.projects if desired is not None else {}
        visible = [p for _, p in sorted(projects.items()) if auth.visible(principal, p)]
        params = request.query_params
        chosen = {k: params.get(k, "") for k in ("project", "env", "state", "trigger")}
        problems = []
        if chosen["state"] and chosen["state"] not in {s.value for s in RunState}:
            problems.append(f"unknown state {chosen['state']!r} (query parameter 'state')")
        if chosen["trigger"] and chosen["trigger"] not in {t.value for t in Trigger}:
            problems.append(f"unknown trigger {chosen['trigger']!r} (query parameter 'trigger')")
        offsets = {}
        for name in ("offset", "commits_offset"):
            raw = params.get(name, "0")
            offsets[name] = int(raw) if raw.isdigit() else 0
            if not raw.isdigit():
                problems.append(f"query parameter {name!r} must be a whole number, not {raw!r}")
        runs: list[dict[str, Any]] = []
        total = 0
        entries: list[dict[str, Any]] = []
        if not problems:
            names = [p.name for p in visible]
            runs_found, total = self.engine.runs.list(
                chosen["project"] or None,
                chosen["env"] or None,
                states=[RunState(chosen["state"])] if chosen["state"] else None,
                trigger=chosen["trigger"] or None,
                limit=HISTORY_PAGE,
                offset=offsets["offset"],
                projects=None if principal.sees_everything() else names,
            )
            runs = [r.as_dict() for r in runs_found]
            wanted = offsets["commits_offset"] + HISTORY_PAGE + 1
            entries = views.histories_view(
                self.engine, visible, wanted, chosen["project"] or None, chosen["env"] or None
            )
            if chosen["state"]:
                entries = [e for e in entries if e["outcome"] == chosen["state"]]
            if chosen["trigger"]:
                entries = [e for e in entries if self._trigger_of(e["run_id"]) == chosen["trigger"]]
        start = offsets["commits_offset"]
        shown = entries[start : start + HISTORY_PAGE]
        return self.render(
            request,
            "history.html",
            status_code=400 if problems else 200,
            entries=shown,
            commits_more=len(entries) > start + HISTORY_PAGE,
            runs=runs,
            total=total,
            chosen=chosen,
            offsets=offsets,
            page_size=HISTORY_PAGE,
            problems_found=problems,
            project_names=[p.name for p in visible],
            env_names=sorted({e for p in visible for e in p.environments}),
            states=[s.value for s in RunState],
            triggers=[t.value for t in Trigger],
        )

    def _trigger_of(self, run_id: str | None) -> str:
        run = self.engine.runs.get(run_id) if run_id else None
        return run.trigger.value if run else ""

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
