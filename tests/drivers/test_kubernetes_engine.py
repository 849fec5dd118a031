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
import copy
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
from reconciler.gitops import loading
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


# -- the user's own manifests, with a patch overlay ---------------------------------------

MANIFESTS = {
    "projects/web/k8s/deployment.yaml": """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels: {app: web}
spec:
  replicas: 4
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: app
          image: set-by-quicflow
          args: [--port, "8080"]
          ports: [{containerPort: 8080, name: http}]
          envFrom: [{configMapRef: {name: web-config}}]
""",
    "projects/web/k8s/service.yaml": """\
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
""",
    "projects/web/k8s/config.yaml": """\
apiVersion: v1
kind: ConfigMap
metadata: {name: web-config}
data: {MODE: fast}
""",
}

PATCHES = """\
    patches:
      - target: {kind: Deployment, name: web}
        merge:
          metadata: {annotations: {example.com/owner: shop}}
          spec:
            template:
              spec:
                containers: [{name: app, resources: {limits: {cpu: 500m, memory: 128Mi}}}]
"""


def _manifest_project(strategy: str, health: str = "", extra: str = PATCHES) -> str:
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
    image: "registry.example.com/acme/web:{{{{ version }}}}"
    manifests: k8s/
    kubeconfig_credential: cluster
    api_grace: 2s
{extra}{health}strategy:
{strategy}"""


def _start_manifests(
    world: World,
    strategy: str,
    health: str = "",
    files: dict[str, str] | None = None,
    patches: str = PATCHES,
) -> None:
    world.repo.commit(
        {
            "quicflow.yaml": USERS,
            "projects/web/project.yaml": _manifest_project(strategy, health, patches),
            "projects/web/credentials.sops.yaml": world.credentials(world.server.kubeconfig(TOKEN)),
            ENV_FILE: 'version: "1.0"\n',
            **(MANIFESTS if files is None else files),
        }
    )


def _applied(world: World) -> list[str]:
    """The objects applied, in order, as ``plural/name``."""
    return [
        r[1].rsplit("/", 2)[-2] + "/" + r[1].rsplit("/", 1)[-1]
        for r in world.cluster.requests
        if r[0] == "PATCH"
    ]


async def test_user_manifests_with_a_patch_deploy_rolling_and_drift_only_on_our_fields(
    world: World, tmp_path: Path
) -> None:
    more = {
        "projects/web/k8s/namespace.yaml": (
            f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NS}, labels: {{team: shop}}}}\n"
        ),
        "projects/web/k8s/routes.yaml": (
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web}\n"
            "spec: {rules: [{host: placeholder, http: {paths: [{path: /, pathType: Prefix,"
            " backend: {service: {name: web, port: {number: 80}}}}]}}]}\n"
        ),
    }
    ingress_host = (
        "      - target: {kind: Ingress}\n"
        "        ops: [{op: replace, path: /spec/rules/0/host, value: shop.example.com}]\n"
    )
    _start_manifests(
        world, "  type: rolling\n", files={**MANIFESTS, **more}, patches=PATCHES + ingress_host
    )
    first = await world.reconcile()
    assert first.state is RunState.SUCCEEDED, first.error
    # Namespace and config first, then the Secret and our Deployment, then what routes to it.
    assert _applied(world) == [
        f"namespaces/{NS}",
        "configmaps/web-config",
        "secrets/web-env",
        "deployments/web",
        "services/web",
        "ingresses/web",
    ]
    namespace = world.cluster.get("namespaces", "", NS)
    assert namespace is not None and namespace["metadata"]["labels"]["team"] == "shop"
    ingress = world.cluster.get("ingresses", NS, "web")
    assert ingress is not None and ingress["spec"]["rules"][0]["host"] == "shop.example.com"
    web = world.deployment("web")
    assert web is not None
    assert web["spec"]["replicas"] == 4  # the manifest's: deploy.kubernetes.replicas is unset
    assert web["spec"]["selector"] == {
        "matchLabels": {"app.kubernetes.io/name": "web", "quicflow.dev/track": "stable"}
    }
    labels = web["metadata"]["labels"]
    assert labels["app"] == "web" and labels["quicflow.dev/run"] == first.id
    assert web["metadata"]["annotations"]["example.com/owner"] == "shop"  # the patch
    (app,) = web["spec"]["template"]["spec"]["containers"]
    assert app["image"] == f"{IMAGE}:1.0"
    assert app["resources"] == {"limits": {"cpu": "500m", "memory": "128Mi"}}  # the patch
    assert app["args"] == ["--port", "8080"]
    assert app["envFrom"] == [{"configMapRef": {"name": "web-config"}}]
    env = {e["name"]: e for e in app["env"]}
    assert env["GREETING"]["value"] == "hello"
    assert env["DB_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "web-env"
    assert DB_PASSWORD not in json.dumps(web) and DB_PASSWORD not in world.log
    config = world.cluster.get("configmaps", NS, "web-config")
    assert config is not None and config["data"] == {"MODE": "fast"}
    assert config["metadata"]["labels"]["quicflow.dev/project"] == "web"
    service = world.cluster.get("services", NS, "web")
    assert service is not None
    assert service["spec"]["selector"] == {"app": "web", "app.kubernetes.io/name": "web"}
    for obj in (web, config, service):
        assert {m["manager"] for m in obj["metadata"]["managedFields"]} == {"quicflow"}
    assert "applied ConfigMap shop/web-config from projects/web/k8s/config.yaml document 1" in (
        world.log
    )

    # Nothing differs: not the fields the manifest sets, nor another tool's annotation.
    world.cluster.edit(
        "deployments", NS, "web", {"metadata": {"annotations": {"other.io/x": "y"}}}, "kubectl"
    )
    (action,) = (await world.plan()).actions
    assert action.kind.value == "none", action
    # kubectl set image: drift, on the image only.
    world.cluster.edit(
        "deployments",
        NS,
        "web",
        {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "evil:1"}]}}}},
        "kubectl-set",
    )
    (action,) = (await world.plan()).actions
    assert action.reason.value == "drift"
    # The image only: none of the fields the manifest sets.
    assert action.detail == (
        "targets differ from the recorded release: shop (spec.template.spec.containers[app]"
        f".image: live 'evil:1', applied '{IMAGE}:1.0')"
    )

    assert (await world.reconcile()).state is RunState.SUCCEEDED
    assert world.image("web") == f"{IMAGE}:1.0"  # the image taken back

    # A change to a manifest alone is a config change: it rolls out.
    config_file = "projects/web/k8s/config.yaml"
    world.repo.commit({config_file: MANIFESTS[config_file].replace("fast", "safe")})
    (action,) = (await world.plan()).actions
    assert action.reason.value == "config_changed", action
    assert (await world.reconcile()).state is RunState.SUCCEEDED
    config = world.cluster.get("configmaps", NS, "web-config")
    assert config is not None and config["data"] == {"MODE": "safe"}

    kubectl = subprocess.run(["which", "kubectl"], capture_output=True, text=True).stdout.strip()
    if kubectl:  # Debian's kubernetes-client reads what the driver applied
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(world.server.kubeconfig(TOKEN))
        out = subprocess.run(
            [
                kubectl,
                "--kubeconfig",
                str(kubeconfig),
                "get",
                "--raw",
                f"/api/v1/namespaces/{NS}/configmaps/web-config",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["data"] == {"MODE": "safe"}


async def test_user_manifests_with_canary(world: World) -> None:
    _start_manifests(
        world, "  type: canary\n  canary: {steps: [25, 100], analysis: {window: 0s}}\n", HTTP_HEALTH
    )
    assert (await world.reconcile()).state is RunState.SUCCEEDED
    seen: list[dict] = []
    original = world.cluster._control

    def spy(namespace: str, name: str, **kw: object) -> None:
        if name == "web-canary":
            seen.append(copy.deepcopy(world.cluster.objects[("deployments", namespace, name)]))
        original(namespace, name, **kw)  # type: ignore[arg-type]

    world.cluster._control = spy  # type: ignore[method-assign]
    second = await world.release("2.0")
    assert second.state is RunState.SUCCEEDED, second.error
    canary = seen[0]
    assert canary["spec"]["replicas"] == 1  # 25% of the manifest's 4
    pod_labels = canary["spec"]["template"]["metadata"]["labels"]
    # Behind the same Service: the user's Service selects the canary's pods too.
    assert pod_labels["app"] == "web" and pod_labels["quicflow.dev/track"] == "canary"
    resources = canary["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["limits"]["cpu"] == "500m"
    assert world.image("web") == f"{IMAGE}:2.0"
    assert world.deployment("web-canary") is None


async def test_user_manifests_with_blue_green_switch_the_users_service(world: World) -> None:
    _start_manifests(
        world, "  type: blue_green\n  blue_green: {rollback_window: 1h}\n", HTTP_HEALTH
    )
    assert (await world.reconcile()).state is RunState.SUCCEEDED
    service = world.cluster.get("services", NS, "web")
    assert service is not None
    assert service["spec"]["selector"] == {
        "app": "web",
        "app.kubernetes.io/name": "web",
        "quicflow.dev/color": "blue",
    }
    second = await world.release("2.0")
    assert second.state is RunState.SUCCEEDED, second.error
    assert world.image("web-green") == f"{IMAGE}:2.0" and world.image("web-blue") == f"{IMAGE}:1.0"
    service = world.cluster.get("services", NS, "web")
    assert service is not None and service["spec"]["selector"]["quicflow.dev/color"] == "green"
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": 8080}]
    assert world.deployment("web") is None  # only colors
    back = await world.release("1.0")
    assert back.state is RunState.SUCCEEDED, back.error
    service = world.cluster.get("services", NS, "web")
    assert service is not None and service["spec"]["selector"]["quicflow.dev/color"] == "blue"


@pytest.mark.parametrize(
    ("files", "words"),
    [
        (
            {
                **MANIFESTS,
                "projects/web/k8s/deployment.yaml": MANIFESTS[
                    "projects/web/k8s/deployment.yaml"
                ].replace("name: web\n", "name: api\n", 1),
            },
            "deploy.kubernetes.deployment: no Deployment web among the manifests "
            "(projects/web/k8s/config.yaml, projects/web/k8s/deployment.yaml, "
            "projects/web/k8s/service.yaml; they hold",
        ),
        (
            {
                **MANIFESTS,
                "projects/web/k8s/service.yaml": "apiVersion: v1\nkind: Service\nmetadata: {name: web\n",
            },
            "projects/web/k8s/service.yaml document 1: invalid YAML",
        ),
    ],
)
async def test_broken_manifests_fail_naming_the_file_and_apply_nothing(
    world: World, files: dict[str, str], words: str
) -> None:
    _start_manifests(world, "  type: rolling\n", files=files)
    run = await world.reconcile()
    assert run.state is RunState.FAILED
    assert words in run.error
    assert [r for r in world.cluster.requests if r[0] == "PATCH"] == []
    assert world.cluster.objects == {}


@pytest.mark.parametrize(
    ("path", "files", "words"),
    [
        ("k8s/", {}, "manifests: no file or directory projects/web/k8s at this commit"),
        ("../shop/k8s", {}, "'../shop/k8s' must be a path inside the project directory"),
        ("k8s/", {"projects/web/k8s/notes.txt": "x"}, "directory projects/web/k8s/ holds no"),
        ("k8s/notes.txt", {"projects/web/k8s/notes.txt": "x"}, "is not a .yaml or .yml file"),
    ],
)
def test_a_manifest_path_that_cannot_be_read_is_a_config_problem(
    world: World, path: str, files: dict[str, str], words: str
) -> None:
    _start_manifests(world, "  type: rolling\n", files=files)
    project = (world.repo.path / "projects/web/project.yaml").read_text()
    world.repo.commit(
        {"projects/web/project.yaml": project.replace("manifests: k8s/", f"manifests: {path}")}
    )
    result = loading.Loader(GitRepository.open(world.repo.path)).load()
    assert not result.ok
    (problem,) = result.problems
    assert problem.path == "projects/web/project.yaml"
    assert words in problem.message
    assert problem.json_path == "$.deploy.kubernetes.manifests" and problem.line > 0
