"""The Kubernetes driver's steps: apply, wait for the rollout, check health, switch, retire.

Every step talks to the API server through ``api.ClusterApi`` in a thread. A deploy
applies (server-side, as field manager ``quicflow``) the Secret of the release's secret
variables, the Deployment and — for rolling and canary, or the first blue-green
release — the Service, then follows the Deployment with a watch until the rollout is
complete, or Kubernetes reports ``ProgressDeadlineExceeded``, or ``deploy.timeout``
runs out. Fields another manager took (``kubectl scale``, ``kubectl edit``) are taken
back when ``force_conflicts`` is on (the default: Git wins), and the takeover is
logged; with it off the step fails naming the fields and their manager.

Strategies map onto Kubernetes objects:

- rolling: the Deployment's own RollingUpdate (``max_surge``/``max_unavailable`` of
  ``strategy.rolling``);
- canary: ``<name>-canary`` beside the primary, behind the same Service, sized to the
  step's share of ``replicas`` (``canary``); ``promote`` rolls the primary out and
  removes the canary; ``abort`` removes it;
- blue-green: ``<name>-blue``/``<name>-green``; ``switch`` points the Service's selector
  at the new color; ``retire`` scales the old one to zero once its window is over.

With ``deploy.kubernetes.manifests`` the objects come from your manifests, patched and
with our fields on top (``overlays``): the other documents are applied first
(namespace, accounts, config, other Deployments), then the Secret and our Deployment,
then the app's Service and the rest (Services, Ingresses). The manifests are read and
checked before anything is applied, so a broken one fails the step with nothing changed.
The objects besides ours are shared by every track and color: a canary or a new color
sees the ConfigMaps the serving one does (name them by version if they change with it).

Rollback re-applies the previous release: the image recorded in the Deployment's
``quicflow.dev/previous-image`` annotation when it ran that version (the digest it ran),
else the version's image. If the API server goes away, a step keeps trying for
``api_grace`` (30 s) and then fails saying so.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from reconciler import builds
from reconciler.drivers import DeployContext, Health, StepFailed, health, render
from reconciler.drivers.kubernetes import (
    FIELD_MANAGER,
    fields,
    manifests,
    overlays,
    rollouts,
    specs,
)
from reconciler.drivers.kubernetes.api import ApplyConflict, ClusterApi, ClusterUnreachable
from reconciler.drivers.kubernetes.clusters import ClusterSource, source_for
from reconciler.drivers.kubernetes.manifests import CANARY, STABLE
from reconciler.durations import parse_duration
from reconciler.errors import QuicFlowError
from reconciler.gitops import model
from reconciler.rules import images
from reconciler.targets.commands import TargetRef

T = TypeVar("T")
Connect = Callable[[ClusterSource], ClusterApi]
WATCH_SLICE = 30.0  # one watch request at most this long; then the object is read again
RETRY_PAUSE = 1.0
# Built-in variables that stay the same across runs of one release: the others (run id,
# trigger, config commit) would change the pod template, and so restart every pod, on
# each run.
STABLE_BUILTINS = ("QUICFLOW_PROJECT", "QUICFLOW_ENV", "QUICFLOW_VERSION")


class KubernetesDriver:
    """Deploys a release as Deployments and a Service on a Kubernetes cluster."""

    #: The canary strategy sizes a canary Deployment instead of picking targets.
    scales_canary = True

    def __init__(
        self,
        deploy: model.DeployConfig,
        strategy: model.Strategy,
        connect: Connect = ClusterApi,
    ):
        self.deploy_config = deploy
        self.spec = specs.read(deploy)
        self.strategy = strategy
        self.connect = connect
        self.starts = health.StartPeriods()
        self._api: ClusterApi | None = None
        self._user: overlays.UserManifests | None = None
        #: What the state ref should know of this rollout (the digest the pods run).
        self.recorded: dict[str, str] = {}

    # -- the cluster -------------------------------------------------------------------

    async def api(self, ctx: DeployContext, target: TargetRef) -> ClusterApi:
        """The API client for this run's cluster (made once, from the run's credential)."""
        if self._api is None:
            value = None
            name = self.spec.kubeconfig_credential
            if name:
                secrets: Mapping[str, str] = getattr(ctx, "secrets", {}) or {}
                value = secrets.get(f"{name}.")
                if value is None:
                    raise StepFailed(
                        target.name,
                        f"deploy.kubernetes.kubeconfig_credential {name!r} was not resolved "
                        "for this run",
                    )
            try:
                source = source_for(self.spec, value)
                self._api = await asyncio.to_thread(self.connect, source)
            except QuicFlowError as exc:
                raise StepFailed(target.name, str(exc)) from None
            ctx.log(
                f"{target.name}/kubernetes",
                f"API server {self._api.server} ({source.origin}), namespace {self.spec.namespace}",
            )
        return self._api

    async def _call(self, target: TargetRef, fn: Callable[..., T], *args: Any) -> T:
        """One API call in a thread; retried while the server is unreachable (``api_grace``)."""
        since: float | None = None
        while True:
            try:
                return await asyncio.to_thread(fn, *args)
            except ApplyConflict:
                raise  # ``_apply`` decides: take the fields back, or fail naming them
            except ClusterUnreachable as exc:
                since = since if since is not None else time.monotonic()
                if time.monotonic() - since >= self.spec.api_grace:
                    raise StepFailed(
                        target.name,
                        f"{exc} (still unreachable after {self.spec.api_grace:.0f}s)",
                    ) from None
                await asyncio.sleep(RETRY_PAUSE)
            except QuicFlowError as exc:
                raise StepFailed(target.name, str(exc)) from None

    # -- what a release is ---------------------------------------------------------------

    def image_ref(self, ctx: DeployContext, target: TargetRef, version: str) -> str:
        """The image of ``version`` (by digest when the run built or knows it)."""
        template = self.spec.image or ctx.env.build.target_image
        if not template:
            raise StepFailed(
                target.name, "deploy.kubernetes.image is not set and no build.target_image to use"
            )
        image = render(
            template,
            {"version": images.tag_safe(version), "project": ctx.env.project, "env": ctx.env.name},
        )
        if "{{" in image:
            raise StepFailed(
                target.name,
                f"deploy.kubernetes.image: {image!r} has a placeholder only a build knows; "
                "name the image by {{ version }}",
            )
        digest = ctx.variables(None, version).get("QUICFLOW_IMAGE_DIGEST", "")
        if digest and version == ctx.version:
            return f"{builds.repository_of(image)}@{digest}"
        return image

    def _release(
        self, ctx: DeployContext, target: TargetRef, version: str, image: str, color: str | None
    ) -> tuple[manifests.Release, dict[str, str]]:
        """The release to apply, and the values of its secret variables (for the Secret)."""
        merged = getattr(ctx, "variables_override", None)
        if merged is None:
            merged = ctx.env.variables
        secret_names = {n for n, v in merged.items() if isinstance(v, model.SecretRef)}
        values = ctx.variables(None, version, color)
        plain = {n: values[n] for n in merged if n not in secret_names and n in values}
        for name in STABLE_BUILTINS:
            plain[name] = values.get(name, "")
        if color:
            plain["QUICFLOW_COLOR"] = color
        secret_values = {n: values[n] for n in sorted(secret_names) if n in values}
        run_id = values.get("QUICFLOW_RUN_ID", "")
        release = manifests.Release(
            ctx.env.project,
            ctx.env.name,
            version,
            image,
            run_id,
            plain,
            tuple(sorted(secret_values)),
            manifests.secret_digest(secret_values) if secret_values else "",
            dict(self.deploy_config.health.get("http") or {}),
        )
        return release, secret_values

    def _manifests(self, target: TargetRef) -> overlays.UserManifests | None:
        """The user's manifests, patched and checked (read once); None without ``manifests``."""
        if not self.spec.manifests:
            return None
        if self._user is None:
            blue_green = self.strategy.type is model.StrategyType.BLUE_GREEN
            try:
                self._user = overlays.load(self.spec, blue_green=blue_green)
            except overlays.ManifestError as exc:
                raise StepFailed(target.name, str(exc)) from None
            # The manifest's replicas count when deploy.kubernetes.replicas is not set.
            self.spec = overlays.with_replicas(self.spec, self._user)
        return self._user

    def _service(self, release: manifests.Release, color: str | None) -> dict[str, Any] | None:
        """The app's Service: the manifest's with our selector, or the generated one."""
        return overlays.service(self.spec, release, self._user, color)

    def _rolling_params(self) -> Mapping[str, Any]:
        if self.strategy.type is model.StrategyType.ROLLING:
            return self.strategy.params
        return {}

    # -- applying and waiting --------------------------------------------------------------

    async def _apply(self, ctx: DeployContext, target: TargetRef, obj: Mapping[str, Any]) -> Any:
        api = await self.api(ctx, target)
        what = _what(obj)
        try:
            return await self._call(target, api.apply, obj, False)
        except ApplyConflict as exc:
            if not self.spec.force_conflicts:
                raise StepFailed(
                    target.name, f"{exc} (deploy.kubernetes.force_conflicts is off)"
                ) from None
            ctx.log(f"{target.name}/kubernetes", f"taking back fields of {what}: {exc}")
            return await self._call(target, api.apply, obj, True)

    async def _roll_out(
        self,
        ctx: DeployContext,
        target: TargetRef,
        version: str,
        *,
        color: str | None = None,
        track: str = STABLE,
        replicas: int | None = None,
        image: str | None = None,
        service: bool = True,
    ) -> dict[str, Any]:
        """Apply one Deployment (its Secret and maybe the Service) and wait for its rollout."""
        user = self._manifests(target)  # read and checked before anything is applied
        api = await self.api(ctx, target)
        spec = self.spec
        name = manifests.deployment_name(spec, color, track)
        source = f"{target.name}/{name}"
        image = image or self.image_ref(ctx, target, version)
        release, secret_values = self._release(ctx, target, version, image, color)
        count = spec.replicas if replicas is None else replicas
        rolling = self._rolling_params()
        if user is not None:
            body = overlays.deployment(
                spec, release, user, replicas=count, color=color, track=track, rolling=rolling
            )
        else:
            body = manifests.deployment(
                spec, release, replicas=count, color=color, track=track, rolling=rolling
            )
        live = await self._call(target, api.get, "Deployment", spec.namespace, name)
        annotations = body["metadata"]["annotations"]
        if live is not None:
            before = live["metadata"].get("annotations") or {}
            if before.get(manifests.VERSION_ANNOTATION) not in (None, version):
                annotations[manifests.PREVIOUS_VERSION] = before[manifests.VERSION_ANNOTATION]
                annotations[manifests.PREVIOUS_IMAGE] = (
                    manifests.image_of(live, spec.container) or ""
                )
            else:
                for key in (manifests.PREVIOUS_VERSION, manifests.PREVIOUS_IMAGE):
                    if before.get(key):
                        annotations[key] = before[key]
        for doc in user.before if user is not None else ():
            await self._apply_manifest(ctx, target, source, release, doc)
        secret = manifests.secret(spec, release, name, secret_values)
        if secret is not None:
            await self._apply(ctx, target, secret)
        applied = await self._apply(ctx, target, body)
        ctx.log(
            source,
            f"applied Deployment {spec.namespace}/{name}: {image}, "
            f"{body['spec']['replicas']} replicas (resourceVersion "
            f"{applied['metadata'].get('resourceVersion')})",
        )
        if service:
            current = await self._call(
                target, api.get, "Service", spec.namespace, spec.service_name
            )
            svc = self._service(release, color)
            # Blue-green: an existing Service keeps its selector until ``switch``.
            if svc is not None and (color is None or current is None):
                await self._apply(ctx, target, svc)
                ctx.log(source, f"applied Service {spec.namespace}/{spec.service_name}")
        for doc in user.after if user is not None else ():
            await self._apply_manifest(ctx, target, source, release, doc)
        done = await self._wait(ctx, target, api, applied)
        return done

    async def _apply_manifest(
        self,
        ctx: DeployContext,
        target: TargetRef,
        source: str,
        release: manifests.Release,
        doc: overlays.Document,
    ) -> None:
        """Apply one manifest besides ours (with our labels); log where it came from."""
        applied = await self._apply(ctx, target, overlays.labelled(self.spec, release, doc))
        # Kind and name only: a Secret's values never reach the log.
        ctx.log(
            source,
            f"applied {_what(doc.body)} from {doc.where} (resourceVersion "
            f"{applied['metadata'].get('resourceVersion')})",
        )

    async def _wait(
        self, ctx: DeployContext, target: TargetRef, api: ClusterApi, obj: dict[str, Any]
    ) -> dict[str, Any]:
        """Follow the Deployment until its rollout is complete; StepFailed if it fails."""
        meta = obj["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        source = f"{target.name}/{name}"
        deadline = time.monotonic() + self.deploy_config.timeout
        said = ""
        while True:
            status = rollouts.judge(obj)
            if status.phase is rollouts.Phase.COMPLETE:
                ctx.log(source, f"rollout complete: {status.message}")
                return obj
            if status.phase is rollouts.Phase.FAILED:
                raise StepFailed(
                    target.name,
                    f"rollout of Deployment {namespace}/{name} failed: {status.message}",
                )
            if status.message != said:
                ctx.log(source, status.message)
                said = status.message
            left = deadline - time.monotonic()
            if left <= 0:
                raise StepFailed(
                    target.name,
                    f"rollout of Deployment {namespace}/{name} did not finish within "
                    f"{self.deploy_config.timeout:.0f}s: {status.message}",
                    timed_out=True,
                )
            changed = await self._call(
                target,
                _next_change,
                api,
                namespace,
                name,
                str(obj["metadata"].get("resourceVersion") or ""),
                min(left, WATCH_SLICE),
            )
            if changed is _DELETED:
                raise StepFailed(
                    target.name, f"Deployment {namespace}/{name} was deleted during its rollout"
                )
            if changed is not None:
                obj = changed

    # -- health ----------------------------------------------------------------------------

    async def _probe(
        self, ctx: DeployContext, target: TargetRef, color: str | None, track: str
    ) -> Health:
        api = await self.api(ctx, target)
        spec = self.spec
        name = manifests.deployment_name(spec, color, track)
        live = await self._call(target, api.get, "Deployment", spec.namespace, name)
        if live is None:
            return Health(False, f"Deployment {spec.namespace}/{name} does not exist")
        status = rollouts.judge(live)
        if status.phase is not rollouts.Phase.COMPLETE:
            return Health(False, f"Deployment {spec.namespace}/{name}: {status.message}")
        pods, _ = await self._call(
            target, api.list, "Pod", spec.namespace, manifests.selector(spec, color, track)
        )
        problems = rollouts.pod_problems(pods, spec.container, spec.restart_limit)
        if problems:
            return Health(False, "; ".join(problems[:3]))
        ready = rollouts.ready_pods(pods)
        wanted = int(live["spec"].get("replicas", 1))
        if len(ready) < wanted:
            return Health(False, f"{len(ready)} of {wanted} pods of {name} are ready")
        details = [f"{name}: {len(ready)} of {wanted} pods ready"]
        http = self.deploy_config.health.get("http")
        if http:
            timeout = parse_duration(self.deploy_config.health.get("timeout"), 2.0) or 2.0
            expected = list(http.get("expect_status", [200]))
            path = str(http.get("path", "/"))
            # Through the API server's pod proxy, pod by pod: the Service would mix in old
            # pods (rolling, canary) or point at the other color (blue-green).
            for pod in ready[:3]:
                pod_name = pod["metadata"]["name"]
                code, _ = await self._call(
                    target,
                    api.proxy_get,
                    spec.namespace,
                    pod_name,
                    int(http["port"]),
                    path,
                    timeout,
                )
                if code not in expected:
                    return Health(
                        False, f"GET {path} on pod {pod_name}: status {code}, expected {expected}"
                    )
            details.append(f"GET {path} {expected[0]} on {min(3, len(ready))} pods")
        return Health(True, "; ".join(details))

    async def _verify(
        self, ctx: DeployContext, target: TargetRef, color: str | None, track: str
    ) -> Health:
        unsupported = [k for k in ("tcp", "command", "docker") if k in self.deploy_config.health]
        if unsupported:
            return Health(
                False,
                f"health.{unsupported[0]} cannot be checked on Kubernetes (use health.http, "
                "probes and the Deployment's conditions)",
            )
        key = CANARY if track == CANARY else color
        try:
            return await health.check(
                ctx,
                target,
                self.deploy_config.health,
                color=key,
                starts=self.starts,
                probe=lambda: self._probe(ctx, target, color, track),
            )
        except StepFailed as exc:
            return Health(False, str(exc).split(": ", 1)[-1])

    async def _record(self, ctx: DeployContext, target: TargetRef, color: str | None) -> None:
        api = await self.api(ctx, target)
        pods, _ = await self._call(
            target, api.list, "Pod", self.spec.namespace, manifests.selector(self.spec, color)
        )
        digest = rollouts.running_digest(pods, self.spec.container)
        if digest:
            self.recorded["image_digest"] = digest

    # -- the driver steps --------------------------------------------------------------------

    async def deploy(
        self, ctx: DeployContext, target: TargetRef, version: str, color: str | None
    ) -> None:
        """Apply the release (rolling: the primary; blue-green: the color) and wait for it."""
        await self._roll_out(ctx, target, version, color=color)
        self.starts.deployed(target, color)
        await self._record(ctx, target, color)

    async def verify(self, ctx: DeployContext, target: TargetRef, color: str | None) -> Health:
        """Rollout complete, pods ready and not crash looping, health.http on each pod."""
        if color == CANARY:
            return await self._verify(ctx, target, None, CANARY)
        return await self._verify(ctx, target, color, STABLE)

    async def canary(
        self, ctx: DeployContext, target: TargetRef, version: str, percent: int
    ) -> None:
        """Run ``version`` as ``<name>-canary`` with ``percent`` of the replicas."""
        self._manifests(target)  # the manifest may say how many replicas the primary has
        replicas = manifests.canary_replicas(self.spec.replicas, percent)
        ctx.log(
            f"{target.name}/kubernetes",
            f"canary at {percent}%: {replicas} of {self.spec.replicas} replicas run {version}",
        )
        await self._roll_out(ctx, target, version, track=CANARY, replicas=replicas)
        self.starts.deployed(target, CANARY)

    async def promote(self, ctx: DeployContext, target: TargetRef, version: str) -> None:
        """Roll the primary out to ``version``, then remove the canary."""
        await self._roll_out(ctx, target, version)
        await self._record(ctx, target, None)
        await self.abort(ctx, target)

    async def abort(self, ctx: DeployContext, target: TargetRef) -> None:
        """Remove the canary Deployment (and its Secret): the primary serves alone again."""
        api = await self.api(ctx, target)
        name = manifests.deployment_name(self.spec, track=CANARY)
        removed = await self._call(target, api.delete, "Deployment", self.spec.namespace, name)
        await self._call(target, api.delete, "Secret", self.spec.namespace, f"{name}-env")
        if removed:
            ctx.log(f"{target.name}/kubernetes", f"removed canary Deployment {name}")

    async def switch(self, ctx: DeployContext, targets: Sequence[TargetRef], color: str) -> None:
        """Point the Service's selector at ``color``."""
        for target in targets:
            self._manifests(target)
            release, _ = self._release(
                ctx, target, ctx.version, self.image_ref(ctx, target, ctx.version), color
            )
            svc = self._service(release, color)
            if svc is None:
                raise StepFailed(
                    target.name,
                    "blue-green on Kubernetes switches a Service: set deploy.kubernetes.ports"
                    + (
                        f" or add a Service {self.spec.service_name} to the manifests"
                        if self.spec.manifests
                        else ""
                    ),
                )
            await self._apply(ctx, target, svc)
            ctx.log(
                f"{target.name}/kubernetes",
                f"Service {self.spec.namespace}/{self.spec.service_name} now selects {color}",
            )

    async def retire(self, ctx: DeployContext, target: TargetRef, color: str) -> None:
        """Scale the Deployment of a color that no longer serves to zero."""
        api = await self.api(ctx, target)
        name = manifests.deployment_name(self.spec, color)
        live = await self._call(target, api.get, "Deployment", self.spec.namespace, name)
        if live is None:
            return
        body = fields.applied_config(live, FIELD_MANAGER)
        if body is None or "spec" not in body:
            raise StepFailed(target.name, f"Deployment {name} was not applied by {FIELD_MANAGER}")
        body["spec"]["replicas"] = 0
        await self._apply(ctx, target, body)
        ctx.log(f"{target.name}/kubernetes", f"scaled {color} ({name}) to 0 replicas")

    async def rollback(
        self, ctx: DeployContext, target: TargetRef, version: str, color: str | None
    ) -> None:
        """Put ``version`` back: drop a canary, re-apply the previous image, or switch back."""
        api = await self.api(ctx, target)
        spec = self.spec
        if color and color != CANARY:
            other = "green" if color == "blue" else "blue"
            live = await self._call(
                target,
                api.get,
                "Deployment",
                spec.namespace,
                manifests.deployment_name(spec, other),
            )
            runs = (live or {}).get("metadata", {}).get("annotations", {})
            if live is not None and runs.get(manifests.VERSION_ANNOTATION) == version:
                await self.switch(ctx, [target], other)
                return
            await self._roll_out(ctx, target, version, color=color)
            return
        await self.abort(ctx, target)
        live = await self._call(target, api.get, "Deployment", spec.namespace, spec.deployment)
        annotations = (live or {}).get("metadata", {}).get("annotations") or {}
        if annotations.get(manifests.VERSION_ANNOTATION) == version:
            return  # the primary never left it (a canary that was not promoted)
        image = None
        if annotations.get(manifests.PREVIOUS_VERSION) == version:
            image = annotations.get(manifests.PREVIOUS_IMAGE) or None
        await self._roll_out(ctx, target, version, image=image)


_DELETED: dict[str, Any] = {}


def _what(obj: Mapping[str, Any]) -> str:
    """``Kind namespace/name`` (``Kind name`` for a cluster-scoped object) for messages."""
    meta = obj["metadata"]
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj['kind']} {where}{meta['name']}"


def _next_change(
    api: ClusterApi, namespace: str, name: str, resource_version: str, seconds: float
) -> dict[str, Any] | None:
    """The Deployment after its next change (None: none within ``seconds``; _DELETED)."""
    try:
        for kind, obj in api.watch("Deployment", namespace, name, resource_version, seconds):
            if kind == "DELETED":
                return _DELETED
            if kind in ("ADDED", "MODIFIED"):
                return obj
    except QuicFlowError as exc:
        if getattr(exc, "status", 0) != 410:  # Expired: read the object again
            raise
    return api.get("Deployment", namespace, name) or _DELETED
