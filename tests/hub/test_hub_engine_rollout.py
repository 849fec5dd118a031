"""A rolling deploy through the engine over 5 real agents (subprocesses) on loopback QUIC."""

from __future__ import annotations

from pathlib import Path

import pytest
from gitrepos import ConfigRepo

from reconciler.engine.agents import HubExecutor
from reconciler.engine.reconciling import Reconciler
from reconciler.gitops.repository import GitRepository
from reconciler.hub.server import Hub
from reconciler.runs import RunState
from reconciler.targets.resolving import Executors

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
