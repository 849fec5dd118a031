"""``settings.enforce_policy``: the reconciler refuses, on main, what the policy check refuses.

A real config repo and a real reconciler. ``quicflow plan --base`` in CI can be skipped
or ignored; with ``enforce_policy: true`` the reconciler judges each new commit on the
branch itself, against the commit in force, and keeps the last accepted one in force
when an author may not make the change — reported like an invalid commit. Version
bumps the reconciler commits itself (after its own permission check) pass, and an admin
can accept a refused change with a ``Quicflow-Policy: accept`` commit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from gitrepos import ConfigRepo
from releasing import USERS

from reconciler.engine.reconciling import Reconciler
from reconciler.gitops.repository import GitRepository
from reconciler.runs import RunState, Trigger

pytestmark = pytest.mark.integration

ALICE = ("Alice Admin", "alice@example.com")
BOB = ("Bob Owner", "bob@example.com")
DAVE = ("Dave Viewer", "dave@example.com")
CAROL = ("Carol Dev", "carol@example.com")
ENV = "projects/app/environments/dev.yaml"
PROJECT = """\
members:
  - {user: bob, role: owner}
  - {user: carol, role: developer}
  - {user: dave, role: viewer}
deploy:
  type: script
  timeout: 20s
  script:
    run: echo "$QUICFLOW_VERSION" >> deploys.log
"""


def env_yaml(version: str) -> str:
    return f'version: "{version}"\ntargets:\n  - {{local: t1}}\n'


def deploys(data: Path) -> list[str]:
    log = data / "targets" / "app" / "dev" / "t1" / "deploys.log"
    return log.read_text().split() if log.exists() else []


async def test_commits_the_policy_refuses_are_not_deployed(tmp_path: Path) -> None:
    repo = ConfigRepo(tmp_path / "config")
    repo.commit(
        {
            "quicflow.yaml": USERS + "settings:\n  enforce_policy: true\n",
            "projects/app/project.yaml": PROJECT,
            ENV: env_yaml("1.0"),
        },
        author=ALICE,
    )
    data = tmp_path / "data"
    reconciler = Reconciler(GitRepository.open(repo.path), data)
    try:
        await reconciler.reconcile_once()
        assert deploys(data) == ["1.0"]

        # A viewer pushes a release straight to main: refused, 1.0 stays in force.
        refused = repo.commit({ENV: env_yaml("1.1")}, author=DAVE)
        report = await reconciler.reconcile_once()
        assert deploys(data) == ["1.0"] and report.runs == []
        (problem,) = report.problems
        assert problem.path == "settings.enforce_policy"
        assert f"commit {refused[:10]} is refused" in problem.message
        assert "Dave Viewer <dave@example.com> (no user with this email)" not in problem.message
        assert "dave: app/dev: version 1.0 → 1.1 needs owner" in problem.message
        assert reconciler.desired is not None and reconciler.desired.commit != refused

        # A developer's commit on top does not launder the viewer's.
        repo.commit({ENV: env_yaml("1.2")}, author=CAROL)
        report = await reconciler.reconcile_once()
        assert deploys(data) == ["1.0"] and len(report.problems) == 1

        # An admin accepts the change: it goes out.
        repo.commit(message="accept dev 1.2\n\nQuicflow-Policy: accept", author=ALICE)
        report = await reconciler.reconcile_once()
        assert report.problems == ()
        assert deploys(data) == ["1.0", "1.2"]

        # A deploy the reconciler commits itself (after its own permission check) passes.
        bob = reconciler.desired.users["bob"]
        run = await reconciler.deploy("app", "dev", "2.0", actor=bob, trigger=Trigger.MANUAL)
        await reconciler.wait_idle()
        assert reconciler.runs.get(run.id).state is RunState.SUCCEEDED  # type: ignore[union-attr]
        report = await reconciler.reconcile_once()
        assert report.problems == ()
        assert deploys(data) == ["1.0", "1.2", "2.0"]
    finally:
        await reconciler.close()
