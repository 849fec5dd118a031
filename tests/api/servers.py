"""The real-engine server of the API tests: the Reconciler behind the app under real uvicorn.

``real_engine`` opens the real ``Reconciler`` on a config repo and a data directory as
``quicflow serve`` does (desired state loaded, SOPS credentials readable with the given
age key); ``server_settings`` gives the app its database and the engine's credentials;
``serving`` runs any Starlette app on a free loopback port in the test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette

from reconciler.api.app import ServerSettings
from reconciler.commands import open_credentials
from reconciler.engine.reconciling import Reconciler
from reconciler.gitops.repository import GitRepository


class LiveServer:
    """A Starlette app served by uvicorn on a free loopback port, in the test's event loop."""

    def __init__(self, app: Starlette):
        self.app = app
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    async def start(self) -> LiveServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self._sock = sock
        host, port = sock.getsockname()
        # As ``quicflow serve``: X-Forwarded-For is the app's to trust (``trusted_proxies``).
        config = uvicorn.Config(
            self.app, lifespan="on", log_level="warning", ws="none", proxy_headers=False
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        self.url = f"http://{host}:{port}"
        return self

    async def stop(self) -> None:
        # uvicorn waits for open responses before the lifespan ends: end live streams first.
        self.app.state.streams.close()
        assert self._server is not None and self._task is not None
        self._server.should_exit = True
        await self._task
        if self._sock is not None:
            self._sock.close()

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=10, **kwargs)


@contextlib.asynccontextmanager
async def serving(app: Starlette) -> AsyncIterator[LiveServer]:
    server = await LiveServer(app).start()
    try:
        yield server
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def real_engine(repo: Path, data: Path, age_key: str) -> AsyncIterator[Reconciler]:
    """The real Reconciler on ``repo`` with its desired state loaded; closed (runs cancelled) after."""
    reconciler = Reconciler(GitRepository.open(repo), data, environ={"SOPS_AGE_KEY": age_key})
    try:
        await reconciler.refresh()
        yield reconciler
    finally:
        await reconciler.close()


async def server_settings(reconciler: Reconciler) -> ServerSettings:
    """Settings as ``quicflow serve`` makes them: the engine's database and credentials."""
    credentials = await open_credentials(reconciler)
    assert credentials is not None, "the config repo's credentials could not be opened"
    return ServerSettings(database=reconciler.db, credentials=credentials, run_scheduler=False)
