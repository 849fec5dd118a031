"""The Kubernetes driver's pure parts: cluster references, rollout status, drift, field sets."""

from __future__ import annotations

import pytest

from reconciler.drivers.kubernetes import clusters, drift, fields, manifests, rollouts, specs
from reconciler.gitops import model

KUBECONFIG = """\
apiVersion: v1
kind: Config
current-context: prod
clusters: [{name: c, cluster: {server: "https://k.example:6443"}}]
users: [{name: u, user: {token: very-secret-token}}]
contexts:
  - {name: prod, context: {cluster: c, user: u}}
  - {name: staging, context: {cluster: c, user: u}}
"""


def _spec(**kw: object) -> specs.KubernetesSpec:
    raw = {"deployment": "web", "kubeconfig_credential": "cluster", **kw}
    return specs.read(model.DeployConfig(model.DeployType.KUBERNETES, raw))


def test_a_kubeconfig_credential_picks_its_context() -> None:
    source = clusters.source_for(_spec(context="staging"), KUBECONFIG)
    assert isinstance(source, clusters.Kubeconfig) and source.context == "staging"
    assert clusters.source_for(_spec(), KUBECONFIG).context == "prod"  # type: ignore[union-attr]
    assert "very-secret-token" not in repr(source)


def test_a_missing_context_names_the_ones_there_are() -> None:
    with pytest.raises(clusters.ClusterConfigError) as caught:
        clusters.source_for(_spec(context="dev"), KUBECONFIG)
    message = str(caught.value)
    assert "deploy.kubernetes.context" in message and "'dev'" in message
    assert "prod, staging" in message and "very-secret-token" not in message


def test_a_bare_token_needs_the_server() -> None:
    with pytest.raises(clusters.ClusterConfigError, match="deploy.kubernetes.server"):
        clusters.source_for(_spec(), "tok-123")
    source = clusters.source_for(_spec(server="https://k:6443"), "tok-123")
    assert isinstance(source, clusters.BearerToken) and "tok-123" not in repr(source)
    assert isinstance(
        clusters.source_for(_spec(kubeconfig_credential=None), None), clusters.InCluster
    )


def _deployment(**status: object) -> dict:
    return {
        "metadata": {"name": "web", "generation": 2},
        "spec": {"replicas": 3},
        "status": {"observedGeneration": 2, **status},
    }


@pytest.mark.parametrize(
    ("status", "phase", "words"),
    [
        ({"observedGeneration": 1}, rollouts.Phase.PROGRESSING, "to be observed"),
        ({"updatedReplicas": 1}, rollouts.Phase.PROGRESSING, "1 of 3 new replicas"),
        ({"updatedReplicas": 3, "replicas": 4}, rollouts.Phase.PROGRESSING, "pending termination"),
        (
            {"updatedReplicas": 3, "replicas": 3, "availableReplicas": 2},
            rollouts.Phase.PROGRESSING,
            "2 of 3 updated replicas",
        ),
        (
            {"updatedReplicas": 3, "replicas": 3, "availableReplicas": 3},
            rollouts.Phase.COMPLETE,
            "3 of 3 replicas available",
        ),
        (
            {
                "conditions": [
                    {"type": "Progressing", "reason": "ProgressDeadlineExceeded", "message": "x"}
                ]
            },
            rollouts.Phase.FAILED,
            "ProgressDeadlineExceeded: x",
        ),
    ],
)
def test_rollout_status_follows_kubectl(status: dict, phase: rollouts.Phase, words: str) -> None:
    judged = rollouts.judge(_deployment(**status))
    assert judged.phase is phase and words in judged.message


def test_crash_loops_and_restarts_are_problems() -> None:
    pod = {
        "metadata": {"name": "web-1"},
        "status": {
            "containerStatuses": [
                {
                    "name": "app",
                    "restartCount": 5,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                },
                {"name": "sidecar", "restartCount": 9, "state": {"running": {}}},
            ]
        },
    }
    assert rollouts.pod_problems([pod], "app", 3) == ["pod web-1: CrashLoopBackOff (restarts 5)"]
    assert "restarted 9 times" in rollouts.pod_problems([pod], "sidecar", 3)[0]


def test_drift_looks_only_at_our_fields() -> None:
    desired = {
        "spec": {
            "replicas": 3,
            "template": {"spec": {"containers": [{"name": "app", "image": "a:1"}]}},
        }
    }
    live = {
        "metadata": {"annotations": {"someone.else/x": "y"}},
        "spec": {
            "replicas": 3,
            "revisionHistoryLimit": 10,
            "template": {
                "spec": {
                    "containers": [
                        {"name": "sidecar", "image": "s"},
                        {"name": "app", "image": "a:1", "imagePullPolicy": "Always"},
                    ]
                }
            },
        },
    }
    assert drift.differences(desired, live) == []
    live["spec"]["template"]["spec"]["containers"][1]["image"] = "a:2"
    assert drift.differences(desired, live) == [
        "spec.template.spec.containers[app].image: live 'a:2', applied 'a:1'"
    ]


def test_our_applied_config_is_read_back_from_managed_fields() -> None:
    live = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web-blue",
            "namespace": "ns",
            "resourceVersion": "7",
            "annotations": {"ours": "1", "theirs": "2"},
            "managedFields": [
                {
                    "manager": "quicflow",
                    "operation": "Apply",
                    "fieldsV1": {
                        "f:metadata": {"f:annotations": {"f:ours": {}}},
                        "f:spec": {
                            "f:replicas": {},
                            "f:template": {
                                "f:spec": {
                                    "f:containers": {'k:{"name":"app"}': {".": {}, "f:image": {}}}
                                }
                            },
                        },
                    },
                },
                {
                    "manager": "kubectl",
                    "operation": "Update",
                    "fieldsV1": {"f:metadata": {"f:annotations": {"f:theirs": {}}}},
                },
            ],
        },
        "spec": {
            "replicas": 4,
            "paused": False,
            "template": {"spec": {"containers": [{"name": "app", "image": "a:1", "tty": True}]}},
        },
        "status": {"replicas": 4},
    }
    assert fields.applied_config(live, "quicflow") == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web-blue", "namespace": "ns", "annotations": {"ours": "1"}},
        "spec": {
            "replicas": 4,
            "template": {"spec": {"containers": [{"name": "app", "image": "a:1"}]}},
        },
    }
    assert fields.applied_config(live, "nobody") is None


def test_names_selectors_and_canary_sizes() -> None:
    spec = _spec(ports=[8080])
    assert manifests.deployment_name(spec) == "web"
    assert manifests.deployment_name(spec, track=manifests.CANARY) == "web-canary"
    assert manifests.deployment_name(spec, "green") == "web-green"
    assert manifests.selector(spec, "green") == {
        "app.kubernetes.io/name": "web",
        "quicflow.dev/color": "green",
    }
    assert manifests.service_selector(spec) == {"app.kubernetes.io/name": "web"}
    assert [manifests.canary_replicas(4, p) for p in (10, 25, 50, 99)] == [1, 1, 2, 4]
    assert manifests.label_value("1.0+build/7") == "1.0-build-7"
