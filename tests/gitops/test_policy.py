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
        ],
        capture_output=True,
        text=True,
    )
    assert md.returncode == 0
    assert "| `app/prod` 🔒 | deploy | — | `1.1.0` | rolling | 2 | never deployed |" in md.stdout
    assert "❌" in md.stdout
