"""The user's manifests with a patch overlay: parsing, patches, our fields on top (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.drivers.kubernetes import describing, manifests, overlays, specs
from reconciler.gitops import model

FILE = "projects/web/k8s/app.yaml"

APP = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
  annotations: {team.example.com/owner: shop}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: app
          image: placeholder
          args: [--serve]
          env: [{name: LOG_LEVEL, value: info}, {name: GREETING, value: from-manifest}]
          ports: [{containerPort: 8080}]
        - name: sidecar
          image: envoy:1
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"""

CONFIG = """\
apiVersion: v1
kind: ConfigMap
metadata: {name: web-config, namespace: shop}
data: {mode: fast}
---
"""


def _spec(files: dict[str, str] | None = None, **kw: Any) -> specs.KubernetesSpec:
    raw = {"deployment": "web", "namespace": "shop", "manifests": "k8s/", **kw}
    deploy = model.DeployConfig(
        model.DeployType.KUBERNETES,
        raw,
        files={FILE: APP} if files is None else files,
    )
    return specs.read(deploy)


RELEASE = manifests.Release(
    "web",
    "prod",
    "2.0",
    "registry.example.com/acme/web@sha256:abc",
    "run-7",
    {"GREETING": "hello"},
    ("DB_PASSWORD",),
    "d1g3st",
)


# -- merge patches (RFC 7386, named lists by name) ---------------------------------------


@pytest.mark.parametrize(
    ("target", "patch", "expected"),
    [
        # RFC 7386's own examples (appendix A), a few of them.
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        ({"a": "foo"}, "bar", "bar"),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
        # Lists of named items merge by name, as strategic merge does for containers/env.
        (
            {"c": [{"name": "app", "image": "a"}, {"name": "side", "image": "s"}]},
            {"c": [{"name": "app", "resources": {"limits": {"cpu": "1"}}}]},
            {
                "c": [
                    {"name": "app", "image": "a", "resources": {"limits": {"cpu": "1"}}},
                    {"name": "side", "image": "s"},
                ]
            },
        ),
        (
            {"env": [{"name": "A", "value": "1"}]},
            {"env": [{"name": "B", "value": "2"}, {"name": "A", "$patch": "delete"}]},
            {"env": [{"name": "B", "value": "2"}]},
        ),
    ],
)
def test_merge_patches(target: Any, patch: Any, expected: Any) -> None:
    assert overlays.merge_patch(target, patch) == expected


# -- JSON patches (RFC 6902) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("ops", "expected"),
    [
        ([{"op": "add", "path": "/b", "value": 2}], {"a": [1, 2], "b": 2, "c": {"d/e": 3}}),
        ([{"op": "add", "path": "/a/-", "value": 3}], {"a": [1, 2, 3], "c": {"d/e": 3}}),
        ([{"op": "add", "path": "/a/0", "value": 0}], {"a": [0, 1, 2], "c": {"d/e": 3}}),
        ([{"op": "remove", "path": "/a/1"}], {"a": [1], "c": {"d/e": 3}}),
        ([{"op": "replace", "path": "/c/d~1e", "value": 4}], {"a": [1, 2], "c": {"d/e": 4}}),
        ([{"op": "move", "from": "/c/d~1e", "path": "/x"}], {"a": [1, 2], "c": {}, "x": 3}),
        (
            [{"op": "copy", "from": "/a", "path": "/c/a"}],
            {"a": [1, 2], "c": {"d/e": 3, "a": [1, 2]}},
        ),
        (
            [{"op": "test", "path": "/a/0", "value": 1}, {"op": "remove", "path": "/c"}],
            {"a": [1, 2]},
        ),
    ],
)
def test_json_patches(ops: list[dict[str, Any]], expected: Any) -> None:
    document = {"a": [1, 2], "c": {"d/e": 3}}
    assert overlays.json_patch(document, ops) == expected
    assert document == {"a": [1, 2], "c": {"d/e": 3}}  # the input is left alone


@pytest.mark.parametrize(
    ("op", "words"),
    [
        ({"op": "remove", "path": "/nope"}, "op 0 (remove /nope): no such member"),
        ({"op": "replace", "path": "/a/5", "value": 1}, "index 5 is past the end"),
        ({"op": "add", "path": "/a/01", "value": 1}, "'01' is not an index"),
        ({"op": "test", "path": "/a/0", "value": 9}, "test failed"),
        ({"op": "move", "from": "/c", "path": "/c/x"}, "into itself"),
        ({"op": "add", "path": "a", "value": 1}, "not a JSON pointer"),
    ],
)
def test_json_patch_errors_say_which_op(op: dict[str, Any], words: str) -> None:
    with pytest.raises(overlays.PatchError) as caught:
        overlays.json_patch({"a": [1, 2], "c": {"d/e": 3}}, [op])
    assert words in str(caught.value)


# -- documents ----------------------------------------------------------------------------


def test_documents_are_read_in_order_with_the_namespace_filled_in() -> None:
    docs = overlays.documents(_spec({FILE: APP, "projects/web/k8s/config.yaml": CONFIG}))
    assert [(d.ref, d.where) for d in docs] == [
        ("Deployment/web", f"{FILE} document 1"),
        ("Service/web", f"{FILE} document 2"),
        ("ConfigMap/web-config", "projects/web/k8s/config.yaml document 1"),
    ]
    assert {d.namespace for d in docs} == {"shop"}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("kind: ConfigMap\nmetadata: {name: x}\n", "document 1: apiVersion required"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n", "metadata.name required"),
        ("- a\n- b\n", "a manifest is a mapping, not list"),
        (CONFIG + "a: b: c\n", "document 2: invalid YAML at line 6, column 5: mapping values"),
        ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n", "kind Pod is not one"),
        ("apiVersion: apps/v1beta1\nkind: Deployment\nmetadata: {name: d}\n", "as apps/v1"),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: other}\n",
            "is in namespace other, but the environment deploys to shop",
        ),
        ("apiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n", "not the environment's"),
        (CONFIG + CONFIG, f"document 2: ConfigMap/web-config is also defined by {FILE} document 1"),
    ],
)
def test_bad_documents_name_the_file_and_document(text: str, words: str) -> None:
    with pytest.raises(overlays.ManifestError, match=words) as caught:
        overlays.documents(_spec({FILE: text}))
    assert FILE in str(caught.value)


def test_yaml_errors_do_not_quote_the_manifest() -> None:
    secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {pw: [hunter2\n"
    with pytest.raises(overlays.ManifestError) as caught:
        overlays.documents(_spec({FILE: secret}))
    assert "hunter2" not in str(caught.value)


def test_fields_the_api_server_sets_are_dropped() -> None:
    exported = (
        "apiVersion: v1\nkind: ConfigMap\n"
        "metadata: {name: c, resourceVersion: '42', uid: u-1, creationTimestamp: 2024-01-02}\n"
        "data: {since: 2024-01-02}\nstatus: {x: 1}\n"
    )
    (doc,) = overlays.documents(_spec({FILE: exported}))
    assert doc.body == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "c", "namespace": "shop"},
        "data": {"since": "2024-01-02"},  # a YAML date, as the API server reads it: text
    }


# -- patches on documents -----------------------------------------------------------------

LIMIT = {
    "target": {"kind": "Deployment", "name": "web"},
    "merge": {
        "metadata": {"annotations": {"patched.example.com/by": "overlay"}},
        "spec": {
            "template": {
                "spec": {"containers": [{"name": "app", "resources": {"limits": {"cpu": "1"}}}]}
            }
        },
    },
}


def test_patches_apply_in_order_to_their_targets() -> None:
    ops = {
        "target": {"kind": "Deployment"},
        "ops": [{"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": "-v"}],
    }
    everything = {"merge": {"metadata": {"labels": {"tier": "web"}}}}
    spec = _spec(
        {FILE: APP, "projects/web/k8s/config.yaml": CONFIG}, patches=[LIMIT, ops, everything]
    )
    docs = overlays.patched(overlays.documents(spec), spec.patches)
    deployment, service, config = (d.body for d in docs)
    app = deployment["spec"]["template"]["spec"]["containers"][0]
    assert app["resources"] == {"limits": {"cpu": "1"}}
    assert app["image"] == "placeholder" and app["args"] == ["--serve", "-v"]
    assert deployment["metadata"]["annotations"] == {
        "team.example.com/owner": "shop",
        "patched.example.com/by": "overlay",
    }
    assert all(d["metadata"]["labels"]["tier"] == "web" for d in (deployment, service, config))


@pytest.mark.parametrize(
    ("patch", "words"),
    [
        (
            {"target": {"kind": "Deployment", "name": "wbe"}, "merge": {}},
            r"patches\[0\]: target Deployment/wbe matches no manifest \(they hold: "
            "Deployment/web, Service/web\\)",
        ),
        (
            {"target": {"name": "web"}, "merge": {"metadata": {"name": "other"}}},
            "may not change apiVersion, kind, metadata.name",
        ),
        (
            {"target": {"kind": "Service"}, "ops": [{"op": "remove", "path": "/spec/x"}]},
            rf"patches\[0\] on Service/web \({FILE} document 2\): op 0 \(remove /spec/x\)",
        ),
    ],
)
def test_patch_errors_name_the_patch_and_the_document(patch: dict, words: str) -> None:
    spec = _spec(patches=[patch])
    with pytest.raises(overlays.ManifestError, match=words):
        overlays.patched(overlays.documents(spec), spec.patches)


# -- sorting out, and our fields on top ---------------------------------------------------


def test_load_sorts_out_ours_the_service_and_the_rest() -> None:
    ingress = (
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web}\n"
        "spec: {rules: [{host: web.example.com}]}\n"
    )
    files = {FILE: APP, "projects/web/k8s/config.yaml": CONFIG, "projects/web/k8s/z.yaml": ingress}
    user = overlays.load(_spec(files, patches=[LIMIT]))
    assert user.deployment.ref == "Deployment/web" and user.service is not None
    assert [d.ref for d in user.before] == ["ConfigMap/web-config"]
    assert [d.ref for d in user.after] == ["Ingress/web"]
    assert user.replicas == 3 and user.patches == 1


@pytest.mark.parametrize(
    ("kw", "text", "words"),
    [
        ({"deployment": "api"}, APP, "deploy.kubernetes.deployment: no Deployment api among"),
        ({"container": "main"}, APP, "has no container 'main' .*it has: app, sidecar"),
        (
            {},
            APP + "---\n" + APP.split("---\n")[0].replace("name: web\n", "name: web-canary\n", 1),
            "Deployment/web-canary is the name the driver gives the canary",
        ),
    ],
)
def test_load_refuses_what_it_cannot_deploy(kw: dict, text: str, words: str) -> None:
    with pytest.raises(overlays.ManifestError, match=words):
        overlays.load(_spec({FILE: text}, **kw))


def test_blue_green_refuses_a_second_service_selecting_the_pods() -> None:
    extra = "---\napiVersion: v1\nkind: Service\nmetadata: {name: web-internal}\nspec: {selector: {app: web}}\n"
    spec = _spec({FILE: APP + extra})
    assert overlays.load(spec).after[0].ref == "Service/web-internal"  # fine when rolling
    with pytest.raises(overlays.ManifestError, match="Service web-internal selects the pods"):
        overlays.load(spec, blue_green=True)


@pytest.mark.parametrize(
    ("color", "track", "name", "selector"),
    [
        (None, manifests.STABLE, "web", {manifests.APP: "web", manifests.TRACK: "stable"}),
        (None, manifests.CANARY, "web-canary", {manifests.APP: "web", manifests.TRACK: "canary"}),
        ("green", manifests.STABLE, "web-green", {manifests.APP: "web", manifests.COLOR: "green"}),
    ],
)
def test_our_fields_go_on_top_as_on_a_generated_deployment(
    color: str | None, track: str, name: str, selector: dict
) -> None:
    spec = _spec(patches=[LIMIT], labels={"team": "shop"})
    user = overlays.load(spec)
    body = overlays.deployment(spec, RELEASE, user, replicas=2, color=color, track=track)
    generated = manifests.deployment(spec, RELEASE, replicas=2, color=color, track=track)
    meta = body["metadata"]
    assert meta["name"] == name and meta["namespace"] == "shop"
    # Everything a generated Deployment carries in labels and annotations, and the user's.
    assert meta["labels"] == {"app": "web", **generated["metadata"]["labels"]}
    assert meta["annotations"] == {
        "team.example.com/owner": "shop",
        "patched.example.com/by": "overlay",
        **generated["metadata"]["annotations"],
    }
    assert body["spec"]["selector"] == {"matchLabels": selector} == generated["spec"]["selector"]
    assert body["spec"]["replicas"] == 2
    template = body["spec"]["template"]
    assert template["metadata"]["labels"] == {
        "app": "web",
        **generated["spec"]["template"]["metadata"]["labels"],
    }
    assert template["metadata"]["annotations"] == {manifests.SECRET_HASH: "d1g3st"}
    app, sidecar = template["spec"]["containers"]
    assert app["image"] == RELEASE.image and sidecar["image"] == "envoy:1"
    assert app["resources"] == {"limits": {"cpu": "1"}}  # the patch's, not replaced
    assert app["args"] == ["--serve"] and app["ports"] == [{"containerPort": 8080}]
    env = {e["name"]: e for e in app["env"]}
    assert env["LOG_LEVEL"] == {"name": "LOG_LEVEL", "value": "info"}
    assert env["GREETING"] == {"name": "GREETING", "value": "hello"}  # ours win by name
    assert env["DB_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": f"{name}-env",
        "key": "DB_PASSWORD",
    }
    assert len(app["env"]) == len(env)
    # The manifest itself is not changed by composing from it.
    assert user.deployment.body["spec"]["selector"] == {"matchLabels": {"app": "web"}}


def test_the_manifests_replicas_count_unless_the_config_sets_them() -> None:
    user = overlays.load(_spec())
    assert overlays.with_replicas(_spec(), user).replicas == 3
    assert overlays.with_replicas(_spec(replicas=5), user).replicas == 5


def test_the_apps_service_gets_our_selector_and_others_our_labels() -> None:
    spec = _spec({FILE: APP, "projects/web/k8s/config.yaml": CONFIG})
    user = overlays.load(spec)
    svc = overlays.service(spec, RELEASE, user, "blue")
    assert svc is not None and svc["spec"]["selector"] == {
        "app": "web",
        manifests.APP: "web",
        manifests.COLOR: "blue",
    }
    assert svc["spec"]["ports"] == [{"port": 80, "targetPort": 8080}]
    (config,) = user.before
    body = overlays.labelled(spec, RELEASE, config)
    assert body["metadata"]["labels"] == {
        manifests.MANAGED_BY: "quicflow",
        manifests.PROJECT: "web",
        manifests.ENV: "prod",
    }
    assert body["data"] == {"mode": "fast"}
    # Without a Service of the app's name among the manifests, the generated one (ports).
    no_service = _spec({FILE: APP.split("---\n")[0]}, ports=[8080])
    generated = overlays.service(no_service, RELEASE, overlays.load(no_service))
    assert generated == manifests.service(no_service, RELEASE)


def _env(spec_raw: dict, files: dict[str, str], strategy: model.Strategy) -> model.Environment:
    return model.Environment(
        project="web",
        name="prod",
        version="2.0",
        tier="prod",
        protected=False,
        strategy=strategy,
        deploy=model.DeployConfig(model.DeployType.KUBERNETES, spec_raw, files=files),
        build=model.BuildConfig(),
        pipeline=model.Pipeline(()),
    )


def test_plan_says_where_the_manifests_come_from_and_what_is_applied() -> None:
    raw = {
        "deployment": "web",
        "namespace": "shop",
        "manifests": "k8s/",
        "image": "registry.example.com/acme/web:{{ version }}",
        "patches": [LIMIT],
    }
    files = {FILE: APP, "projects/web/k8s/config.yaml": CONFIG}
    lines = describing.applies(_env(raw, files, model.Strategy()))
    assert lines[1] == "manifests from k8s/ (2 files) with 1 patch"
    assert (
        lines[2] == "apply ConfigMap shop/web-config (from projects/web/k8s/config.yaml document 1)"
    )
    assert lines[3].startswith(
        "apply Deployment shop/web: registry.example.com/acme/web:2.0, 3 replicas"
    )
    assert lines[3].endswith(f"(from {FILE} document 1)")
    assert lines[4] == "apply Service shop/web"
    blue_green = model.Strategy(model.StrategyType.BLUE_GREEN, {"rollback_window": 600})
    lines = describing.applies(_env(raw, files, blue_green), "blue")
    assert "switch Service shop/web to green once web-green is healthy" in lines
    broken = describing.applies(_env({**raw, "deployment": "api"}, files, model.Strategy()))
    assert broken[-1].startswith("cannot apply the manifests: deploy.kubernetes.deployment")
