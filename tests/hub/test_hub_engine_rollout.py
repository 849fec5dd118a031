"""The engine over real agents (subprocesses) on loopback QUIC: a rolling deploy over 5, and
a rollback that waits for an agent lost mid-step to report how that step ended."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from gitrepos import ConfigRepo

from agent import spawning
from reconciler.engine import running as running_module
from reconciler.engine.agents import HubExecutor
from reconciler.engine.reconciling import PassReport, Reconciler
from reconciler.gitops.repository import GitRepository
from reconciler.hub.server import Hub
from reconciler.runs import RunState, StepStatus
from reconciler.targets.resolving import Executors

if TYPE_CHECKING:
    from conftest import AgentProcess, Fleet, UdpRelay

pytestmark = pytest.mark.integration

AGENTS = [f"web-{i}" for i in range(1, 6)]

GLOBAL = (
    "users:\n  - {username: alice, email: alice@example.com, is_admin: true}\nagents:\n"
    + "".join(f"  - {{name: {name}, labels: {{role: web}}}}\n" for name in AGENTS)
)
PROJECT = """\
members:
  - {user: alice, role: owner}
variables:
  BAD_AGENT: none
deploy:
  type: script
  script:
    run: |
      set -eu
      echo "$QUICFLOW_VERSION" >> deploys.log
      echo "$QUICFLOW_VERSION" > version
      echo "deploying $QUICFLOW_VERSION on $QUICFLOW_TARGET"
      if [ "$QUICFLOW_TARGET" = "$BAD_AGENT" ]; then rm -f version; fi
  health:
    command: ["test", "-f", "version"]
    retries: 1
strategy:
  type: rolling
  rolling: {batch_size: 2}
"""


def _env(version: str) -> str:
    return f'version: "{version}"\ntargets:\n  - selector: {{role: web}}\n'


async def test_rolling_deploy_over_five_agents(hub: Hub, fleet, tmp_path: Path) -> None:  # noqa: ANN001
    for name in AGENTS:
        fleet.spawn(hub, name, labels="role=web")
    await hub.wait_for_agents(AGENTS, timeout=20)
    repo = ConfigRepo(tmp_path / "config")
    repo.commit(
        {
            "quicflow.yaml": GLOBAL,
            "projects/app/project.yaml": PROJECT,
            "projects/app/environments/prod.yaml": _env("1.0"),
        }
    )

    async def one_pass() -> list:
        rec = Reconciler(
            GitRepository.open(repo.path),
            tmp_path / "data",
            executors=Executors(agents=HubExecutor(hub)),
        )
        rec.hub = hub
        try:
            report = await rec.reconcile_once()
            lines = [line.line for run in report.runs for line in rec.logs.read(run.id)]
            return [report.runs, lines, rec.runs.steps(report.runs[0].id) if report.runs else []]
        finally:
            await rec.close()

    runs, lines, steps = await one_pass()
    assert [r.state for r in runs] == [RunState.SUCCEEDED], runs[0].error
    assert runs[0].detail["batches"] == [["web-1", "web-2"], ["web-3", "web-4"], ["web-5"]]
    for name in AGENTS:
        work = tmp_path / f"work-{name}" / "quicflow" / "app" / "prod"
        assert (work / "version").read_text().strip() == "1.0"
        assert f"deploying 1.0 on {name}" in lines  # streamed back from the agent
    assert [s.key for s in steps if s.key.startswith("deploy:")] == [f"deploy:{n}" for n in AGENTS]

    # web-4 fails its health check: the second batch stops, touched agents are restored.
    repo.commit(
        {
            "projects/app/project.yaml": PROJECT.replace("BAD_AGENT: none", "BAD_AGENT: web-4"),
            "projects/app/environments/prod.yaml": _env("2.0"),
        }
    )
    runs, _, _ = await one_pass()
    assert [r.state for r in runs] == [RunState.ROLLED_BACK]
    logs = {
        name: (tmp_path / f"work-{name}" / "quicflow" / "app" / "prod" / "deploys.log")
        .read_text()
        .split()
        for name in AGENTS
    }
    assert logs["web-5"] == ["1.0"]  # the batch after the failure never started
    assert logs["web-1"] == ["1.0", "2.0", "1.0"] and logs["web-4"] == ["1.0", "2.0", "1.0"]


def _hanging_project(tmp_path: Path) -> str:
    """web-2's deploy of 2.0 never ends (it ticks until killed); a rollback ends at once."""
    return f"""\
members:
  - {{user: alice, role: owner}}
deploy:
  type: script
  script:
    run: |
      # {tmp_path} (lets the fleet's cleanup find what a test leaves running)
      set -eu
      echo "$QUICFLOW_VERSION" >> deploys.log
      if [ "$QUICFLOW_VERSION" = 2.0 ] && [ "$QUICFLOW_TARGET" = web-2 ]; then
        echo $$ > step.pid
        while :; do echo tick >> ticks; sleep 0.1; done
      fi
      echo "$QUICFLOW_VERSION" > version
  health:
    command: ["test", "-f", "version"]
strategy:
  type: rolling
  rolling: {{batch_size: 2}}
"""


async def _deployed_then_hanging(
    hub: Hub, fleet: Fleet, tmp_path: Path
) -> tuple[dict[str, AgentProcess], asyncio.Task[PassReport], Reconciler]:
    """web-1 and web-2 on 1.0, then a pass for 2.0 running, web-2's deploy hanging: the
    agents, the pass (a task) and its reconciler."""
    names = ["web-1", "web-2"]
    agents = {name: fleet.spawn(hub, name, labels="role=web") for name in names}
    await hub.wait_for_agents(names, timeout=20)
    repo = ConfigRepo(tmp_path / "config")
    users = "users:\n  - {username: alice, email: alice@example.com, is_admin: true}\n"
    repo.commit(
        {
            "quicflow.yaml": users
            + "agents:\n"
            + "".join(f"  - {{name: {n}, labels: {{role: web}}}}\n" for n in names),
            "projects/app/project.yaml": _hanging_project(tmp_path),
            "projects/app/environments/prod.yaml": _env("1.0"),
        }
    )

    def reconciler() -> Reconciler:
        rec = Reconciler(
            GitRepository.open(repo.path),
            tmp_path / "data",
            executors=Executors(agents=HubExecutor(hub)),
        )
        rec.hub = hub
        return rec

    first = reconciler()
    try:
        report = await first.reconcile_once()
        assert [r.state for r in report.runs] == [RunState.SUCCEEDED], report.runs[0].error
    finally:
        await first.close()
    repo.commit({"projects/app/environments/prod.yaml": _env("2.0")})
    rec = reconciler()
    running = asyncio.create_task(rec.reconcile_once())
    step_pid = _work(tmp_path, "web-2") / "step.pid"
    deadline = time.monotonic() + 20
    while not step_pid.exists():
        assert time.monotonic() < deadline and not running.done(), "web-2 never started 2.0"
        await asyncio.sleep(0.05)
    return agents, running, rec


def _work(tmp_path: Path, name: str) -> Path:
    return tmp_path / f"work-{name}" / "quicflow" / "app" / "prod"


def _deploys(tmp_path: Path, name: str) -> list[str]:
    return (_work(tmp_path, name) / "deploys.log").read_text().split()


async def _wait_for_log(rec: Reconciler, text: str, running: asyncio.Task[PassReport]) -> None:
    deadline = time.monotonic() + 30
    while True:
        run = rec.runs.latest("app", "prod")
        lines = [line.line for line in rec.logs.read(run.id)] if run else []
        if any(text in line for line in lines):
            return
        assert time.monotonic() < deadline and not running.done(), f"{text!r} not in {lines}"
        await asyncio.sleep(0.1)


async def test_no_rollback_while_an_agent_lost_mid_step_is_away(
    hub: Hub, fleet: Fleet, tmp_path: Path
) -> None:
    agents, running, rec = await _deployed_then_hanging(hub, fleet, tmp_path)
    try:
        session = int((_work(tmp_path, "web-2") / "step.pid").read_text())
        agents["web-2"].crash()  # its deploy runs on, orphaned, while the hub loses it
        await _wait_for_log(rec, "the rollback waits until the agent reports back", running)
        await asyncio.sleep(1.0)
        # Nothing was rolled back anywhere while web-2's deploy may still be running.
        assert _deploys(tmp_path, "web-1") == ["1.0", "2.0"]
        assert _deploys(tmp_path, "web-2") == ["1.0", "2.0"]
        assert not running.done()
        assert any(p.session == session and p.alive for p in spawning.processes())

        # web-2's agent comes back: it kills the orphan, reports it, and the rollback runs.
        fleet.spawn(hub, "web-2", labels="role=web", work_dir=agents["web-2"].work_dir)
        report = await asyncio.wait_for(running, 60)
        assert [r.state for r in report.runs] == [RunState.ROLLED_BACK], report.runs[0].error
        assert not any(p.session == session and p.alive for p in spawning.processes())
        assert _deploys(tmp_path, "web-1") == ["1.0", "2.0", "1.0"]
        assert _deploys(tmp_path, "web-2") == ["1.0", "2.0", "1.0"]
        lines = [line.line for line in rec.logs.read(report.runs[0].id)]
        assert any(
            line.startswith("agent web-2 reported deploy:web-2 (command ")
            and "were killed before the agent reconnected" in line
            for line in lines
        ), lines
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await rec.close()


async def test_an_agent_that_never_reports_back_is_left_as_it_is(
    hub: Hub, fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(running_module, "LOST_AGENT_WAIT", 1.0)
    agents, running, rec = await _deployed_then_hanging(hub, fleet, tmp_path)
    try:
        agents["web-2"].crash()
        report = await asyncio.wait_for(running, 60)
        [run] = report.runs
        assert run.state is RunState.FAILED
        assert "rollback failed on web-2: agent web-2 lost while running deploy:web-2" in run.error
        assert "its fate is unknown, so nothing was undone there" in run.error
        # The targets whose fate is known are restored; the lost one is left alone.
        assert _deploys(tmp_path, "web-1") == ["1.0", "2.0", "1.0"]
        assert _deploys(tmp_path, "web-2") == ["1.0", "2.0"]
        [step] = [s for s in rec.runs.steps(run.id) if s.key == "rollback:web-2"]
        assert step.status is StepStatus.FAILED and "fate is unknown" in step.error
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await rec.close()


async def test_a_task_lost_mid_attempt_is_not_retried_beside_itself(
    hub: Hub, fleet: Fleet, relay: tuple[UdpRelay, int], tmp_path: Path
) -> None:
    """A network cut longer than the reconnect grace: the hub gives the attempt up as lost
    while the agent runs it on. A retry then would run a second copy; instead the task
    waits for the agent to report how the attempt ended, and that decides it."""
    udp_relay, port = relay
    marker = tmp_path / "migrations"
    fleet.spawn(hub, "web-1", port=port, labels="role=web")
    await hub.wait_for_agents(["web-1"], timeout=20)
    repo = ConfigRepo(tmp_path / "config")
    repo.commit(
        {
            "quicflow.yaml": "users:\n  - {username: alice, email: alice@example.com,"
            " is_admin: true}\nagents:\n  - {name: web-1, labels: {role: web}}\n",
            "projects/app/project.yaml": f"""\
members:
  - {{user: alice, role: owner}}
deploy:
  type: script
  script:
    run: echo "$QUICFLOW_VERSION" > version
pipeline:
  stages:
    - name: prepare
      tasks:
        - name: migrate
          run_on: targets
          retries: 5
          run: |
            echo start >> {marker}
            sleep 6
            echo end >> {marker}
    - name: release
      tasks:
        - {{name: deploy, uses: deploy}}
""",
            "projects/app/environments/prod.yaml": _env("1.0").replace(
                "selector: {role: web}", "agent: web-1"
            ),
        }
    )
    rec = Reconciler(
        GitRepository.open(repo.path),
        tmp_path / "data",
        executors=Executors(agents=HubExecutor(hub)),
    )
    rec.hub = hub
    running = asyncio.create_task(rec.reconcile_once())
    try:
        deadline = time.monotonic() + 20
        while not marker.exists():
            assert time.monotonic() < deadline and not running.done(), "migrate never started"
            await asyncio.sleep(0.05)
        # 3 missed heartbeats (1.5 s) and the reconnect grace (3 s) pass inside the cut.
        await udp_relay.cut(5.0)
        report = await asyncio.wait_for(running, 60)
        [run] = report.runs
        assert run.state is RunState.SUCCEEDED, run.error
        assert marker.read_text().split() == ["start", "end"]  # one copy, never two
        lines = [line.line for line in rec.logs.read(run.id)]
        assert any("no retry until it reports how that attempt ended" in line for line in lines)
        assert any(
            line.startswith("agent web-1 reported on:prepare/migrate/web-1")
            and "exit code 0" in line
            for line in lines
        ), lines
        assert not any("retrying in" in line for line in lines), lines
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await rec.close()
