"""The Starlette application: explicit routes, authentication middleware, a lifespan.

``create_app(engine, settings)`` wires the JSON API (``routes``), the webhooks
(``webhooks``) and the status page (``pages``) to one ``EngineControl``. The lifespan
runs the cron ``Scheduler`` beside the server (when ``settings.run_scheduler``) and, on
the way out, ends live SSE streams and stops the scheduler. Because uvicorn waits for
open responses *before* it runs the lifespan's shutdown, a server embedding this app
should call ``app.state.streams.close()`` when it is asked to stop (or give uvicorn a
``timeout_graceful_shutdown``) so followers of live logs do not hold the exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from reconciler import streaming
from reconciler.alert.notifier import Notifier
from reconciler.api import auth, builds, logs, operations, pages, readonly, routes, webhooks
from reconciler.auth import limiting
from reconciler.auth import tokens as api_tokens
from reconciler.credential.manager import CredentialManager
from reconciler.engine.control import EngineControl
from reconciler.store import triggers
from reconciler.store.database import Database
from reconciler.trigger import refusals, signatures
from reconciler.trigger.scheduling import Scheduler

_log = logging.getLogger(__name__)


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """How the HTTP side runs; everything about *what* to release comes from the config repo."""

    database: Database
    credentials: CredentialManager | None = None  # webhook secrets; None answers webhooks 503
    notifier: Notifier | None = None  # alert rules and history; None answers empty lists
    run_scheduler: bool = True
    webhook_body_limit: int = webhooks.DEFAULT_BODY_LIMIT
    webhook_max_skew: timedelta = signatures.DEFAULT_MAX_SKEW
    webhook_refusal_limit: int = 20  # refused deliveries per trigger, source and window …
    webhook_refusal_window: float = 60.0  # … seconds, before 429
    auth_max_failures: int = 10  # failed authentications per address and window …
    auth_failure_window: float = 60.0  # … seconds, before bad credentials get 429
    # Addresses or networks (CIDR) of reverse proxies whose X-Forwarded-For is believed;
    # from anyone else the header is ignored. Empty: the TCP peer is the client.
    trusted_proxies: tuple[str, ...] = ()
    session_ttl: timedelta = timedelta(hours=12)
    secure_cookies: bool = False  # set behind HTTPS so the session cookie is never sent in clear
    clock: Callable[[], datetime] = field(default=_utc_now)
    debug: bool = False


def create_app(engine: EngineControl, settings: ServerSettings) -> Starlette:
    """The application serving the API, webhooks and status page for ``engine``."""
    tokens = api_tokens.TokenStore(settings.database, settings.clock)
    limiter = limiting.FailureLimiter(settings.auth_max_failures, settings.auth_failure_window)
    records = triggers.TriggerRecords(settings.database)
    scheduler = Scheduler(settings.database, clock=settings.clock)
    streams = streaming.Streams()
    api = routes.ReleaseApi(engine, scheduler, records, streams)
    receiver = webhooks.WebhookReceiver(
        engine,
        records,
        settings.credentials,
        settings.webhook_body_limit,
        settings.webhook_max_skew,
        settings.clock,
        refusals.RefusalCounter(settings.webhook_refusal_limit, settings.webhook_refusal_window),
    )
    status_page = pages.Pages(
        engine,
        tokens,
        limiter,
        int(settings.session_ttl.total_seconds()),
        settings.secure_cookies,
        streams,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        tokens.purge_expired()
        task = (
            asyncio.create_task(scheduler.run(engine), name="scheduler")
            if settings.run_scheduler
            else None
        )
        try:
            yield
        finally:
            receiver.flush()
            streams.close()
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = Starlette(
        debug=settings.debug,
        routes=[
            Route("/healthz", routes.healthz),
            Route("/readyz", routes.readiness(engine, tokens.lookup)),
            *receiver.routes(),
            *api.routes(),
            *builds.BuildApi(engine, settings, streams).routes(),
            *logs.LogApi(engine, logs.metrics_for(engine)).routes(),
            *operations.OperationsApi(engine, settings.credentials, settings.notifier).routes(),
            *status_page.routes(),
        ],
        middleware=[
            Middleware(
                auth.AuthMiddleware,
                tokens=tokens,
                limiter=limiter,
                desired=lambda: engine.desired,
                trusted_proxies=settings.trusted_proxies,
            )
        ],
        exception_handlers={
            auth.ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _server_error,
        },
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.tokens = tokens
    app.state.records = records
    app.state.webhooks = receiver
    app.state.scheduler = scheduler
    app.state.streams = streams
    return app


async def _api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, auth.ApiError)
    return error.response()


async def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    if request.url.path.startswith(auth.API_PREFIX):
        message = str(error.detail)
        if error.status_code == 405:
            # Configuration is changed by a commit, never by the API: say which file.
            message = readonly.hint(request.url.path) or message
        return auth.error_response(
            error.status_code,
            codes.get(error.status_code, "http_error"),
            message,
            headers=dict(error.headers or {}),
        )
    return HTMLResponse(
        f"<!doctype html><title>{error.status_code}</title><h1>{error.status_code}</h1>"
        f'<p><a href="/">QUIC-Flow</a></p>',
        status_code=error.status_code,
        headers=dict(error.headers or {}),
    )


async def _server_error(request: Request, error: Exception) -> Response:
    # The traceback goes to the log, never to the caller: it may name paths or values.
    _log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
    return auth.error_response(500, "internal_error", "internal server error")
