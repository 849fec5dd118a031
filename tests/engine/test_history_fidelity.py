"""The reconciler never fights Git: local history survives every fetch, no release twice.

The two ways issue 17 saw one dev release redeployed again and again, reproduced with
real Git repositories, a real ``git daemon`` and a real reconciler running passes:

- ``push_history: false`` (the example's own setting) with a state ref already on
  origin: every poll used to force-fetch origin's state ref over the one recorded here,
  so the planner saw the release as never deployed (8 redeploys in 40 s).
- origin refusing pushes of ``refs/quicflow/*`` (an ``update`` hook, as a Git host that
  protects them): the record made here was overwritten by the next fetch in the same
  way (1,856 redeploys in 2.5 hours), with no warning and ``/readyz`` ready.

Now a fetch integrates origin's history with ours (ours kept when ahead, replayed on top
when both moved), a push that fails is retried at every poll and reported
(``History.status``, the log, ``/readyz``, the ``quicflow_history_*`` metrics), and a release the engine already deployed
is recognised from its own run store even if the state ref lost it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest
from gitdaemon import bare_copy, pushable_daemon, refuse_quicflow_refs
from gitrepos import ConfigRepo, git
from releasing import USERS

from reconciler.api.app import ServerSettings, create_app
from reconciler.engine.reconciling import Reconciler
from reconciler.gitops.history import History, RunOutcome
from reconciler.gitops.loading import Loader
from reconciler.gitops.repository import STATE_REF, GitRepository
from reconciler.metrics import Metrics
from reconciler.runs import RunState

pytestmark = pytest.mark.integration

PROJECT = """\
members:
  - {user: bob, role: owner}
deploy:
  type: script
  timeout: 20s
  script:
    run: echo "$QUICFLOW_VERSION" >> deploys.log
"""
PASSES = 5


def env_yaml(version: str) -> str:
    return f'version: "{version}"\ntargets:\n  - {{local: t1}}\n'


def settings(push_history: bool) -> str:
    return f"settings:\n  push_history: {'true' if push_history else 'false'}\n"


def deploys(data: Path, env: str = "dev") -> list[str]:
    log = data / "targets" / "app" / env / "t1" / "deploys.log"
    return log.read_text().split() if log.exists() else []


def make_origin(tmp_path: Path, push_history: bool) -> tuple[ConfigRepo, Path]:
    """An upstream repo (the engineers' side) and the bare origin the reconciler mirrors."""
    upstream = ConfigRepo(tmp_path / "upstream")
    upstream.commit(
        {
            "quicflow.yaml": USERS + settings(push_history),
            "projects/app/project.yaml": PROJECT,
            "projects/app/environments/dev.yaml": env_yaml("1.0"),
            "projects/app/environments/prod.yaml": env_yaml("1.0"),
        }
    )
    return upstream, bare_copy(upstream.path, tmp_path / "served" / "config.git")


def record_elsewhere(bare: Path, tmp_path: Path, env: str, version: str, run: str) -> None:
    """Another reconciler records ``app/env`` on origin (its own mirror, pushed)."""
    other = GitRepository.open(f"file://{bare}", cache_dir=tmp_path / f"other-{run}")
    desired = Loader(other).load("refs/heads/main").raise_for_problems()
    declared = desired.environment("app", env)
    assert declared is not None
    History(other, push=True).record_run(
        RunOutcome(
            run,
            "app",
            env,
            desired.commit,
            version,
            declared.config_hash,
            "succeeded",
            finished_at="2026-01-01T00:00:00Z",
        )
    )


async def passes(url: str, data: Path, count: int = PASSES) -> list[list[tuple[str, RunState]]]:
    """``count`` reconcile passes of one real reconciler (each pass is one poll)."""
    reconciler = Reconciler(GitRepository.open(url, cache_dir=data / "repos"), data)
    try:
        out = []
        for _ in range(count):
            report = await reconciler.reconcile_once()
            out.append([(f"{r.project}/{r.env}", r.state) for r in report.runs])
        return out
    finally:
        await reconciler.close()


def state_file(repo: Path, env: str, ref: str = STATE_REF) -> dict[str, object]:
    return json.loads(git(repo, "show", f"{ref}:app/{env}.json"))


async def test_push_history_false_with_a_state_ref_on_origin_deploys_once(tmp_path: Path) -> None:
    _, bare = make_origin(tmp_path, push_history=False)
    # Origin already has a state ref: another reconciler recorded prod there earlier.
    record_elsewhere(bare, tmp_path, "prod", "1.0", "r-earlier")
    origin_state = git(bare, "rev-parse", STATE_REF)
    data = tmp_path / "data"

    runs = await passes(f"file://{bare}", data)

    assert deploys(data) == ["1.0"]  # once, not once per poll
    assert deploys(data, "prod") == []  # origin's record of prod is what is deployed there
    assert runs[0] == [("app/dev", RunState.SUCCEEDED)]
    assert all(not found for found in runs[1:])
    mirror = next((data / "repos").glob("*.git"))
    assert state_file(mirror, "dev")["version"] == "1.0"  # our record survived the fetches
    assert state_file(mirror, "prod")["run_id"] == "r-earlier"  # origin's is still read
    assert git(bare, "rev-parse", STATE_REF) == origin_state  # nothing pushed


async def test_origin_moving_on_meanwhile_is_merged_not_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Both histories moved: ours is replayed on origin's, each keeps its records."""
    _, bare = make_origin(tmp_path, push_history=False)
    record_elsewhere(bare, tmp_path, "prod", "1.0", "r-earlier")
    data = tmp_path / "data"
    await passes(f"file://{bare}", data, count=1)
    record_elsewhere(bare, tmp_path, "prod", "1.0", "r-later")  # origin moves on

    with caplog.at_level(logging.WARNING):
        runs = await passes(f"file://{bare}", data, count=3)

    assert deploys(data) == ["1.0"] and runs == [[], [], []]
    mirror = next((data / "repos").glob("*.git"))
    assert state_file(mirror, "dev")["version"] == "1.0"
    assert state_file(mirror, "prod")["run_id"] == "r-later"
    # Ours is on top of origin's: origin's commit is an ancestor of our state ref.
    theirs = git(bare, "rev-parse", STATE_REF)
    git(mirror, "merge-base", "--is-ancestor", theirs, STATE_REF)
    assert "diverged" in caplog.text and "nothing of either was lost" in caplog.text


async def test_origin_refusing_pushes_of_quicflow_refs_deploys_once_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, bare = make_origin(tmp_path, push_history=True)
    refuse_quicflow_refs(bare)
    data = tmp_path / "data"
    with pushable_daemon(bare.parent) as served:
        url = f"{served}/config.git"
        reconciler = Reconciler(GitRepository.open(url, cache_dir=data / "repos"), data)
        try:
            with caplog.at_level(logging.WARNING):
                for _ in range(PASSES):
                    await reconciler.reconcile_once()
            assert deploys(data) == ["1.0"]
            assert deploys(data, "prod") == ["1.0"]
            status = reconciler.history.status()
            assert not status.healthy
            assert status.unpushed == 2  # dev and prod, recorded here only
            assert status.failed_pushes >= PASSES  # retried at every poll
            assert "hook declined" in (status.push_error or "")
            assert "not pushed" in caplog.text and "hook declined" in caplog.text
            assert "refs/quicflow/state" not in git(bare, "for-each-ref")
            scraped = Metrics(reconciler).render().decode()
            assert "quicflow_history_unpushed_commits 2.0" in scraped
            assert f"quicflow_history_push_failures {float(status.failed_pushes)}" in scraped

            app = create_app(reconciler, ServerSettings(database=reconciler.db))
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://qf") as client:
                ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["status"] == "degraded"
            assert "not pushed to origin" in ready.json()["reason"]
            assert ready.json()["history"]["unpushed"] == 2

            # The host lets refs/quicflow/* through again: the next poll pushes what waited.
            refuse_quicflow_refs(bare, refuse=False)
            await reconciler.reconcile_once()
            assert reconciler.history.status().healthy
            assert "quicflow_history_unpushed_commits 0.0" in Metrics(reconciler).render().decode()
            assert state_file(bare, "dev")["version"] == "1.0"
            assert state_file(bare, "prod")["version"] == "1.0"
            async with httpx.AsyncClient(transport=transport, base_url="http://qf") as client:
                assert (await client.get("/readyz")).json()["status"] == "ready"
            assert deploys(data) == ["1.0"]
        finally:
            await reconciler.close()


async def test_a_release_the_state_ref_lost_is_recognised_not_repeated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The state ref loses our record (deleted by hand, a mirror wiped): the engine's own
    run store says it deployed that very release, so it records it again instead of
    deploying it again."""
    repo = ConfigRepo(tmp_path / "config")
    repo.commit(
        {
            "quicflow.yaml": USERS,
            "projects/app/project.yaml": PROJECT,
            "projects/app/environments/dev.yaml": env_yaml("1.0"),
        }
    )
    data = tmp_path / "data"
    await passes(str(repo.path), data, count=1)
    git(repo.path, "update-ref", "-d", STATE_REF)

    with caplog.at_level(logging.WARNING):
        runs = await passes(str(repo.path), data, count=3)

    assert deploys(data) == ["1.0"] and runs == [[], [], []]
    record = state_file(repo.path, "dev")
    assert record["version"] == "1.0"
    assert "already deployed" in caplog.text
    # A new version is deployed as usual.
    repo.commit({"projects/app/environments/dev.yaml": env_yaml("1.1")})
    await passes(str(repo.path), data, count=2)
    assert deploys(data) == ["1.0", "1.1"]
