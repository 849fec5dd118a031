"""Plan across a simulated pull request: which roles the change needs, and whether authors hold them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from gitrepos import ConfigRepo, git

from reconciler.gitops import policy
from reconciler.gitops.loading import Loader
from reconciler.gitops.repository import GitRepository

BOB = ("Bob Owner", "bob@example.com")  # owner of app
CAROL = ("Carol Dev", "carol@example.com")  # developer of app
DAVE = ("Dave Viewer", "dave@example.com")  # viewer of app
ALICE = ("Alice Admin", "alice@example.com")  # is_admin


def _pr(
    repo: ConfigRepo, minimal: dict[str, str], change: dict[str, str], author: tuple[str, str]
) -> str:
    repo.commit(minimal, author=ALICE)
    git(repo.path, "checkout", "-q", "-b", "feature")
    repo.commit(change, message="the pull request", author=author)
    return git(repo.path, "rev-parse", "main")


def _report(repo: ConfigRepo, base: str) -> policy.PolicyReport:
    git_repo = GitRepository.open(repo.path)
    loader = Loader(git_repo)
    b, h = loader.load(base).desired, loader.load("HEAD").raise_for_problems()
    authors = [
        (c.author_name, c.author_email)
        for c in git_repo.commits_between(base, git_repo.resolve("HEAD"))
    ]
    return policy.report(b, h, authors)


DEV_BUMP = {
    "projects/app/environments/dev.yaml": 'version: "1.1.0"\ntargets:\n  - {local: dev-1}\n'
}
PROD_BUMP = {
    "projects/app/environments/prod.yaml": 'version: "1.1.0"\nprotected: true\ntargets:\n  - {agent: web-1}\n  - {agent: web-2}\n'
}


@pytest.mark.parametrize(
    ("change", "author", "allowed", "roles"),
    [
        (DEV_BUMP, CAROL, True, ["owner", "maintainer", "developer"]),
        (DEV_BUMP, DAVE, False, ["owner", "maintainer", "developer"]),
        (PROD_BUMP, CAROL, False, ["owner", "maintainer"]),
        (PROD_BUMP, BOB, True, ["owner", "maintainer"]),
        (PROD_BUMP, ALICE, True, ["owner", "maintainer"]),  # admins may do everything
        (PROD_BUMP, ("Eve Outsider", "eve@example.org"), False, ["owner", "maintainer"]),
    ],
)
def test_version_bumps(
    config_repo: ConfigRepo,
    minimal_files: dict[str, str],
    change: dict[str, str],
    author: tuple[str, str],
    allowed: bool,
    roles: list[str],
) -> None:
    base = _pr(config_repo, minimal_files, change, author)
    report = _report(config_repo, base)
    assert [(r.env, r.action, list(r.roles)) for r in report.requirements] == [
        ("dev" if change is DEV_BUMP else "prod", "deploy", roles)
    ]
    assert report.allowed is allowed
    assert [a.email for a in report.authors] == [author[1]]


def test_members_change_needs_owner_and_roles_come_from_base(
    config_repo: ConfigRepo, minimal_files: dict[str, str]
) -> None:
    # Carol promotes herself to owner in her own pull request: the base says she is a developer.
    project = minimal_files["projects/app/project.yaml"].replace(
        "{user: carol, role: developer}", "{user: carol, role: owner}"
    )
    base = _pr(config_repo, minimal_files, {"projects/app/project.yaml": project}, CAROL)
    report = _report(config_repo, base)
    assert [(r.what, list(r.roles)) for r in report.requirements] == [
        ("members changed", ["owner"])
    ]
    assert not report.allowed
    assert "needs owner (has developer)" in report.authors[0].missing[0]


def test_project_settings_change_needs_maintainer(
    config_repo: ConfigRepo, minimal_files: dict[str, str]
) -> None:
    project = minimal_files["projects/app/project.yaml"].replace("LEVEL: project", "LEVEL: changed")
    base = _pr(config_repo, minimal_files, {"projects/app/project.yaml": project}, CAROL)
    report = _report(config_repo, base)
    # A project variable reaches every environment, so both redeploy: prod needs maintainer too.
    assert [(r.env, r.what, list(r.roles)) for r in report.requirements] == [
        (None, "project settings changed", ["owner", "maintainer"]),
        ("dev", "environment settings changed", ["owner", "maintainer", "developer"]),
        ("prod", "environment settings changed", ["owner", "maintainer"]),
    ]
    assert not report.allowed


def test_cli_plan_across_a_pull_request(
    config_repo: ConfigRepo, minimal_files: dict[str, str]
) -> None:
    base = _pr(config_repo, minimal_files, PROD_BUMP, CAROL)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "reconciler",
            "plan",
            "--repo",
            str(config_repo.path),
            "--base",
            base,
            "--format",
            "json",
            "--detailed-exitcode",
            "--no-require-allowed",  # report only; the default check is tested below
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2, out.stderr
    data = json.loads(out.stdout)
    assert data["format_version"] == 1 and data["has_changes"] is True
    assert data["policy"]["allowed"] is False
    assert data["policy"]["requirements"][0]["roles"] == ["owner", "maintainer"]
    md = subprocess.run(
        [
            sys.executable,
            "-m",
            "reconciler",
            "plan",
            "--repo",
            str(config_repo.path),
            "--base",
            base,
            "--format",
            "markdown",
            "--no-require-allowed",
        ],
        capture_output=True,
        text=True,
    )
    assert md.returncode == 0
    assert "| `app/prod` 🔒 | deploy | — | `1.1.0` | rolling | 2 | never deployed |" in md.stdout
    assert "❌" in md.stdout


# -- the merge policy holds (issue 17, item 2) -------------------------------------------


def _plan(repo: ConfigRepo, base: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", "plan", "--repo", str(repo.path), "--base", base]
        + ["--format", "json", *extra],
        capture_output=True,
        text=True,
    )


def test_a_pull_request_making_its_author_admin_needs_an_admin(
    config_repo: ConfigRepo, minimal_files: dict[str, str]
) -> None:
    quicflow = minimal_files["quicflow.yaml"].replace(
        "{username: carol, email: carol@example.com}",
        "{username: carol, email: carol@example.com, is_admin: true}",
    )
    base = _pr(config_repo, minimal_files, {"quicflow.yaml": quicflow}, CAROL)
    report = _report(config_repo, base)
    assert [(r.project, r.what, list(r.roles)) for r in report.requirements] == [
        ("quicflow.yaml", "user carol made admin", ["admin"])
    ]
    assert not report.allowed
    assert report.authors[0].missing == ("quicflow.yaml: user carol made admin needs an admin",)

    out = _plan(config_repo, base)
    assert out.returncode == 3, out.stderr  # the CI line fails
    assert "not allowed: carol: quicflow.yaml: user carol made admin needs an admin" in out.stderr
    assert json.loads(out.stdout)["policy"]["allowed"] is False


@pytest.mark.parametrize(
    ("change", "what"),
    [
        (
            "agents:\n  - {name: web-1, labels: {role: web}}\n  - {name: web-2, labels: {role: web}}\n"
            "  - {name: evil, labels: {role: web}}\n",
            "agents changed",
        ),
        (
            "agents:\n  - {name: web-1, labels: {role: web}}\n  - {name: web-2, labels: {role: web}}\n"
            "settings:\n  push_history: false\n",
            "settings changed",
        ),
    ],
)
def test_agents_and_settings_changes_need_an_admin(
    config_repo: ConfigRepo, minimal_files: dict[str, str], change: str, what: str
) -> None:
    users = minimal_files["quicflow.yaml"].split("agents:")[0]
    base = _pr(config_repo, minimal_files, {"quicflow.yaml": users + change}, BOB)
    report = _report(config_repo, base)
    assert [r.what for r in report.requirements] == [what]
    assert not report.allowed  # bob owns app, but is no admin
    base_alice = git(config_repo.path, "rev-parse", "main")
    config_repo.commit({"quicflow.yaml": users + change + "# by alice\n"}, author=ALICE)
    assert not _report(config_repo, base_alice).allowed  # bob's commit is still in it


def test_an_invalid_base_allows_nobody_rather_than_reading_roles_from_the_change(
    config_repo: ConfigRepo, minimal_files: dict[str, str]
) -> None:
    config_repo.commit(minimal_files, author=ALICE)
    broken = minimal_files["projects/app/project.yaml"].replace("deploy:", "deplyo:")
    config_repo.commit({"projects/app/project.yaml": broken}, author=ALICE)
    base = git(config_repo.path, "rev-parse", "main")
    git(config_repo.path, "checkout", "-q", "-b", "feature")
    # Carol "fixes" main and makes herself owner on the way.
    fixed = minimal_files["projects/app/project.yaml"].replace(
        "{user: carol, role: developer}", "{user: carol, role: owner}"
    )
    config_repo.commit({"projects/app/project.yaml": fixed}, author=CAROL)

    out = _plan(config_repo, base)
    assert out.returncode == 3, out.stderr
    policy_json = json.loads(out.stdout)["policy"]
    assert policy_json["allowed"] is False
    assert "is invalid" in policy_json["problem"] and "nobody is allowed" in policy_json["problem"]


def test_plan_exits_0_when_allowed_and_2_for_changes_with_detailed_exitcode(
    config_repo: ConfigRepo, minimal_files: dict[str, str]
) -> None:
    base = _pr(config_repo, minimal_files, DEV_BUMP, CAROL)
    assert _plan(config_repo, base).returncode == 0
    assert _plan(config_repo, base, "--detailed-exitcode").returncode == 2
    denied = _pr_again(config_repo, PROD_BUMP, CAROL)
    assert _plan(config_repo, denied, "--detailed-exitcode").returncode == 3
    assert _plan(config_repo, denied, "--no-require-allowed").returncode == 0


def _pr_again(repo: ConfigRepo, change: dict[str, str], author: tuple[str, str]) -> str:
    """Another pull request, from main's tip as it is now."""
    git(repo.path, "checkout", "-q", "main")
    git(repo.path, "checkout", "-q", "-b", f"feature-{len(git(repo.path, 'branch').split())}")
    repo.commit(change, message="another pull request", author=author)
    return git(repo.path, "rev-parse", "main")


def test_a_stale_branch_is_judged_from_where_it_forked_with_main_s_roles_now(
    config_repo: ConfigRepo, minimal_files: dict[str, str]
) -> None:
    _pr(config_repo, minimal_files, DEV_BUMP, CAROL)  # carol's branch, from the first commit
    git(config_repo.path, "checkout", "-q", "main")
    config_repo.commit(PROD_BUMP, message="prod 1.1.0", author=BOB)  # main moves on
    git(config_repo.path, "checkout", "-q", "feature")

    # Against main's tip, carol's branch would "undo" prod 1.1.0 and be refused for it.
    report = _policy_of(config_repo, "main")
    assert [r.what for r in report.requirements] == ["version 1.0.0 → 1.1.0"]
    assert [r.env for r in report.requirements] == ["dev"]
    assert report.allowed

    # Roles come from main as it is now: carol demoted there since cannot use her old role.
    git(config_repo.path, "checkout", "-q", "main")
    demoted = minimal_files["projects/app/project.yaml"].replace(
        "{user: carol, role: developer}", "{user: carol, role: viewer}"
    )
    config_repo.commit({"projects/app/project.yaml": demoted}, author=BOB)
    git(config_repo.path, "checkout", "-q", "feature")
    report = _policy_of(config_repo, "main")
    assert not report.allowed
    assert "needs owner or maintainer or developer (has viewer)" in report.authors[0].missing[0]


def _policy_of(repo: ConfigRepo, base: str) -> policy.PolicyReport:
    from reconciler import cli

    git_repo = GitRepository.open(repo.path)
    loader = Loader(git_repo)
    head = loader.load("HEAD")
    return cli._policy_report(git_repo, loader, base, head.commit, head.raise_for_problems())
