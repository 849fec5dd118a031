"""Who is typing: ``quicflow approve|reject|promote|rollback`` act as a proven identity.

Real ``python -m reconciler`` processes on a real config repo and data dir. A release of
``app/prod`` waits at an owner approval (made with ``quicflow apply``). From the command
line a decision is taken either as the owner of an API token (``--token-file`` or
``QUICFLOW_API_TOKEN``, with that user's role) or, without a token, as the local
administrator, recorded as ``local:<os user>@<host>``. ``--as`` alone proves nothing
and is refused; a token of someone else, a revoked token, or a viewer's token are refused
and record nothing.
"""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from gitrepos import ROOT, ConfigRepo, git
from releasing import USERS

from reconciler.runs import RunState
from reconciler.store.database import Database
from reconciler.store.runs import RunStore

pytestmark = pytest.mark.integration

ENV_FILE = "projects/app/environments/prod.yaml"
PROJECT = """\
members:
  - {user: bob, role: owner}
  - {user: dave, role: viewer}
deploy:
  type: script
  timeout: 20s
  script:
    run: echo "$QUICFLOW_VERSION" >> deploys.log
pipeline:
  stages:
    - name: release
      approval: {roles: [owner]}
      tasks:
        - {name: deploy, uses: deploy}
"""
LOCAL_ADMIN = f"local:{getpass.getuser()}@{socket.gethostname()}"


def env_yaml(version: str) -> str:
    return f'version: "{version}"\ntargets:\n  - {{local: t1}}\n'


class World:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.repo = ConfigRepo(tmp / "config")
        self.data = tmp / "data"

    def cli(
        self, *args: str, env: dict[str, str] | None = None, repo: bool = True
    ) -> subprocess.CompletedProcess[str]:
        where = ["--repo", str(self.repo.path)] if repo else []
        return subprocess.run(
            [sys.executable, "-m", "reconciler", *args, *where, "--data", str(self.data)],
            cwd=self.tmp,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            capture_output=True,
            text=True,
            timeout=60,
        )

    def token(self, user: str) -> str:
        made = self.cli("token", "create", user)
        assert made.returncode == 0, made.stderr
        return made.stdout.strip()

    def token_file(self, user: str) -> str:
        path = self.tmp / f"{user}.token"
        path.write_text(self.token(user) + "\n")
        return str(path)

    def waiting_run(self) -> str:
        """Release 2.0 and leave it waiting for its approval; its id."""
        self.repo.commit({ENV_FILE: env_yaml("2.0")}, message="release 2.0")
        waiting = self.cli("apply")
        assert waiting.returncode == 0, waiting.stdout + waiting.stderr
        (run,) = [r for r in self.runs() if r.version == "2.0"]
        assert run.state is RunState.WAITING_APPROVAL
        return run.id

    def runs(self):  # type: ignore[no-untyped-def]
        db = Database.open(self.data)
        try:
            return RunStore(db).list("app", "prod", limit=20)[0]
        finally:
            db.close()

    def decisions(self, run_id: str):  # type: ignore[no-untyped-def]
        db = Database.open(self.data)
        try:
            return RunStore(db).decisions(run_id)
        finally:
            db.close()

    def deploys(self) -> list[str]:
        log = self.data / "targets" / "app" / "prod" / "t1" / "deploys.log"
        return log.read_text().split() if log.exists() else []


@pytest.fixture
def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    w.repo.commit(
        {"quicflow.yaml": USERS, "projects/app/project.yaml": PROJECT, ENV_FILE: env_yaml("1.0")}
    )
    w.cli("apply")  # 1.0 waits for its approval too
    (first,) = w.runs()
    approved = w.cli("approve", first.id, "--token-file", w.token_file("bob"))
    assert approved.returncode == 0, approved.stderr
    done = w.cli("apply")
    assert done.returncode == 0, done.stdout + done.stderr
    assert w.deploys() == ["1.0"]
    return w


def test_a_name_alone_is_no_identity(world: World) -> None:
    run_id = world.waiting_run()
    refused = world.cli("approve", run_id, "--as", "bob")
    assert refused.returncode == 1
    assert "--as bob needs bob's API token (--token-file FILE or QUICFLOW_API_TOKEN)" in (
        refused.stderr
    )
    assert world.decisions(run_id) == []


def test_a_token_decides_with_its_owners_role(world: World) -> None:
    run_id = world.waiting_run()
    viewer = world.cli("approve", run_id, "--token-file", world.token_file("dave"))
    assert viewer.returncode == 1
    assert "dave (viewer) may not approve" in viewer.stderr, viewer.stderr
    mismatch = world.cli("approve", run_id, "--as", "bob", "--token-file", world.token_file("dave"))
    assert mismatch.returncode == 1
    assert "--as bob: the API token from" in mismatch.stderr and "is dave's" in mismatch.stderr
    assert world.decisions(run_id) == []

    approved = world.cli(
        "approve", run_id, "--comment", "looks good", env={"QUICFLOW_API_TOKEN": world.token("bob")}
    )
    assert approved.returncode == 0, approved.stderr
    assert f"approved {run_id} (app/prod 2.0) as bob" in approved.stdout
    (decision,) = world.decisions(run_id)
    assert (decision.user, decision.comment) == ("bob", "looks good")
    assert world.cli("apply").returncode == 0
    assert world.deploys() == ["1.0", "2.0"]


def test_a_revoked_token_is_refused(world: World) -> None:
    run_id = world.waiting_run()
    token = world.token("bob")
    assert world.cli("token", "revoke", token, repo=False).returncode == 0
    refused = world.cli("reject", run_id, env={"QUICFLOW_API_TOKEN": token})
    assert refused.returncode == 1
    assert "the API token from QUICFLOW_API_TOKEN is not valid here" in refused.stderr
    assert token not in refused.stderr + refused.stdout  # never echoed
    assert world.decisions(run_id) == []


def test_without_a_token_it_is_the_local_administrator_and_says_so(world: World) -> None:
    run_id = world.waiting_run()
    approved = world.cli("approve", run_id, "--comment", "on call")
    assert approved.returncode == 0, approved.stderr
    assert f"as {LOCAL_ADMIN} (local administrator)" in approved.stdout
    (decision,) = world.decisions(run_id)
    assert (decision.user, decision.approved, decision.comment) == (LOCAL_ADMIN, True, "on call")
    assert world.cli("apply").returncode == 0
    assert world.deploys() == ["1.0", "2.0"]

    # A rollback is asked by someone too: the revert commit names the local administrator.
    rolled = world.cli("rollback", "app", "prod")
    assert rolled.returncode == 0, rolled.stderr
    message = git(world.repo.path, "log", "-1", "--format=%B", "main")
    assert f"Requested by {LOCAL_ADMIN}" in message, message
