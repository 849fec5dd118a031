"""The kubernetes deploy type through the release engine, against the stand-in API server.

No Kubernetes API server can run here: ``kubeapi.ApiServer`` is a stand-in (see its
docstring) — a real HTTP server on loopback that the official ``kubernetes`` client
talks to exactly as to a cluster. The config repo is real Git, the kubeconfig is a real
SOPS-encrypted credential, and every pass is a real ``Reconciler``. The tests drive
the stand-in's rollouts (ready, stalled past the progress deadline, crash looping) and
read what it holds afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from gitrepos import ConfigRepo
from kubeapi import ApiServer
from releasing import USERS

from reconciler.credential import age, documents, sops
from reconciler.engine.reconciling import Reconciler
from reconciler.gitops.repository import GitRepository
from reconciler.runs import Run, RunState

pytestmark = pytest.mark.integration

NS = "shop"
ENV_FILE = "projects/web/environments/prod.yaml"
TOKEN = "deployer-token-3f9a"
DB_PASSWORD = "s3cr3t-db-pw-71"


def _project(strategy: str, health: str = "", extra: str = "") -> str:
    return f"""\
members:
  - {{user: bob, role: owner}}
variables:
  GREETING: hello
  DB_PASSWORD: {{secret: db, field: password}}
deploy:
  type: kubernetes
  timeout: 60s
  kubernetes:
    namespace: {NS}
    deployment: web
    container: app
    image: "registry.example.com/acme/web:{{{{ version }}}}"
    replicas: 4
    ports: [{{port: 80, target_port: 8080, name: http}}]
    resources: {{requests: {{cpu: 100m, memory: 64Mi}}}}
    labels: {{team: shop}}
    kubeconfig_credential: cluster
    api_grace: 2s
{extra}{health}strategy:
{strategy}"""


HTTP_HEALTH = """\
  health:
    http: {path: /ready, port: 8080}
    retries: 2
    interval: 50ms
"""


class World:
    """A config repo deploying to the stand-in, and reconciler passes over it."""

    def __init__(self, tmp_path: Path, server: ApiServer):
        self.server = server
        self.cluster = server.cluster
        self.repo = ConfigRepo(tmp_path / "config")
        self.data = tmp_path / "data"
        identity, self.recipient = age.generate_identity()
        self.environ = {"SOPS_AGE_KEY": identity}
        self.log = ""

    def credentials(self, kubeconfig: str) -> str:
        indented = "\n".join("      " + line for line in kubeconfig.splitlines())
        plain = (
            "credentials:\n"
            "  cluster:\n    type: access_token\n    token: |\n" + indented + "\n"
            f"  db:\n    type: username_password\n    username: app\n    password: {DB_PASSWORD}\n"
        )
        return sops.encrypt_text(plain, [self.recipient], documents.RULES)

    def start(self, strategy: str, health: str = "", token: str = TOKEN, extra: str = "") -> None:
        self.repo.commit(
            {
                "quicflow.yaml": USERS,
                "projects/web/project.yaml": _project(strategy, health, extra),
                "projects/web/credentials.sops.yaml": self.credentials(
                    self.server.kubeconfig(token)
                ),
                ENV_FILE: 'version: "1.0"\n',
            }
        )

    async def release(self, version: str) -> Run:
        self.repo.commit({ENV_FILE: f'version: "{version}"\n'}, message=f"release {version}")
        return await self.reconcile()

    async def reconcile(self) -> Run:
        rec = Reconciler(GitRepository.open(self.repo.path), self.data, environ=self.environ)
        try:
            (run,) = (await rec.reconcile_once()).runs
            self.log = "\n".join(line.line for line in rec.logs.read(run.id, limit=100_000))
            return run
        finally:
            await rec.close()

    async def plan(self):  # noqa: ANN201
        rec = Reconciler(GitRepository.open(self.repo.path), self.data, environ=self.environ)
        try:
            await rec.refresh()
            from reconciler.engine import clusters

            desired = rec.source.desired
            assert desired is not None
            rec._cluster_observations = await clusters.observe(
                desired, rec.history.deployed()[1], rec.credentials
            )
            return rec.plan()
        finally:
            await rec.close()

    def deployment(self, name: str) -> dict | None:
        return self.cluster.get("deployments", NS, name)

    def image(self, name: str) -> str | None:
        found = self.deployment(name)
        if found is None:
            return None
        return found["spec"]["template"]["spec"]["containers"][0]["image"]


@pytest.fixture
def server() -> Iterator[ApiServer]:
    stand_in = ApiServer().start()
    stand_in.cluster.tokens[TOKEN] = "admin"
    yield stand_in
    stand_in.stop()


@pytest.fixture
def world(tmp_path: Path, server: ApiServer) -> World:
    return World(tmp_path, server)


IMAGE = "registry.example.com/acme/web"


async def test_rolling_applies_a_deployment_service_and_secret_and_rolls_back(
    world: World,
) -> None:
    world.start("  type: rolling\n  rolling: {max_unavailable: 1, max_surge: 2}\n")
    first = await world.reconcile()
    assert first.state is RunState.SUCCEEDED, first.error
    web = world.deployment("web")
    assert web is not None
    spec = web["spec"]
    assert spec["replicas"] == 4
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 2, "maxUnavailable": 1}
    container = spec["template"]["spec"]["containers"][0]
    assert container["image"] == f"{IMAGE}:1.0"
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "64Mi"}}
    env = {e["name"]: e for e in container["env"]}
    assert env["GREETING"] == {"name": "GREETING", "value": "hello"}
    # The secret is referenced, never written into the Deployment.
    assert env["DB_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "web-env",
        "key": "DB_PASSWORD",
    }
    assert DB_PASSWORD not in json.dumps(web)
    secret = world.cluster.get("secrets", NS, "web-env")
    assert secret is not None
    assert base64.b64decode(secret["data"]["DB_PASSWORD"]).decode() == DB_PASSWORD
    labels = web["metadata"]["labels"]
    assert labels["quicflow.dev/project"] == "web" and labels["quicflow.dev/env"] == "prod"
    assert labels["quicflow.dev/version"] == "1.0" and labels["quicflow.dev/run"] == first.id
    assert labels["team"] == "shop"
    service = world.cluster.get("services", NS, "web")
    assert service is not None
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "web"}
    assert service["spec"]["ports"][0]["targetPort"] == 8080
    # Server-side apply with our own field manager, and nothing else.
    managers = {m["manager"] for m in web["metadata"]["managedFields"]}
    assert managers == {"quicflow"}
    applies = [r for r in world.cluster.requests if r[0] == "PATCH"]
    assert applies and all(r[3] == "application/apply-patch+yaml" for r in applies)
    assert all(r[2]["fieldManager"] == ["quicflow"] for r in applies)
    assert DB_PASSWORD not in world.log and TOKEN not in world.log
    assert first.detail.get("image_digest", "").startswith("sha256:")

    # 2.0 never becomes available: Kubernetes says the progress deadline passed.
    world.cluster.rollout(NS, "web", "deadline", image=f"{IMAGE}:2.0")
    second = await world.release("2.0")
    assert second.state is RunState.ROLLED_BACK, second.error
    assert "ProgressDeadlineExceeded" in second.error
    assert "has timed out progressing" in second.error
    # Rolled back to 1.0's image, read from the annotation the 2.0 apply left.
    assert world.image("web") == f"{IMAGE}:1.0"
    assert "rollout of Deployment shop/web failed" in world.log


async def test_canary_scales_a_canary_and_promotes(world: World) -> None:
    world.start(
        "  type: canary\n  canary: {steps: [25, 50, 100], analysis: {window: 0s}}\n", HTTP_HEALTH
    )
    assert (await world.reconcile()).state is RunState.SUCCEEDED
    sizes: list[int] = []
    original = world.cluster._control

    def spy(namespace: str, name: str, **kw: object) -> None:
        if name == "web-canary":
            sizes.append(
                int(world.cluster.objects[("deployments", namespace, name)]["spec"]["replicas"])
            )
        original(namespace, name, **kw)  # type: ignore[arg-type]

    world.cluster._control = spy  # type: ignore[method-assign]
    second = await world.release("2.0")
    assert second.state is RunState.SUCCEEDED, second.error
    assert sizes == [1, 2]  # 25% and 50% of 4 replicas
    assert world.image("web") == f"{IMAGE}:2.0"
    assert world.deployment("web-canary") is None  # removed once promoted
    canary = [line for line in world.log.splitlines() if "canary at" in line]
    assert len(canary) == 2 and "1 of 4 replicas" in canary[0]


async def test_canary_aborted_by_failing_health(world: World) -> None:
    world.start(
        "  type: canary\n  canary: {steps: [50, 100], analysis: {window: 0s}}\n", HTTP_HEALTH
    )
    assert (await world.reconcile()).state is RunState.SUCCEEDED

    def health(pod: dict, port: int, path: str) -> tuple[int, str]:
        track = pod["metadata"]["labels"].get("quicflow.dev/track")
        return (500, "boom") if track == "canary" else (200, "ok")

    world.cluster.http = health
    second = await world.release("2.0")
    assert second.state is RunState.ROLLED_BACK, second.error
    assert "status 500" in second.error
    assert world.deployment("web-canary") is None  # aborted: no pod of 2.0 serves
    assert world.image("web") == f"{IMAGE}:1.0"  # the primary never left 1.0
    assert "removed canary Deployment web-canary" in world.log


async def test_blue_green_switches_the_service_and_rolls_back(world: World) -> None:
    world.start("  type: blue_green\n  blue_green: {rollback_window: 1h}\n", HTTP_HEALTH)
    first = await world.reconcile()
    assert first.state is RunState.SUCCEEDED, first.error
    service = world.cluster.get("services", NS, "web")
    assert service is not None and service["spec"]["selector"]["quicflow.dev/color"] == "blue"
    second = await world.release("2.0")
    assert second.state is RunState.SUCCEEDED, second.error
    assert world.image("web-green") == f"{IMAGE}:2.0"
    assert world.image("web-blue") == f"{IMAGE}:1.0"  # kept for the rollback window
    service = world.cluster.get("services", NS, "web")
    assert service is not None and service["spec"]["selector"]["quicflow.dev/color"] == "green"

    # A release whose new color is unhealthy never switches, and the color is removed.
    world.cluster.rollout(NS, "web-blue", "deadline", image=f"{IMAGE}:3.0")
    third = await world.release("3.0")
    assert third.state is RunState.FAILED and "never switched" in third.error
    service = world.cluster.get("services", NS, "web")
    assert service is not None and service["spec"]["selector"]["quicflow.dev/color"] == "green"

    # Rollback: 1.0 again goes onto blue and the Service switches back.
    world.cluster.rollout(NS, "web-blue", "ready")
    back = await world.release("1.0")
    assert back.state is RunState.SUCCEEDED, back.error
    service = world.cluster.get("services", NS, "web")
    assert service is not None and service["spec"]["selector"]["quicflow.dev/color"] == "blue"
    assert world.image("web-blue") == f"{IMAGE}:1.0"


async def test_retire_scales_the_old_color_to_zero(world: World, tmp_path: Path) -> None:
    world.start("  type: blue_green\n  blue_green: {rollback_window: 0s}\n")
    assert (await world.reconcile()).state is RunState.SUCCEEDED
    assert (await world.release("2.0")).state is RunState.SUCCEEDED
    rec = Reconciler(GitRepository.open(world.repo.path), world.data, environ=world.environ)
    try:
        await rec.reconcile_once()  # retirement is due at once
    finally:
        await rec.close()
    blue = world.deployment("web-blue")
    assert blue is not None and blue["spec"]["replicas"] == 0
    assert blue["spec"]["template"]["spec"]["containers"][0]["image"] == f"{IMAGE}:1.0"
    assert world.deployment("web-green")["spec"]["replicas"] == 4  # type: ignore[index]


async def test_crash_looping_pods_are_unhealthy(world: World) -> None:
    world.start("  type: rolling\n", extra="")
    world.cluster.rollout(NS, "web", "restarts")  # ready, but restarting over and over
    run = await world.reconcile()
    assert run.state is RunState.FAILED, run.error
    assert "restarted 7 times (restart_limit 3)" in run.error


async def test_unauthorized_and_forbidden_say_so(world: World) -> None:
    world.start("  type: rolling\n", token="wrong-token")
    run = await world.reconcile()
    assert run.state is RunState.FAILED
    assert "401 Unauthorized" in run.error and "credential 'cluster'" in run.error
    assert "wrong-token" not in run.error + world.log

    world.cluster.tokens["reader-token"] = "read-only"
    world.repo.commit(
        {
            "projects/web/credentials.sops.yaml": world.credentials(
                world.server.kubeconfig("reader-token")
            ),
            ENV_FILE: 'version: "1.1"\n',  # a new release: the failed one is not retried
        }
    )
    run = await world.reconcile()
    assert run.state is RunState.FAILED
    assert "403 Forbidden" in run.error
    assert 'cannot patch resource "secrets"' in run.error or "cannot patch" in run.error


async def test_api_server_going_away_mid_rollout(world: World) -> None:
    world.start("  type: rolling\n")
    world.cluster.rollout(NS, "web", "manual")  # the rollout waits for the test

    async def go_away() -> None:
        await asyncio.to_thread(
            world.cluster.wait_for, lambda: ("deployments", NS, "web") in world.cluster.objects
        )
        await asyncio.sleep(0.3)
        world.server.stop()

    stopper = asyncio.ensure_future(go_away())
    run = await world.reconcile()
    await stopper
    assert run.state is RunState.FAILED, run.error
    assert "did not answer" in run.error or "broke off" in run.error
    assert "still unreachable after 2s" in run.error


async def test_api_server_back_within_the_grace_continues(world: World) -> None:
    world.start("  type: rolling\n", extra="")
    world.cluster.rollout(NS, "web", "manual")

    async def blip() -> None:
        await asyncio.to_thread(
            world.cluster.wait_for, lambda: ("deployments", NS, "web") in world.cluster.objects
        )
        world.server.stop()
        await asyncio.sleep(0.5)
        world.server.start()
        world.cluster.complete(NS, "web")

    helper = asyncio.ensure_future(blip())
    run = await world.reconcile()
    await helper
    assert run.state is RunState.SUCCEEDED, run.error


async def test_drift_shows_only_our_fields_and_is_corrected(world: World) -> None:
    world.start("  type: rolling\n")
    assert (await world.reconcile()).state is RunState.SUCCEEDED
    # Another tool adds an annotation and a label: not ours, not drift.
    world.cluster.edit(
        "deployments",
        NS,
        "web",
        {"metadata": {"annotations": {"other.io/note": "x"}}},
        "kubectl-annotate",
    )
    plan = await world.plan()
    (action,) = plan.actions
    assert action.kind.value == "none", action

    # kubectl scale changes our replicas: drift, corrected by taking the field back.
    world.cluster.edit("deployments", NS, "web", {"spec": {"replicas": 9}}, "kubectl-scale")
    plan = await world.plan()
    (action,) = plan.actions
    assert action.kind.value == "deploy" and action.reason.value == "drift"
    assert "spec.replicas: live 9, applied 4" in action.detail
    run = await world.reconcile()
    assert run.state is RunState.SUCCEEDED, run.error
    assert world.deployment("web")["spec"]["replicas"] == 4  # type: ignore[index]
    assert "taking back fields of Deployment shop/web" in world.log
    assert "kubectl-scale" in world.log
    web = world.deployment("web")
    assert web is not None and web["metadata"]["annotations"]["other.io/note"] == "x"


async def test_conflicts_fail_when_force_is_off(world: World) -> None:
    world.start("  type: rolling\n", extra="    force_conflicts: false\n")
    assert (await world.reconcile()).state is RunState.SUCCEEDED
    world.cluster.edit("deployments", NS, "web", {"spec": {"replicas": 2}}, "hpa")
    run = await world.release("2.0")
    # Nothing was applied, so the rollback finds 1.0 still in place.
    assert run.state is RunState.ROLLED_BACK, run.error
    assert ".spec.replicas" in run.error and 'conflict with "hpa"' in run.error
    assert world.image("web") == f"{IMAGE}:1.0"
    assert "force_conflicts is off" in run.error


def test_kubectl_reads_what_the_stand_in_holds(world: World, tmp_path: Path) -> None:
    """``kubectl`` (Debian's kubernetes-client) reads the stand-in with a real client."""
    kubectl = subprocess.run(["which", "kubectl"], capture_output=True, text=True).stdout.strip()
    if not kubectl:
        pytest.skip("kubectl is not installed (Debian package kubernetes-client)")
    world.start("  type: rolling\n")
    asyncio.run(world.reconcile())
    config = tmp_path / "kubeconfig"
    config.write_text(world.server.kubeconfig(TOKEN))
    out = subprocess.run(
        [
            kubectl,
            "--kubeconfig",
            str(config),
            "get",
            "--raw",
            f"/apis/apps/v1/namespaces/{NS}/deployments/web",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"]["availableReplicas"] == 4
