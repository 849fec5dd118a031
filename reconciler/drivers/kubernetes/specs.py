"""``deploy.kubernetes`` read into one frozen value, with the defaults applied.

Pure: the schema has checked the form at load; this only names things and fills in
defaults, so the driver, ``quicflow plan`` and drift detection read the block alike.
With ``manifests``, the files the loader read for them travel in ``files`` (path from
the config root → text); ``overlays`` turns them and ``patches`` into objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.durations import parse_duration
from reconciler.gitops import model

DEFAULT_PROGRESS_DEADLINE = 600.0  # Kubernetes' own default for progressDeadlineSeconds
DEFAULT_RESTART_LIMIT = 3
DEFAULT_API_GRACE = 30.0


@dataclass(frozen=True, slots=True)
class Port:
    """A container port, and the Service port in front of it."""

    port: int
    target_port: int
    name: str = ""
    protocol: str = "TCP"


@dataclass(frozen=True, slots=True)
class KubernetesSpec:
    """What ``deploy.kubernetes`` asks for (defaults applied)."""

    deployment: str
    namespace: str = "default"
    container: str = "app"
    service: str = ""
    image: str | None = None
    replicas: int = 1
    ports: tuple[Port, ...] = ()
    resources: Mapping[str, Any] = field(default_factory=dict)
    probes: Mapping[str, Any] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    kubeconfig_credential: str | None = None
    context: str | None = None
    server: str | None = None
    certificate_authority: str | None = None
    progress_deadline: float = DEFAULT_PROGRESS_DEADLINE
    force_conflicts: bool = True
    restart_limit: int = DEFAULT_RESTART_LIMIT
    api_grace: float = DEFAULT_API_GRACE
    #: ``deploy.kubernetes.manifests`` as written (paths relative to the project directory).
    manifests: tuple[str, ...] = ()
    patches: tuple[Mapping[str, Any], ...] = ()
    files: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: Whether ``replicas`` was set: if not, a manifest's own ``spec.replicas`` counts.
    replicas_given: bool = True

    @property
    def service_name(self) -> str:
        return self.service or self.deployment

    @property
    def secret_name(self) -> str:
        """The Secret that carries the release's secret variables."""
        return f"{self.deployment}-env"

    @property
    def cluster(self) -> str:
        """How people name the cluster this deploys to (context, else the API server)."""
        return self.context or self.server or "the reconciler's cluster"


def plain(value: Any) -> Any:
    """``value`` with the model's read-only mappings and tuples made plain dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def read(deploy: model.DeployConfig) -> KubernetesSpec:
    """The spec of a ``kubernetes`` deploy config."""
    raw = deploy.spec
    ports = []
    for item in raw.get("ports") or []:
        if isinstance(item, int):
            ports.append(Port(item, item))
        else:
            port = int(item["port"])
            ports.append(
                Port(
                    port,
                    int(item.get("target_port") or port),
                    str(item.get("name") or ""),
                    str(item.get("protocol") or "TCP"),
                )
            )
    manifests = raw.get("manifests") or ()
    return KubernetesSpec(
        deployment=str(raw["deployment"]),
        namespace=str(raw.get("namespace") or "default"),
        container=str(raw.get("container") or "app"),
        service=str(raw.get("service") or ""),
        image=raw.get("image"),
        replicas=int(raw.get("replicas", 1)),
        ports=tuple(ports),
        resources=plain(raw.get("resources") or {}),
        probes=plain(raw.get("probes") or {}),
        labels={str(k): str(v) for k, v in (raw.get("labels") or {}).items()},
        kubeconfig_credential=raw.get("kubeconfig_credential"),
        context=raw.get("context"),
        server=raw.get("server"),
        certificate_authority=raw.get("certificate_authority"),
        progress_deadline=parse_duration(raw.get("progress_deadline"), DEFAULT_PROGRESS_DEADLINE)
        or DEFAULT_PROGRESS_DEADLINE,
        force_conflicts=bool(raw.get("force_conflicts", True)),
        restart_limit=int(raw.get("restart_limit", DEFAULT_RESTART_LIMIT)),
        api_grace=parse_duration(raw.get("api_grace"), DEFAULT_API_GRACE) or 0.0,
        manifests=(manifests,) if isinstance(manifests, str) else tuple(map(str, manifests)),
        patches=tuple(plain(p) for p in raw.get("patches") or ()),
        files=dict(deploy.files),
        replicas_given="replicas" in raw,
    )


def target_name(spec: KubernetesSpec) -> str:
    """The one target of a Kubernetes environment: its namespace, on its context."""
    return f"{spec.context}/{spec.namespace}" if spec.context else spec.namespace
