"""What a Kubernetes deploy will apply, in words, for ``quicflow plan``.

Pure: the environment (merged config) and the color serving now in, one line per
object or step out. Nothing secret is shown: a Secret is described by its keys' count,
and a manifest by its kind and name. With ``manifests``, the lines say where they come
from and how many patches apply, and list the other objects in the order of applying.
"""

from __future__ import annotations

import re

from reconciler.drivers.kubernetes import FIELD_MANAGER, manifests, overlays, specs
from reconciler.durations import format_duration
from reconciler.gitops import model
from reconciler.rules import images

_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")


def applies(env: model.Environment, live_color: str | None = None) -> list[str]:
    """The objects a release of ``env`` applies and how it rolls out."""
    spec = specs.read(env.deploy)
    strategy = env.strategy
    lines = [f"cluster {spec.cluster}, namespace {spec.namespace}, field manager {FIELD_MANAGER}"]
    user = None
    if spec.manifests:
        patches = len(spec.patches)
        lines.append(
            f"manifests from {', '.join(spec.manifests)} ({len(spec.files)} "
            f"file{'s' if len(spec.files) != 1 else ''}) with {patches} "
            f"patch{'es' if patches != 1 else ''}"
        )
        try:
            user = overlays.load(spec, blue_green=strategy.type is model.StrategyType.BLUE_GREEN)
        except overlays.ManifestError as exc:
            return [*lines, f"cannot apply the manifests: {exc}"]
        spec = overlays.with_replicas(spec, user)
        lines += [f"apply {_manifest(d)}" for d in user.before]
    template = spec.image or env.build.target_image or "(no image: set deploy.kubernetes.image)"
    values = {"version": images.tag_safe(env.version), "project": env.project, "env": env.name}
    image = _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), template)
    where = f"{spec.namespace}/"
    secrets = sum(1 for v in env.variables.values() if isinstance(v, model.SecretRef))
    secret_line = (
        f"apply Secret {where}{{name}}-env ({secrets} key{'s' if secrets != 1 else ''}, "
        "values not shown)"
    )
    has_service = spec.ports or (user is not None and user.service is not None)
    service = f"Service {where}{spec.service_name}" if has_service else None
    ours = f" (from {user.deployment.where})" if user is not None else ""
    after = [f"apply {_manifest(d)}" for d in user.after] if user is not None else []
    if strategy.type is model.StrategyType.BLUE_GREEN:
        color = "green" if live_color == "blue" else "blue"
        name = manifests.deployment_name(spec, color)
        if secrets:
            lines.append(secret_line.format(name=name))
        lines.append(f"apply Deployment {where}{name}: {image}, {spec.replicas} replicas{ours}")
        lines += after
        if service:
            lines.append(f"switch {service} to {color} once {name} is healthy")
        if live_color:
            window = format_duration(float(strategy.params.get("rollback_window") or 0))
            old = manifests.deployment_name(spec, live_color)
            lines.append(f"scale {where}{old} to 0 replicas {window} after the switch")
        return lines
    if strategy.type is model.StrategyType.CANARY:
        canary = manifests.deployment_name(spec, track=manifests.CANARY)
        shares = [
            f"{p}% ({manifests.canary_replicas(spec.replicas, p)} pods)"
            for p in strategy.params.get("steps") or []
            if int(p) < 100
        ]
        if secrets:
            lines.append(secret_line.format(name=canary))
        lines.append(
            f"canary Deployment {where}{canary}: {image} at {', '.join(shares) or 'no step'}"
            + (f", behind {service}" if service else "")
        )
    if secrets:
        lines.append(secret_line.format(name=spec.deployment))
    rolling = strategy.params if strategy.type is model.StrategyType.ROLLING else {}
    # A manifest keeps its own update strategy and deadline unless strategy.rolling says.
    own = (user.deployment.body.get("spec") or {}) if user is not None else {}
    if "strategy" in own and not (rolling.get("max_surge") or rolling.get("max_unavailable")):
        how = f"the manifest's {(own['strategy'] or {}).get('type') or 'RollingUpdate'} strategy"
    else:
        how = (
            f"RollingUpdate maxSurge {rolling.get('max_surge') or '25%'} "
            f"maxUnavailable {rolling.get('max_unavailable') or '25%'}"
        )
    deadline = float(own.get("progressDeadlineSeconds") or spec.progress_deadline)
    lines.append(
        f"apply Deployment {where}{spec.deployment}: {image}, {spec.replicas} replicas, "
        f"{how}, progress deadline {format_duration(deadline)}{ours}"
    )
    if strategy.type is model.StrategyType.CANARY:
        lines.append(f"then remove {where}{manifests.deployment_name(spec, track='canary')}")
    if service:
        lines.append(f"apply {service}")
    return lines + after


def _manifest(doc: overlays.Document) -> str:
    """``Kind namespace/name (from FILE document N)``."""
    where = f"{doc.namespace}/" if doc.namespace else ""
    return f"{doc.kind} {where}{doc.name} (from {doc.where})"
