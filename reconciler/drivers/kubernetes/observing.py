"""What a Kubernetes environment runs now, as the planner's live observation (drift).

Reads (blocking: call it in a thread) the Deployment that serves — the primary, or for
blue-green the color the state ref names — and, for blue-green, the Service. Drift is
judged on our fields only (``drift``): the replicas and image we applied (the image
as our ``quicflow.dev/image`` annotation records it), and which color the Service
selects. A Deployment that is gone while the state ref records a release is drift too.
With ``manifests``, the fields the manifest sets are never compared (we apply them all,
so they are ours, but they are the user's text, not our intent); its ``spec.replicas``
is the one compared when ``deploy.kubernetes.replicas`` is not set.
"""

from __future__ import annotations

import contextlib

from reconciler.drivers.kubernetes import clusters, drift, manifests, overlays, specs
from reconciler.drivers.kubernetes.api import ClusterApi
from reconciler.gitops import model
from reconciler.gitops.planning import DeployedRecord, Observation


def observe(
    env: model.Environment,
    credential_value: str | None,
    record: DeployedRecord,
    connect: type[ClusterApi] = ClusterApi,
) -> Observation:
    """The observation of ``env`` (raises our errors when the cluster cannot be read)."""
    spec = specs.read(env.deploy)
    if spec.manifests:
        # Broken manifests: a run will report them; the replicas of the config still count.
        with contextlib.suppress(overlays.ManifestError):
            spec = overlays.with_replicas(spec, overlays.load(spec))
    api = connect(clusters.source_for(spec, credential_value))
    try:
        color = record.color if env.strategy.type is model.StrategyType.BLUE_GREEN else None
        name = manifests.deployment_name(spec, color)
        target = specs.target_name(spec)
        live = api.get("Deployment", spec.namespace, name)
        if live is None:
            return Observation(
                env.project,
                env.name,
                target,
                differs=f"Deployment {spec.namespace}/{name} is missing",
            )
        annotations = live["metadata"].get("annotations") or {}
        applied_image = annotations.get(manifests.IMAGE_ANNOTATION)
        found = []
        if applied_image:
            desired = {
                "spec": {
                    "replicas": spec.replicas,
                    "template": {
                        "spec": {"containers": [{"name": spec.container, "image": applied_image}]}
                    },
                }
            }
            found = drift.differences(desired, live)
        if color:
            service = api.get("Service", spec.namespace, spec.service_name)
            selects = ((service or {}).get("spec") or {}).get("selector") or {}
            if service is not None and selects.get(manifests.COLOR) != color:
                found.append(
                    f"Service {spec.service_name} selects {selects.get(manifests.COLOR)}, "
                    f"recorded {color}"
                )
        return Observation(
            env.project,
            env.name,
            target,
            version=annotations.get(manifests.VERSION_ANNOTATION),
            differs="; ".join(found),
        )
    finally:
        api.close()
