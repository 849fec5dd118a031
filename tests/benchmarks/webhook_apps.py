"""The two ASGI apps ``bench_webhooks.py`` serves with uvicorn, one process each.

Import them as uvicorn factories (``--app-dir tests/benchmarks --factory``):

- ``webhook_apps:floor_app`` — the floor: a bare Starlette app whose ``POST /hook``
  reads the body and checks its GitHub ``X-Hub-Signature-256`` (HMAC-SHA256, constant
  time) against ``QF_BENCH_SECRET``, and nothing else;
- ``webhook_apps:full_app`` — QUIC-Flow's real HTTP app (``reconciler.api.app.create_app``)
  over the real engine: a ``Reconciler`` on the config repo at ``QF_BENCH_REPO`` with its
  data dir at ``QF_BENCH_DATA``, webhook secrets read from the repo's SOPS credentials
  files with the age identity in ``SOPS_AGE_KEY``. Like ``quicflow serve`` it runs the
  cron scheduler; unlike it, no reconcile loop (a poll pass would redeploy the config's
  version between the benchmark's webhook deploys) and no QUIC hub (local targets).
  The engine is built at lifespan startup, in uvicorn's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse, PlainTextResponse, Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

Scope = dict[str, Any]


def floor_app() -> Starlette:
    """A bare Starlette endpoint that only checks the HMAC of the body."""
    key = os.environ["QF_BENCH_SECRET"].encode()

    async def hook(request: Request) -> Response:
        body = await request.body()
        expected = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
        given = request.headers.get("x-hub-signature-256", "")
        if not hmac.compare_digest(expected.encode(), given.encode()):
            return JSONResponse({"status": "failed", "reason": "bad signature"}, 401)
        return JSONResponse({"status": "ok"})

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/hook", hook, methods=["POST"]), Route("/healthz", healthz)])


class FullApp:
    """ASGI app: builds the real engine and QUIC-Flow's app at startup, then serves it."""

    def __init__(self, repo: Path, data: Path, environ: dict[str, str]):
        self.repo = repo
        self.data = data
        self.environ = environ
        self.app: Starlette | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        assert self.app is not None, "lifespan startup has not run"
        await self.app(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        from reconciler.api.app import ServerSettings, create_app
        from reconciler.engine.reconciling import Reconciler
        from reconciler.gitops.repository import GitRepository

        await receive()  # lifespan.startup
        async with contextlib.AsyncExitStack() as stack:
            try:
                reconciler = Reconciler(
                    GitRepository.open(self.repo), self.data, environ=self.environ
                )
                stack.push_async_callback(reconciler.close)
                _, problems = await reconciler.refresh()
                if reconciler.desired is None:
                    raise RuntimeError(f"the config repo is invalid: {problems}")
                credentials = await asyncio.to_thread(
                    reconciler.credentials.manager,  # as quicflow serve does
                    reconciler.desired,
                )
                app = create_app(
                    reconciler, ServerSettings(database=reconciler.db, credentials=credentials)
                )
                await stack.enter_async_context(app.router.lifespan_context(app))
            except BaseException as error:  # noqa: BLE001 - reported to uvicorn, which exits
                await send({"type": "lifespan.startup.failed", "message": repr(error)})
                return
            self.app = app
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
        await send({"type": "lifespan.shutdown.complete"})


def full_app() -> FullApp:
    """QUIC-Flow's webhook path with the real engine, configured from the environment."""
    return FullApp(
        Path(os.environ["QF_BENCH_REPO"]),
        Path(os.environ["QF_BENCH_DATA"]),
        {"SOPS_AGE_KEY": os.environ["SOPS_AGE_KEY"]},
    )
