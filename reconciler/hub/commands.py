"""The hub's CLI commands: ``hub fingerprint`` and ``agent-token create|revoke``.

Click objects only; the main ``quicflow`` group adds them.  ``agent-token create`` prints
the token alone on stdout so it can be captured (``TOKEN=$(quicflow agent-token create
web-1)``); everything else goes to stderr.
"""

from __future__ import annotations

from pathlib import Path

import click

from reconciler.hub import tls, tokens

DEFAULT_DATA = Path(".quicflow")

data_option = click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_DATA,
    show_default=True,
    envvar="QUICFLOW_DATA",
    help="The reconciler's data dir (holds the hub certificate and agent tokens).",
)


@click.group("hub")
def hub() -> None:
    """The QUIC hub agents connect to."""


@hub.command("fingerprint")
@data_option
def fingerprint(data_dir: Path) -> None:
    """Print the SHA-256 fingerprint of the hub certificate (created if missing)."""
    identity = tls.ensure_identity(data_dir)
    click.echo(identity.fingerprint())


@click.group("agent-token")
def agent_token() -> None:
    """Issue and revoke per-agent tokens."""


@agent_token.command("create")
@click.argument("name")
@data_option
def create(name: str, data_dir: Path) -> None:
    """Issue a token for agent NAME (replacing its old one) and print it alone on stdout."""
    try:
        token = tokens.TokenStore(data_dir).create(name)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="NAME") from error
    click.echo(token)
    click.echo(f"token issued for agent {name!r}; it is stored hashed and shown only now", err=True)


@agent_token.command("revoke")
@click.argument("name")
@data_option
def revoke(name: str, data_dir: Path) -> None:
    """Revoke agent NAME's token; a running hub disconnects the agent."""
    if not tokens.TokenStore(data_dir).revoke(name):
        raise click.ClickException(f"agent {name!r} has no token")
    click.echo(f"token of agent {name!r} revoked", err=True)
