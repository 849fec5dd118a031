"""CLI commands that drive the engine: ``apply``, ``approve``, ``reject``, ``promote``, ``rollback``.

``apply`` runs the same reconciler as ``serve``, for one pass in the foreground: it
runs what may run now, leaves runs that wait for an approval or a release window
waiting (and says so), and exits 1 if any run failed. Approvals from the command line
record the decision; the run continues at the next pass (``apply`` or the server).

Who is typing: a decision or a rollback from the command line acts either as a user
proven by that user's API token (``--token-file FILE`` or ``QUICFLOW_API_TOKEN``, the
same tokens the API takes, checked against the data dir's token store, with that user's
role) or, without a token, as the *local administrator*: whoever can run quicflow on the
data dir can already mint tokens for anyone (``quicflow token create``), so that is an
administrator, and it is recorded as one — ``local:<os user>@<host>`` — in the run,
the decision, the state commit and the note. ``--as USER`` is only a check that the
token is USER's; the command line never takes a name for an identity.
``apply`` holds the data dir's engine lock while it runs: beside a ``serve`` on the same
data dir it refuses to start (the decision commands take no lock and work beside it).
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import os
import socket
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import click

from reconciler.alert.notifier import Notifier
from reconciler.auth.tokens import TokenStore
from reconciler.credential.manager import CredentialManager
from reconciler.engine.agents import LocalAgent
from reconciler.engine.reconciling import PassReport, Reconciler
from reconciler.errors import PermanentError, PermissionDenied, QuicFlowError, SourceError
from reconciler.gitops import model
from reconciler.gitops.repository import GitRepository
from reconciler.rules import windows
from reconciler.runs import RunState
from reconciler.store import locking
from reconciler.targets.resolving import Executors

_log = logging.getLogger(__name__)
NOTIFY_GRACE = 10.0  # seconds apply waits for notifications before it exits
REPO_HELP = "Config repo: a path (may be a subdirectory of a Git repository) or a URL."
DATA_HELP = "Data directory: operational store, logs, targets of the demo."


async def open_credentials(reconciler: Reconciler) -> CredentialManager | None:
    """The config repo's credentials (webhook secrets, signed callbacks), or None when they
    cannot be opened (no age key here): those features are then disabled, with a warning."""
    desired = reconciler.desired
    if desired is None:
        return None
    try:
        return await asyncio.to_thread(reconciler.credentials.manager, desired)
    except QuicFlowError as exc:
        _log.warning(
            "credentials unavailable (%s): webhooks and signed callbacks are disabled", exc
        )
        return None


def _reconciler(repo: str, data: str, executors: Executors | None = None) -> Reconciler:
    try:
        git = GitRepository.open(repo, cache_dir=Path(data) / "repos")
    except SourceError as exc:
        raise click.ClickException(str(exc)) from None
    return Reconciler(git, Path(data), executors=executors)


def _print_report(report: PassReport) -> None:
    for problem in report.problems:
        click.echo(f"invalid config, keeping the last good state: {problem}", err=True)
    for key, reason in report.skipped:
        click.echo(f"skipped {key}: {reason}")
    for run in report.runs:
        line = f"{run.project}/{run.env} {run.previous_version or '(nothing)'} -> {run.version}: {run.state.value}"
        if run.state is RunState.WAITING_APPROVAL:
            line += f" ({run.detail.get('waiting', '')}; approve with: quicflow approve {run.id} --as USER)"
        elif run.state is RunState.WAITING_WINDOW:
            line += f" (release window closed; opens {run.detail.get('next_opening', '?')})"
        elif run.error:
            line += f" ({run.error})"
        click.echo(f"{run.id}  {line}")
    if not report.runs and not report.skipped:
        click.echo(f"nothing to do at {report.commit[:10]}")


@click.command()
@click.option("--repo", default=".", show_default=True, help=REPO_HELP)
@click.option("--data", default=".quicflow", show_default=True, help=DATA_HELP)
@click.option(
    "--once", is_flag=True, default=True, help="One pass in the foreground (the default)."
)
@click.option("--only", default=None, metavar="PROJECT[/ENV]", help="Restrict the pass.")
@click.option(
    "--local-agent", is_flag=True, help="Run local targets through an agent over loopback QUIC."
)
def apply(repo: str, data: str, once: bool, only: str | None, local_agent: bool) -> None:
    """Reconcile once: deploy what the config repo says and Git does not have yet."""

    async def main() -> PassReport:
        local = LocalAgent(Path(data)) if local_agent else None
        if local is not None:
            await local.start()
        reconciler = _reconciler(repo, data, local.executors() if local else None)
        if local is not None:
            reconciler.hub = local.hub
        notifier: Notifier | None = None
        try:
            await reconciler.refresh()
            notifier = Notifier(
                reconciler.db,
                desired=lambda: reconciler.desired,
                credentials=await open_credentials(reconciler),
            )
            await notifier.start(reconciler.bus)
            report = await reconciler.reconcile_once(only=only)
            # Deliver what this pass has to say now; what is still retrying stays in the
            # outbox for the next apply or serve.
            await reconciler.bus.drain()
            await notifier.drain(within=NOTIFY_GRACE)
            return report
        finally:
            if notifier is not None:
                await notifier.close()
            await reconciler.close()
            if local is not None:
                await local.stop()

    try:
        # Before anything touches the data dir (its mirror, its local agent's token).
        with locking.DataDirLock(Path(data), "apply"):
            report = asyncio.run(main())
    except QuicFlowError as exc:
        raise click.ClickException(str(exc)) from None
    _print_report(report)
    if report.failed:
        sys.exit(1)


def _echo_or_refuse(work: Coroutine[Any, Any, str]) -> None:
    """Run a command's coroutine and print its answer; a refusal is a clean CLI error (exit 1)."""
    try:
        click.echo(asyncio.run(work))
    except (PermissionDenied, PermanentError, KeyError) as exc:
        raise click.ClickException(str(exc).strip("'\"")) from None


TOKEN_ENV = "QUICFLOW_API_TOKEN"
LOCAL_ADMINISTRATOR = "local administrator"


def local_administrator() -> model.User:
    """The identity of a command typed on the reconciler's host without a token."""
    who = f"{getpass.getuser()}@{socket.gethostname()}"
    return model.User(
        username=f"local:{who}", email="", display_name=LOCAL_ADMINISTRATOR, is_admin=True
    )


def _user(reconciler: Reconciler, username: str) -> model.User:
    desired = reconciler.desired
    if desired is None or username not in desired.users:
        raise click.ClickException(
            f"unknown user {username!r}: users are declared in quicflow.yaml"
        )
    return desired.users[username]


def _identity(reconciler: Reconciler, username: str | None, token_file: Path | None) -> model.User:
    """Who is typing: the owner of the API token given, else the local administrator."""
    if token_file is not None:
        try:
            token, source = token_file.read_text(encoding="utf-8").strip(), str(token_file)
        except OSError as exc:
            raise click.ClickException(f"--token-file {token_file}: {exc.strerror}") from None
    else:
        token, source = os.environ.get(TOKEN_ENV, "").strip(), TOKEN_ENV
    if not token:
        if username:
            raise click.ClickException(
                f"--as {username} needs {username}'s API token (--token-file FILE or "
                f"{TOKEN_ENV}): the command line does not take a name as proof of who is "
                "typing. Without --as and a token it acts as the local administrator."
            )
        return local_administrator()
    owner = TokenStore(reconciler.db).lookup(token)
    if owner is None:
        raise click.ClickException(
            f"the API token from {source} is not valid here (unknown, revoked or expired)"
        )
    if username and username != owner:
        raise click.ClickException(f"--as {username}: the API token from {source} is {owner}'s")
    return _user(reconciler, owner)


def _identity_options(f: Any) -> Any:
    f = click.option(
        "--token-file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help=f"Act as the user whose API token this file holds (or set {TOKEN_ENV}); "
        "without a token: as the local administrator, recorded as local:USER@HOST.",
    )(f)
    return click.option(
        "--as", "username", default=None, help="Check that the token is this user's."
    )(f)


def _shown(user: model.User) -> str:
    if user.display_name == LOCAL_ADMINISTRATOR and user.username.startswith("local:"):
        return f"{user.username} ({LOCAL_ADMINISTRATOR})"
    return user.username


def _decision_command(name: str, verb: str) -> click.Command:
    @click.command(
        name=name,
        help=f"{verb.capitalize()} a waiting run (recorded, with who decided; the run "
        "continues at the next pass). Acts as the owner of --token-file/"
        f"{TOKEN_ENV}, else as the local administrator.",
    )
    @click.argument("run_id")
    @_identity_options
    @click.option("--comment", default="", help="Why.")
    @click.option("--repo", default=".", show_default=True, help=REPO_HELP)
    @click.option("--data", default=".quicflow", show_default=True, help=DATA_HELP)
    def command(
        run_id: str,
        username: str | None,
        token_file: Path | None,
        comment: str,
        repo: str,
        data: str,
    ) -> None:
        async def main() -> str:
            reconciler = _reconciler(repo, data)
            try:
                await reconciler.refresh()
                user = _identity(reconciler, username, token_file)
                if name == "approve":
                    run = await reconciler.approve(run_id, user, comment, resume=False)
                elif name == "reject":
                    run = await reconciler.reject(run_id, user, comment, resume=False)
                else:
                    run = await reconciler.promote(run_id, user, resume=False)
                return (
                    f"{verb}d {run.id} ({run.project}/{run.env} {run.version}) as "
                    f"{_shown(user)}; it continues at the next pass"
                )
            finally:
                await reconciler.close()

        _echo_or_refuse(main())

    return command


approve = _decision_command("approve", "approve")
reject = _decision_command("reject", "reject")
promote = _decision_command("promote", "promote")


@click.command()
@click.argument("project")
@click.argument("env")
@click.option(
    "--to",
    "to_version",
    default=None,
    help="Version to restore (default: the one before the current).",
)
@click.option(
    "--pin",
    is_flag=True,
    help="Deploy it now and pin the environment until its version changes in Git.",
)
@click.option(
    "--force",
    is_flag=True,
    help="An emergency: run it even while the release window is closed (owners; recorded).",
)
@_identity_options
@click.option("--repo", default=".", show_default=True, help=REPO_HELP)
@click.option("--data", default=".quicflow", show_default=True, help=DATA_HELP)
def rollback(
    project: str,
    env: str,
    to_version: str | None,
    pin: bool,
    force: bool,
    username: str | None,
    token_file: Path | None,
    repo: str,
    data: str,
) -> None:
    """Roll back on purpose: commit a revert to the config repo (default) or --pin a version now.

    Acts as the owner of --token-file/QUICFLOW_API_TOKEN (with their role), else as the
    local administrator; either way who asked is recorded. Outside the environment's
    release window the rollback waits for it (visible, and cancellable with ``quicflow
    cancel``) unless an owner gives --force.
    """

    async def main() -> str:
        reconciler = _reconciler(repo, data)
        try:
            await reconciler.refresh()
            user = _identity(reconciler, username, token_file)
            result = await reconciler.rollback(
                project, env, actor=user, to_version=to_version, pin=pin, force=force
            )
            if isinstance(result, str):
                return (
                    f"committed {result[:10]}: {project}/{env} back to the previous version; "
                    f"the next pass deploys it{_window_note(reconciler, project, env, force)}"
                )
            await reconciler.wait_idle()
            final = reconciler.runs.get(result.id) or result
            line = f"{final.id}  {project}/{env} pinned to {final.version}: {final.state.value}"
            if final.state is RunState.WAITING_WINDOW:
                line += (
                    f" (release window closed; it runs by itself when it opens at "
                    f"{final.detail.get('next_opening') or 'no known time'}; cancel it with: "
                    f"quicflow cancel {final.id}; an owner may instead roll back with --force)"
                )
            elif final.forced:
                line += " (forced past the closed release window)"
            return line
        finally:
            await reconciler.close()

    _echo_or_refuse(main())


def _window_note(reconciler: Reconciler, project: str, env: str, force: bool) -> str:
    """What the release window means for a revert the next pass deploys."""
    desired = reconciler.desired
    found = desired.environment(project, env) if desired else None
    if found is None or not found.release_windows:
        return ""
    now = reconciler.now()
    if windows.is_open(found.release_windows, now):
        return ""
    if force:
        return ", forced past its closed release window"
    opening = windows.next_opening(found.release_windows, now)
    return (
        f", but its release window is closed: the run waits until {opening.isoformat() if opening else 'it opens'}"
        " (cancel a waiting run with: quicflow cancel RUN_ID; an owner may roll back with --force)"
    )


@click.command()
@click.argument("run_id")
@_identity_options
@click.option("--repo", default=".", show_default=True, help=REPO_HELP)
@click.option("--data", default=".quicflow", show_default=True, help=DATA_HELP)
def cancel(
    run_id: str, username: str | None, token_file: Path | None, repo: str, data: str
) -> None:
    """Cancel a run that waits (for an approval, a promotion or a release window).

    A run executing in a running ``serve`` is stopped through its API instead. Acts as
    the owner of --token-file/QUICFLOW_API_TOKEN, else as the local administrator.
    """

    async def main() -> str:
        reconciler = _reconciler(repo, data)
        try:
            await reconciler.refresh()
            user = _identity(reconciler, username, token_file)
            found = reconciler.runs.get(run_id)
            if found is not None and reconciler.lifecycle.owned_elsewhere(found):
                raise PermanentError(
                    f"run {run_id} is executing in another process "
                    f"({found.detail.get('owner', '?')}); cancel it through its API: "
                    f"POST /api/release/runs/{run_id}/cancel"
                )
            run = await reconciler.cancel(run_id, user)
            return f"{run.id}  {run.project}/{run.env} {run.version}: {run.state.value} by {_shown(user)}"
        finally:
            await reconciler.close()

    _echo_or_refuse(main())
