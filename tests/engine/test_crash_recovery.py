"""Crash safety: ``quicflow apply`` SIGKILLed in the middle of a rolling deploy, then restarted.

A real ``python -m reconciler apply`` subprocess rolls version 2.0 over five local
targets, one at a time; each deploy appends the version to the target's
``deploys.log`` and then sleeps, so the rollout is slow enough to kill at a chosen
point. Progress is read from the operational store (the ``steps`` table of the real
SQLite file) and the per-target logs. After the kill, a second ``apply`` with the same
data dir must finish the release without running any deploy step again,
and both the store and the history in Git must tell one consistent story. The step in
flight is not run twice either: its process outlives the reconciler and is adopted.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gitrepos import ROOT, ConfigRepo, git
from releasing import USERS

from reconciler.runs import RunState
from reconciler.store.database import FILE_NAME, Database
from reconciler.store.runs import RunStore

pytestmark = pytest.mark.integration

TARGETS = 5
DELAY = 0.3  # seconds each deploy takes

PROJECT = """\
members:
  - {user: bob, role: owner}
deploy:
  type: script
  timeout: 20s
  script:
    run: |
      set -eu
      echo "$QUICFLOW_VERSION" >> deploys.log
      echo "$QUICFLOW_VERSION" > version
      sleep "$DEPLOY_DELAY"
strategy:
  type: rolling
  rolling: {batch_size: 1}
"""


def env_yaml(version: str, delay: float) -> str:
    targets = "\n".join(f"  - {{local: t{i}}}" for i in range(1, TARGETS + 1))
    return f'version: "{version}"\ntargets:\n{targets}\nvariables:\n  DEPLOY_DELAY: "{delay}"\n'


def apply_command(repo: Path, data: Path) -> list[str]:
    return [sys.executable, "-m", "reconciler", "apply", "--repo", str(repo), "--data", str(data)]


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def apply(repo: Path, data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        apply_command(repo, data),
        cwd=data.parent,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def deploy_logs(data: Path) -> dict[str, list[str]]:
    out = {}
    for i in range(1, TARGETS + 1):
        log = data / "targets" / "app" / "prod" / f"t{i}" / "deploys.log"
        out[f"t{i}"] = log.read_text().split() if log.exists() else []
    return out


def deploy_steps(data: Path, version: str) -> dict[str, str]:
    """Status of each ``deploy:<target>`` step of the runs of ``version``, read from SQLite."""
    db = data / FILE_NAME
    if not db.exists():
        return {}
    conn = sqlite3.connect(db, timeout=10)
    try:
        rows = conn.execute(
            "SELECT s.key, s.status FROM steps s JOIN runs r ON s.run_id = r.id "
            "WHERE r.version = ? AND s.key LIKE 'deploy:%' ORDER BY r.seq",
            (version,),
        ).fetchall()
    except sqlite3.OperationalError:  # the schema is not there yet
        return {}
    finally:
        conn.close()
    return {key.removeprefix("deploy:"): status for key, status in rows}


def kill_when(proc: subprocess.Popen[str], data: Path, finished: int, mid_step: bool) -> None:
    """SIGKILL ``proc`` once ``finished`` deploy steps succeeded (and, with ``mid_step``,
    the next target's script has started but not finished)."""
    deadline = time.monotonic() + 30
    following = f"t{finished + 1}"
    while time.monotonic() < deadline:
        done = [t for t, s in deploy_steps(data, "2.0").items() if s == "succeeded"]
        if len(done) >= finished and (not mid_step or "2.0" in deploy_logs(data)[following]):
            proc.kill()
            proc.wait()
            return
        if proc.poll() is not None:
            pytest.fail(f"apply ended before the kill point:\n{proc.stdout and proc.stdout.read()}")
        time.sleep(0.01)
    proc.kill()
    proc.wait()
    pytest.fail("the rollout never reached the kill point")


@pytest.mark.parametrize(
    ("finished", "mid_step"),
    [(1, False), (3, True)],
    ids=["after-1-target", "during-target-4"],
)
def test_killed_apply_resumes_without_repeating_finished_steps(
    tmp_path: Path, finished: int, mid_step: bool
) -> None:
    repo = ConfigRepo(tmp_path / "config")
    data = tmp_path / "data"
    repo.commit(
        {
            "quicflow.yaml": USERS,
            "projects/app/project.yaml": PROJECT,
            "projects/app/environments/prod.yaml": env_yaml("1.0", 0),
        }
    )
    first = apply(repo.path, data)
    assert first.returncode == 0, first.stdout + first.stderr
    release = repo.commit(
        {"projects/app/environments/prod.yaml": env_yaml("2.0", DELAY)}, message="release 2.0"
    )

    proc = subprocess.Popen(
        apply_command(repo.path, data),
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        kill_when(proc, data, finished, mid_step)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    assert proc.returncode == -9

    # What the dead process left behind: finished steps, and at most one step in flight.
    at_kill = deploy_steps(data, "2.0")
    done = {t for t, s in at_kill.items() if s == "succeeded"}
    assert len(done) >= finished
    in_flight = {t for t, s in at_kill.items() if s != "succeeded"}
    assert len(in_flight) <= 1, at_kill
    if mid_step:
        assert in_flight == {f"t{finished + 1}"}, at_kill
    # Nothing was recorded in Git for the unfinished release.
    assert git(repo.path, "log", "--format=%s", "refs/quicflow/state").splitlines() == [
        "app/prod: nothing -> 1.0 succeeded"
    ]

    resumed = apply(repo.path, data)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "app/prod 1.0 -> 2.0: succeeded" in resumed.stdout

    # Final state: every target serves 2.0.
    for i in range(1, TARGETS + 1):
        version = data / "targets" / "app" / "prod" / f"t{i}" / "version"
        assert version.read_text().strip() == "2.0"

    # No deploy step ran twice, not even the one in flight at the kill: its process ran on,
    # detached from the dead reconciler, and recorded its exit under its command id, which
    # the resumed run re-issues and answers from that record instead of starting it again
    # (``test_a_step_still_running_at_the_restart_is_adopted`` adopts one still running).
    logs = deploy_logs(data)
    for target, lines in logs.items():
        assert lines == ["1.0", "2.0"], (target, logs)

    # The store: the killed run is interrupted, with what it had done; its successor resumes it.
    db = Database.open(data)
    try:
        runs, _ = RunStore(db).list("app", "prod", limit=10)
        store = RunStore(db)
        by_state = {(r.version, r.state) for r in runs}
        assert by_state == {
            ("1.0", RunState.SUCCEEDED),
            ("2.0", RunState.INTERRUPTED),
            ("2.0", RunState.SUCCEEDED),
        }
        (killed,) = [r for r in runs if r.state is RunState.INTERRUPTED]
        (final,) = [r for r in runs if r.version == "2.0" and r.state is RunState.SUCCEEDED]
        assert final.resumes == killed.id
        assert final.config_commit == killed.config_commit == release
        assert {f"deploy:{t}" for t in done} <= set(killed.detail["done_steps"])
        carried = {
            s.key: s.result.get("resumed_from")
            for s in store.steps(final.id)
            if s.key.startswith("deploy:")
        }
        assert {k for k, v in carried.items() if v == killed.id} == {f"deploy:{t}" for t in done}
        assert set(carried) == {f"deploy:t{i}" for i in range(1, TARGETS + 1)}
    finally:
        db.close()

    # History in Git: exactly one success for 2.0, by the resuming run, noted on the release.
    subjects = git(repo.path, "log", "--format=%s", "refs/quicflow/state").splitlines()
    assert subjects == ["app/prod: 1.0 -> 2.0 succeeded", "app/prod: nothing -> 1.0 succeeded"]
    body = git(repo.path, "log", "-1", "--format=%B", "refs/quicflow/state")
    assert f"Run: {final.id}" in body and f"Config-Commit: {release}" in body
    note = git(repo.path, "notes", "--ref=quicflow", "show", release)
    assert note.count("\n") == 0 and f"quicflow run {final.id}:" in note and "succeeded" in note
    shown = subprocess.run(
        [sys.executable, "-m", "reconciler", "history", "app", "prod", "--repo", str(repo.path)],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.splitlines()
    assert len(shown) == 2
    assert "1.0 -> 2.0 succeeded" in shown[0] and "deployed 2.0" in shown[0]
    assert "nothing -> 1.0 succeeded" in shown[1]

    # Nothing changed in Git: a further pass deploys nothing.
    again = apply(repo.path, data)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to do" in again.stdout
    assert deploy_logs(data) == logs


GATED = PROJECT.replace('sleep "$DEPLOY_DELAY"', 'while [ ! -e "$GATE" ]; do sleep 0.02; done')


def test_a_second_apply_leaves_a_live_run_to_its_process(tmp_path: Path) -> None:
    """An ``apply`` started beside a running one (or beside ``serve``) on the same data dir
    refuses to start — naming the data dir and the pid that holds it — so it neither
    interrupts the first one's run nor starts a second one for the same environment. The
    first deploy script blocks on a gate file, so the first process is certainly mid-run
    while the second one tries."""
    repo = ConfigRepo(tmp_path / "config")
    data = tmp_path / "data"
    gate = tmp_path / "gate"
    env = env_yaml("1.0", 0) + f'  GATE: "{gate}"\n'
    repo.commit(
        {
            "quicflow.yaml": USERS,
            "projects/app/project.yaml": GATED,
            "projects/app/environments/prod.yaml": env,
        }
    )
    first = subprocess.Popen(
        apply_command(repo.path, data),
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while deploy_logs(data)["t1"] != ["1.0"]:
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.01)
        beside = apply(repo.path, data)
        gate.touch()
        out, _ = first.communicate(timeout=60)
    finally:
        gate.touch()
        if first.poll() is None:
            first.kill()
            first.wait()
    assert beside.returncode == 1, beside.stdout + beside.stderr
    assert (
        f"data dir {data.resolve()} is in use by another quicflow process "
        f"(pid {first.pid}, quicflow apply" in beside.stderr
    ), beside.stderr
    assert beside.stdout == ""  # it reconciled nothing
    assert first.returncode == 0, out
    assert "app/prod (nothing) -> 1.0: succeeded" in out
    assert deploy_logs(data) == {f"t{i}": ["1.0"] for i in range(1, TARGETS + 1)}
    db = Database.open(data)
    try:
        runs, _ = RunStore(db).list("app", "prod")
    finally:
        db.close()
    assert [r.state for r in runs] == [RunState.SUCCEEDED]


PIDFUL = PROJECT.replace(
    'sleep "$DEPLOY_DELAY"',
    'echo $$ > step.pid; while [ ! -e "$GATE" ]; do sleep 0.02; done',
)


def test_a_step_left_running_for_a_release_git_left_is_killed(tmp_path: Path) -> None:
    """Killed mid-step, then Git moves on before the restart: the old release never resumes,
    so the step process it left running (blocked on a gate forever) is killed when the next
    run replaces it — it neither lingers nor finishes the old version later."""
    repo = ConfigRepo(tmp_path / "config")
    data = tmp_path / "data"
    gate = tmp_path / "gate"
    repo.commit(
        {
            "quicflow.yaml": USERS,
            "projects/app/project.yaml": PIDFUL,
            "projects/app/environments/prod.yaml": env_yaml("1.0", 0) + f'  GATE: "{gate}"\n',
        }
    )
    first = subprocess.Popen(
        apply_command(repo.path, data),
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pid_file = data / "targets" / "app" / "prod" / "t1" / "step.pid"
    try:
        deadline = time.monotonic() + 30
        while not (pid_file.exists() and pid_file.read_text().strip()):
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.01)
    finally:
        first.kill()
        first.wait()
    step_pid = int(pid_file.read_text())
    os.kill(step_pid, 0)  # the step outlived the reconciler, still blocked on its gate

    repo.commit(
        {
            "projects/app/project.yaml": PROJECT,
            "projects/app/environments/prod.yaml": env_yaml("3.0", 0),
        }
    )
    second = apply(repo.path, data)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "app/prod (nothing) -> 3.0: succeeded" in second.stdout, second.stdout
    deadline = time.monotonic() + 5
    while _alive(step_pid):
        assert time.monotonic() < deadline, "the abandoned step is still running"
        time.sleep(0.02)
    gate.touch()  # had it survived, it would now write 1.0 after 3.0
    time.sleep(0.2)
    assert deploy_logs(data)["t1"] == ["1.0", "3.0"]
    assert (data / "targets" / "app" / "prod" / "t1" / "version").read_text().strip() == "3.0"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


def test_a_step_still_running_at_the_restart_is_adopted(tmp_path: Path) -> None:
    """Killed while a deploy script blocks on a gate; restarted while it still blocks: the
    resumed run follows that very process (same pid) to its end, and it deploys once."""
    repo = ConfigRepo(tmp_path / "config")
    data = tmp_path / "data"
    gate = tmp_path / "gate"
    repo.commit(
        {
            "quicflow.yaml": USERS,
            "projects/app/project.yaml": PIDFUL,
            "projects/app/environments/prod.yaml": env_yaml("1.0", 0) + f'  GATE: "{gate}"\n',
        }
    )
    first = subprocess.Popen(
        apply_command(repo.path, data),
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pid_file = data / "targets" / "app" / "prod" / "t1" / "step.pid"
    try:
        deadline = time.monotonic() + 30
        while not (pid_file.exists() and pid_file.read_text().strip()):
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.01)
    finally:
        first.kill()
        first.wait()
    step_pid = int(pid_file.read_text())

    second = subprocess.Popen(
        apply_command(repo.path, data),
        cwd=tmp_path,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(2.0)  # the restarted reconciler is up and waits on the adopted step
        assert second.poll() is None, second.stdout and second.stdout.read()
        assert _alive(step_pid)
        gate.touch()
        out, _ = second.communicate(timeout=60)
    finally:
        gate.touch()
        if second.poll() is None:
            second.kill()
            second.wait()
    assert second.returncode == 0, out
    assert "app/prod (nothing) -> 1.0: succeeded" in out, out
    assert deploy_logs(data) == {f"t{i}": ["1.0"] for i in range(1, TARGETS + 1)}
    # The first target's script started once: the pid it wrote is the one that was adopted.
    assert int(pid_file.read_text()) == step_pid
