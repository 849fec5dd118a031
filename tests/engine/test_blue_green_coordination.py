"""Blue-green is coordinated: the serving color is in Git, and retirement never races a run.

One local target whose colors live in a directory every data dir's target shares
(``$SHARED/t1``): each deploy appends ``<version> <color> <work dir>`` to
``deploys.log`` and the switch writes the serving color to ``live``; a retirement
appends the color to ``retired.log``. Version ``$SLOW`` waits on a gate file, so a run
of it is certainly deploying while retirement comes due.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from gitrepos import ConfigRepo, git

from reconciler.engine.reconciling import Reconciler
from reconciler.gitops.repository import STATE_REF, GitRepository
from reconciler.runs import Run, RunState

pytestmark = pytest.mark.integration

ELSEWHERE = "reconciler-2.example:4242:1"
USERS = "users:\n  - {username: alice, email: alice@example.com, is_admin: true}\n"
PROJECT = """\
members:
  - {user: alice, role: owner}
deploy:
  type: script
  timeout: 30s
  script:
    run: |
      set -eu
      d="$SHARED/$QUICFLOW_TARGET"; mkdir -p "$d"
      echo "$QUICFLOW_VERSION $QUICFLOW_COLOR $QUICFLOW_WORK_DIR" >> "$d/deploys.log"
      if [ "$QUICFLOW_VERSION" = "$SLOW" ]; then
        while [ ! -e "$GATE" ]; do sleep 0.02; done
      fi
    retire: |
      echo "$QUICFLOW_COLOR" >> "$SHARED/$QUICFLOW_TARGET/retired.log"
strategy:
  type: blue_green
  blue_green:
    switch: echo "$QUICFLOW_COLOR" > "$SHARED/$QUICFLOW_TARGET/live"
    rollback_window: 1h
"""


class Clock:
    def __init__(self) -> None:
        self.at = dt.datetime(2026, 11, 30, 10, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.at


class World:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.shared = root / "shared"
        self.gate = root / "gate"
        self.repo = ConfigRepo(root / "config")
        self.clock = Clock()
        self.repo.commit(
            {
                "quicflow.yaml": USERS,
                "projects/app/project.yaml": PROJECT,
                "projects/app/environments/prod.yaml": self.env_yaml("1.0"),
            }
        )

    def env_yaml(self, version: str, slow: str = "none") -> str:
        return (
            f'version: "{version}"\ntargets:\n  - {{local: t1}}\nvariables:\n'
            f'  SHARED: "{self.shared}"\n  GATE: "{self.gate}"\n  SLOW: "{slow}"\n'
        )

    def release(self, version: str, slow: str = "none") -> None:
        self.repo.commit({"projects/app/environments/prod.yaml": self.env_yaml(version, slow)})

    def reconciler(self, data: str) -> Reconciler:
        return Reconciler(GitRepository.open(self.repo.path), self.root / data, now=self.clock)

    def deploys(self) -> list[tuple[str, str, str]]:
        """(version, color, data dir) of every deploy, in order."""
        log = self.shared / "t1" / "deploys.log"
        found = []
        for line in log.read_text().splitlines() if log.exists() else []:
            version, color, work = line.split(" ", 2)
            found.append((version, color, work.split("/targets/")[0]))
        return found

    def live(self) -> str:
        return (self.shared / "t1" / "live").read_text().strip()

    def retired(self) -> list[str]:
        log = self.shared / "t1" / "retired.log"
        return log.read_text().split() if log.exists() else []

    def state(self) -> dict:
        return json.loads(git(self.repo.path, "show", f"{STATE_REF}:app/prod.json"))


async def _released(rec: Reconciler) -> Run:
    (run,) = (await rec.reconcile_once()).runs
    assert run.state is RunState.SUCCEEDED, run
    return run


async def _until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def _everything(project: str, env: str) -> bool:
    return True


async def test_a_fresh_data_dir_knows_the_serving_color_and_never_deploys_onto_it(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    first = world.reconciler("data")
    try:
        await _released(first)
    finally:
        await first.close()
    assert world.live() == "blue" and world.state()["color"] == "blue"

    world.release("2.0")
    fresh = world.reconciler("fresh-data")  # an empty store: only Git knows what serves
    try:
        run = await _released(fresh)
    finally:
        await fresh.close()
    assert world.deploys()[-1] == ("2.0", "green", str(tmp_path / "fresh-data"))
    assert world.live() == "green" and world.state()["color"] == "green"
    assert run.detail["retire_color"] == "blue"  # the old color, kept for the window


async def test_retirement_waits_while_a_newer_run_deploys_onto_the_old_color(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    rec = world.reconciler("data")
    try:
        await _released(rec)  # 1.0 on blue
        world.release("1.5")
        old = await _released(rec)  # 1.5 on green; blue due for retirement in 1 h
        assert old.detail["retire_color"] == "blue" and world.live() == "green"

        world.release("2.0", slow="2.0")
        newer = asyncio.create_task(rec.reconcile_once())
        await _until(lambda: world.deploys()[-1][:2] == ("2.0", "blue"), "2.0 deploying on blue")
        world.clock.at += dt.timedelta(hours=2)  # the old run's window is over
        await rec.retirer.retire_due(_everything)
        assert world.retired() == []  # not stopped under the deploy
        assert "retired" not in rec.runs.get(old.id).detail  # type: ignore[union-attr]

        world.gate.touch()
        (run,) = (await newer).runs
        assert run.state is RunState.SUCCEEDED and world.live() == "blue"
        await rec.retirer.retire_due(_everything)
        # Blue serves the newer release now: the old run's retirement is void.
        assert rec.runs.get(old.id).detail["retired"] == "superseded"  # type: ignore[union-attr]
        assert world.retired() == []
    finally:
        world.gate.touch()
        await rec.close()


async def test_retirement_waits_for_another_reconciler_deploying_onto_the_old_color(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    a = world.reconciler("a")
    b = world.reconciler("b")
    b.claims.owner = ELSEWHERE
    try:
        await _released(a)
        world.release("1.5")
        old = await _released(a)  # a's store: green serves, blue due in 1 h

        world.release("2.0", slow="2.0")
        newer = asyncio.create_task(b.reconcile_once())  # b knows green serves (state ref)
        await _until(lambda: world.deploys()[-1][:2] == ("2.0", "blue"), "b deploying on blue")
        assert world.deploys()[-1][2] == str(tmp_path / "b")
        world.clock.at += dt.timedelta(hours=2)
        await a.retirer.retire_due(_everything)
        assert world.retired() == []  # b holds the environment: a waits
        assert "retired" not in a.runs.get(old.id).detail  # type: ignore[union-attr]

        world.gate.touch()
        (run,) = (await newer).runs
        assert run.state is RunState.SUCCEEDED and world.live() == "blue"
        await a.retirer.retire_due(_everything)
        # The state ref names b's run as the release in force: a's old run is superseded.
        assert a.runs.get(old.id).detail["retired"] == "superseded"  # type: ignore[union-attr]
        assert world.retired() == []
        assert world.state()["run_id"] == run.id and world.state()["color"] == "blue"
    finally:
        world.gate.touch()
        await a.close()
        await b.close()


async def test_the_old_color_is_retired_once_its_window_is_over_and_nothing_else_runs(
    tmp_path: Path,
) -> None:
    """The coordination above does not stop retirement when nothing races it."""
    world = World(tmp_path)
    rec = world.reconciler("data")
    try:
        await _released(rec)
        world.release("1.5")
        old = await _released(rec)
        world.clock.at += dt.timedelta(hours=2)
        await rec.retirer.retire_due(_everything)
        assert world.retired() == ["blue"] and world.live() == "green"
        assert rec.runs.get(old.id).detail["retire_notes"] == "all targets"  # type: ignore[union-attr]
    finally:
        await rec.close()
