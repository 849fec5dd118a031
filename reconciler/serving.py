"""``quicflow serve``: the one process an operator runs, and ``quicflow token``.

One asyncio loop holds the reconcile loop, the QUIC hub (and, with ``--local-agent``,
an agent on loopback), the notifier and the HTTP app under uvicorn; SIGTERM or SIGINT
stops them all in order: HTTP first (no new requests), then the reconcile loop, then
agents and the hub.

One engine per data dir: ``serve`` holds the data dir's engine lock
(``store.locking``) from before its hub and local agent start until it exits, so a
second ``serve`` or ``apply`` on the same data dir refuses to start instead of
revoking this one's local agent token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
import uvicorn

from reconciler.alert.notifier import Notifier
from reconciler.api.app import ServerSettings, create_app
from reconciler.auth.tokens import TokenStore
from reconciler.commands import open_credentials
from reconciler.engine.agents import LOCAL_AGENT, HubExecutor, LocalAgent
from reconciler.engine.reconciling import Reconciler
from reconciler.errors import SourceError
from reconciler.gitops.repository import GitRepository
from reconciler.hub import locations
from reconciler.hub.server import Hub
from reconciler.log.upkeep import LogUpkeep
from reconciler.store import locking
from reconciler.store.database import Database
from reconciler.targets.local import LocalExecutor
from reconciler.targets.resolving import Executors

_log = logging.getLogger("quicflow")
REPO_HELP = "Config repo: a path (may be a subdirectory of a Git repository) or a URL."


def _address(text: str, what: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise click.BadParameter(f"{what} must be HOST:PORT, got {text!r}")
    return host, int(port)


async def serve(
    repo: GitRepository,
    data: Path,
    http: tuple[str, int],
    quic: tuple[str, int],
    local_agent: bool,
    stop: asyncio.Event | None = None,
) -> None:
    """Run everything until ``stop`` is set or a signal arrives.

    The caller holds ``data``'s engine lock (``serve_command`` takes it first thing).
    """
    stop = stop or asyncio.Event()
    hub = Hub(locations.hub_dir(data), host=quic[0], port=quic[1])
    await hub.start()
    local = LocalAgent(data, hub=hub) if local_agent else None
    agents = HubExecutor(hub, LOCAL_AGENT if local_agent else None)
    executors = Executors(
        local=agents if local_agent else LocalExecutor(data_dir=data), agents=agents
    )
    reconciler = Reconciler(repo, data, executors=executors)
    reconciler.hub = hub
    notifier: Notifier | None = None
    loop_task: asyncio.Task[None] | None = None
    upkeep_task: asyncio.Task[None] | None = None
    try:
        if local is not None:
            await local.start()
        await reconciler.refresh()
        # The log store's index and retention, and the sinks settings.logs asks for.
        upkeep = LogUpkeep(reconciler.logs, data / "logs", lambda: _log_settings(reconciler))
        await upkeep.refresh()
        upkeep_task = asyncio.create_task(upkeep.run(stop), name="log upkeep")
        credentials = await open_credentials(reconciler)
        notifier = Notifier(
            reconciler.db, desired=lambda: reconciler.desired, credentials=credentials
        )
        await notifier.start(reconciler.bus)
        app = create_app(
            reconciler, ServerSettings(database=reconciler.db, credentials=credentials)
        )
        server = uvicorn.Server(
            uvicorn.Config(
                app, host=http[0], port=http[1], log_level="info", lifespan="on", access_log=False
            )
        )
        _log.info(
            "QUIC-Flow serving http://%s:%d, QUIC hub on %s:%d%s",
            http[0],
            http[1],
            quic[0],
            hub.port,
            " with a local agent" if local else "",
        )
        loop_task = asyncio.create_task(reconciler.run_forever(stop), name="reconcile")
        await server.serve()  # returns on SIGTERM/SIGINT (uvicorn installs the handlers)
    finally:
        stop.set()
        if loop_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(loop_task, 30)
        if notifier is not None:
            await notifier.close()
        if upkeep_task is not None:  # ships or spools what the sinks hold
            with contextlib.suppress(Exception):
                await asyncio.wait_for(upkeep_task, 15)
        await reconciler.close()
        if local is not None:
            await local.stop()
        await hub.stop()


def _log_settings(reconciler: Reconciler) -> tuple[Mapping[str, Any], bool] | None:
    """``settings.logs`` and ``features.victoria_logs`` of the desired state, once loaded."""
    desired = reconciler.desired
    if desired is None:
        return None
    return desired.settings.logs, bool(desired.settings.features.get("victoria_logs", False))


@click.command("serve")
@click.option("--repo", default=".", show_default=True, help=REPO_HELP)
@click.option("--data", default=".quicflow", show_default=True, help="Data directory.")
@click.option(
    "--http", "http", default="127.0.0.1:8080", show_default=True, help="HTTP listen address."
)
@click.option(
    "--quic",
    "quic",
    default="127.0.0.1:4433",
    show_default=True,
    help="QUIC hub listen address (UDP).",
)
@click.option("--local-agent", is_flag=True, help="Start an agent on loopback for local targets.")
def serve_command(repo: str, data: str, http: str, quic: str, local_agent: bool) -> None:
    """Serve: reconcile loop, API and status page, QUIC hub, notifications — one process."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("quic").setLevel(logging.WARNING)  # aioquic logs every handshake at INFO
    http_address, quic_address = _address(http, "--http"), _address(quic, "--quic")
    engine_lock = locking.DataDirLock(Path(data), "serve")
    try:
        # First of all: a second engine on this data dir must not touch its mirror, hub
        # or local agent token before it finds out.
        engine_lock.acquire()
    except locking.DataDirInUse as exc:
        raise click.ClickException(str(exc)) from None
    try:
        try:
            git = GitRepository.open(repo, cache_dir=Path(data) / "repos")
        except SourceError as exc:
            raise click.ClickException(str(exc)) from None
        asyncio.run(serve(git, Path(data), http_address, quic_address, local_agent))
    finally:
        engine_lock.release()


@click.group("token")
def token() -> None:
    """API tokens for users declared in quicflow.yaml (stored hashed)."""


@token.command("create")
@click.argument("user")
@click.option("--data", default=".quicflow", show_default=True, help="Data directory.")
@click.option("--repo", default=".", show_default=True, help=REPO_HELP)
def token_create(user: str, data: str, repo: str) -> None:
    """Issue a token for USER and print it, alone, on stdout."""
    try:
        git = GitRepository.open(repo, cache_dir=Path(data) / "repos")
    except SourceError as exc:
        raise click.ClickException(str(exc)) from None
    from reconciler.gitops.loading import Loader

    desired = Loader(git).load().desired
    if desired is None:
        raise click.ClickException("the config repo is invalid; run 'quicflow validate'")
    if user not in desired.users:
        raise click.ClickException(f"unknown user {user!r}: users are declared in quicflow.yaml")
    db = Database.open(Path(data))
    try:
        click.echo(TokenStore(db).create(user))
    finally:
        db.close()


@token.command("revoke")
@click.argument("token_or_user")
@click.option("--data", default=".quicflow", show_default=True, help="Data directory.")
@click.option(
    "--all", "all_of_user", is_flag=True, help="Revoke every token of the user TOKEN_OR_USER."
)
def token_revoke(token_or_user: str, data: str, all_of_user: bool) -> None:
    """Revoke a token (by value or id), or with --all every token of a user."""
    db = Database.open(Path(data))
    try:
        store = TokenStore(db)
        count = (
            store.revoke_user(token_or_user) if all_of_user else int(store.revoke(token_or_user))
        )
    finally:
        db.close()
    if not count:
        raise click.ClickException("no such token")
    click.echo(f"revoked {count} token{'s' if count != 1 else ''}")
