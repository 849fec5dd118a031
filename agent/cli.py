"""The ``agent`` click command (``quicflow agent`` and ``python -m agent``).

Parses options, sets up logging and signals, and runs ``client.AgentClient`` until SIGTERM
or SIGINT.  ``--server`` may be given once per hub: an agent serving several reconciler
replicas connects to every replica's hub (``--pin-sha256`` once for all of them, or once
per ``--server`` in the same order).  The token comes from a file (``--token-file``, re-read before every
connection) or the environment (``QUICFLOW_AGENT_TOKEN``) so it does not show in the
process list; ``--token`` works but says so.  ``--print-systemd-unit`` prints the service
unit for the same options instead of running.  The agent refuses to run as root unless
told to (``--allow-root``): every step the hub sends would run as root.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import sys
from pathlib import Path, PurePosixPath

import click
from click.core import ParameterSource

from agent import client, executing, protocol, systemd


def parse_server(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (or ``[v6]:PORT``) into host and port."""
    host, separator, port = value.rpartition(":")
    if not separator or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def parse_labels(value: str) -> dict[str, str]:
    """Parse ``k=v,k2=v2`` into a dict."""
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        key, separator, label = item.partition("=")
        if not separator or not key.strip():
            raise ValueError(f"label {item!r} is not key=value")
        labels[key.strip()] = label.strip()
    return labels


def parse_deploy_types(value: str) -> frozenset[str]:
    """Parse ``script,git_pull`` into the set of deploy types an agent accepts."""
    types = frozenset(part.strip() for part in value.split(",") if part.strip())
    unknown = sorted(types - set(protocol.DEPLOY_TYPES))
    if unknown:
        raise ValueError(
            f"unknown deploy type {', '.join(unknown)}: choose from {', '.join(protocol.DEPLOY_TYPES)}"
        )
    return types


def _convert(parser, value, what):  # type: ignore[no-untyped-def]
    try:
        return parser(value)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint=what) from error


@click.command("agent")
@click.option(
    "--server",
    "servers",
    required=True,
    multiple=True,
    envvar="QUICFLOW_SERVER",
    metavar="HOST:PORT",
    help="Hub address; repeat it to serve several reconciler replicas (one connection to"
    " each hub; env QUICFLOW_SERVER: addresses separated by spaces).",
)
@click.option("--name", default=socket.gethostname, show_default="hostname", help="Agent name.")
@click.option("--labels", default="", help="Labels for target selection, k=v,k2=v2.")
@click.option(
    "--token",
    envvar="QUICFLOW_AGENT_TOKEN",
    default="",
    help="Agent token (env QUICFLOW_AGENT_TOKEN); prefer --token-file.",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="QUICFLOW_AGENT_TOKEN_FILE",
    help="Read the agent token from this file (re-read before every connection).",
)
@click.option(
    "--ca",
    "ca_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Verify every hub's certificate against this CA (or certificate) file.",
)
@click.option(
    "--pin-sha256",
    "pins",
    multiple=True,
    envvar="QUICFLOW_HUB_PIN",
    metavar="FINGERPRINT",
    help="Verify the hub by its certificate's SHA-256 fingerprint (quicflow hub fingerprint):"
    " once for every --server, or once per --server in the same order.",
)
@click.option(
    "--work-root",
    "--work-dir",
    "work_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path.home() / ".local" / "state" / "quicflow-agent",
    show_default=True,
    envvar="QUICFLOW_AGENT_WORK_ROOT",
    help="Every step runs inside this directory (steps asking for another are refused);"
    " results are kept here too.",
)
@click.option(
    "--allow-deploy-types",
    default=None,
    envvar="QUICFLOW_AGENT_DEPLOY_TYPES",
    metavar="TYPE,...",
    help=f"Accept only these deploy types ({', '.join(protocol.DEPLOY_TYPES)}); default all."
    " 'script' is shell from the config repo.",
)
@click.option(
    "--pass-env",
    multiple=True,
    metavar="NAME",
    help="Also pass this variable of the agent's environment to steps (repeatable; NAME* for"
    " a prefix). Steps get PATH, HOME, locale, proxy and Docker settings, nothing else.",
)
@click.option(
    "--allow-root",
    is_flag=True,
    envvar="QUICFLOW_AGENT_ALLOW_ROOT",
    help="Run even as root (every step the hub sends then runs as root).",
)
@click.option(
    "--refused-retry",
    type=click.FloatRange(min=0.1),
    default=300.0,
    show_default=True,
    help="After the hub refused this agent (unknown, bad token, name in use), seconds before"
    " trying again (sooner when the token file changes).",
)
@click.option(
    "--print-systemd-unit",
    is_flag=True,
    help="Print a systemd unit that runs this agent with these options, and exit.",
)
@click.option(
    "--heartbeat",
    type=click.FloatRange(min=0.05),
    default=15.0,
    show_default=True,
    help="Seconds between heartbeats.",
)
@click.option("--watch", multiple=True, help="Process name or pid to report on (repeatable).")
@click.option(
    "--status-interval",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    help="Seconds between status reports (also sent on change).",
)
@click.option(
    "--shutdown-grace",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="On SIGTERM, seconds running commands get to finish before they are cancelled.",
)
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def agent(
    servers: tuple[str, ...],
    name: str,
    labels: str,
    token: str,
    token_file: Path | None,
    ca_file: Path | None,
    pins: tuple[str, ...],
    work_dir: Path,
    heartbeat: float,
    watch: tuple[str, ...],
    status_interval: float,
    shutdown_grace: float,
    allow_deploy_types: str | None,
    pass_env: tuple[str, ...],
    allow_root: bool,
    refused_retry: float,
    print_systemd_unit: bool,
    verbose: bool,
) -> None:
    """Run the QUIC-Flow agent: connect to the hub(s) and run the commands they send."""
    hubs = _hubs(servers, pins)
    parsed_labels = _convert(parse_labels, labels, "--labels")
    deploy_types = (
        None
        if allow_deploy_types is None
        else _convert(parse_deploy_types, allow_deploy_types, "--allow-deploy-types")
    )
    if ca_file is not None and pins:
        raise click.UsageError("give --ca or --pin-sha256, not both")
    context = click.get_current_context()
    if print_systemd_unit:
        click.echo(_unit(context, name, work_dir, shutdown_grace, len(hubs)), nl=False)
        return
    if token_file is not None:
        try:
            client.read_token(token_file)
        except client.TokenUnreadable as error:
            raise click.UsageError(str(error)) from None
    elif not token:
        raise click.UsageError(
            "an agent token is required: --token-file FILE (or env QUICFLOW_AGENT_TOKEN)"
        )
    if os.geteuid() == 0 and not allow_root:
        raise click.ClickException(
            "refusing to run as root: every step the hub sends would run as root. Run the "
            "agent as its own user (quicflow agent --print-systemd-unit), or pass --allow-root"
        )
    first, *others = hubs
    settings = client.AgentSettings(
        host=first.host,
        port=first.port,
        name=name,
        token=token,
        token_file=token_file,
        work_dir=work_dir,
        labels=parsed_labels,
        ca_file=ca_file,
        pin_sha256=first.pin_sha256,
        more_hubs=tuple(others),
        heartbeat=heartbeat,
        watch=watch,
        status_interval=status_interval,
        shutdown_grace=shutdown_grace,
        refused_retry=refused_retry,
        deploy_types=deploy_types,
        pass_env=(*executing.PASS_ENV, *pass_env),
    )
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if verbose else logging.INFO,
        format=f"%(asctime)s agent[{name}] %(levelname)s %(message)s",
    )
    # aioquic logs every handshake at INFO; an agent reconnecting forever would drown in it.
    logging.getLogger("quic").setLevel(logging.DEBUG if verbose else logging.WARNING)
    if context.get_parameter_source("token") is ParameterSource.COMMANDLINE:
        logging.getLogger("agent").warning(
            "the token given with --token shows in the process list; use --token-file"
        )
    asyncio.run(_main(settings))


# Options that do not belong in the unit's command line (the unit supplies them itself).
_NOT_IN_UNIT = {"token", "token_file", "print_systemd_unit", "work_dir", "allow_root"}


def _hubs(servers: tuple[str, ...], pins: tuple[str, ...]) -> list[client.HubAddress]:
    """The hubs of ``--server`` options, each with its ``--pin-sha256`` (or the only one)."""
    addresses = [_convert(parse_server, server, "--server") for server in servers]
    if len(set(addresses)) != len(addresses):
        raise click.BadParameter("the same hub is given twice", param_hint="--server")
    if len(pins) > 1 and len(pins) != len(addresses):
        raise click.BadParameter(
            f"{len(pins)} pins for {len(addresses)} hubs: give --pin-sha256 once for every"
            " --server, or once per --server in the same order",
            param_hint="--pin-sha256",
        )
    matched = list(pins) if len(pins) > 1 else [pins[0] if pins else None] * len(addresses)
    return [
        client.HubAddress(host, port, pin)
        for (host, port), pin in zip(addresses, matched, strict=True)
    ]


def _unit(
    context: click.Context, name: str, work_dir: Path, shutdown_grace: float, hubs: int
) -> str:
    """The systemd unit for the options of this invocation."""
    explicit = context.get_parameter_source("work_dir") is not ParameterSource.DEFAULT
    work_root = PurePosixPath(work_dir.absolute()) if explicit else systemd.STATE_DIRECTORY
    executable = shutil.which("quicflow") or "/usr/local/bin/quicflow"
    command = [executable, "agent", "--name", name]
    for parameter in context.command.params:
        if not isinstance(parameter, click.Option) or parameter.name in _NOT_IN_UNIT | {"name"}:
            continue
        assert parameter.name is not None
        if context.get_parameter_source(parameter.name) in (
            ParameterSource.DEFAULT,
            ParameterSource.DEFAULT_MAP,
            None,
        ):
            continue
        value = context.params[parameter.name]
        flag = max(parameter.opts, key=len)
        if parameter.is_flag:
            if value:
                command.append(flag)
        elif parameter.multiple:
            for item in value:
                command += [flag, str(item)]
        else:
            command += [flag, str(value)]
    command += ["--work-root", str(work_root)]
    return systemd.unit(
        command, name=name, work_root=work_root, shutdown_grace=shutdown_grace, hubs=hubs
    )


async def _main(settings: client.AgentSettings) -> None:
    loop = asyncio.get_running_loop()
    executing.install_child_watcher(loop)
    agent_client = client.AgentClient(settings)
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, agent_client.request_shutdown)
    await agent_client.run()
