"""The crash-point sweep: SIGKILL ``quicflow apply`` at every step boundary, then restart.

For rolling, canary and blue-green releases over two local script targets (and a
rolling release whose second target fails, so the run rolls back), a first traced run
lists every write of a step outcome. Then, for each write, a fresh copy of the world
is released again by a real ``apply`` subprocess that SIGKILLs itself (see
``tests/crashpoints.py``) just before the write, just after it, or — for a step that
runs a script — in the middle of the script. A second ``apply`` (faults cleared)
resumes. After each kill point:

- no step ran twice: every target ran each script at most once — the step in flight
  when the process died included, whose script runs on detached from the dead process
  and is adopted by the restarted one (``reconciler.targets.processes``);
- no step is orphaned: once the resumed run ends, no process of either is left behind;
- the run was resumed (a run that ``resumes`` the interrupted one succeeded) or marked
  (``interrupted``, with its finished steps);
- the state ref never claims a version a target does not run — not at the kill, and not
  after the restart, when it names the version every target runs;
- the git note on the release commit and the state commit name the same final run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from gitrepos import ROOT, ConfigRepo, git
from releasing import USERS

from reconciler.engine.reconciling import Reconciler
from reconciler.gitops.repository import GitRepository
from reconciler.runs import Run, RunState, StepKey, StepKind
from reconciler.store.database import Database
from reconciler.store.runs import RunStore

pytestmark = pytest.mark.integration

TESTS = Path(__file__).resolve().parents[1]
TARGETS = ("t1", "t2")
DELAY = 0.4  # seconds every deploy script sleeps, so a kill can land inside it
ENV_FILE = "projects/app/environments/prod.yaml"

# The version a target runs is in ``version`` (rolling, canary) or ``version-<colour>``
# with the live colour in ``live`` (blue-green). ``$FAULTS/<target>`` makes 2.0 fail there.
SCRIPT = """\
      set -eu
      if [ "$QUICFLOW_VERSION" = 2.0 ] && [ -e "$FAULTS/$QUICFLOW_TARGET" ]; then
        echo "fault on $QUICFLOW_TARGET" >&2; exit 1
      fi
      echo "$QUICFLOW_VERSION" >> deploys.log
      sleep "$DELAY"
      echo "$QUICFLOW_VERSION" > "version${QUICFLOW_COLOR:+-$QUICFLOW_COLOR}"
"""

STRATEGIES = {
    "rolling": "  type: rolling\n  rolling: {batch_size: 1}\n",
    "canary": (
        "  type: canary\n"
        "  canary: {steps: [50, 100], analysis: {window: 100ms, interval: 50ms}, pause: 300ms}\n"
    ),
    "blue_green": (
        "  type: blue_green\n"
        "  blue_green:\n"
        '    switch: echo "$QUICFLOW_COLOR" > "$QUICFLOW_WORK_DIR/live"\n'
        "    rollback_window: 1h\n"
    ),
}


def project_yaml(strategy: str) -> str:
    return (
        "members:\n  - {user: bob, role: owner}\n"
        "deploy:\n  type: script\n  timeout: 20s\n  script:\n    run: |\n"
        f"{SCRIPT}strategy:\n{STRATEGIES[strategy]}"
    )


def env_yaml(version: str) -> str:
    targets = "".join(f"  - {{local: {t}}}\n" for t in TARGETS)
    # Scripts run in the target's work dir, DATA/targets/app/prod/<target>: FAULTS is
    # relative to it, so a copied world keeps the same config (and config hash).
    return (
        f'version: "{version}"\ntargets:\n{targets}'
        f'variables:\n  DELAY: "{DELAY}"\n  FAULTS: "../../../../../faults"\n'
    )


def config_repo(path: Path) -> ConfigRepo:
    """The config repo already at ``path``."""
    repo = ConfigRepo.__new__(ConfigRepo)
    repo.path = path
    return repo


@dataclass
class World:
    """A config repo with 1.0 released, its data dir, and the fault directory."""

    root: Path
    strategy: str

    @property
    def repo(self) -> Path:
        return self.root / "config"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def faults(self) -> Path:
        return self.root / "faults"

    def target(self, name: str) -> Path:
        return self.data / "targets" / "app" / "prod" / name

    def runs_version(self, name: str) -> str | None:
        """The version target ``name`` serves now."""
        work = self.target(name)
        if self.strategy == "blue_green":
            live = work / "live"
            if not live.exists():
                return None
            work = work / f"version-{live.read_text().strip()}"
        else:
            work = work / "version"
        return work.read_text().strip() if work.exists() else None

    def deploys(self, name: str) -> list[str]:
        log = self.target(name) / "deploys.log"
        return log.read_text().split() if log.exists() else []

    def state_version(self) -> str | None:
        try:
            text = git(self.repo, "show", "refs/quicflow/state:app/prod.json")
        except subprocess.CalledProcessError:
            return None
        return json.loads(text)["version"]


def child_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{TESTS}", **extra}


def apply(world: World, **crash: str) -> subprocess.CompletedProcess[str]:
    """``quicflow apply`` in a child process, armed with ``crash`` (see crashpoints.py)."""
    command = [sys.executable, "-c", "import crashpoints; crashpoints.main()"]
    args = ["apply", "--repo", str(world.repo), "--data", str(world.data)]
    return subprocess.run(
        command + args,
        cwd=world.root,
        env=child_env(**crash),
        capture_output=True,
        text=True,
        timeout=120,
    )


def released(base: Path, strategy: str) -> World:
    """A world where 1.0 is released on both targets."""
    world = World(base, strategy)
    world.faults.mkdir(parents=True)
    ConfigRepo(world.repo).commit(
        {
            "quicflow.yaml": USERS,
            "projects/app/project.yaml": project_yaml(strategy),
            ENV_FILE: env_yaml("1.0"),
        }
    )
    first = apply(world)
    assert first.returncode == 0, first.stdout + first.stderr
    assert {t: world.runs_version(t) for t in TARGETS} == {"t1": "1.0", "t2": "1.0"}
    return world


def copy(world: World, root: Path) -> World:
    """An independent copy of ``world`` (repo, data dir and faults) at ``root``."""
    shutil.copytree(world.root, root, symlinks=True)
    return World(root, world.strategy)


def release(world: World, faulty: tuple[str, ...]) -> str:
    for name in faulty:
        (world.faults / name).touch()
    return config_repo(world.repo).commit({ENV_FILE: env_yaml("2.0")}, message="2.0")


#: Step kinds whose writes run a script on a target (a kill can land inside it).
SCRIPTED = {StepKind.DEPLOY, StepKind.ROLLBACK, StepKind.SWITCH, StepKind.ON_TARGET}


def kill_points(trace: Path) -> list[str]:
    """Every crash a traced release offers: before and after each write, inside scripts."""
    points = []
    for line in trace.read_text().splitlines():
        index, key, status = line.split("\t")
        kind = StepKey.parse(key).kind
        points.append(f"{index}:after")
        if status == "succeeded" and kind in SCRIPTED:
            points.append(f"{index}:before")  # the script ran; its outcome is not recorded
        if status == "running" and kind in SCRIPTED:
            points.append(f"{index}:during:{DELAY / 2}")
    return points


def leftovers(world: World) -> list[int]:
    """Processes still running with this world's data dir in their environment."""
    marker = str(world.data).encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker in (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def no_leftovers(world: World, within: float = 5.0) -> list[int]:
    deadline = time.monotonic() + within
    while (found := leftovers(world)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


def recorded_deploys(store: RunStore, runs: list[Run], version: str) -> Counter[str]:
    """Deploys of ``version`` the run store records as done, by target — those carried
    over from an interrupted run (``resumed_from``) not counted again."""
    allowed: Counter[str] = Counter()
    for run in runs:
        if run.version != version:
            continue
        for step in store.steps(run.id):
            key = StepKey.parse(step.key)
            if (
                key.kind is StepKind.DEPLOY
                and step.status.is_done
                and not step.result.get("resumed_from")
            ):
                allowed[key.name] += 1
    return allowed


def check_after_kill(world: World, point: str) -> None:
    claimed = world.state_version()
    serving = {t: world.runs_version(t) for t in TARGETS}
    assert claimed == "1.0" or set(serving.values()) == {claimed}, (point, claimed, serving)


def check_after_resume(
    world: World, point: str, in_flight: set[str], resumed: subprocess.CompletedProcess[str]
) -> None:
    assert resumed.returncode == 0, (point, resumed.stdout + resumed.stderr)
    assert not no_leftovers(world), (point, "orphaned processes")
    serving = {t: world.runs_version(t) for t in TARGETS}
    claimed = world.state_version()
    # The state ref names the version every target runs.
    assert set(serving.values()) == {claimed}, (point, claimed, serving)
    # No finished step ran again: each target ran 2.0's script once per recorded deploy.
    db = Database.open(world.data)
    try:
        store = RunStore(db)
        runs, _ = store.list("app", "prod", limit=20)
        final = runs[0]
        interrupted = [r for r in runs if r.state is RunState.INTERRUPTED]
        assert len(interrupted) <= 1, (point, runs)
        if interrupted and interrupted[0].version == "2.0":
            # Marked with what it had done, and resumed by a run that knows it.
            assert "done_steps" in interrupted[0].detail, point
            assert final.state.is_final, (point, final)
            if final.version == "2.0" and final.state is RunState.SUCCEEDED:
                assert final.resumes == interrupted[0].id, (point, final, interrupted)
        allowed = recorded_deploys(store, runs, "2.0")
        for target in TARGETS:
            ran = world.deploys(target).count("2.0")
            # In flight at the kill or not: the script ran once per recorded deploy.
            assert ran <= allowed[target], (point, target, ran, dict(allowed), in_flight)
        # Notes and the state commit tell the same story.
        if final.version == "2.0" and final.state is RunState.SUCCEEDED:
            body = git(world.repo, "log", "-1", "--format=%B", "refs/quicflow/state")
            assert f"Run: {final.id}" in body, (point, body)
            note = git(world.repo, "notes", "--ref=quicflow", "show", final.config_commit)
            assert f"quicflow run {final.id}:" in note, (point, note)
    finally:
        db.close()


def in_flight_targets(world: World) -> set[str]:
    """Targets with a scripted step started but not finished when the process died."""
    db = Database.open(world.data)
    try:
        store = RunStore(db)
        runs, _ = store.list("app", "prod", limit=5)
        out = set()
        for run in runs:
            for step in store.steps(run.id):
                key = StepKey.parse(step.key)
                if key.kind in SCRIPTED and not step.status.is_done:
                    out |= set(TARGETS) if key.kind is StepKind.SWITCH else {key.name}
        # A kill "before" a success write: the script ran but its step still says running.
        return out
    finally:
        db.close()


@pytest.mark.parametrize(
    ("strategy", "faulty"),
    [("rolling", ()), ("canary", ()), ("blue_green", ()), ("rolling", ("t2",))],
    ids=["rolling", "canary", "blue-green", "rolling-rollback"],
)
def test_every_kill_point_resumes_or_marks_the_run_and_git_tells_the_truth(
    tmp_path: Path, strategy: str, faulty: tuple[str, ...]
) -> None:
    base = released(tmp_path / "base", strategy)
    traced = copy(base, tmp_path / "traced")
    release(traced, faulty)
    trace = tmp_path / "trace.tsv"
    outcome = apply(traced, QUICFLOW_TEST_TRACE=str(trace))
    assert outcome.returncode == (1 if faulty else 0), outcome.stdout + outcome.stderr
    points = kill_points(trace)
    assert len(points) >= 10, points

    def sweep(number: int, point: str) -> None:
        world = copy(base, tmp_path / f"kill-{number}")
        release(world, faulty)
        killed = apply(world, QUICFLOW_TEST_CRASH=point)
        assert killed.returncode == -9, (point, killed.stdout + killed.stderr)
        check_after_kill(world, point)
        in_flight = in_flight_targets(world)
        for name in faulty:
            (world.faults / name).unlink()  # the fault is fixed before the restart
        resumed = apply(world)
        check_after_resume(world, point, in_flight, resumed)
        if not faulty:
            assert world.state_version() == "2.0", (point, resumed.stdout)
        shutil.rmtree(world.root)

    # Worlds are independent: sweep a few at once (the children mostly wait on scripts).
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        for done in [pool.submit(sweep, n, point) for n, point in enumerate(points)]:
            done.result()
    print(f"\n{strategy}{'+rollback' if faulty else ''}: {len(points)} kill points")


GATED = (
    "pipeline:\n  stages:\n    - name: release\n"
    "      approval: {roles: [owner]}\n      tasks:\n        - {name: deploy, uses: deploy}\n"
)
MANUAL_CANARY = (
    "  type: canary\n  canary: {steps: [50, 100], analysis: {window: 0s}, promotion: manual}\n"
)


def pass_gate_as_bob(world: World) -> str:
    """Approve or promote the run waiting in ``world`` through the engine (bob is an owner)."""

    async def go() -> str:
        engine = Reconciler(GitRepository.open(world.repo), world.data)
        try:
            await engine.refresh()
            (waiting,) = [r for r in engine.runs.active() if r.state.is_waiting]
            assert engine.desired is not None
            bob = engine.desired.users["bob"]
            if str(waiting.detail["gate"]).startswith("promote:"):
                await engine.promote(waiting.id, bob, resume=False)
            else:
                await engine.approve(waiting.id, bob, resume=False)
            return waiting.id
        finally:
            await engine.close()

    return asyncio.run(go())


@pytest.mark.parametrize(
    ("gate", "crash"),
    [("approval:release", "deploy:t1/succeeded!after"), ("promote:1", "deploy:t2/running!after")],
    ids=["stage-approval", "canary-promote"],
)
def test_a_decision_taken_before_a_crash_holds_for_the_resumed_run(
    tmp_path: Path, gate: str, crash: str
) -> None:
    world = World(tmp_path, "rolling")
    world.faults.mkdir(parents=True)
    project = project_yaml("rolling") + GATED
    if gate.startswith("promote:"):
        project = project.replace(STRATEGIES["rolling"], MANUAL_CANARY)
    ConfigRepo(world.repo).commit(
        {"quicflow.yaml": USERS, "projects/app/project.yaml": project, ENV_FILE: env_yaml("1.0")}
    )
    for _ in range(3):  # through the gates of the first release
        assert apply(world).returncode == 0
        if world.state_version() == "1.0":
            break
        pass_gate_as_bob(world)
    assert world.state_version() == "1.0"

    release(world, ())
    decided = ""
    for _ in range(3):  # up to the gate under test, passing the ones before it
        waiting = apply(world)
        assert "waiting_approval" in waiting.stdout, waiting.stdout
        decided = pass_gate_as_bob(world)
        db = Database.open(world.data)
        try:
            if RunStore(db).decision(decided, gate) is not None:
                break
        finally:
            db.close()
    killed = apply(world, QUICFLOW_TEST_CRASH=crash)
    assert killed.returncode == -9, killed.stdout + killed.stderr

    resumed = apply(world)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "1.0 -> 2.0: succeeded" in resumed.stdout, resumed.stdout
    assert {t: world.runs_version(t) for t in TARGETS} == {"t1": "2.0", "t2": "2.0"}
    assert [world.deploys(t).count("2.0") for t in TARGETS] == [1, 1]
    db = Database.open(world.data)
    try:
        store = RunStore(db)
        runs, _ = store.list("app", "prod", limit=10)
        final = runs[0]
        assert (final.state, final.resumes) == (RunState.SUCCEEDED, decided)
        # The decision came with the run, with who took it; nobody was asked again.
        decision = store.decision(final.id, gate)
        assert decision is not None and (decision.approved, decision.user) == (True, "bob")
        assert all(s.status.value != "waiting" for s in store.steps(final.id))
    finally:
        db.close()
