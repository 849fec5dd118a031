"""Drift from containers over the real hub: an agent's Docker runs another digest → plan says drift.

A pipeline builds the app and deploys it through a real agent (a subprocess on
loopback QUIC, using this machine's daemon); the state ref records the built digest.
Then the container is replaced out of band by one running another digest with the same
quicflow labels — what a hand-made ``docker run`` or a stale deploy leaves behind. The
agent's next status report carries it to the hub, and the Reconciler's plan reports
drift naming the target; putting the recorded digest back ends the drift.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
from pathlib import Path

import pytest
from dockerenv import commit_app, make_app_repo, registry_or_skip, remove_test_objects
from gitrepos import ConfigRepo
from hub.conftest import Fleet
from releasing import USERS, free_ports

from reconciler.builds import BuildStatus
from reconciler.credential import age, documents, sops
from reconciler.engine import image_builds
from reconciler.engine.agents import HubExecutor
from reconciler.engine.reconciling import Reconciler
from reconciler.gitops import planning
from reconciler.gitops.repository import GitRepository
from reconciler.hub.server import Hub
from reconciler.runs import RunState
from reconciler.targets.resolving import Executors

pytestmark = pytest.mark.integration


def _docker(docker: str, *args: str) -> str:
    out = subprocess.run([docker, *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.strip()


async def _reported_image(hub: Hub, agent: str, container: str, image: str) -> None:
    """Wait until ``agent`` reports ``container`` running from ``image`` (its label)."""
    for _ in range(200):
        report = hub.status(agent)
        for found in report.containers if report else ():
            if (
                found.name == container
                and found.state == "running"
                and found.labels.get("quicflow.image") == image
            ):
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{agent} never reported {container} running {image}: {report}")


async def test_a_container_running_another_digest_is_planned_as_drift(
    hub: Hub, fleet: Fleet, tmp_path: Path
) -> None:
    registry = registry_or_skip()
    docker = registry.docker
    app = make_app_repo(tmp_path / "app", registry.busybox)
    commit_app(app, "1.0")
    commit_app(app, "2.0")
    fleet.spawn(hub, "web-1", extra=("--status-interval", "0.3"))
    await hub.wait_for_agents(["web-1"], timeout=20)
    (port,) = free_ports(1)
    identity, recipient = age.generate_identity()
    plain = (
        "credentials:\n  registry:\n    type: username_password\n"
        f"    username: {registry.username}\n    password: {registry.password}\n"
    )
    repository = f"{registry.address}/quicflow-test/drift-{secrets.token_hex(3)}"
    config = ConfigRepo(tmp_path / "config")
    config.commit(
        {
            "quicflow.yaml": USERS + "agents:\n  - {name: web-1, address: 127.0.0.1}\n",
            "projects/shop/credentials.sops.yaml": sops.encrypt_text(
                plain, [recipient], documents.RULES
            ),
            "projects/shop/project.yaml": f"""\
members: [{{user: alice, role: owner}}]
repo: {{url: "{app.path}"}}
build:
  enabled: true
  target_image: "{repository}:{{{{ version }}}}"
  registry_credential: registry
  args: {{VERSION: "1.0"}}
deploy:
  type: container
  container:
    ports: ["8000:8000"]
    labels: {{quicflow.test: "1"}}
    stop_timeout: 2s
  health:
    http: {{path: /cgi-bin/healthz, port: 8000}}
    retries: 10
    interval: 200ms
strategy: {{type: rolling}}
pipeline:
  stages:
    - {{name: build, tasks: [{{name: image, uses: build}}]}}
    - {{name: release, tasks: [{{name: deploy, uses: deploy}}]}}
""",
            "projects/shop/environments/prod.yaml": (
                f'version: "1.0"\ntargets: [{{agent: web-1, port: {port}}}]\n'
            ),
        }
    )
    rec = Reconciler(
        GitRepository.open(config.path),
        tmp_path / "data",
        executors=Executors(agents=HubExecutor(hub)),
        environ={"SOPS_AGE_KEY": identity},
    )
    rec.hub = hub
    try:
        (run,) = (await rec.reconcile_once()).runs
        assert run.state is RunState.SUCCEEDED, run.error
        built = run.detail["image_digest"]
        record = rec.history.record("shop", "prod")
        assert record is not None and record.image_digest == built
        pinned = f"{repository}@{built}"
        await _reported_image(hub, "web-1", "shop-prod", pinned)
        (action,) = rec.plan().actions
        assert (action.kind, action.reason) == (
            planning.ActionKind.NONE,
            planning.Reason.UNCHANGED,
        ), action.detail

        # Another digest of the app (2.0, built by the same Builder) replaces the container.
        assert rec.desired is not None
        project = rec.desired.projects["shop"]
        other = await rec.builder.build(
            image_builds.request_for(project, project.environments["prod"], "2.0")
        )
        assert other.status is BuildStatus.SUCCESS and other.digest != built, other.error
        labels = json.loads(_docker(docker, "container", "inspect", "shop-prod"))[0]["Config"][
            "Labels"
        ]
        _docker(docker, "rm", "-f", "shop-prod")
        stray = f"{repository}@{other.digest}"
        label_args = [
            a
            for k, v in {**labels, "quicflow.image": stray}.items()
            if k.startswith("quicflow.")
            for a in ("--label", f"{k}={v}")
        ]
        _docker(docker, "run", "-d", "--name", "shop-prod", *label_args, other.image)
        await _reported_image(hub, "web-1", "shop-prod", stray)
        (action,) = rec.plan().actions
        assert (action.kind, action.reason) == (planning.ActionKind.DEPLOY, planning.Reason.DRIFT)
        assert "web-1" in action.detail

        # The next pass redeploys; the recorded digest runs again and the drift is gone.
        (again,) = (await rec.reconcile_once()).runs
        assert again.state is RunState.SUCCEEDED, again.error
        current = rec.history.record("shop", "prod")
        assert current is not None and current.image_digest is not None
        await _reported_image(hub, "web-1", "shop-prod", f"{repository}@{current.image_digest}")
        assert rec.plan().actions[0].reason is planning.Reason.UNCHANGED
    finally:
        await rec.close()
        remove_test_objects(docker)
