"""The ``quicflow`` command line: validate, plan, history, init (and the server's commands).

Exit codes are a contract for CI jobs on the config repo: ``validate`` 0 valid, 1
invalid, 2 usage error; ``plan --detailed-exitcode`` 0 no changes, 2 changes, 1 error;
``plan --base`` 3 when an author of the change is not allowed to make it (unless
``--no-require-allowed``), whatever else it would exit with.
Errors go to stderr, one per line; results to stdout.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import click

from agent import cli as agent_cli
from reconciler import commands as engine_commands
from reconciler import serving, tailing
from reconciler.credential.commands import secrets_group
from reconciler.drivers.kubernetes import describing
from reconciler.errors import QuicFlowError, SourceError
from reconciler.gitops import history as history_mod
from reconciler.gitops import loading, planning, policy, rendering, scaffolding
from reconciler.gitops import model as model_mod
from reconciler.gitops.repository import GitRepository, redact_url
from reconciler.hub import commands as hub_commands

REPO_HELP = "Config repo: a path (may be a subdirectory of a Git repository) or a URL."
#: ``plan --base``: the change needs a role one of its authors does not hold.
EXIT_NOT_ALLOWED = 3


def _open(repo: str, data: str | None = None, fetch: bool = True) -> GitRepository:
    cache = Path(data or ".quicflow") / "repos"
    try:
        git = GitRepository.open(repo, cache_dir=cache)
    except SourceError as exc:
        raise click.ClickException(str(exc)) from None
    if fetch and git.has_remote and git.remote_url is None:
        # An engineer's clone: the state ref and notes are not in the default refspecs.
        try:
            git.fetch()
        except SourceError as exc:
            click.echo(f"warning: could not fetch history from the remote: {exc}", err=True)
    return git


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="quic-flow")
def main() -> None:
    """QUIC-Flow: GitOps continuous deployment."""


@main.command()
@click.option("--repo", default=".", show_default=True, help=REPO_HELP)
@click.option("--rev", default="HEAD", show_default=True, help="Commit, branch or tag to validate.")
def validate(repo: str, rev: str) -> None:
    """Check the config repo at a commit; print every problem as path:line:column."""
    git = _open(repo, fetch=False)
    try:
        result = loading.Loader(git).load(rev)
    except SourceError as exc:
        raise click.ClickException(str(exc)) from None
    if result.ok:
        desired = result.desired
        assert desired is not None
        envs = sum(len(p.environments) for p in desired.projects.values())
        click.echo(
            f"valid: {len(desired.projects)} projects, {envs} environments at {result.commit[:10]}"
        )
        return
    for problem in result.problems:
        click.echo(str(problem), err=True)
    click.echo(
        f"{len(result.problems)} problem{'s' if len(result.problems) != 1 else ''} "
        f"at {result.commit[:10]}",
        err=True,
    )
    sys.exit(1)


@main.command()
@click.option("--repo", default=".", show_default=True, help=REPO_HELP)
@click.option(
    "--base",
    default=None,
    help="Base revision of a change (e.g. origin/main): adds the roles it needs.",
)
@click.option(
    "--head", default="HEAD", show_default=True, help="Revision whose desired state is planned."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "markdown", "json"]),
    default="text",
    show_default=True,
)
@click.option(
    "--detailed-exitcode", is_flag=True, help="Exit 0 with no changes, 2 with changes, 1 on error."
)
@click.option("--only", default=None, metavar="PROJECT[/ENV]", help="Restrict the plan.")
@click.option(
    "--verbose", "-v", is_flag=True, help="Also list unchanged environments (text format)."
)
@click.option(
    "--require-allowed/--no-require-allowed",
    default=True,
    show_default=True,
    help=f"With --base: exit {EXIT_NOT_ALLOWED} when an author may not make the change.",
)
def plan(
    repo: str,
    base: str | None,
    head: str,
    fmt: str,
    detailed_exitcode: bool,
    only: str | None,
    verbose: bool,
    require_allowed: bool,
) -> None:
    """Show what would roll out, where and how — and, with --base, who may merge it.

    With --base the change is judged from where the branch forked from BASE (its
    merge-base), with the roles BASE declares now; the plan exits 3 when an author is
    not allowed (--no-require-allowed: only report it).
    """
    try:
        git = _open(repo)
        loader = loading.Loader(git)
        head_result = loader.load(head)
        if not head_result.ok:
            for problem in head_result.problems:
                click.echo(str(problem), err=True)
            raise click.ClickException(f"the config at {head} is invalid; nothing can be planned")
        desired = head_result.raise_for_problems()
        state_commit, deployed = history_mod.History(git).deployed()
        the_plan = planning.plan(desired, deployed, state_commit=state_commit)
        if only:
            project, _, env = only.partition("/")
            the_plan = the_plan.only(project, env or None)
        applies = _applies(the_plan, desired, deployed)
        report = None
        if base is not None:
            report = _policy_report(git, loader, base, head_result.commit, desired)
    except QuicFlowError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(1)
    if fmt == "json":
        click.echo(rendering.plan_json(the_plan, report, base, applies=applies), nl=False)
    elif fmt == "markdown":
        click.echo(rendering.plan_markdown(the_plan, report, applies=applies), nl=False)
    else:
        click.echo(rendering.plan_text(the_plan, report, verbose, applies=applies), nl=False)
    if report is not None and require_allowed and not report.allowed:
        for refusal in report.refusals():
            click.echo(f"not allowed: {refusal}", err=True)
        sys.exit(EXIT_NOT_ALLOWED)
    if detailed_exitcode and the_plan.has_changes:
        sys.exit(2)


def _applies(
    the_plan: planning.Plan,
    desired: model_mod.DesiredState,
    deployed: Mapping[tuple[str, str], planning.DeployedRecord],
) -> dict[str, list[str]]:
    """What each Kubernetes deploy of the plan will apply, by ``project/env``."""
    found = {}
    for action in the_plan.changes:
        env = desired.environment(action.project, action.env)
        if env is not None and env.deploy.type is model_mod.DeployType.KUBERNETES:
            record = deployed.get((action.project, action.env))
            found[action.key] = describing.applies(env, record.color if record else None)
    return found


def _policy_report(
    git: GitRepository,
    loader: loading.Loader,
    base: str,
    head_commit: str,
    head: model_mod.DesiredState,
) -> policy.PolicyReport:
    """The roles the change from ``base`` to ``head_commit`` needs, and its authors' check.

    Changes are read from the merge-base (a stale branch is not charged with what main
    did since it forked); roles from ``base`` as it is — never from the change.
    """
    base_commit = git.resolve(base)
    base_result = loader.load(base_commit)
    problem = ""
    if not base_result.ok:
        count = len(base_result.problems)
        problem = (
            f"{base} ({base_commit[:10]}) is invalid ({count} problem{'s' if count != 1 else ''}"
            f"; run 'quicflow validate --rev {base}')"
        )
    fork = git.merge_base(base_commit, head_commit) or base_commit
    changes_from = base_result.desired
    if fork != base_commit:
        forked = loader.load(fork)
        changes_from = forked.desired if forked.ok else base_result.desired
    authors = [(c.author_name, c.author_email) for c in git.commits_between(fork, head_commit)]
    return policy.report(
        changes_from,
        head,
        authors,
        roles_from=base_result.desired if base_result.ok else None,
        base_problem=problem,
    )


@main.command()
@click.argument("project")
@click.argument("env")
@click.option("--repo", default=".", show_default=True, help=REPO_HELP)
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@click.option("--limit", default=50, show_default=True, help="Newest entries to show.")
def history(project: str, env: str, repo: str, fmt: str, limit: int) -> None:
    """Deployment history of one project/environment, from the state ref."""
    import json

    git = _open(repo)
    hist = history_mod.History(git)
    entries = list(hist.entries(project, env, limit))
    if fmt == "json":
        out = []
        for e in entries:
            r = e.record
            out.append(
                {
                    "state_commit": e.commit.id,
                    "time": e.commit.time,
                    "summary": e.commit.summary,
                    "version": r.version if r else None,
                    "outcome": r.outcome if r else None,
                    "config_commit": r.config_commit if r else None,
                    "run_id": r.run_id if r else None,
                    "last_failure": None
                    if not r or not r.last_failure
                    else {
                        "version": r.last_failure.version,
                        "outcome": r.last_failure.outcome,
                        "run_id": r.last_failure.run_id,
                    },
                    "pinned": bool(r and r.pin),
                    "pin": None
                    if not r or not r.pin
                    else {
                        "version": r.pin.version,
                        "desired_version": r.pin.desired_version,
                        "desired_hash": r.pin.desired_hash,
                    },
                }
            )
        click.echo(json.dumps({"project": project, "environment": env, "entries": out}, indent=2))
        return
    if not entries:
        click.echo(f"no history for {project}/{env}")
        return
    for e in entries:
        r = e.record
        deployed = f"deployed {r.version}" if r and r.version else "nothing deployed"
        if r and r.pin:
            deployed += f", pinned while Git asks for {r.pin.desired_version}"
        click.echo(
            f"{e.commit.short_id}  {e.commit.summary}  [{deployed}; config {(r.config_commit if r else '')[:10]}]"
        )


@main.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--project", default="hello", show_default=True, help="Name of the first project.")
def init(directory: Path, project: str) -> None:
    """Scaffold a valid config repo with one project (and commit it when it is a new repo)."""
    try:
        created, committed = scaffolding.scaffold(directory, project)
    except QuicFlowError as exc:
        raise click.ClickException(str(exc)) from None
    for path in created:
        click.echo(f"created {path}")
    if committed:
        click.echo(f"committed the scaffold as {committed[:10]} on branch main")
    click.echo(f"next: quicflow validate --repo {directory}")


main.add_command(secrets_group)
main.add_command(hub_commands.hub)
main.add_command(hub_commands.agent_token)
main.add_command(hub_commands.agents)
main.add_command(agent_cli.agent)
main.add_command(serving.serve_command)
main.add_command(serving.token)
main.add_command(tailing.logs_command)
for _command in (
    engine_commands.apply,
    engine_commands.approve,
    engine_commands.reject,
    engine_commands.promote,
    engine_commands.rollback,
    engine_commands.cancel,
):
    main.add_command(_command)

__all__ = ["main", "redact_url"]
