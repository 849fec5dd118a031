"""Container deploys through real agents (subprocesses on loopback QUIC) and their Docker.

Three agents run here beside the test, all using this machine's daemon, so the
container name is a template with ``{{ target }}`` and each agent target has its own
port. Version 2.0 answers HTTP 500 on its health endpoint: the rolling deploy stops at
the first batch and auto-rollback restarts the previous digest on the touched agents.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from dockerenv import remove_test_objects
from gitrepos import ConfigRepo
from hub.conftest import Fleet
from releasing import free_ports

from reconciler.credential import age, documents, sops
from reconciler.engine.agents import HubExecutor
from reconciler.engine.reconciling import Reconciler
from reconciler.gitops.repository import GitRepository
from reconciler.hub.server import Hub
from reconciler.runs import RunState
from reconciler.targets.resolving import Executors

pytestmark = pytest.mark.integration

AGENTS = ["web-1", "web-2", "web-3"]
ENV_FILE = "projects/shop/environments/prod.yaml"


def _files(images: dict, ports: list[int], version: str, recipient: str) -> dict[str, str]:
    registry = images["registry"]
    plain = (
        "credentials:\n  registry:\n    type: username_password\n"
        f"    username: {registry.username}\n    password: {registry.password}\n"
    )
    agents = "".join(f"  - {{name: {n}, address: 127.0.0.1}}\n" for n in AGENTS)
    targets = "".join(
        f"  - {{agent: {n}, port: {p}}}\n" for n, p in zip(AGENTS, ports, strict=True)
    )
    return {
        "quicflow.yaml": "users:\n  - {username: alice, email: a@example.com}\n"
        f"agents:\n{agents}",
        "projects/shop/credentials.sops.yaml": sops.encrypt_text(
            plain, [recipient], documents.RULES
        ),
        "projects/shop/project.yaml": f"""\
members: [{{user: alice, role: owner}}]
deploy:
  type: container
  container:
    image: "{images["repository"]}:{{{{ version }}}}"
    name: "quicflow-agent-{{{{ target }}}}"
    registry_credential: registry
    ports: ["8000:8000"]
    labels: {{quicflow.test: "1"}}
    stop_timeout: 2s
  health:
    http: {{path: /cgi-bin/healthz, port: 8000}}
    retries: 10
    interval: 200ms
strategy:
  type: rolling
  rolling: {{batch_size: 2}}
""",
        ENV_FILE: f'version: "{version}"\ntargets:\n{targets}',
    }


def _digest(docker: str, name: str) -> str | None:
    out = subprocess.run([docker, "container", "inspect", name], capture_output=True, text=True)
    if out.returncode != 0:
        return None
    found = json.loads(out.stdout)[0]
    if not found["State"]["Running"]:
        return None
    return found["Config"]["Labels"]["quicflow.image"].split("@", 1)[1]


async def test_rolling_container_deploy_through_agents_rolls_back_the_previous_digest(
    hub: Hub, fleet: Fleet, images: dict, tmp_path: Path
) -> None:
    docker = images["registry"].docker
    for name in AGENTS:
        fleet.spawn(hub, name)
    await hub.wait_for_agents(AGENTS, timeout=20)
    ports = free_ports(len(AGENTS))
    repo = ConfigRepo(tmp_path / "config")
    identity, recipient = age.generate_identity()
    repo.commit(_files(images, ports, "1.0", recipient))
    environ = {"SOPS_AGE_KEY": identity}

    async def one_pass():  # noqa: ANN202
        rec = Reconciler(
            GitRepository.open(repo.path),
            tmp_path / "data",
            executors=Executors(agents=HubExecutor(hub)),
            environ=environ,
        )
        rec.hub = hub
        try:
            (run,) = (await rec.reconcile_once()).runs
            return run, "\n".join(line.line for line in rec.logs.read(run.id, limit=100_000))
        finally:
            await rec.close()

    try:
        first, log = await one_pass()
        assert first.state is RunState.SUCCEEDED, first.error
        good, bad = images["digests"]["1.0"], images["digests"]["2.0"]
        names = [f"quicflow-agent-{n}" for n in AGENTS]
        assert [_digest(docker, n) for n in names] == [good] * 3
        assert "started quicflow-agent-web-1" in log  # streamed back from the agent

        repo.commit({ENV_FILE: _files(images, ports, "2.0", recipient)[ENV_FILE]})
        second, log = await one_pass()
        assert second.state is RunState.ROLLED_BACK, second.error
        assert "status 500" in second.error
        assert [_digest(docker, n) for n in names] == [good] * 3
        assert "restarted quicflow-agent-web-1" in log and "restarted quicflow-agent-web-2" in log
        assert "quicflow-agent-web-3" not in log  # the batch after the failure never started
        assert bad not in log.split("restarted quicflow-agent-web-1")[-1]
        assert images["registry"].password not in log
    finally:
        remove_test_objects(docker)
