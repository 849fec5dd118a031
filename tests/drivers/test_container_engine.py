"""The container deploy type through the release engine, on the real Docker daemon.

Targets are local (they share this machine's daemon, so each gets its own container
name and host port); the images come from the htpasswd-protected local registry, with
the registry credential read from a real SOPS file. Version 2.0's health endpoint
answers HTTP 500: rolling stops and auto-rollback restarts the previous digest, canary
stops at its first step, blue-green never switches.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from dockerenv import remove_test_objects
from gitrepos import ConfigRepo
from releasing import USERS, free_ports

from reconciler.credential import age, documents, sops
from reconciler.engine.reconciling import Reconciler
from reconciler.gitops.repository import GitRepository
from reconciler.runs import RunState

pytestmark = pytest.mark.integration

ENV_FILE = "projects/web/environments/prod.yaml"


HTTP_HEALTH = """\
  health:
    http: {path: /cgi-bin/healthz, port: 8000}
    retries: 10
    interval: 200ms
    timeout: 1s
"""
DOCKER_HEALTH = """\
  health:
    docker: true
    retries: 25
    interval: 200ms
"""


def _project(images: dict, strategy: str, health: str = HTTP_HEALTH) -> str:
    return f"""\
members:
  - {{user: bob, role: owner}}
variables:
  GREETING: hello
  DB_PASSWORD: {{secret: registry, field: password}}
deploy:
  type: container
  timeout: 60s
  container:
    image: "{images["repository"]}:{{{{ version }}}}"
    registry_credential: registry
    ports: ["8000:8000"]
    labels: {{quicflow.test: "1"}}
    restart_policy: "no"
    resources: {{memory: 64m}}
    stop_timeout: 2s
{health}strategy:
{strategy}"""


def _env(version: str, ports: list[int]) -> str:
    targets = "\n".join(f"  - {{local: t{i + 1}, port: {p}}}" for i, p in enumerate(ports))
    return f'version: "{version}"\ntargets:\n{targets}\n'


class World:
    """A config repo with the registry credential, and reconciler passes over it."""

    def __init__(self, tmp_path: Path, images: dict):
        self.images = images
        self.registry = images["registry"]
        self.repo = ConfigRepo(tmp_path / "config")
        self.data = tmp_path / "data"
        identity, recipient = age.generate_identity()
        self.environ = {"SOPS_AGE_KEY": identity}
        plain = (
            "credentials:\n  registry:\n    type: username_password\n"
            f"    username: {self.registry.username}\n    password: {self.registry.password}\n"
        )
        self.credentials = sops.encrypt_text(plain, [recipient], documents.RULES)

    def start(self, strategy: str, ports: list[int], health: str = HTTP_HEALTH) -> None:
        self.repo.commit(
            {
                "quicflow.yaml": USERS,
                "projects/web/project.yaml": _project(self.images, strategy, health),
                "projects/web/credentials.sops.yaml": self.credentials,
                ENV_FILE: _env("1.0", ports),
            }
        )

    async def release(self, version: str, ports: list[int]):  # noqa: ANN201
        self.repo.commit({ENV_FILE: _env(version, ports)}, message=f"release {version}")
        return await self.reconcile()

    async def reconcile(self):  # noqa: ANN201
        rec = Reconciler(GitRepository.open(self.repo.path), self.data, environ=self.environ)
        try:
            (run,) = (await rec.reconcile_once()).runs
            self.log = "\n".join(line.line for line in rec.logs.read(run.id, limit=100_000))
            return run
        finally:
            await rec.close()

    def container(self, name: str) -> dict | None:
        out = subprocess.run(
            [self.registry.docker, "container", "inspect", name], capture_output=True, text=True
        )
        return json.loads(out.stdout)[0] if out.returncode == 0 else None

    def running_digest(self, name: str) -> str | None:
        found = self.container(name)
        if found is None or not found["State"]["Running"]:
            return None
        return found["Config"]["Labels"]["quicflow.image"].split("@", 1)[1]


@pytest.fixture
async def world(tmp_path: Path, images: dict) -> AsyncIterator[World]:
    found = World(tmp_path, images)
    yield found
    remove_test_objects(found.registry.docker)


async def test_rolling_stops_and_auto_rollback_restarts_the_previous_digest(world: World) -> None:
    ports = free_ports(3)
    world.start("  type: rolling\n  rolling: {batch_size: 2}\n", ports)
    first = await world.reconcile()
    assert first.state is RunState.SUCCEEDED, first.error
    good, bad = world.images["digests"]["1.0"], world.images["digests"]["2.0"]
    names = [f"web-prod-t{i}" for i in (1, 2, 3)]
    assert [world.running_digest(n) for n in names] == [good] * 3
    before = {n: world.container(n)["Id"] for n in names}  # type: ignore[index]
    labels = world.container("web-prod-t1")["Config"]["Labels"]  # type: ignore[index]
    assert labels["quicflow.project"] == "web" and labels["quicflow.version"] == "1.0"
    assert labels["quicflow.run"] == first.id and labels["quicflow.env"] == "prod"
    env = world.container("web-prod-t1")["Config"]["Env"]  # type: ignore[index]
    assert "GREETING=hello" in env and f"DB_PASSWORD={world.registry.password}" in env
    assert world.registry.password not in world.log  # masked wherever it was printed

    second = await world.release("2.0", ports)
    assert second.state is RunState.ROLLED_BACK, second.error
    assert "status 500" in second.error
    # The first batch (t1, t2) got 2.0, failed, and was restored to 1.0's digest from the
    # kept container; t3 was never touched.
    assert [world.running_digest(n) for n in names] == [good] * 3
    assert world.container("web-prod-t1")["Id"] == before["web-prod-t1"]  # type: ignore[index]
    assert world.container("web-prod-t3")["Id"] == before["web-prod-t3"]  # type: ignore[index]
    assert "restarted web-prod-t1 from" in world.log and bad not in world.log.split("restarted")[-1]
    assert world.registry.password not in world.log + second.error


async def test_canary_stops_at_its_first_step(world: World) -> None:
    ports = free_ports(2)
    world.start("  type: canary\n  canary: {steps: [50, 100], analysis: {window: 0s}}\n", ports)
    assert (await world.reconcile()).state is RunState.SUCCEEDED
    second = await world.release("2.0", ports)
    assert second.state is RunState.ROLLED_BACK, second.error
    good = world.images["digests"]["1.0"]
    assert world.running_digest("web-prod-t1") == good
    assert world.running_digest("web-prod-t2") == good
    labels = world.container("web-prod-t2")["Config"]["Labels"]  # type: ignore[index]
    assert labels["quicflow.version"] == "1.0"  # the second half never saw 2.0
    assert "web-prod-t2/container" not in world.log


async def test_blue_green_never_switches_to_an_unhealthy_color(world: World) -> None:
    (target,) = free_ports(1)
    blue, green = free_ports(2)
    world.start(
        "  type: blue_green\n  blue_green:\n"
        '    switch: echo "$QUICFLOW_COLOR $QUICFLOW_PORT" > "$QUICFLOW_WORK_DIR/live"\n'
        f"    ports: {{blue: {blue}, green: {green}}}\n    rollback_window: 1h\n",
        [target],
    )
    first = await world.reconcile()
    assert first.state is RunState.SUCCEEDED, first.error
    live = world.data / "targets" / "web" / "prod" / "t1" / "live"
    assert live.read_text().split() == ["blue", str(blue)]
    second = await world.release("2.0", [target])
    assert second.state is RunState.FAILED and "never switched" in second.error
    assert live.read_text().split() == ["blue", str(blue)]
    assert world.running_digest("web-prod-t1-blue") == world.images["digests"]["1.0"]
    assert world.container("web-prod-t1-green") is None  # the unhealthy color was removed


async def test_the_image_s_own_healthcheck_gates_a_rolling_deploy(world: World) -> None:
    ports = free_ports(1)
    world.start("  type: rolling\n", ports, DOCKER_HEALTH)
    first = await world.reconcile()
    assert first.state is RunState.SUCCEEDED, first.error
    container = world.container("web-prod-t1")
    assert container is not None and container["State"]["Health"]["Status"] == "healthy"
    second = await world.release("2.0", ports)
    assert second.state is RunState.ROLLED_BACK, second.error
    assert "Docker HEALTHCHECK reports unhealthy" in second.error
    assert world.running_digest("web-prod-t1") == world.images["digests"]["1.0"]
