"""Emergency rollbacks and pins that hold (issue 17, items 4, 5 and 7).

Real ``python -m reconciler`` commands and a real reconciler on a real config repo whose
``app/prod`` has a release window that is closed today (it opens on a weekday three
days away). Targets are local directories; each deploy appends its version to
``deploys.log``.

- A rollback outside the window waits for it — visibly, with how to cancel it — and
  ``quicflow cancel`` ends it. An owner's ``--force`` runs it now (``--pin``: at once;
  revert: at the next pass, the commit carrying ``Quicflow-Force``); a maintainer may
  not force. The force and who asked are in the state commit and the note.
- A pin ends only when the environment's version changes in Git: an unrelated project
  variable no longer redeploys the version rolled back from.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest
from gitrepos import ROOT, ConfigRepo, git
from releasing import USERS

from reconciler.engine.reconciling import Reconciler
from reconciler.gitops.repository import GitRepository
from reconciler.runs import RunState

pytestmark = pytest.mark.integration

ENV_FILE = "projects/app/environments/prod.yaml"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def project_yaml(variables: str = "") -> str:
    return f"""\
members:
  - {{user: bob, role: owner}}
  - {{user: carol, role: maintainer}}
variables:
  COLOR: blue
{variables}deploy:
  type: script
  timeout: 20s
  script:
    run: echo "$QUICFLOW_VERSION" >> deploys.log
"""


def env_yaml(version: str, window: bool = True) -> str:
    closed_day = DAYS[(dt.datetime.now(dt.UTC).weekday() + 3) % 7]
    text = f'version: "{version}"\ntargets:\n  - {{local: t1}}\n'
    if window:
        text += (
            "release_windows:\n"
            f"  - {{timezone: UTC, days: [{closed_day}], start: '09:00', end: '17:00'}}\n"
        )
    return text


class World:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.repo = ConfigRepo(tmp / "config")
        self.data = tmp / "data"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "reconciler", *args]
            + ["--repo", str(self.repo.path), "--data", str(self.data)],
            cwd=self.tmp,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )

    def token_file(self, user: str) -> str:
        made = self.cli("token", "create", user)
        assert made.returncode == 0, made.stderr
        path = self.tmp / f"{user}.token"
        path.write_text(made.stdout)
        return str(path)

    async def reconcile(self) -> list[tuple[str, RunState]]:
        reconciler = Reconciler(GitRepository.open(self.repo.path), self.data)
        try:
            return [(r.version, r.state) for r in (await reconciler.reconcile_once()).runs]
        finally:
            await reconciler.close()

    def deploys(self) -> list[str]:
        log = self.data / "targets" / "app" / "prod" / "t1" / "deploys.log"
        return log.read_text().split() if log.exists() else []

    def newest_state_commit(self) -> str:
        return git(self.repo.path, "log", "-1", "--format=%B", "refs/quicflow/state")


async def released_one_then_two(world: World) -> None:
    """1.0 then 2.0 released (without the window: releases by pull request are not the point)."""
    world.repo.commit(
        {
            "quicflow.yaml": USERS,
            "projects/app/project.yaml": project_yaml(),
            ENV_FILE: env_yaml("1.0", window=False),
        }
    )
    await world.reconcile()
    world.repo.commit({ENV_FILE: env_yaml("2.0", window=False)})
    await world.reconcile()
    world.repo.commit({ENV_FILE: env_yaml("2.0")}, message="prod gets a release window")
    assert await world.reconcile() == []
    assert world.deploys() == ["1.0", "2.0"]


async def test_a_rollback_outside_the_window_waits_visibly_and_can_be_cancelled(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    await released_one_then_two(world)

    pinned = world.cli("rollback", "app", "prod", "--pin", "--token-file", world.token_file("bob"))
    assert pinned.returncode == 0, pinned.stderr
    assert "pinned to 1.0: waiting_window" in pinned.stdout
    assert "quicflow cancel r-" in pinned.stdout and "--force" in pinned.stdout
    run_id = pinned.stdout.split()[0]
    assert world.deploys() == ["1.0", "2.0"]  # nothing ran

    cancelled = world.cli("cancel", run_id, "--token-file", world.token_file("bob"))
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"{run_id}  app/prod 1.0: cancelled by bob" in cancelled.stdout
    assert await world.reconcile() == []  # the cancelled rollback does not come back
    assert world.deploys() == ["1.0", "2.0"]


async def test_an_owner_forces_an_emergency_pin_and_git_says_who(tmp_path: Path) -> None:
    world = World(tmp_path)
    await released_one_then_two(world)

    refused = world.cli(
        "rollback", "app", "prod", "--pin", "--force", "--token-file", world.token_file("carol")
    )
    assert refused.returncode == 1
    assert "only an owner may force" in refused.stderr
    assert world.deploys() == ["1.0", "2.0"]

    forced = world.cli(
        "rollback", "app", "prod", "--pin", "--force", "--token-file", world.token_file("bob")
    )
    assert forced.returncode == 0, forced.stderr
    assert "pinned to 1.0: succeeded (forced past the closed release window)" in forced.stdout
    assert world.deploys() == ["1.0", "2.0", "1.0"]
    message = world.newest_state_commit()
    assert "Trigger: rollback" in message and "Actor: bob" in message
    assert "\nForced: outside release window\n" in message
    config = git(world.repo.path, "rev-parse", "main")
    note = git(world.repo.path, "notes", "--ref=quicflow", "show", config)
    assert "by bob; forced outside release window; pinned to 1.0" in note

    # An unrelated project variable changes: the pin holds (2.0 is not redeployed).
    world.repo.commit(
        {"projects/app/project.yaml": project_yaml("  EXTRA: yes\n")}, message="unrelated"
    )
    assert await world.reconcile() == []
    assert world.deploys() == ["1.0", "2.0", "1.0"]
    plan = subprocess.run(
        [sys.executable, "-m", "reconciler", "plan", "--repo", str(world.repo.path)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        "pinned to 1.0" in plan.stdout and "configuration changed in Git meanwhile" in plan.stdout
    )
    # The environment's version changes in Git: the pin ends (and the window applies).
    world.repo.commit({ENV_FILE: env_yaml("2.1", window=False)}, message="fixed release")
    assert await world.reconcile() == [("2.1", RunState.SUCCEEDED)]
    assert world.deploys() == ["1.0", "2.0", "1.0", "2.1"]


async def test_a_forced_revert_runs_at_the_next_pass_despite_the_window(tmp_path: Path) -> None:
    world = World(tmp_path)
    await released_one_then_two(world)

    plain = world.cli("rollback", "app", "prod", "--token-file", world.token_file("bob"))
    assert plain.returncode == 0, plain.stderr
    assert "its release window is closed: the run waits until" in plain.stdout
    assert await world.reconcile() == [("1.0", RunState.WAITING_WINDOW)]

    world.repo.commit({ENV_FILE: env_yaml("2.0")}, message="back to 2.0")  # it can wait no more
    forced = world.cli(
        "rollback", "app", "prod", "--force", "--token-file", world.token_file("bob")
    )
    assert forced.returncode == 0, forced.stderr
    assert "forced past its closed release window" in forced.stdout
    revert = git(world.repo.path, "log", "-1", "--format=%B", "main")
    assert "Quicflow-Force: app/prod" in revert and "Quicflow-Actor: bob" in revert

    assert await world.reconcile() == [("1.0", RunState.SUCCEEDED)]
    assert world.deploys() == ["1.0", "2.0", "1.0"]
    message = world.newest_state_commit()
    assert "Trigger: rollback" in message and "Actor: bob" in message and "Forced:" in message
