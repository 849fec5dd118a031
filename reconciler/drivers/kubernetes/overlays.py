"""Your own manifests, patched, with our fields on top: what ``deploy.kubernetes.manifests`` applies.

Pure: the texts the loader read from the config repo (``KubernetesSpec.files``) in,
plain dicts in the API's shape out. Three steps, each its own function:

1. ``documents`` parses every file (multi-document YAML) and checks each document: a
   mapping with ``apiVersion``, ``kind`` and ``metadata.name``, of a kind the driver
   applies (``KINDS``), in the environment's namespace (filled in when left out).
   Fields the API server sets (``status``, ``metadata.resourceVersion``, ``uid``, …) are
   dropped, so the output of ``kubectl get -o yaml`` works as a manifest. Errors name the
   file and the document (counted from 1, one per ``---`` section).
2. ``patched`` applies ``deploy.kubernetes.patches`` in order. ``merge`` is a JSON merge
   patch (RFC 7386) with one rule of Kubernetes' strategic merge patch: a list whose
   items all have a ``name`` (containers, env, volumes, volumeMounts…) merges item by
   item by name, and ``$patch: delete`` in an item removes it. ``ops`` are JSON Patch
   operations (RFC 6902). A patch whose target matches no document is an error (a typo,
   most often); a patch may not change a document's kind, name or namespace.
3. ``deployment`` and ``service`` put our fields on top, exactly as
   ``manifests.deployment`` sets them on a generated Deployment: the name of the track
   or color, our labels (project/env/version/run, ``app.kubernetes.io/name``, track or
   color), a selector of our labels only — selectors are immutable, and this is the one
   a generated Deployment has, so a project can move between the two — replicas, the
   container's image and env, and our annotations. The Service named
   ``deploy.kubernetes.service`` (default: the Deployment's name) is the app's: our
   selector is added to its own, so blue-green switches it as it switches a generated one.

Everything is applied whole by server-side apply as ``quicflow``, so we own each field a
manifest sets; drift still compares only image and replicas (``observing``). Objects
dropped from the manifests are not deleted from the cluster (no pruning).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from reconciler.drivers.kubernetes import manifests
from reconciler.drivers.kubernetes.specs import KubernetesSpec, plain
from reconciler.errors import PermanentError

#: The kinds a manifest may hold: kind → (apiVersion, rank in the apply order).
#: Namespaces and accounts first, then config, Deployments, and what routes to them.
KINDS: dict[str, tuple[str, int]] = {
    "Namespace": ("v1", 0),
    "ServiceAccount": ("v1", 1),
    "ConfigMap": ("v1", 2),
    "Secret": ("v1", 2),
    "Deployment": ("apps/v1", 3),
    "Service": ("v1", 4),
    "Ingress": ("networking.k8s.io/v1", 5),
}
CLUSTER_SCOPED = frozenset({"Namespace"})
_DEPLOYMENT_RANK = KINDS["Deployment"][1]
# Set by the API server: applying them would be a precondition (resourceVersion) or noise.
_SERVER_SET = (
    *("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields"),
    *("selfLink", "deletionTimestamp", "deletionGracePeriodSeconds"),
)
_PROBES = ("readiness", "liveness", "startup")


class ManifestError(PermanentError):
    """A manifest or a patch cannot be used; the message names the file, document or patch."""


class PatchError(ValueError):
    """One patch does not apply to one document (wrapped into a ``ManifestError``)."""


@dataclass(frozen=True, slots=True)
class Document:
    """One manifest: the file it came from, its number there (from 1), its body."""

    file: str
    number: int
    body: Mapping[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body["kind"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"].get("namespace") or "")

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def where(self) -> str:
        return f"{self.file} document {self.number}"


@dataclass(frozen=True, slots=True)
class UserManifests:
    """The patched manifests of a release, sorted out: ours, the app's Service, the rest."""

    deployment: Document
    service: Document | None
    before: tuple[Document, ...]  # namespaces, accounts, config, other Deployments
    after: tuple[Document, ...]  # other Services, Ingresses
    files: tuple[str, ...]
    patches: int

    @property
    def replicas(self) -> int | None:
        """The replicas the manifest of our Deployment asks for (None: it does not say)."""
        value = (self.deployment.body.get("spec") or {}).get("replicas")
        return value if isinstance(value, int) and not isinstance(value, bool) else None


# -- 1. documents --------------------------------------------------------------------------


def documents(spec: KubernetesSpec) -> list[Document]:
    """Every document of the manifest files, checked, in file order."""
    if not spec.files:
        raise ManifestError(
            f"deploy.kubernetes.manifests {', '.join(spec.manifests)}: no manifest file was "
            "read (the loader reads them for the environment's own deploy config)"
        )
    found: list[Document] = []
    seen: dict[tuple[str, str], Document] = {}
    for file in sorted(spec.files):
        for doc in _parse(file, spec.files[file], spec.namespace):
            key = (doc.kind, doc.name)
            if key in seen:
                raise ManifestError(f"{doc.where}: {doc.ref} is also defined by {seen[key].where}")
            seen[key] = doc
            found.append(doc)
    if not found:
        raise ManifestError(f"{', '.join(sorted(spec.files))}: the manifests hold no document")
    return found


def _parse(file: str, text: str, namespace: str) -> list[Document]:
    out: list[Document] = []
    number = 0
    try:
        for body in yaml.safe_load_all(text):
            number += 1
            if body is None:
                continue  # an empty section (a trailing ``---``)
            out.append(Document(file, number, _checked(file, number, body, namespace)))
    except yaml.YAMLError as exc:
        # The parser's own text can quote the document (a Secret's value): say where only.
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not YAML"
        raise ManifestError(f"{file} document {number + 1}: invalid YAML{at}: {problem}") from None
    return out


def _checked(file: str, number: int, body: Any, namespace: str) -> dict[str, Any]:
    """``body`` as a manifest we can apply (or a ManifestError saying what it lacks)."""
    where = f"{file} document {number}"
    if not isinstance(body, Mapping):
        raise ManifestError(f"{where}: a manifest is a mapping, not {type(body).__name__}")
    body = _json(body, where)
    missing = [k for k in ("apiVersion", "kind") if not isinstance(body.get(k), str)]
    meta = body.get("metadata")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        missing.append("metadata.name")
    if missing:
        raise ManifestError(f"{where}: {', '.join(missing)} required")
    kind, api_version = body["kind"], body["apiVersion"]
    if kind not in KINDS:
        raise ManifestError(
            f"{where}: kind {kind} is not one the Kubernetes driver applies "
            f"({', '.join(sorted(KINDS))})"
        )
    if api_version != KINDS[kind][0]:
        raise ManifestError(
            f"{where}: {kind} {meta['name']} has apiVersion {api_version}; "
            f"the driver applies {kind} as {KINDS[kind][0]}"
        )
    body.pop("status", None)
    for key in _SERVER_SET:
        meta.pop(key, None)
    if kind in CLUSTER_SCOPED:
        meta.pop("namespace", None)
        if meta["name"] != namespace:
            raise ManifestError(
                f"{where}: Namespace {meta['name']} is not the environment's namespace "
                f"{namespace} (deploy.kubernetes.namespace); only that one may be applied"
            )
    elif meta.setdefault("namespace", namespace) != namespace:
        raise ManifestError(
            f"{where}: {kind} {meta['name']} is in namespace {meta['namespace']}, but the "
            f"environment deploys to {namespace} (deploy.kubernetes.namespace)"
        )
    return body


def _json(value: Any, where: str) -> Any:
    """``value`` as JSON would carry it: YAML dates become strings, as the API server reads them."""
    if isinstance(value, Mapping):
        return {str(k): _json(v, where) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v, where) for v in value]
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise ManifestError(f"{where}: a value of type {type(value).__name__} has no JSON form")


# -- 2. patches ----------------------------------------------------------------------------


def patched(docs: Sequence[Document], patches: Sequence[Mapping[str, Any]]) -> list[Document]:
    """``docs`` with every patch applied, in order."""
    out = list(docs)
    for i, patch in enumerate(patches):
        label = f"deploy.kubernetes.patches[{i}]"
        target = patch.get("target") or {}
        hits = [n for n, d in enumerate(out) if _targets(target, d)]
        if not hits:
            wanted = "/".join(str(target.get(k, "*")) for k in ("kind", "name"))
            raise ManifestError(
                f"{label}: target {wanted} matches no manifest "
                f"(they hold: {', '.join(d.ref for d in out)})"
            )
        for n in hits:
            doc = out[n]
            try:
                if "merge" in patch:
                    body = merge_patch(doc.body, patch["merge"])
                else:
                    body = json_patch(doc.body, patch.get("ops") or [])
            except PatchError as exc:
                raise ManifestError(f"{label} on {doc.ref} ({doc.where}): {exc}") from None
            if not isinstance(body, Mapping) or _identity(body) != _identity(doc.body):
                raise ManifestError(
                    f"{label} on {doc.ref} ({doc.where}): a patch may not change "
                    "apiVersion, kind, metadata.name or metadata.namespace"
                )
            out[n] = dataclasses.replace(doc, body=body)
    return out


def _targets(target: Mapping[str, Any], doc: Document) -> bool:
    return all(target.get(k) in (None, v) for k, v in (("kind", doc.kind), ("name", doc.name)))


def _identity(body: Mapping[str, Any]) -> tuple[Any, ...]:
    meta = body.get("metadata")
    meta = meta if isinstance(meta, Mapping) else {}
    return (body.get("apiVersion"), body.get("kind"), meta.get("name"), meta.get("namespace"))


def merge_patch(target: Any, patch: Any) -> Any:
    """``target`` with the merge ``patch`` applied (RFC 7386, named lists merged by name)."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(plain(patch))
    result = copy.deepcopy(dict(target)) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif _named(value) and isinstance(result.get(key), list):
            result[key] = _merge_named(result[key], value)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _named(value: Any) -> bool:
    return (
        isinstance(value, list | tuple)
        and bool(value)
        and all(isinstance(item, Mapping) and "name" in item for item in value)
    )


def _merge_named(live: list[Any], patch: Sequence[Mapping[str, Any]]) -> list[Any]:
    out = copy.deepcopy(live)
    for item in patch:
        at = next(
            (
                i
                for i, x in enumerate(out)
                if isinstance(x, Mapping) and x.get("name") == item["name"]
            ),
            None,
        )
        directive = item.get("$patch")
        if directive == "delete":
            if at is not None:
                del out[at]
            continue
        if directive is not None:
            raise PatchError(f"$patch: {directive} is not supported (only delete)")
        if at is None:
            out.append(merge_patch({}, item))
        else:
            out[at] = merge_patch(out[at], item)
    return out


def json_patch(document: Any, ops: Sequence[Mapping[str, Any]]) -> Any:
    """``document`` with the JSON Patch ``ops`` applied in order (RFC 6902)."""
    doc = copy.deepcopy(plain(document))
    for n, op in enumerate(ops):
        try:
            doc = _operation(doc, op)
        except PatchError as exc:
            raise PatchError(f"op {n} ({op.get('op')} {op.get('path')}): {exc}") from None
    return doc


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"{path!r} is not a JSON pointer (it starts with '/')")
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _index(container: list[Any], token: str, *, appending: bool) -> int:
    if appending and token == "-":
        return len(container)
    if not token.isdigit() or (token != "0" and token.startswith("0")):
        raise PatchError(f"{token!r} is not an index of a list")
    index = int(token)
    if index > len(container) or (index == len(container) and not appending):
        raise PatchError(f"index {index} is past the end of a list of {len(container)}")
    return index


def _get(doc: Any, tokens: list[str]) -> Any:
    node = doc
    for token in tokens:
        if isinstance(node, dict):
            if token not in node:
                raise PatchError("no such member")
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, appending=False)]
        else:
            raise PatchError("the path goes through a value that is neither object nor list")
    return node


def _add(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return copy.deepcopy(value)
    parent = _get(doc, tokens[:-1])
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = copy.deepcopy(value)
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, appending=True), copy.deepcopy(value))
    else:
        raise PatchError("the parent is neither object nor list")
    return doc


def _remove(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        raise PatchError("the whole document cannot be removed")
    parent = _get(doc, tokens[:-1])
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError("no such member")
        del parent[last]
    elif isinstance(parent, list):
        del parent[_index(parent, last, appending=False)]
    else:
        raise PatchError("the parent is neither object nor list")
    return doc


def _operation(doc: Any, op: Mapping[str, Any]) -> Any:
    kind = op.get("op")
    tokens = _pointer(str(op.get("path", "")))
    if kind in ("add", "replace", "test") and "value" not in op:
        raise PatchError("needs a value")
    if kind == "add":
        return _add(doc, tokens, plain(op["value"]))
    if kind == "remove":
        return _remove(doc, tokens)
    if kind == "replace":
        if not tokens:
            return copy.deepcopy(plain(op["value"]))
        return _add(_remove(doc, tokens), tokens, plain(op["value"]))  # remove: it must exist
    if kind in ("move", "copy"):
        if "from" not in op:
            raise PatchError("needs from")
        source = _pointer(str(op["from"]))
        value = copy.deepcopy(_get(doc, source))
        if kind == "move":
            if tokens[: len(source)] == source and tokens != source:
                raise PatchError("cannot move a value into itself")
            doc = _remove(doc, source)
        return _add(doc, tokens, value)
    if kind == "test":
        # Values are not shown: a manifest may hold a Secret's.
        if _get(doc, tokens) != plain(op["value"]):
            raise PatchError("test failed: the value differs")
        return doc
    raise PatchError(f"unknown op {kind!r}")


# -- sorting out ---------------------------------------------------------------------------


def load(spec: KubernetesSpec, *, blue_green: bool = False) -> UserManifests:
    """The manifests of ``spec``, patched and sorted out (ManifestError when unusable)."""
    docs = documents(spec)
    # Before the patches: a missing Deployment would otherwise show as a patch's target.
    if not any(d.kind == "Deployment" and d.name == spec.deployment for d in docs):
        found = ", ".join(d.ref for d in docs)
        raise ManifestError(
            f"deploy.kubernetes.deployment: no Deployment {spec.deployment} among the "
            f"manifests ({', '.join(sorted(spec.files))}; they hold {found})"
        )
    docs = patched(docs, spec.patches)
    (ours,) = (d for d in docs if d.kind == "Deployment" and d.name == spec.deployment)
    containers = _containers(ours.body)
    if spec.container not in [c.get("name") for c in containers]:
        have = ", ".join(str(c.get("name")) for c in containers) or "none"
        raise ManifestError(
            f"{ours.where}: Deployment {ours.name} has no container {spec.container!r} "
            f"(deploy.kubernetes.container; it has: {have})"
        )
    reserved = {
        ("Deployment", manifests.deployment_name(spec, track=manifests.CANARY)): "the canary",
        ("Deployment", manifests.deployment_name(spec, "blue")): "blue-green's blue",
        ("Deployment", manifests.deployment_name(spec, "green")): "blue-green's green",
    }
    for track in ("", "-canary", "-blue", "-green"):
        reserved[("Secret", f"{spec.deployment}{track}-env")] = "the secret variables"
    for doc in docs:
        if (doc.kind, doc.name) in reserved:
            raise ManifestError(
                f"{doc.where}: {doc.ref} is the name the driver gives "
                f"{reserved[(doc.kind, doc.name)]}; rename it"
            )
    service = next((d for d in docs if d.kind == "Service" and d.name == spec.service_name), None)
    if blue_green:
        _check_blue_green(spec, ours, [d for d in docs if d.kind == "Service" and d is not service])
    rest = sorted(
        (d for d in docs if d is not ours and d is not service),
        key=lambda d: KINDS[d.kind][1],
    )
    return UserManifests(
        deployment=ours,
        service=service,
        before=tuple(d for d in rest if KINDS[d.kind][1] <= _DEPLOYMENT_RANK),
        after=tuple(d for d in rest if KINDS[d.kind][1] > _DEPLOYMENT_RANK),
        files=tuple(sorted(spec.files)),
        patches=len(spec.patches),
    )


def _check_blue_green(spec: KubernetesSpec, ours: Document, services: list[Document]) -> None:
    """No other Service may select our pods: it would send traffic to both colors."""
    template = (ours.body.get("spec") or {}).get("template") or {}
    labels = {
        **((template.get("metadata") or {}).get("labels") or {}),
        **spec.labels,
        manifests.APP: spec.deployment,
    }
    for svc in services:
        selector = (svc.body.get("spec") or {}).get("selector") or {}
        if selector and all(labels.get(k) == v for k, v in selector.items()):
            raise ManifestError(
                f"{svc.where}: Service {svc.name} selects the pods of Deployment "
                f"{spec.deployment}, so it would send traffic to both colors; blue-green "
                f"switches the Service named {spec.service_name} (deploy.kubernetes.service)"
            )


def with_replicas(spec: KubernetesSpec, user: UserManifests) -> KubernetesSpec:
    """``spec`` with the manifest's replicas when ``deploy.kubernetes.replicas`` is not set."""
    if spec.replicas_given or user.replicas is None:
        return spec
    return dataclasses.replace(spec, replicas=user.replicas)


def _containers(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    pod = ((body.get("spec") or {}).get("template") or {}).get("spec") or {}
    return [c for c in pod.get("containers") or [] if isinstance(c, Mapping)]


# -- 3. our fields on top ------------------------------------------------------------------


def labelled(spec: KubernetesSpec, release: manifests.Release, doc: Document) -> dict[str, Any]:
    """A manifest other than ours and the app's Service, as applied: with our labels added."""
    body = copy.deepcopy(dict(doc.body))
    meta = body["metadata"]
    meta["labels"] = {
        **(meta.get("labels") or {}),
        manifests.MANAGED_BY: "quicflow",
        manifests.PROJECT: release.project,
        manifests.ENV: release.env,
    }
    return body


def deployment(
    spec: KubernetesSpec,
    release: manifests.Release,
    user: UserManifests,
    *,
    replicas: int,
    color: str | None = None,
    track: str = manifests.STABLE,
    rolling: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Our Deployment of one track or color, from the manifest, as applied."""
    generated = manifests.deployment(
        spec, release, replicas=replicas, color=color, track=track, rolling=rolling
    )
    body = copy.deepcopy(dict(user.deployment.body))
    meta, ours = body["metadata"], generated["metadata"]
    meta["name"] = ours["name"]
    meta["labels"] = {**(meta.get("labels") or {}), **ours["labels"]}
    meta["annotations"] = {**(meta.get("annotations") or {}), **ours["annotations"]}
    body_spec = body.setdefault("spec", {})
    ours_spec = generated["spec"]
    body_spec["replicas"] = replicas
    body_spec["selector"] = ours_spec["selector"]
    body_spec.setdefault("progressDeadlineSeconds", ours_spec["progressDeadlineSeconds"])
    if (
        "strategy" not in body_spec
        or (rolling or {}).get("max_surge")
        or (rolling or {}).get("max_unavailable")
    ):
        body_spec["strategy"] = ours_spec["strategy"]
    template = body_spec.setdefault("template", {})
    template_meta = template.setdefault("metadata", {})
    ours_template = ours_spec["template"]
    template_meta["labels"] = {
        **(template_meta.get("labels") or {}),
        **ours_template["metadata"]["labels"],
    }
    if ours_template["metadata"].get("annotations"):
        template_meta["annotations"] = {
            **(template_meta.get("annotations") or {}),
            **ours_template["metadata"]["annotations"],
        }
    (generated_container,) = ours_template["spec"]["containers"]
    for container in template["spec"]["containers"]:
        if container.get("name") == spec.container:
            _onto(container, generated_container, spec)
    return body


def _onto(container: dict[str, Any], ours: Mapping[str, Any], spec: KubernetesSpec) -> None:
    """Our image and env onto the manifest's container; resources, probes, ports if we set them."""
    container["image"] = ours["image"]
    if ours.get("env"):
        mine = {e["name"] for e in ours["env"]}
        kept = [e for e in container.get("env") or [] if e.get("name") not in mine]
        container["env"] = kept + list(ours["env"])
    if spec.resources:
        container["resources"] = ours["resources"]
    for kind in _PROBES:
        key = f"{kind}Probe"
        # A probe of deploy.kubernetes.probes wins; health.http's readiness only fills a gap.
        if key in ours and (kind in spec.probes or key not in container):
            container[key] = ours[key]
    if ours.get("ports") and not container.get("ports"):
        container["ports"] = ours["ports"]


def service(
    spec: KubernetesSpec,
    release: manifests.Release,
    user: UserManifests | None,
    color: str | None = None,
) -> dict[str, Any] | None:
    """The app's Service as applied: the manifest's with our selector added, else the generated."""
    if user is None or user.service is None:
        return manifests.service(spec, release, color)
    body = labelled(spec, release, user.service)
    body_spec = body.setdefault("spec", {})
    body_spec["selector"] = {
        **(body_spec.get("selector") or {}),
        **manifests.service_selector(spec, color),
    }
    return body
