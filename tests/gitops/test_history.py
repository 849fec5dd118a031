"""History in Git: state ref and notes, written, read back, pushed and fetched by a clone."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from gitrepos import ConfigRepo, git

from reconciler.gitops import planning
from reconciler.gitops.history import History, RunOutcome
from reconciler.gitops.loading import Loader
from reconciler.gitops.repository import GitRepository


def _outcome(
    commit: str, version: str, outcome: str = "succeeded", run: str = "r-1", **kw: object
) -> RunOutcome:
    return RunOutcome(
        run_id=run,
        project="app",
        env="dev",
        config_commit=commit,
        version=version,
        config_hash=str(kw.pop("config_hash", "h")),
        outcome=outcome,
        strategy="rolling",
        trigger="poll",
        started_at="2026-11-29T10:00:00Z",
        finished_at="2026-11-29T10:01:00Z",
        targets=("local:dev-1",),
        **kw,
    )  # type: ignore[arg-type]


def test_state_ref_and_note_round_trip(
    config_repo: ConfigRepo, minimal_files: dict[str, str]
) -> None:
    commit = config_repo.commit(minimal_files)
    history = History(GitRepository.open(config_repo.path))
    assert history.deployed() == (None, {})
    state = history.record_run(_outcome(commit, "1.0.0"))

    _, records = History(GitRepository.open(config_repo.path)).deployed()
    record = records[("app", "dev")]
    assert (record.version, record.config_commit, record.run_id, record.outcome) == (
        "1.0.0",
        commit,
        "r-1",
        "succeeded",
    )
    # Plain git sees both: the state file on the ref and the note on the config commit.
    data = json.loads(git(config_repo.path, "show", f"{state}:app/dev.json"))
    assert data["version"] == "1.0.0" and data["format"] == 1
    note = git(config_repo.path, "notes", "--ref=quicflow", "show", commit)
    assert note == (
        "quicflow run r-1: app/dev nothing -> 1.0.0 succeeded at 2026-11-29T10:01:00Z "
        "(rolling; 1 target; trigger poll)"
    )
    assert "app/dev: nothing -> 1.0.0 succeeded" in git(
        config_repo.path, "log", "--format=%s", "refs/quicflow/state"
    )


def test_a_failed_run_never_claims_its_version(
    config_repo: ConfigRepo, minimal_files: dict[str, str]
) -> None:
    commit = config_repo.commit(minimal_files)
    history = History(GitRepository.open(config_repo.path))
    history.record_run(_outcome(commit, "1.0.0"))
    history.record_run(
        _outcome(
            commit,
            "1.1.0",
            outcome="rolled_back",
            run="r-2",
            config_hash="h2",
            error="health check failed on dev-1",
        )
    )
    record = history.record("app", "dev")
    assert record is not None
    assert record.version == "1.0.0" and record.run_id == "r-1"
    assert record.last_failure == planning.Attempt("1.1.0", "h2", "rolled_back", "r-2")
    lines = git(config_repo.path, "notes", "--ref=quicflow", "show", commit).splitlines()
    assert (
        len(lines) == 2
        and "1.0.0 -> 1.1.0 rolled_back" in lines[1]
        and "health check failed" in lines[1]
    )
    # A later success clears the failure.
    history.record_run(_outcome(commit, "1.2.0", run="r-3"))
    record = history.record("app", "dev")
    assert record is not None and record.version == "1.2.0" and record.last_failure is None


def test_history_lists_changes_newest_first(
    config_repo: ConfigRepo, minimal_files: dict[str, str]
) -> None:
    commit = config_repo.commit(minimal_files)
    history = History(GitRepository.open(config_repo.path))
    for i, version in enumerate(["1.0.0", "1.1.0", "1.2.0"]):
        history.record_run(_outcome(commit, version, run=f"r-{i}"))
    history.record_run(RunOutcome("r-x", "app", "prod", commit, "9.9.9", "h", "succeeded"))
    entries = list(history.entries("app", "dev"))
    assert [e.record.version for e in entries if e.record] == ["1.2.0", "1.1.0", "1.0.0"]
    assert [e.record.version for e in history.entries("app", "prod") if e.record] == ["9.9.9"]


def test_subdirectory_config_keeps_its_state_under_its_path(
    tmp_path: Path, minimal_files: dict[str, str]
) -> None:
    repo = ConfigRepo(tmp_path / "mono")
    commit = repo.commit({f"ops/{k}": v for k, v in minimal_files.items()})
    history = History(GitRepository.open(repo.path / "ops"))
    state = history.record_run(_outcome(commit, "1.0.0"))
    assert json.loads(git(repo.path, "show", f"{state}:ops/app/dev.json"))["version"] == "1.0.0"
    assert history.record("app", "dev") is not None


def test_pushed_history_is_seen_by_a_clone(tmp_path: Path, minimal_files: dict[str, str]) -> None:
    """The reconciler pushes state and notes; an engineer's fresh clone fetches them explicitly."""
    upstream = ConfigRepo(tmp_path / "upstream")
    commit = upstream.commit(minimal_files)
    bare = tmp_path / "remote.git"
    git(tmp_path, "clone", "-q", "--bare", str(upstream.path), str(bare))

    reconciler_side = GitRepository.open(f"file://{bare}", cache_dir=tmp_path / "cache")
    History(reconciler_side, push=True).record_run(_outcome(commit, "1.0.0"))

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(bare), str(clone))
    # A plain clone does not carry our refs...
    assert (
        subprocess.run(
            ["git", "-C", str(clone), "rev-parse", "-q", "--verify", "refs/quicflow/state"],
            capture_output=True,
        ).returncode
        != 0
    )
    # ...so every reader fetches them explicitly.
    engineer = GitRepository.open(clone)
    engineer.fetch()
    _, deployed = History(engineer).deployed()
    assert deployed[("app", "dev")].version == "1.0.0"
    assert "1.0.0 succeeded" in (engineer.read_note(commit) or "")
    desired = Loader(engineer).load().raise_for_problems()
    plan = planning.plan(desired, deployed)
    assert {a.key: a.reason.value for a in plan.actions} == {
        "app/dev": "config_changed",
        "app/prod": "never_deployed",
    }


def test_a_failed_push_keeps_the_local_record_and_says_so(
    tmp_path: Path, minimal_files: dict[str, str]
) -> None:
    upstream = ConfigRepo(tmp_path / "upstream")
    upstream.commit(minimal_files)
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(upstream.path), str(clone))  # origin is a non-bare repo
    history = History(GitRepository.open(clone), push=True)
    commit = git(clone, "rev-parse", "HEAD")
    history.record_run(_outcome(commit, "1.0.0"))
    assert history.push_error is not None and "push" in history.push_error
    assert history.record("app", "dev").version == "1.0.0"  # type: ignore[union-attr]
    assert "1.0.0 succeeded" in (history.note(commit) or "")
