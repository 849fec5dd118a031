"""Our refs move by compare-and-set, here and on origin: no writer overwrites another's.

Two reconcilers on one config repo (one local repository, or one origin with a mirror
each) record runs and claim environments at the same time. A write built on a state
that moved is refused and rebuilt on the new one; a push origin refuses is never
forced, and a refusal that keeps coming is reported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from gitrepos import ROOT, ConfigRepo, git

from reconciler.gitops.claims import Claim, Claims
from reconciler.gitops.history import History, RunOutcome
from reconciler.gitops.repository import STATE_REF, GitRepository, PushRejected, RefMoved


def _outcome(commit: str, env: str, version: str, run: str) -> RunOutcome:
    return RunOutcome(
        run_id=run,
        project="app",
        env=env,
        config_commit=commit,
        version=version,
        config_hash="h",
        outcome="succeeded",
        strategy="rolling",
        finished_at="2026-11-29T10:01:00Z",
    )


def _state_file(repo: Path, env: str, ref: str = STATE_REF) -> dict:
    return json.loads(git(repo, "show", f"{ref}:app/{env}.json"))


def test_a_write_built_on_a_state_that_moved_is_refused(
    config_repo: ConfigRepo, minimal_files: dict[str, str]
) -> None:
    commit = config_repo.commit(minimal_files)
    first = GitRepository.open(config_repo.path)
    second = GitRepository.open(config_repo.path)
    History(first).record_run(_outcome(commit, "dev", "1.0.0", "r-1"))
    stale = first.ref_target(STATE_REF)
    History(second).record_run(_outcome(commit, "prod", "1.0.0", "r-2"))
    moved = first.ref_target(STATE_REF)
    assert moved != stale

    with pytest.raises(RefMoved, match="another writer"):
        first.commit_files(STATE_REF, {"app/dev.json": b"{}\n"}, "stale write", base=stale)
    assert first.ref_target(STATE_REF) == moved  # nothing changed
    # Creating a ref that exists already is refused just the same.
    with pytest.raises(RefMoved):
        first.commit_files(STATE_REF, {"app/dev.json": b"{}\n"}, "as if new", base=None)
    assert first.ref_target(STATE_REF) == moved


def test_history_rebuilds_a_batch_on_a_state_another_writer_moved(
    config_repo: ConfigRepo, minimal_files: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other writer lands between our read of the state ref and our move of it."""
    commit = config_repo.commit(minimal_files)
    mine = History(GitRepository.open(config_repo.path))
    theirs = History(GitRepository.open(config_repo.path))
    move_ref = mine.repo.move_ref
    moves: list[str | None] = []

    def race_then_move(ref: str, new: str, expected: str | None) -> None:
        if not moves:
            theirs.record_run(_outcome(commit, "prod", "7.0.0", "r-theirs"))
        moves.append(expected)
        move_ref(ref, new, expected)

    monkeypatch.setattr(mine.repo, "move_ref", race_then_move)
    mine.record_run(_outcome(commit, "dev", "1.0.0", "r-mine"))

    assert len(moves) == 2  # refused once, rebuilt on their state, then moved
    assert _state_file(config_repo.path, "prod")["run_id"] == "r-theirs"
    assert _state_file(config_repo.path, "dev")["run_id"] == "r-mine"
    log = git(config_repo.path, "log", "--format=%s", STATE_REF).splitlines()
    assert log == ["app/dev: nothing -> 1.0.0 succeeded", "app/prod: nothing -> 7.0.0 succeeded"]


WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {root!r})
    from reconciler.gitops.history import History, RunOutcome
    from reconciler.gitops.repository import GitRepository

    env, count, commit = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    history = History(GitRepository.open({repo!r}))
    for i in range(count):
        history.record_run(RunOutcome(f"{{env}}-{{i}}", "app", env, commit, f"1.{{i}}", "h",
                                      "succeeded"))
    """
)


def test_two_processes_recording_at_once_lose_no_record(
    config_repo: ConfigRepo, minimal_files: dict[str, str]
) -> None:
    """Two reconcilers on one repository record many runs at the same time: every one of
    them is a state commit and a line of the note (before compare-and-set, the later ref
    update dropped the other's commit now and then)."""
    commit = config_repo.commit(minimal_files)
    script = WRITER.format(root=str(ROOT), repo=str(config_repo.path))
    count = 40
    writers = [
        subprocess.Popen([sys.executable, "-c", script, env, str(count), commit])
        for env in ("dev", "prod")
    ]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    subjects = git(config_repo.path, "log", "--format=%s", STATE_REF).splitlines()
    for env in ("dev", "prod"):
        mine = [s for s in subjects if s.startswith(f"app/{env}:")]
        assert len(mine) == count, (env, len(mine))
        assert _state_file(config_repo.path, env)["version"] == f"1.{count - 1}"
    note = git(config_repo.path, "notes", "--ref=quicflow", "show", commit).splitlines()
    assert len(note) == 2 * count


def _origin(tmp_path: Path, files: dict[str, str]) -> tuple[Path, str]:
    upstream = ConfigRepo(tmp_path / "upstream")
    commit = upstream.commit(files)
    bare = tmp_path / "origin.git"
    git(tmp_path, "clone", "-q", "--bare", str(upstream.path), str(bare))
    return bare, commit


def test_a_push_that_lost_the_race_is_rebuilt_on_origin_and_never_forced(
    tmp_path: Path, minimal_files: dict[str, str]
) -> None:
    bare, commit = _origin(tmp_path, minimal_files)
    a = GitRepository.open(f"file://{bare}", cache_dir=tmp_path / "a")
    b = GitRepository.open(f"file://{bare}", cache_dir=tmp_path / "b")  # fetched now: no state
    History(a, push=True).record_run(_outcome(commit, "dev", "1.0.0", "r-a"))
    # b's local state is behind origin's; a plain push of b's ref would be refused...
    b_history = History(b, push=True)
    b_history.record_run(_outcome(commit, "prod", "2.0.0", "r-b"))
    # ...so b took origin's history and recorded on top of it: a's record is still there.
    assert b_history.push_error is None
    assert _state_file(bare, "dev")["run_id"] == "r-a"
    assert _state_file(bare, "prod")["run_id"] == "r-b"
    notes = git(bare, "notes", "--ref=quicflow", "show", commit)
    assert "run r-a" in notes and "run r-b" in notes


def test_a_push_origin_keeps_refusing_is_reported_and_origin_is_untouched(
    tmp_path: Path, minimal_files: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Origin's state moves again every time we fetched it (a busy second reconciler)."""
    bare, commit = _origin(tmp_path, minimal_files)
    busy = History(GitRepository.open(f"file://{bare}", cache_dir=tmp_path / "busy"), push=True)
    mine = GitRepository.open(f"file://{bare}", cache_dir=tmp_path / "mine")
    fetch_history = mine.fetch_history
    theirs: list[str] = []

    def fetch_then_origin_moves() -> None:
        fetch_history()
        theirs.append(f"r-busy-{len(theirs)}")
        busy.repo.fetch_history()
        busy.record_run(_outcome(commit, "prod", f"3.{len(theirs)}", theirs[-1]))

    monkeypatch.setattr(mine, "fetch_history", fetch_then_origin_moves)
    busy.record_run(_outcome(commit, "prod", "3.0", "r-busy-first"))  # mine has not seen it
    history = History(mine, push=True)
    history.record_run(_outcome(commit, "dev", "1.0.0", "r-mine"))

    assert history.push_error is not None and "refused" in history.push_error
    assert "not overwritten" in history.push_error
    assert len(theirs) == 5  # rebuilt on origin's new state each time, then gave up
    # Origin has every record of the other writer and none of ours; ours is kept locally.
    assert _state_file(bare, "prod")["run_id"] == theirs[-1]
    subjects = git(bare, "log", "--format=%s", STATE_REF).splitlines()
    assert len(subjects) == 6 and not any(s.startswith("app/dev") for s in subjects)
    assert history.record("app", "dev").run_id == "r-mine"  # type: ignore[union-attr]


def test_push_refs_refuses_a_ref_origin_moved_on(
    tmp_path: Path, minimal_files: dict[str, str]
) -> None:
    bare, _ = _origin(tmp_path, minimal_files)
    a = GitRepository.open(f"file://{bare}", cache_dir=tmp_path / "a")
    b = GitRepository.open(f"file://{bare}", cache_dir=tmp_path / "b")
    ref = "refs/quicflow/claims/app/prod"
    a.commit_files(ref, {"claim.json": b"a\n"}, "a claims")
    a.push_refs([ref])
    b.commit_files(ref, {"claim.json": b"b\n"}, "b claims")  # b never saw a's claim
    with pytest.raises(PushRejected):
        b.push_refs([ref])
    assert git(bare, "show", f"{ref}:claim.json") == "a"


def _claim(run: str, owner: str = "host:1:1") -> Claim:
    return Claim("app", "prod", run, owner, "2026-11-29T10:00:00Z", "2026-11-29T10:02:00Z")


def test_of_two_claims_built_on_the_same_read_exactly_one_wins(
    tmp_path: Path, minimal_files: dict[str, str]
) -> None:
    """Locally (one repository) and through origin (a mirror each)."""
    repo = ConfigRepo(tmp_path / "local")
    repo.commit(minimal_files)
    here, there = Claims(GitRepository.open(repo.path)), Claims(GitRepository.open(repo.path))
    base, found = here.read("app", "prod")
    assert (base, found) == (None, None)
    first = here.write(_claim("r-1"), base, "claim")
    second = there.write(_claim("r-2"), base, "claim")
    assert first.won and not second.won and second.contended
    assert here.read("app", "prod")[1] == _claim("r-1")

    bare, _ = _origin(tmp_path, minimal_files)
    mirrors = [
        Claims(GitRepository.open(f"file://{bare}", cache_dir=tmp_path / n), shared=lambda: True)
        for n in ("a", "b")
    ]
    reads = [m.read("app", "prod")[0] for m in mirrors]
    results = [
        m.write(_claim(f"r-{n}"), base, "claim")
        for m, base, n in zip(mirrors, reads, "ab", strict=True)
    ]
    assert [r.won for r in results] == [True, False] and results[1].contended
    assert (
        json.loads(git(bare, "show", "refs/quicflow/claims/app/prod:claim.json"))["run_id"] == "r-a"
    )
    # The loser fetches and sees the winner's claim.
    mirrors[1].fetch()
    assert mirrors[1].read("app", "prod")[1] == _claim("r-a")
