"""The hub's CLI commands: ``hub fingerprint``, ``agent-token create|revoke`` and ``agents``.

Click objects only; the main ``quicflow`` group adds them.  Each takes the reconciler's
data dir (``--data``, the same option and default as ``quicflow serve``) and works in the
hub's directory inside it (``locations.hub_dir``), so what they print and change is what
the running hub uses.  ``agent-token create`` prints the token alone on stdout so it can
be captured (``quicflow agent-token create web-1 > web-1.token``); everything else goes
to stderr.  ``agent-token create NAME --token-file FILE`` registers a token another
replica's hub issued instead, so an agent serving several replicas has one token.
``agents`` lists agents from the running server's API (``--api``) or from the snapshot
the hub keeps in its directory; ``--detail`` adds each agent's reported processes and
containers.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from reconciler.hub import locations, registry, snapshots, tls, tokens

DEFAULT_DATA = Path(".quicflow")

data_option = click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DATA,
    show_default=True,
    help="The reconciler's data dir, as given to 'quicflow serve' (the hub keeps its"
    " certificate and agent tokens in DATA/hub).",
)


def _hub_dir(data_dir: Path) -> Path:
    """The hub dir of ``data_dir``, warning about files an earlier release left beside it."""
    for stray in locations.stray_files(data_dir):
        click.echo(
            f"warning: {stray} was written by an earlier quicflow and is not used by the hub"
            f" (it uses {locations.hub_dir(data_dir)}); re-issue tokens and pins made with it,"
            " then delete it",
            err=True,
        )
    return locations.hub_dir(data_dir)


@click.group("hub")
def hub() -> None:
    """The QUIC hub agents connect to."""


@hub.command("fingerprint")
@data_option
def fingerprint(data_dir: Path) -> None:
    """Print the SHA-256 fingerprint of the hub certificate (created if missing)."""
    identity = tls.ensure_identity(_hub_dir(data_dir))
    click.echo(identity.fingerprint())


@click.group("agent-token")
def agent_token() -> None:
    """Issue and revoke per-agent tokens."""


@agent_token.command("create")
@click.argument("name")
@data_option
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    default=None,
    help="Register the token in this file ('-': stdin), issued by another replica's hub,"
    " instead of issuing a new one: an agent serving several replicas uses one token.",
)
def create(name: str, data_dir: Path, token_file: Path | None) -> None:
    """Issue a token for agent NAME (replacing its old one) and print it alone on stdout.

    With --token-file, register the token another replica's hub issued instead.
    """
    try:
        tokens.check_name(name)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="NAME") from error
    store = tokens.TokenStore(_hub_dir(data_dir))
    if token_file is None:
        click.echo(store.create(name))
        click.echo(
            f"token issued for agent {name!r}; it is stored hashed and shown only now", err=True
        )
        return
    try:
        store.register(name, _read_token(token_file))
    except (OSError, ValueError) as error:
        why = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise click.BadParameter(f"{token_file}: {why}", param_hint="--token-file") from None
    source = "stdin" if str(token_file) == "-" else token_file
    click.echo(f"token of agent {name!r} from {source} registered (stored hashed)", err=True)


def _read_token(path: Path) -> str:
    """The token in ``path`` ('-': stdin), surrounding whitespace removed."""
    text = click.get_text_stream("stdin").read() if str(path) == "-" else path.read_text()
    return text.strip()


@agent_token.command("revoke")
@click.argument("name")
@data_option
def revoke(name: str, data_dir: Path) -> None:
    """Revoke agent NAME's token; a running hub disconnects the agent within a second."""
    if not tokens.TokenStore(_hub_dir(data_dir)).revoke(name):
        raise click.ClickException(f"agent {name!r} has no token")
    click.echo(
        f"token of agent {name!r} revoked; a running hub disconnects it and cancels its commands."
        " Each replica's hub has its own token file: revoke it on every replica the agent"
        " connects to",
        err=True,
    )


@click.command("agents")
@data_option
@click.option(
    "--api",
    "api_url",
    default=None,
    metavar="URL",
    help="Ask the running server instead, e.g. http://127.0.0.1:8080 (token from"
    " QUICFLOW_TOKEN or --token-file).",
)
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="File holding an API token (quicflow token create USER), for --api.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
)
@click.option(
    "--detail",
    "-v",
    is_flag=True,
    help="Also list each agent's reported processes and containers (state, health, cpu,"
    " memory, version).",
)
def agents(
    data_dir: Path, api_url: str | None, token_file: Path | None, fmt: str, detail: bool
) -> None:
    """List agents: connected ones with labels, heartbeat age, version and what they report;
    known ones offline."""
    now = time.time()
    if api_url is not None:
        rows = _from_api(api_url, token_file, now)
    else:
        rows = _from_data_dir(_hub_dir(data_dir), now)
    if fmt == "json":
        click.echo(json.dumps({"agents": rows}, indent=2))
        return
    if not rows:
        click.echo("no agents: issue a token with 'quicflow agent-token create NAME'")
        return
    header = (
        "NAME", "STATE", "HEARTBEAT", "VERSION", "ADDRESS", "HOST", "PROCS", "CONTAINERS",
        "LABELS",
    )  # fmt: skip
    _echo_table(
        [header]
        + [
            (
                row["name"],
                row["state"],
                "-" if row["heartbeat_age"] is None else f"{row['heartbeat_age']:.0f}s ago",
                row["agent_version"] or "-",
                row["address"] or "-",
                row["hostname"] or "-",
                _count(row["processes"], row["processes_omitted"]),
                _count(row["containers"], row["containers_omitted"]),
                ",".join(f"{k}={v}" for k, v in sorted(row["labels"].items())) or "-",
            )
            for row in rows
        ]
    )
    if detail:
        for row in rows:
            _echo_detail(row)


def _echo_table(table: Sequence[tuple[str, ...]], indent: str = "") -> None:
    widths = [max(len(line[column]) for line in table) for column in range(len(table[0]))]
    for line in table:
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        click.echo((indent + "  ".join(cells)).rstrip())


def _count(entries: list[dict[str, Any]] | None, omitted: int) -> str:
    """How many an agent reported ("-": no report yet)."""
    return "-" if entries is None else str(len(entries) + omitted)


def _echo_detail(row: dict[str, Any]) -> None:
    """The processes and containers of one agent's latest report, as a table of their own."""
    processes, containers = row["processes"], row["containers"]
    if processes is None or containers is None:
        if row["state"] == "connected":
            click.echo(f"\n{row['name']}: no status report yet")
        return
    process_count = len(processes) + row["processes_omitted"]
    container_count = len(containers) + row["containers_omitted"]
    click.echo(
        f"\n{row['name']}: {process_count} process{'es' if process_count != 1 else ''},"
        f" {container_count} container{'s' if container_count != 1 else ''}"
    )
    table = [("KIND", "NAME", "PID/ID", "STATE", "HEALTH", "CPU", "MEMORY", "VERSION", "STARTED")]
    for process in processes:
        table.append(
            (
                "process",
                process["name"],
                "-" if process["pid"] is None else str(process["pid"]),
                process["state"],
                "-",
                f"{process['cpu_percent']:.1f}%",
                registry.size_text(process["memory_bytes"]),
                "-",
                _moment(process.get("started")),
            )
        )
    for container in containers:
        labels = container.get("labels") or {}
        cpu = container.get("cpu_percent")
        table.append(
            (
                "container",
                container["name"],
                container.get("id") or "-",
                container["state"],
                container.get("health") or "-",
                "-" if cpu is None else f"{cpu:.1f}%",
                registry.size_text(container.get("memory_bytes")),
                labels.get("quicflow.version") or "-",
                _moment(container.get("started")),
            )
        )
    if len(table) > 1:
        _echo_table(table, indent="  ")
    for kind in ("processes", "containers"):
        if row[f"{kind}_omitted"]:
            click.echo(f"  ({row[f'{kind}_omitted']} more {kind} not listed)")
    for note in row["notes"]:
        click.echo(f"  note: {note}")


def _moment(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _row(agent: dict[str, Any] | None, name: str, state: str, now: float) -> dict[str, Any]:
    agent = agent or {}
    heartbeat = agent.get("last_heartbeat")
    return {
        "name": name,
        "state": state,
        "labels": dict(agent.get("labels") or {}),
        "heartbeat_age": None if heartbeat is None else max(0.0, now - float(heartbeat)),
        "agent_version": agent.get("agent_version") or "",
        "address": agent.get("address") or "",
        "hostname": agent.get("hostname") or "",
        # The latest status report (None: none yet; an earlier server sent only counts).
        "processes": _entries(agent.get("processes")),
        "containers": _entries(agent.get("containers")),
        "processes_omitted": int(agent.get("processes_omitted") or 0),
        "containers_omitted": int(agent.get("containers_omitted") or 0),
        "notes": list(agent.get("notes") or ()),
    }


def _entries(value: Any) -> list[dict[str, Any]] | None:
    return [dict(entry) for entry in value] if isinstance(value, list) else None


def _from_data_dir(directory: Path, now: float) -> list[dict[str, Any]]:
    """Connected agents from the hub's snapshot, plus agents with a token that are not."""
    snapshot = snapshots.read(directory)
    known = tokens.TokenStore(directory).names()
    connected: dict[str, dict[str, Any]] = {}
    if snapshot is None:
        click.echo(f"no hub has run with {directory}: showing agents with a token", err=True)
    elif not snapshot.is_fresh(now):
        state = "stopped" if not snapshot.running else "not answering"
        click.echo(
            f"the hub ({snapshot.address}, pid {snapshot.pid}) is {state}: last update"
            f" {now - snapshot.written:.0f}s ago; showing agents with a token",
            err=True,
        )
    else:
        connected = {str(agent["name"]): agent for agent in snapshot.agents}
    rows = [_row(agent, name, "connected", now) for name, agent in sorted(connected.items())]
    rows += [_row(None, name, "offline", now) for name in known if name not in connected]
    return sorted(rows, key=lambda row: row["name"])


def _from_api(url: str, token_file: Path | None, now: float) -> list[dict[str, Any]]:
    """Connected agents as the running server's ``GET /api/release/agents`` reports them."""
    token = token_file.read_text().strip() if token_file else os.environ.get("QUICFLOW_TOKEN")
    request = urllib.request.Request(url.rstrip("/") + "/api/release/agents")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            document = json.load(response)
    except urllib.error.HTTPError as error:
        raise click.ClickException(
            f"{request.full_url}: HTTP {error.code} {error.reason}"
        ) from None
    except (urllib.error.URLError, OSError) as error:
        raise click.ClickException(f"cannot reach {request.full_url}: {error}") from None
    return [
        _row(agent, str(agent["name"]), "connected", now)
        for agent in sorted(document.get("items", []), key=lambda a: a["name"])
    ]
