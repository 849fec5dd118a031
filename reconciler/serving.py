"""``quicflow serve``: the one process an operator runs, and ``quicflow token``.

One asyncio loop holds the reconcile loop, the QUIC hub (and, with ``--local-agent``,
an agent on loopback), the notifier and the HTTP app under uvicorn; SIGTERM or SIGINT
stops HTTP first (no new requests); the hub then closes its agents' connections, so they
reconnect as soon as a hub listens again (``_close_agents_on_signal``).

One engine per data dir: ``serve`` holds the data dir's engine lock
(``store.locking``) from before its hub and local agent start until it exits, so a
second ``serve`` or ``apply`` on the same data dir refuses to start instead of
revoking this one's local agent token.

Where it listens and how the hub runs come, for each value, from the command line when
a flag is given (``--http``, ``--quic``, ``--hub-heartbeat``, ``--hub-reconnect-grace``),
else from ``settings.http`` / ``settings.quic`` of quicflow.yaml as the config repo has it
at start (``startup_settings``), else from the defaults; the start-up log line says which.
They are read once: a change in the config repo takes effect at the next start.

A failed start harms nothing. The HTTP port is bound before anything could deploy (a
port in use exits 1 at once, naming where the address came from), and the reconcile loop
starts only once the HTTP server has started: if any start-up step fails — the hub's
port, the local agent, the app's lifespan — ``serve`` exits non-zero before its first
deploy, so no run is started, none is cancelled, and nothing is written to Git.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import click
import uvicorn

from reconciler.alert.notifier import Notifier
from reconciler.api import auth
from reconciler.api.app import ServerSettings, create_app
from reconciler.auth.tokens import TokenStore
from reconciler.commands import open_credentials
from reconciler.durations import format_duration, parse_duration
from reconciler.engine.agents import LOCAL_AGENT, HubExecutor, LocalAgent
from reconciler.engine.reconciling import Reconciler
from reconciler.errors import ConfigProblem, QuicFlowError, SourceError
from reconciler.events import Event, EventType
from reconciler.gitops import model
from reconciler.gitops.loading import Loader
from reconciler.gitops.repository import GitRepository, is_remote_url, redact_url
from reconciler.hub import locations, tls
from reconciler.hub.server import Hub
from reconciler.log.upkeep import LogUpkeep
from reconciler.store import locking
from reconciler.store.database import Database
from reconciler.targets.local import LocalExecutor
from reconciler.targets.resolving import Executors

_log = logging.getLogger("quicflow")
REPO_HELP = "Config repo: a path (may be a subdirectory of a Git repository) or a URL."


DEFAULT_HTTP = "127.0.0.1:8080"
DEFAULT_QUIC = "127.0.0.1:4433"


def _address(text: str, what: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]  # [::1]:4433
    if not host or not port.isdigit() or int(port) > 65535:
        raise click.BadParameter(f"{what} must be HOST:PORT, got {text!r}")
    return host, int(port)


@dataclass(frozen=True, slots=True)
class HubOptions:
    """How ``serve`` starts its hub, and where the address came from (for the log line)."""

    address: tuple[str, int]
    address_from: str = "default"
    heartbeat: float = model.DEFAULT_HUB_HEARTBEAT
    reconnect_grace: float | None = None  # None: 4 heartbeats
    names: tuple[str, ...] = ()
    identity: tls.HubIdentity | None = None  # an operator's certificate, else generated


def from_flag_setting_or_default(
    flag: str | None, setting: str | None, flag_name: str, setting_name: str, default: str
) -> tuple[str, str]:
    """The value to use and where it came from: the flag if given, the setting, the default."""
    if flag is not None:
        return flag, flag_name
    if setting is not None:
        return setting, f"quicflow.yaml {setting_name}"
    return default, "default"


def startup_settings(
    repo: GitRepository,
) -> tuple[model.Settings | None, tuple[ConfigProblem, ...]]:
    """quicflow.yaml's settings on the branch the first load reads (None: unreadable).

    Like ``DesiredStateSource.refresh``: a URL's default branch or ``main`` (``HEAD``
    while it does not exist), then the branch those settings name, if it exists.
    """
    loader = Loader(repo)
    branch = (repo.default_branch if repo.remote_url else None) or "main"
    found: tuple[model.Settings | None, tuple[ConfigProblem, ...]] = (None, ())
    for _ in range(2):
        rev = branch if repo.ref_target(f"refs/heads/{branch}") is not None else "HEAD"
        try:
            found = loader.global_settings(rev)
        except QuicFlowError as exc:  # an empty repository, an unknown revision
            return None, (ConfigProblem("quicflow.yaml", str(exc)),)
        settings = found[0]
        if settings is None or settings.branch == branch:
            break
        if repo.ref_target(f"refs/heads/{settings.branch}") is None:
            break
        branch = settings.branch
    return found


async def serve(
    repo: GitRepository,
    data: Path,
    http: tuple[str, int],
    hub_options: HubOptions,
    local_agent: bool,
    stop: asyncio.Event | None = None,
    http_socket: socket.socket | None = None,
    trusted_proxies: tuple[str, ...] = (),
    http_from: str = "default",
) -> None:
    """Run everything until ``stop`` is set or a signal arrives.

    The caller holds ``data``'s engine lock (``serve_command`` takes it first thing) and
    may pass the HTTP socket it bound already (``listen``). The reconcile loop starts
    only after the HTTP server did; ``StartupFailed`` when it did not.
    """
    stop = stop or asyncio.Event()
    quic = hub_options.address
    identity = hub_options.identity
    hub = Hub(
        locations.hub_dir(data),
        host=quic[0],
        port=quic[1],
        heartbeat_interval=hub_options.heartbeat,
        reconnect_grace=hub_options.reconnect_grace,
        certificate=identity.certificate if identity else None,
        key=identity.key if identity else None,
        names=hub_options.names,
    )
    try:
        await hub.start()
    except OSError as exc:  # the port taken, the data dir not writable
        raise StartupFailed(
            f"the QUIC hub on {quic[0]}:{quic[1]} (from {hub_options.address_from}) did not"
            f" start: {exc.strerror or exc}; nothing was deployed"
        ) from None
    local = LocalAgent(data, hub=hub) if local_agent else None
    agents = HubExecutor(hub, LOCAL_AGENT if local_agent else None)
    executors = Executors(
        local=agents if local_agent else LocalExecutor(data_dir=data), agents=agents
    )
    reconciler = Reconciler(repo, data, executors=executors)
    reconciler.hub = hub
    reconciler.bus.subscribe(_log_runs(reconciler))  # one line per run start and end
    notifier: Notifier | None = None
    loop_task: asyncio.Task[None] | None = None
    restore_signals: Callable[[], None] | None = None
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
            reconciler,
            ServerSettings(
                database=reconciler.db, credentials=credentials, trusted_proxies=trusted_proxies
            ),
        )
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=http[0],
                port=http[1],
                log_level="info",
                lifespan="on",
                access_log=False,
                # X-Forwarded-For is believed only from --trusted-proxy (ServerSettings).
                proxy_headers=False,
            )
        )
        # The port bound, not the one asked for: ``--http HOST:0`` picks a free one.
        http_port = http_socket.getsockname()[1] if http_socket is not None else http[1]
        _log.info(
            "QUIC-Flow serving http://%s:%d (from %s), QUIC hub on %s:%d (from %s;"
            " heartbeat %s, reconnect grace %s)%s",
            http[0],
            http_port,
            http_from,
            quic[0],
            hub.port,
            hub_options.address_from,
            format_duration(hub.heartbeat_interval),
            format_duration(hub.reconnect_grace),
            " with a local agent" if local else "",
        )
        # Returns on SIGTERM/SIGINT (uvicorn installs the handlers).
        restore_signals = _close_agents_on_signal(hub)
        sockets = [http_socket] if http_socket is not None else None
        http_task = asyncio.create_task(server.serve(sockets=sockets), name="http")
        while not server.started and not http_task.done():
            await asyncio.wait({http_task}, timeout=0.05)
        if not server.started:
            failure = http_task.exception() if not http_task.cancelled() else None
            raise StartupFailed(
                f"the HTTP server on {http[0]}:{http[1]} did not start"
                f"{f': {failure}' if failure else ''}; nothing was deployed"
            )
        _log.info("HTTP server started; starting the reconcile loop")
        loop_task = asyncio.create_task(reconciler.run_forever(stop), name="reconcile")
        await http_task
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
        if restore_signals is not None:
            restore_signals()


def _close_agents_on_signal(hub: Hub) -> Callable[[], None]:
    """On SIGTERM/SIGINT, close the hub's agent connections, then do what was done before.

    uvicorn stops serving on the signal, puts back the handlers it found and raises the
    signal again; with Python's defaults a SIGTERM ends the process right there, before
    the shutdown in ``serve`` — so runs are left as they are and resume at the next
    start, but the agents' connections were left open too, and agents noticed the hub
    was gone only after three missed heartbeats. This is the handler uvicorn finds: it
    closes those connections (a datagram each, sent at once, so agents reconnect as
    soon as the hub is back) and hands the signal on to the handler it replaced.
    Returns the function putting that handler back.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # signal handlers belong to the main thread
    previous: dict[int, Any] = {}

    def restore() -> None:
        for number, handler in previous.items():
            signal.signal(number, handler)

    def handle(number: int, frame: FrameType | None) -> None:
        hub.close_connections()
        restore()
        signal.raise_signal(number)

    for number in (signal.SIGTERM, signal.SIGINT):
        previous[number] = signal.signal(number, handle)
    return restore


def _log_settings(reconciler: Reconciler) -> tuple[Mapping[str, Any], bool] | None:
    """``settings.logs`` and ``features.victoria_logs`` of the desired state, once loaded."""
    desired = reconciler.desired
    if desired is None:
        return None
    return desired.settings.logs, bool(desired.settings.features.get("victoria_logs", False))


_RUN_ENDS = frozenset(
    {
        EventType.RUN_SUCCEEDED,
        EventType.RUN_FAILED,
        EventType.RUN_CANCELLED,
        EventType.RUN_SUPERSEDED,
    }
)


def run_log_line(event: Event, previous: str | None) -> str | None:
    """The one log line of a run's start or end (None for any other event)."""
    if event.type is not EventType.RUN_STARTED and event.type not in _RUN_ENDS:
        return None
    change = f"{previous or '(nothing)'} -> {event.version}"
    trigger = event.data.get("trigger", "?")
    where = f"{event.project}/{event.env}"
    if event.type is EventType.RUN_STARTED:
        return f"run {event.run_id} started: {where} {change} (trigger {trigger})"
    outcome = event.data.get("state", event.type.value)
    error = f": {event.error.splitlines()[0][:300]}" if event.error else ""
    return f"run {event.run_id} ended {outcome}: {where} {change} (trigger {trigger}){error}"


def _log_runs(reconciler: Reconciler) -> Callable[[Event], Awaitable[None]]:
    async def handle(event: Event) -> None:
        if event.type is not EventType.RUN_STARTED and event.type not in _RUN_ENDS:
            return
        run = reconciler.runs.get(event.run_id)
        line = run_log_line(event, run.previous_version if run else None)
        if line is not None:
            (_log.warning if event.type is EventType.RUN_FAILED else _log.info)(line)

    return handle


class StartupFailed(Exception):
    """A start-up step of ``serve`` failed; nothing was deployed."""


def listen(address: tuple[str, int], where: str = "--http") -> socket.socket:
    """A TCP socket bound and listening on ``address``, or a CLI error naming ``where``
    the address came from (``--http``, ``quicflow.yaml settings.http.listen``, default)."""
    host, port = address
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        origin = "" if where == "--http" else f" (from {where})"
        raise click.ClickException(
            f"--http {host}:{port}{origin}: cannot listen there: {exc.strerror or exc} "
            "(another process has the port? choose another with --http HOST:PORT); "
            "nothing was started or deployed"
        ) from None
    sock.set_inheritable(True)
    return sock


@click.command("serve")
@click.option("--repo", default=".", show_default=True, help=REPO_HELP)
@click.option("--data", default=".quicflow", show_default=True, help="Data directory.")
@click.option(
    "--http",
    "http",
    default=None,
    metavar="HOST:PORT",
    help=f"HTTP listen address [default: settings.http.listen, else {DEFAULT_HTTP}].",
)
@click.option(
    "--quic",
    "quic",
    default=None,
    metavar="HOST:PORT",
    help=f"QUIC hub listen address (UDP) [default: settings.quic.listen, else {DEFAULT_QUIC}].",
)
@click.option(
    "--hub-heartbeat",
    default=None,
    metavar="DURATION",
    help="The hub's heartbeat [default: settings.quic.heartbeat, else 15s].",
)
@click.option(
    "--hub-reconnect-grace",
    default=None,
    metavar="DURATION",
    help="How long a command waits for its lost agent"
    " [default: settings.quic.reconnect_grace, else 4 heartbeats].",
)
@click.option("--local-agent", is_flag=True, help="Start an agent on loopback for local targets.")
@click.option(
    "--trusted-proxy",
    "trusted_proxies",
    multiple=True,
    metavar="ADDRESS|CIDR",
    help="A reverse proxy whose X-Forwarded-For is believed (repeatable); others' is ignored.",
)
def serve_command(
    repo: str,
    data: str,
    http: str | None,
    quic: str | None,
    hub_heartbeat: str | None,
    hub_reconnect_grace: str | None,
    local_agent: bool,
    trusted_proxies: tuple[str, ...],
) -> None:
    """Serve: reconcile loop, API and status page, QUIC hub, notifications — one process."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("quic").setLevel(logging.WARNING)  # aioquic logs every handshake at INFO
    # Checked before the config repo is read: a typo in a flag needs no repository.
    if http is not None:
        _address(http, "--http")
    if quic is not None:
        _address(quic, "--quic")
    heartbeat_flag = _positive_duration(hub_heartbeat, "--hub-heartbeat")
    grace_flag = _positive_duration(hub_reconnect_grace, "--hub-reconnect-grace", zero=True)
    try:
        auth.proxy_networks(trusted_proxies)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--trusted-proxy") from None
    engine_lock = locking.DataDirLock(Path(data), "serve")
    try:
        # First of all: a second engine on this data dir must not touch its mirror, hub
        # or local agent token before it finds out.
        engine_lock.acquire()
    except locking.DataDirInUse as exc:
        raise click.ClickException(str(exc)) from None
    http_socket: socket.socket | None = None
    try:
        try:
            git = GitRepository.open(repo, cache_dir=Path(data) / "repos")
        except SourceError as exc:
            raise click.ClickException(str(exc)) from None
        settings = _settings_at_start(git)
        http_text, http_from = from_flag_setting_or_default(
            http,
            settings.http_listen if settings else None,
            "--http",
            "settings.http.listen",
            DEFAULT_HTTP,
        )
        http_address = _address(http_text, http_from)
        hub_options = _hub_options(settings, quic, heartbeat_flag, grace_flag)
        # Before anything that could deploy: a port in use ends here, having touched nothing.
        http_socket = listen(http_address, http_from)
        try:
            asyncio.run(
                serve(
                    git,
                    Path(data),
                    http_address,
                    hub_options,
                    local_agent,
                    None,
                    http_socket,
                    trusted_proxies,
                    http_from,
                )
            )
        except StartupFailed as exc:
            raise click.ClickException(f"serve could not start: {exc}") from None
        except OSError as exc:  # a port of the hub in use, a data dir not writable
            raise click.ClickException(f"serve failed: {exc}") from None
    finally:
        if http_socket is not None:
            http_socket.close()
        engine_lock.release()


def _positive_duration(text: str | None, what: str, zero: bool = False) -> float | None:
    if text is None:
        return None
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=what) from None
    assert seconds is not None
    if seconds < 0 or (seconds == 0 and not zero):
        raise click.BadParameter(
            f"must be {'0s or more' if zero else 'more than 0s'}", param_hint=what
        )
    return seconds


def _settings_at_start(git: GitRepository) -> model.Settings | None:
    """quicflow.yaml's settings for start-up; exit when its listen or hub settings are bad."""
    settings, problems = startup_settings(git)
    bad = [p for p in problems if p.json_path.startswith(("$.settings.quic", "$.settings.http"))]
    if bad:
        raise click.ClickException(
            "quicflow.yaml: settings.quic / settings.http are invalid, so serve does not know"
            " how to start its hub and HTTP server; nothing was started:\n"
            + "\n".join(f"  {problem}" for problem in bad)
        )
    if settings is None:
        _log.warning(
            "quicflow.yaml cannot be read for settings.http / settings.quic (%s); using the"
            " command line and the defaults until the next start",
            "; ".join(str(problem) for problem in problems[:3]) or "no config",
        )
    return settings


def _hub_options(
    settings: model.Settings | None,
    quic: str | None,
    heartbeat: float | None,
    reconnect_grace: float | None,
) -> HubOptions:
    """The hub's address, heartbeat, grace, names and certificate: flags, settings, defaults."""
    hub = settings.quic if settings is not None else model.HubSettings()
    text, origin = from_flag_setting_or_default(
        quic, hub.listen, "--quic", "settings.quic.listen", DEFAULT_QUIC
    )
    identity = None
    if hub.certificate is not None and hub.key is not None:
        try:
            identity = tls.load_brought(Path(hub.certificate), Path(hub.key))
        except ValueError as exc:
            raise click.ClickException(
                f"quicflow.yaml settings.quic.certificate / key: {exc}"
            ) from None
    if heartbeat is None:
        heartbeat = hub.heartbeat
    if reconnect_grace is None:
        reconnect_grace = hub.reconnect_grace
    return HubOptions(
        address=_address(text, origin),
        address_from=origin,
        heartbeat=heartbeat,
        reconnect_grace=reconnect_grace,
        names=hub.names,
        identity=identity,
    )


@click.group("token")
def token() -> None:
    """API tokens for users declared in quicflow.yaml (stored hashed)."""


@token.command("create")
@click.argument("user")
@click.option("--data", default=".quicflow", show_default=True, help="Data directory.")
@click.option("--repo", default=".", show_default=True, help=REPO_HELP)
@click.option(
    "--ttl",
    default=None,
    metavar="DURATION",
    help="Expire the token after DURATION (e.g. 12h, 30d); default: never.",
)
def token_create(user: str, data: str, repo: str, ttl: str | None) -> None:
    """Issue a token for USER and print it, alone, on stdout."""
    lifetime = None
    if ttl is not None:
        try:
            seconds = parse_duration(ttl)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--ttl") from None
        if not seconds or seconds <= 0:
            raise click.BadParameter("must be longer than 0s", param_hint="--ttl")
        lifetime = timedelta(seconds=seconds)
    try:
        git = GitRepository.open(repo, cache_dir=Path(data) / "repos")
    except SourceError as exc:
        raise click.ClickException(str(exc)) from None
    from reconciler.gitops.loading import Loader

    try:
        result = Loader(git).load()
    except QuicFlowError as exc:
        where = redact_url(repo) if is_remote_url(repo) else repo
        raise click.ClickException(f"--repo {where}: {exc}") from None
    desired = result.desired
    if desired is None:
        raise click.ClickException(
            f"the config repo is invalid at {result.commit[:10]} "
            f"({len(result.problems)} problems); run 'quicflow validate'"
        )
    if user not in desired.users:
        raise click.ClickException(f"unknown user {user!r}: users are declared in quicflow.yaml")
    db = Database.open(Path(data))
    try:
        click.echo(TokenStore(db).create(user, ttl=lifetime))
    finally:
        db.close()


@token.command("list")
@click.argument("user", required=False)
@click.option("--data", default=".quicflow", show_default=True, help="Data directory.")
def token_list(user: str | None, data: str) -> None:
    """List API tokens (never their values): id, user, created, expires, last used."""
    db = Database.open(Path(data))
    try:
        found = TokenStore(db).list(user)
    finally:
        db.close()
    click.echo(f"{'ID':<14}{'USER':<16}{'CREATED':<27}{'EXPIRES':<27}LAST USED")
    for info in found:
        click.echo(
            f"{info.id:<14}{info.username:<16}{info.created_at:<27}"
            f"{info.expires_at or 'never':<27}{info.last_used_at or 'never'}"
        )


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
