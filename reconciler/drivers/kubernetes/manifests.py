"""The objects a release applies: a Deployment per track or color, its Service, its Secret.

Pure: a ``Release`` (what to run) and a ``KubernetesSpec`` (how) in, plain dicts in the
API's own shape out, ready for server-side apply. Only the fields we mean to own are
set, so the field manager owns exactly these and drift compares exactly these.

Names: the primary Deployment is ``deploy.kubernetes.deployment``; a canary runs beside
it as ``<name>-canary``; blue-green runs ``<name>-blue`` and ``<name>-green``. Pods
carry ``app.kubernetes.io/name: <name>`` (what the Service selects) and either
``quicflow.dev/track`` (stable or canary) or ``quicflow.dev/color``; selectors are
immutable in Kubernetes, so each Deployment's selector names its track or color from
its first apply on. Secret variables travel in a Secret (``<deployment>-env``) that the
container reads by ``secretKeyRef``: no value is written into the Deployment.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.drivers.kubernetes.specs import KubernetesSpec

APP = "app.kubernetes.io/name"
MANAGED_BY = "app.kubernetes.io/managed-by"
PROJECT = "quicflow.dev/project"
ENV = "quicflow.dev/env"
VERSION = "quicflow.dev/version"
RUN = "quicflow.dev/run"
TRACK = "quicflow.dev/track"
COLOR = "quicflow.dev/color"
# Annotations (values any length): the exact version and image applied, and what ran before.
VERSION_ANNOTATION = "quicflow.dev/version"
IMAGE_ANNOTATION = "quicflow.dev/image"
PREVIOUS_VERSION = "quicflow.dev/previous-version"
PREVIOUS_IMAGE = "quicflow.dev/previous-image"
SECRET_HASH = "quicflow.dev/secret-hash"

STABLE = "stable"
CANARY = "canary"
_LABEL_VALUE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True, slots=True)
class Release:
    """What one apply runs: whose release, which version and image, with which variables."""

    project: str
    env: str
    version: str
    image: str
    run_id: str = ""
    variables: Mapping[str, str] = field(default_factory=dict)
    secret_names: tuple[str, ...] = ()
    secret_digest: str = ""  # changes when a secret value changes, so pods restart
    health_http: Mapping[str, Any] = field(default_factory=dict)


def label_value(text: str) -> str:
    """``text`` as a valid label value (≤ 63 characters of [A-Za-z0-9_.-], alphanumeric ends)."""
    cleaned = _LABEL_VALUE.sub("-", text)[:63].strip("-_.")
    return cleaned


def deployment_name(spec: KubernetesSpec, color: str | None = None, track: str = STABLE) -> str:
    if color:
        return f"{spec.deployment}-{color}"
    return f"{spec.deployment}-canary" if track == CANARY else spec.deployment


def selector(spec: KubernetesSpec, color: str | None = None, track: str = STABLE) -> dict[str, str]:
    """The pod selector of one Deployment (immutable once applied)."""
    if color:
        return {APP: spec.deployment, COLOR: color}
    return {APP: spec.deployment, TRACK: track}


def service_selector(spec: KubernetesSpec, color: str | None = None) -> dict[str, str]:
    """What the Service selects: every track, or (blue-green) one color."""
    return {APP: spec.deployment, COLOR: color} if color else {APP: spec.deployment}


def secret_digest(values: Mapping[str, str]) -> str:
    """A short digest of the secret values, for the pod template (never the values)."""
    digest = hashlib.sha256()
    for name in sorted(values):
        digest.update(f"{name}\0{values[name]}\0".encode())
    return digest.hexdigest()[:16]


def _metadata_labels(spec: KubernetesSpec, release: Release) -> dict[str, str]:
    return {
        **spec.labels,
        APP: spec.deployment,
        MANAGED_BY: "quicflow",
        PROJECT: release.project,
        ENV: release.env,
    }


def deployment(
    spec: KubernetesSpec,
    release: Release,
    *,
    replicas: int,
    color: str | None = None,
    track: str = STABLE,
    rolling: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The Deployment of one track or color, as applied."""
    name = deployment_name(spec, color, track)
    pod_labels = {
        **spec.labels,
        **selector(spec, color, track),
        PROJECT: release.project,
        ENV: release.env,
        VERSION: label_value(release.version),
    }
    labels = {**_metadata_labels(spec, release), **selector(spec, color, track)}
    labels[VERSION] = label_value(release.version)
    if release.run_id:
        labels[RUN] = label_value(release.run_id)
    rolling = rolling or {}
    template: dict[str, Any] = {
        "metadata": {"labels": pod_labels},
        "spec": {"containers": [container(spec, release, name)]},
    }
    if release.secret_names:
        template["metadata"]["annotations"] = {SECRET_HASH: release.secret_digest}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": spec.namespace,
            "labels": labels,
            "annotations": {
                VERSION_ANNOTATION: release.version,
                IMAGE_ANNOTATION: release.image,
            },
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector(spec, color, track)},
            "progressDeadlineSeconds": max(1, int(spec.progress_deadline)),
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {
                    "maxSurge": rolling.get("max_surge") or "25%",
                    "maxUnavailable": rolling.get("max_unavailable") or "25%",
                },
            },
            "template": template,
        },
    }


def container(spec: KubernetesSpec, release: Release, deployment: str) -> dict[str, Any]:
    """The release's container: image, variables (secrets by reference), ports, probes."""
    env: list[dict[str, Any]] = [
        {"name": name, "value": value} for name, value in sorted(release.variables.items())
    ]
    env += [
        {
            "name": name,
            "valueFrom": {"secretKeyRef": {"name": f"{deployment}-env", "key": name}},
        }
        for name in sorted(release.secret_names)
    ]
    body: dict[str, Any] = {"name": spec.container, "image": release.image}
    if env:
        body["env"] = env
    if spec.ports:
        body["ports"] = [
            {
                **({"name": p.name} if p.name else {}),
                "containerPort": p.target_port,
                "protocol": p.protocol,
            }
            for p in spec.ports
        ]
    if spec.resources:
        body["resources"] = dict(spec.resources)
    probes = dict(spec.probes)
    if "readiness" not in probes and release.health_http.get("port"):
        # health.http doubles as the readiness probe, so Kubernetes itself gates the rollout.
        probes["readiness"] = {
            "httpGet": {
                "path": str(release.health_http.get("path", "/")),
                "port": int(release.health_http["port"]),
                "scheme": str(release.health_http.get("scheme", "http")).upper(),
            }
        }
    for kind in ("readiness", "liveness", "startup"):
        if kind in probes:
            body[f"{kind}Probe"] = probes[kind]
    return body


def service(
    spec: KubernetesSpec, release: Release, color: str | None = None
) -> dict[str, Any] | None:
    """The Service in front of the pods (None without ports: nothing to expose)."""
    if not spec.ports:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": spec.service_name,
            "namespace": spec.namespace,
            "labels": _metadata_labels(spec, release),
        },
        "spec": {
            "selector": service_selector(spec, color),
            "ports": [
                {
                    "name": p.name or f"port-{p.port}",
                    "port": p.port,
                    "targetPort": p.target_port,
                    "protocol": p.protocol,
                }
                for p in spec.ports
            ],
        },
    }


def secret(
    spec: KubernetesSpec, release: Release, deployment: str, values: Mapping[str, str]
) -> dict[str, Any] | None:
    """The Secret holding the secret variables of ``deployment`` (None when there are none)."""
    if not values:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": f"{deployment}-env",
            "namespace": spec.namespace,
            "labels": _metadata_labels(spec, release),
        },
        "type": "Opaque",
        "stringData": dict(values),
    }


def canary_replicas(replicas: int, percent: int) -> int:
    """Pods of a canary at ``percent`` of ``replicas``: rounded up, at least one."""
    return max(1, -(-replicas * percent // 100))


def image_of(obj: Mapping[str, Any], container_name: str) -> str | None:
    """The image of ``container_name`` in a live Deployment (None if it has no such container)."""
    containers: Sequence[Mapping[str, Any]] = (
        obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or []
    )
    for c in containers:
        if c.get("name") == container_name:
            image = c.get("image")
            return str(image) if image else None
    return None
