"""The quicflow command line as CI jobs and people use it: exit codes, formats, scaffold."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from gitrepos import ConfigRepo

from reconciler.gitops.history import History, RunOutcome
from reconciler.gitops.repository import GitRepository


def quicflow(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args], cwd=cwd, capture_output=True, text=True
    )


def test_init_scaffolds_a_valid_repo_that_plans(tmp_path: Path) -> None:
    out = quicflow("init", str(tmp_path / "new"))
    assert out.returncode == 0, out.stderr
    assert "committed the scaffold" in out.stdout
    assert quicflow("validate", "--repo", str(tmp_path / "new")).returncode == 0
    plan = quicflow("plan", "--repo", str(tmp_path / "new"), "--detailed-exitcode")
    assert plan.returncode == 2
    assert "~ hello/prod [protected]: deploy (nothing) → 0.1.0" in plan.stdout
    again = quicflow("init", str(tmp_path / "new"))
    assert again.returncode != 0 and "not empty" in again.stderr


def test_validate_inside_a_subdirectory_of_this_project() -> None:
    """`quicflow validate --repo examples/config-repo` works in the project's own clone."""
    root = Path(__file__).resolve().parents[1]
    out = quicflow("validate", "--repo", "examples/config-repo", cwd=root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("valid: 4 projects, 13 environments")


def test_plan_exit_codes_and_history(
    config_repo: ConfigRepo, minimal_files: dict[str, str]
) -> None:
    commit = config_repo.commit(minimal_files)
    repo = str(config_repo.path)
    assert quicflow("plan", "--repo", repo, "--detailed-exitcode").returncode == 2
    history = History(GitRepository.open(config_repo.path))
    for env in ("dev", "prod"):
        desired_hash = json.loads(quicflow("plan", "--repo", repo, "--format", "json").stdout)
        action = next(a for a in desired_hash["actions"] if a["environment"] == env)
        history.record_run(
            RunOutcome(
                f"r-{env}",
                "app",
                env,
                commit,
                "1.0.0",
                action["config_hash"],
                "succeeded",
                strategy="rolling",
                finished_at="2026-11-29T10:00:00Z",
            )
        )
    unchanged = quicflow("plan", "--repo", repo, "--detailed-exitcode")
    assert unchanged.returncode == 0, unchanged.stdout
    assert "no changes" in unchanged.stdout

    hist = quicflow("history", "app", "prod", "--repo", repo, "--format", "json")
    entries = json.loads(hist.stdout)["entries"]
    assert [(e["version"], e["outcome"], e["config_commit"]) for e in entries] == [
        ("1.0.0", "succeeded", commit)
    ]
    assert (
        "app/prod: nothing -> 1.0.0 succeeded"
        in quicflow("history", "app", "prod", "--repo", repo).stdout
    )

    config_repo.commit({"projects/app/environments/prod.yaml": "version: [\n"})
    broken = quicflow("plan", "--repo", repo, "--detailed-exitcode")
    assert broken.returncode == 1
    assert "projects/app/environments/prod.yaml:2:1: YAML syntax error" in broken.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert quicflow("validate", "--no-such-option").returncode == 2
    assert quicflow("plan", "--format", "xml").returncode == 2
