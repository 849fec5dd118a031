"""The git_pull plan: argv steps, never a shell string built from request values."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import git_pulling
from agent.protocol import GitPullRequest


def test_fresh_directory_is_initialised_then_fetched_and_checked_out(tmp_path: Path) -> None:
    request = GitPullRequest(
        "c", "https://git.example/app.git", "v1", "app", "systemctl restart app"
    )
    steps = git_pulling.steps(request, tmp_path)
    target = str(tmp_path / "app")
    assert [s.argv[:4] for s in steps] == [
        ("git", "init", "--quiet", "--"),
        ("git", "-C", target, "fetch"),
        ("git", "-C", target, "checkout"),
        ("git", "-C", target, "rev-parse"),
        ("/bin/sh", "-c", "systemctl restart app"),
    ]
    assert steps[1].argv[-2:] == ("https://git.example/app.git", "v1")
    assert steps[-1].cwd == target


def test_existing_checkout_skips_init_and_no_restart_without_script(tmp_path: Path) -> None:
    (tmp_path / "app" / ".git").mkdir(parents=True)
    steps = git_pulling.steps(
        GitPullRequest("c", "/srv/repo", "main", str(tmp_path / "app")), tmp_path
    )
    assert [s.argv[3] for s in steps] == ["fetch", "checkout", "rev-parse"]


@pytest.mark.parametrize("field", ["repo_url", "ref"])
def test_values_that_git_would_read_as_options_are_refused(tmp_path: Path, field: str) -> None:
    values = {"repo_url": "/srv/repo", "ref": "main", field: "--upload-pack=evil"}
    with pytest.raises(ValueError, match="must not start with '-'"):
        git_pulling.steps(GitPullRequest("c", directory="app", **values), tmp_path)


def test_displayed_command_hides_credentials_in_urls() -> None:
    step = git_pulling.Step(("git", "fetch", "https://user:s3cret@git.example/app.git", "v1"))
    assert step.display() == "git fetch https://***@git.example/app.git v1"
