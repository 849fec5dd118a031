"""The ``agent`` click command (``quicflow agent`` and ``python -m agent``).

Parses options, sets up logging and signals, and runs ``client.AgentClient`` until SIGTERM
or SIGINT.  Secrets may come from the environment (``QUICFLOW_AGENT_TOKEN``) or a file so
they do not show in the process list.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from pathlib import Path

import click

from agent import client, executing


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


def _convert(parser, value, what):  # type: ignore[no-untyped-def]
    try:
        return parser(value)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint=what) from error


@click.command("agent")
@click.option("--server", required=True, envvar="QUICFLOW_SERVER", help="Hub address, HOST:PORT.")
@click.option("--name", default=socket.gethostname, show_default="hostname", help="Agent name.")
@click.option("--labels", default="", help="Labels for target selection, k=v,k2=v2.")
@click.option(
    "--token",
    envvar="QUICFLOW_AGENT_TOKEN",
    default="",
    help="Agent token (or env QUICFLOW_AGENT_TOKEN).",
)
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the agent token from this file.",
)
@click.option(
    "--ca",
    "ca_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Verify the hub's certificate against this CA (or certificate) file.",
)
@click.option(
    "--pin-sha256",
    envvar="QUICFLOW_HUB_PIN",
    default=None,
    help="Verify the hub by its certificate's SHA-256 fingerprint (quicflow hub fingerprint).",
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path.home() / ".local" / "state" / "quicflow-agent",
    show_default=True,
    help="Where commands run and results are kept.",
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
    server: str,
    name: str,
    labels: str,
    token: str,
    token_file: Path | None,
    ca_file: Path | None,
    pin_sha256: str | None,
    work_dir: Path,
    heartbeat: float,
    watch: tuple[str, ...],
    status_interval: float,
    shutdown_grace: float,
    verbose: bool,
) -> None:
    """Run the QUIC-Flow agent: connect to the hub and run the commands it sends."""
    host, port = _convert(parse_server, server, "--server")
    if ca_file is not None and pin_sha256:
        raise click.UsageError("give --ca or --pin-sha256, not both")
    if token_file is not None:
        token = token_file.read_text().strip()
    if not token:
        raise click.UsageError(
            "an agent token is required: --token, --token-file or QUICFLOW_AGENT_TOKEN"
        )
    settings = client.AgentSettings(
        host=host,
        port=port,
        name=name,
        token=token,
        work_dir=work_dir,
        labels=_convert(parse_labels, labels, "--labels"),
        ca_file=ca_file,
        pin_sha256=pin_sha256,
        heartbeat=heartbeat,
        watch=watch,
        status_interval=status_interval,
        shutdown_grace=shutdown_grace,
    )
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if verbose else logging.INFO,
        format=f"%(asctime)s agent[{name}] %(levelname)s %(message)s",
    )
    # aioquic logs every handshake at INFO; an agent reconnecting forever would drown in it.
    logging.getLogger("quic").setLevel(logging.DEBUG if verbose else logging.WARNING)
    asyncio.run(_main(settings))


async def _main(settings: client.AgentSettings) -> None:
    loop = asyncio.get_running_loop()
    executing.install_child_watcher(loop)
    agent_client = client.AgentClient(settings)
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, agent_client.request_shutdown)
    await agent_client.run()
