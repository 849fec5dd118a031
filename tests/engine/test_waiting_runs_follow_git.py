"""Waiting runs follow Git: a run that waits for a person ends when Git moves on.

A real config repo and the real engine over two local script targets. A release waits
at its approval, or — a manual canary — at its promote with the canary target already
on the new version. When the environment's version in Git changes meanwhile (a revert,
a newer release), the waiting run is superseded at the next pass: a late approval or
promote then deploys nothing, and a canary target is put back on the version Git names.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from gitrepos import ConfigRepo
from releasing import USERS

from reconciler.engine.reconciling import Reconciler
from reconciler.errors import QuicFlowError
from reconciler.gitops.planning import ActionKind
from reconciler.gitops.repository import GitRepository
from reconciler.runs import Run, RunState

pytestmark = pytest.mark.integration

ENV_FILE = "projects/app/environments/prod.yaml"
APPROVAL = """\
pipeline:
  stages:
    - name: release
      approval: {roles: [owner]}
      tasks:
        - {name: deploy, uses: deploy}
"""
CANARY = """\
strategy:
  type: canary
  canary: {steps: [50, 100], analysis: {window: 0s}, promotion: manual}
"""


def project_yaml(extra: str) -> str:
    return f"""\
members:
  - {{user: bob, role: owner}}
deploy:
  type: script
  timeout: 20s
  script:
    run: |
      echo "$QUICFLOW_VERSION" >> deploys.log
      echo "$QUICFLOW_VERSION" > version
{extra}"""


def env_yaml(version: str) -> str:
    return f'version: "{version}"\ntargets:\n  - {{local: t1}}\n  - {{local: t2}}\n'


class World:
    def __init__(self, tmp_path: Path, project: str):
        self.repo = ConfigRepo(tmp_path / "config")
        self.data = tmp_path / "data"
        self.repo.commit(
            {
                "quicflow.yaml": USERS,
                "projects/app/project.yaml": project,
                ENV_FILE: env_yaml("1.0"),
            }
        )
        self.engine = Reconciler(
            GitRepository.open(self.repo.path),
            self.data,
            now=lambda: dt.datetime.now(dt.UTC),
        )

    async def reconcile(self) -> list[Run]:
        report = await self.engine.reconcile_once()
        await self.engine.wait_idle()
        return report.runs

    def run(self, run_id: str) -> Run:
        found = self.engine.runs.get(run_id)
        assert found is not None
        return found

    async def through(self, run: Run) -> Run:
        """Approve and promote ``run`` as bob until it ends."""
        bob = self.engine.desired.users["bob"]  # type: ignore[union-attr]
        while run.state.is_waiting:
            gate = str(run.detail["gate"])
            act = self.engine.promote if gate.startswith("promote:") else self.engine.approve
            await act(run.id, bob)
            await self.engine.wait_idle()
            run = self.run(run.id)
        return run

    def serving(self) -> dict[str, str]:
        out = {}
        for name in ("t1", "t2"):
            path = self.data / "targets" / "app" / "prod" / name / "version"
            out[name] = path.read_text().strip()
        return out

    def deploys(self, name: str) -> list[str]:
        path = self.data / "targets" / "app" / "prod" / name / "deploys.log"
        return path.read_text().split()


@pytest.fixture
async def approval_world(tmp_path: Path):
    world = World(tmp_path, project_yaml(APPROVAL))
    try:
        (first,) = await world.reconcile()
        assert (await world.through(first)).state is RunState.SUCCEEDED
        yield world
    finally:
        await world.engine.close()


async def test_a_revert_supersedes_a_run_waiting_for_approval(approval_world: World) -> None:
    world = approval_world
    release = world.repo.commit({ENV_FILE: env_yaml("2.0")}, message="release 2.0")
    (waiting,) = await world.reconcile()
    assert waiting.state is RunState.WAITING_APPROVAL

    world.repo.commit({ENV_FILE: env_yaml("1.0")}, message=f"Revert {release}")
    await world.reconcile()
    superseded = world.run(waiting.id)
    assert superseded.state is RunState.SUPERSEDED, superseded
    assert "Git now asks for 1.0" in superseded.error

    # The late approval is refused: the run no longer waits, and nothing is deployed.
    bob = world.engine.desired.users["bob"]  # type: ignore[union-attr]
    with pytest.raises(QuicFlowError, match="not waiting|superseded"):
        await world.engine.approve(waiting.id, bob)
    await world.engine.wait_idle()
    assert world.serving() == {"t1": "1.0", "t2": "1.0"}
    assert "2.0" not in world.deploys("t1") + world.deploys("t2")


async def test_an_approval_given_after_git_moved_on_starts_nothing(
    approval_world: World,
) -> None:
    """The decision arrives between the revert and the next pass: the run must not
    resume on it (resuming checks Git first)."""
    world = approval_world
    release = world.repo.commit({ENV_FILE: env_yaml("2.0")}, message="release 2.0")
    (waiting,) = await world.reconcile()
    world.repo.commit({ENV_FILE: env_yaml("1.0")}, message=f"Revert {release}")
    await world.engine.refresh()  # the engine sees the revert; no pass ran yet
    bob = world.engine.desired.users["bob"]  # type: ignore[union-attr]
    await world.engine.approve(waiting.id, bob)
    await world.engine.wait_idle()
    assert world.run(waiting.id).state is RunState.SUPERSEDED
    assert "2.0" not in world.deploys("t1") + world.deploys("t2")


async def test_a_newer_release_supersedes_the_waiting_one_and_waits_itself(
    approval_world: World,
) -> None:
    world = approval_world
    world.repo.commit({ENV_FILE: env_yaml("2.0")}, message="release 2.0")
    (old,) = await world.reconcile()
    world.repo.commit({ENV_FILE: env_yaml("3.0")}, message="release 3.0")
    (new,) = await world.reconcile()
    assert world.run(old.id).state is RunState.SUPERSEDED
    assert (new.version, new.state) == ("3.0", RunState.WAITING_APPROVAL)
    assert (await world.through(new)).state is RunState.SUCCEEDED
    assert world.serving() == {"t1": "3.0", "t2": "3.0"}


async def test_a_revert_while_a_canary_waits_for_promote_puts_the_canary_back(
    tmp_path: Path,
) -> None:
    world = World(tmp_path, project_yaml(CANARY))
    try:
        (first,) = await world.reconcile()
        assert (await world.through(first)).state is RunState.SUCCEEDED
        release = world.repo.commit({ENV_FILE: env_yaml("2.0")}, message="release 2.0")
        (waiting,) = await world.reconcile()
        assert waiting.state is RunState.WAITING_APPROVAL and waiting.detail["gate"] == "promote:1"
        assert world.serving() == {"t1": "2.0", "t2": "1.0"}  # the canary is on 2.0

        world.repo.commit({ENV_FILE: env_yaml("1.0")}, message=f"Revert {release}")
        await world.reconcile()
        ended = world.run(waiting.id)
        assert ended.state is RunState.SUPERSEDED, ended
        # The canary target is back on the version Git names; 2.0 never reached t2.
        assert world.serving() == {"t1": "1.0", "t2": "1.0"}
        assert world.deploys("t2") == ["1.0"]
        bob = world.engine.desired.users["bob"]  # type: ignore[union-attr]
        with pytest.raises(QuicFlowError):
            await world.engine.promote(waiting.id, bob)
        await world.engine.wait_idle()
        assert world.serving() == {"t1": "1.0", "t2": "1.0"}
        # Git and the state ref agree: nothing is left to do.
        (action,) = world.engine.plan().actions
        assert (action.kind, action.to_version, action.from_version) == (
            ActionKind.NONE,
            "1.0",
            "1.0",
        )
    finally:
        await world.engine.close()
