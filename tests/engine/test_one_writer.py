"""Two reconcilers on one config repo (different data dirs) never both deploy.

Each deploy script appends ``<version> <work dir>`` to a log in a directory both
reconcilers' targets share (``$SHARED/<target>``), and the work dir names the data dir
of the reconciler that ran it. The first reconciler's deploy waits on a gate file, so
it is certainly mid-run while the second one tries: in one process (the second with
the owner of another host, which only the claim's lease can tell about), and as two
real ``quicflow apply`` processes started at the same moment — on one repository, and
through one origin with a mirror each.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from gitrepos import ROOT, ConfigRepo, git

from reconciler.engine import owners
from reconciler.engine.reconciling import Reconciler
from reconciler.gitops.claims import Claim, Claims
from reconciler.gitops.repository import STATE_REF, GitRepository
from reconciler.runs import RunState, Trigger

pytestmark = pytest.mark.integration

ELSEWHERE = "reconciler-2.example:4242:1"  # a process of another host: not checkable here

PROJECT = """\
members:
  - {user: alice, role: owner}
deploy:
  type: script
  timeout: 30s
  script:
    run: |
      set -eu
      mkdir -p "$SHARED/$QUICFLOW_TARGET"
      echo "$QUICFLOW_VERSION $QUICFLOW_WORK_DIR" >> "$SHARED/$QUICFLOW_TARGET/deploys.log"
      while [ ! -e "$GATE" ]; do sleep 0.02; done
      sleep "$DELAY"
strategy:
  type: rolling
  rolling: {batch_size: 1}
"""
USERS = "users:\n  - {username: alice, email: alice@example.com, is_admin: true}\n"
TARGETS = ("t1", "t2")


@dataclasses.dataclass
class World:
    root: Path

    @property
    def shared(self) -> Path:
        return self.root / "shared"

    @property
    def gate(self) -> Path:
        return self.root / "gate"

    def env_yaml(self, version: str, delay: str = "0") -> str:
        targets = "".join(f"  - {{local: {t}}}\n" for t in TARGETS)
        return (
            f'version: "{version}"\ntargets:\n{targets}variables:\n'
            f'  SHARED: "{self.shared}"\n  GATE: "{self.gate}"\n  DELAY: "{delay}"\n'
        )

    def config(self, version: str = "1.0", delay: str = "0") -> ConfigRepo:
        repo = ConfigRepo(self.root / "config")
        repo.commit(
            {
                "quicflow.yaml": USERS,
                "projects/app/project.yaml": PROJECT,
                "projects/app/environments/prod.yaml": self.env_yaml(version, delay),
            }
        )
        return repo

    def deploys(self) -> list[tuple[str, str, str]]:
        """(target, version, data dir of the reconciler that ran it), in order per target."""
        found = []
        for target in TARGETS:
            log = self.shared / target / "deploys.log"
            for line in log.read_text().splitlines() if log.exists() else []:
                version, work = line.split(" ", 1)
                found.append((target, version, work.split("/targets/")[0]))
        return found


async def until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[tuple[World, Reconciler, Reconciler]]:
    """Reconcilers a and b on one config repo (1.0 to release), data dirs ``a`` and ``b``."""
    world = World(tmp_path)
    repo = world.config()
    a = Reconciler(GitRepository.open(repo.path), tmp_path / "a")
    b = Reconciler(GitRepository.open(repo.path), tmp_path / "b")
    b.claims.owner = ELSEWHERE
    try:
        yield world, a, b
    finally:
        world.gate.touch()
        await a.close()
        await b.close()


def _claim(repo: Path) -> Claim | None:
    return Claims(GitRepository.open(repo)).read("app", "prod")[1]


async def test_the_second_reconciler_keeps_out_while_the_first_deploys(
    two: tuple[World, Reconciler, Reconciler],
) -> None:
    world, a, b = two
    a.claims.lease = 0.6  # renewed every 0.15 s while its run executes
    first = asyncio.create_task(a.reconcile_once())
    await until(lambda: len(world.deploys()) == 1, "a's first deploy to start")
    running = a.runs.latest("app", "prod")
    assert running is not None and running.state is RunState.RUNNING
    claimed = _claim(world.root / "config")
    assert claimed is not None and claimed.run_id == running.id and not claimed.released
    await asyncio.sleep(1.5)  # well past the first lease: only renewals keep it held

    # b plans the same release: the environment is skipped, naming who deploys it.
    report = await b.reconcile_once()
    assert report.runs == []
    ((key, reason),) = report.skipped
    assert key == "app/prod" and "being deployed by another reconciler" in reason
    assert running.id in reason and a.claims.owner in reason
    # Asked directly (an API deploy), b's run loses the claim and stops before any step.
    asked = await b.deploy("app", "prod", None, actor=None, trigger=Trigger.MANUAL)
    await b.wait_idle()
    stopped = b.runs.get(asked.id)
    assert stopped is not None and stopped.state is RunState.SUPERSEDED, stopped
    assert running.id in stopped.error and b.runs.steps(asked.id) == []
    assert any(running.id in line.line for line in b.logs.read(asked.id))

    world.gate.touch()
    (done,) = (await first).runs
    assert done.state is RunState.SUCCEEDED
    # Released after the state commit: b now plans from it and has nothing to do.
    released = _claim(world.root / "config")
    assert released is not None and released.released and released.run_id == running.id
    again = await b.reconcile_once()
    assert again.runs == [] and again.skipped == []
    a_dir = str(world.root / "a")
    assert world.deploys() == [("t1", "1.0", a_dir), ("t2", "1.0", a_dir)]
    state = json.loads(git(world.root / "config", "show", f"{STATE_REF}:app/prod.json"))
    assert state["run_id"] == running.id


async def test_a_run_that_loses_the_compare_and_set_stops_before_its_first_step(
    two: tuple[World, Reconciler, Reconciler], monkeypatch: pytest.MonkeyPatch
) -> None:
    """a claims in the very moment between b's read of the claim ref and b's write."""
    world, a, b = two
    world.gate.touch()
    b_claims = b.claims.claims
    read = b_claims.read
    raced: list[str] = []

    def read_then_a_claims(project: str, env: str) -> tuple[str | None, Claim | None]:
        found = read(project, env)
        if not raced:
            base, _ = a.claims.claims.read(project, env)
            claim = Claim(project, env, "r-a-raced", a.claims.owner, "2026-01-01T00:00:00Z",
                          "2999-01-01T00:00:00Z")  # fmt: skip
            assert a.claims.claims.write(claim, base, "a claims").won
            raced.append(claim.run_id)
        return found

    monkeypatch.setattr(b_claims, "read", read_then_a_claims)
    report = await b.reconcile_once()
    (run,) = report.runs
    assert raced == ["r-a-raced"]
    assert run.state is RunState.SUPERSEDED and "r-a-raced" in run.error, run
    assert b.runs.steps(run.id) == [] and world.deploys() == []


def _plant(repo: Path, owner: str, expires: str, run: str = "r-crashed") -> None:
    claims = Claims(GitRepository.open(repo))
    base, _ = claims.read("app", "prod")
    claim = Claim("app", "prod", run, owner, "2026-01-01T00:00:00Z", expires)
    assert claims.write(claim, base, "planted").won


def _dead_local_owner() -> str:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    return f"{socket.gethostname()}:{gone.pid}:1"


@pytest.mark.parametrize(
    "owner, expires, kept_out",
    [
        (ELSEWHERE, "2999-01-01T00:00:00.000000Z", True),  # another host, lease running
        (ELSEWHERE, "2026-01-01T00:02:00.000000Z", False),  # another host, lease over
        ("dead", "2999-01-01T00:00:00.000000Z", False),  # this host, its process is gone
    ],
    ids=["live-lease", "lease-over", "owner-dead"],
)
async def test_a_claim_holds_while_its_lease_runs_and_its_owner_lives(
    tmp_path: Path, owner: str, expires: str, kept_out: bool
) -> None:
    world = World(tmp_path)
    repo = world.config()
    world.gate.touch()
    owner = _dead_local_owner() if owner == "dead" else owner
    assert not owners.alive(owner)
    _plant(repo.path, owner, expires)
    rec = Reconciler(GitRepository.open(repo.path), tmp_path / "data")
    try:
        report = await rec.reconcile_once()
    finally:
        await rec.close()
    if kept_out:
        assert report.runs == [] and world.deploys() == []
        ((_, reason),) = report.skipped
        assert "run r-crashed of reconciler-2.example:4242:1" in reason
        assert _claim(repo.path) == Claim(
            "app", "prod", "r-crashed", owner, "2026-01-01T00:00:00Z", expires
        )
    else:
        (run,) = report.runs
        assert run.state is RunState.SUCCEEDED
        assert [v for _, v, _ in world.deploys()] == ["1.0", "1.0"]
        taken = _claim(repo.path)
        assert taken is not None and taken.run_id == run.id and taken.released


async def test_a_run_that_waits_for_a_person_releases_its_claim(tmp_path: Path) -> None:
    world = World(tmp_path)
    repo = world.config()
    pipeline = (
        "pipeline:\n  stages:\n    - name: release\n      approval: {roles: [owner]}\n"
        "      tasks:\n        - {name: deploy, uses: deploy}\n"
    )
    repo.commit({"projects/app/project.yaml": PROJECT + pipeline})
    rec = Reconciler(GitRepository.open(repo.path), tmp_path / "data")
    rec.claims.lease = 0.4
    try:
        (run,) = (await rec.reconcile_once()).runs
        assert run.state is RunState.WAITING_APPROVAL
        await until(
            lambda: (c := _claim(repo.path)) is not None and c.released,
            "the waiting run's claim to be released",
            timeout=5,
        )
        assert _claim(repo.path).run_id == run.id  # type: ignore[union-attr]
    finally:
        await rec.close()


def _apply(repo: str, data: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "reconciler", "apply", "--repo", repo, "--data", str(data)],
        cwd=data.parent,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.parametrize("sharing", ["one repository", "one origin"])
def test_two_applies_started_together_deploy_once(tmp_path: Path, sharing: str) -> None:
    world = World(tmp_path)
    repo = world.config(delay="1")
    world.gate.touch()
    location = str(repo.path)
    if sharing == "one origin":
        bare = tmp_path / "origin.git"
        git(tmp_path, "clone", "-q", "--bare", str(repo.path), str(bare))
        location = f"file://{bare}"
    processes = [_apply(location, tmp_path / name) for name in ("a", "b")]
    outputs = [p.communicate(timeout=120)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs

    deployed_by = {work for _, _, work in world.deploys()}
    assert len(world.deploys()) == len(TARGETS) and len(deployed_by) == 1, world.deploys()
    winner = "ab".index(Path(deployed_by.pop()).name)
    assert "app/prod (nothing) -> 1.0: succeeded" in outputs[winner]
    loser = outputs[1 - winner]
    assert "succeeded" not in loser
    assert "being deployed by another reconciler" in loser or "nothing to do" in loser, loser
    state_repo = tmp_path / "origin.git" if sharing == "one origin" else repo.path
    state = json.loads(git(state_repo, "show", f"{STATE_REF}:app/prod.json"))
    assert state["version"] == "1.0"
    log = git(state_repo, "log", "--format=%s", STATE_REF).splitlines()
    assert log == ["app/prod: nothing -> 1.0 succeeded"]
