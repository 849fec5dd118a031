"""A stand-in Kubernetes API server for the tests — NOT Kubernetes.

No Kubernetes API server can be installed on these machines, so the Kubernetes driver
is tested against this one: a real HTTP server on loopback (``http.server``, plain
HTTP; TLS is left out) that implements, after the documented API conventions
(https://kubernetes.io/docs/reference/using-api/api-concepts/,
https://kubernetes.io/docs/reference/using-api/server-side-apply/), what the driver
uses and nothing more:

- ``apps/v1`` Deployments and ReplicaSets, ``v1`` Services, Pods, Secrets, ConfigMaps
  and ServiceAccounts and ``networking.k8s.io/v1`` Ingresses in namespaces (created on
  first use, so a namespace exists as a ``v1`` Namespace object only once one is
  applied; Namespaces are cluster-scoped: ``/api/v1/namespaces/NAME``, no namespace in
  their metadata): GET, list with ``labelSelector`` and
  ``fieldSelector=metadata.name=…``, ``watch=true`` from a ``resourceVersion`` (chunked
  JSON lines, ``timeoutSeconds``, a 410 ``Expired`` ERROR event for a version older
  than the server keeps), POST (409 ``AlreadyExists``), PUT with optimistic
  concurrency (409 ``Conflict`` on a stale ``resourceVersion``), DELETE (a
  Deployment's ReplicaSets and Pods go with it);
- server-side apply (``PATCH`` as ``application/apply-patch+yaml`` with ``fieldManager``
  and ``force``): field sets per manager in ``metadata.managedFields`` (``FieldsV1``),
  lists of objects merged by key (``name``, ``containerPort``/``port`` + ``protocol``),
  409 with ``FieldManagerConflict`` causes when another manager owns a field with a
  different value, fields a manager stops applying removed; merge patches
  (``application/merge-patch+json``, ``strategic-merge-patch+json``) and PUTs are
  ``Update`` operations that take over the fields they change;
- ``metadata.resourceVersion`` (one counter for the whole server), ``generation``
  (bumped when ``spec`` changes), ``uid``, ``creationTimestamp``;
- a Deployment controller: a ReplicaSet per pod template (``pod-template-hash``) and
  its Pods, with status that moves as the *test* says (``rollout``: ``ready`` at once,
  ``manual`` until ``progress``/``complete``/``exceed_deadline``, ``deadline`` as if the
  progress deadline had passed, ``crashloop``, ``restarts``);
- the pod proxy (``GET /api/v1/namespaces/N/pods/P:PORT/proxy/PATH``), answered by a
  function the test sets (``http``);
- bearer tokens: none or an unknown one is 401, a ``read-only`` token gets 403 on writes
  with the API server's RBAC message; every answer that is not 2xx is a ``Status``.

``stop()`` closes the listener and every open connection (a watch breaks mid-stream),
so a test can take the API server away mid-rollout; ``start()`` brings it back on the
same port with the same objects.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import datetime as dt
import hashlib
import json
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

GROUPS = {  # plural -> apiVersion, for the kinds outside the core group (v1)
    "deployments": "apps/v1",
    "replicasets": "apps/v1",
    "ingresses": "networking.k8s.io/v1",
}
KINDS = {
    "deployments": "Deployment",
    "replicasets": "ReplicaSet",
    "services": "Service",
    "pods": "Pod",
    "secrets": "Secret",
    "configmaps": "ConfigMap",
    "serviceaccounts": "ServiceAccount",
    "ingresses": "Ingress",
    "namespaces": "Namespace",
}
CLUSTER_SCOPED = frozenset({"namespaces"})  # stored under namespace ""
GROUP_NAMES = {
    "deployments": "deployments.apps",
    "replicasets": "replicasets.apps",
    "ingresses": "ingresses.networking.k8s.io",
}
KEEP_EVENTS = 2000  # older resourceVersions answer a watch with 410 Expired
Path = tuple[str, ...]


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    """An answer that is not 2xx, as a Status object."""

    def __init__(self, code: int, reason: str, message: str, causes: list | None = None):
        super().__init__(message)
        self.status = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }
        if causes:
            self.status["details"] = {"causes": causes}
        self.code = code


# --------------------------------------------------------------------------- field sets


def _key_of(item: Any) -> dict | None:
    if not isinstance(item, dict):
        return None
    if "name" in item:
        return {"name": item["name"]}
    for field in ("containerPort", "port"):
        if field in item:
            return {field: item[field], "protocol": item.get("protocol", "TCP")}
    return None


def _keyed(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_key_of(i) for i in value)


def _key_token(item: dict) -> str:
    return "k:" + json.dumps(_key_of(item), sort_keys=True, separators=(",", ":"))


def leaves(obj: Mapping[str, Any], prefix: Path = ()) -> dict[Path, Any]:
    """Every leaf field of ``obj`` with its value; keyed list items are paths too."""
    found: dict[Path, Any] = {}
    for key, value in obj.items():
        path = (*prefix, f"f:{key}")
        if isinstance(value, dict) and value:
            found.update(leaves(value, path))
        elif _keyed(value):
            for item in value:
                found.update(leaves(item, (*path, _key_token(item))))
        else:
            found[path] = value
    return found


def owned_paths(obj: Mapping[str, Any]) -> dict[Path, Any]:
    """The fields of an applied or updated object that a manager comes to own."""
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "status")}
    meta = {
        k: v
        for k, v in (body.pop("metadata", None) or {}).items()
        if k in ("labels", "annotations")
    }
    if meta:
        body["metadata"] = meta
    return leaves(body)


def _step(node: Any, token: str, create: bool) -> Any:
    if token.startswith("f:"):
        if not isinstance(node, dict):
            return None
        key = token[2:]
        if key not in node:
            if not create:
                return None
            node[key] = {}
        return node[key]
    wanted = json.loads(token[2:])
    if not isinstance(node, list):
        return None
    for item in node:
        if _key_of(item) == wanted:
            return item
    if not create:
        return None
    node.append(dict(wanted))
    return node[-1]


def get_at(obj: Any, path: Path) -> Any:
    node = obj
    for token in path:
        node = _step(node, token, create=False)
        if node is None:
            return None
    return node


def set_at(obj: dict, path: Path, value: Any) -> None:
    node: Any = obj
    for i, token in enumerate(path[:-1]):
        nxt = path[i + 1]
        if token.startswith("f:") and isinstance(node, dict):
            key = token[2:]
            if nxt.startswith("k:"):
                if not isinstance(node.get(key), list):
                    node[key] = []
            elif not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        else:
            node = _step(node, token, create=True)
    last = path[-1]
    if last.startswith("f:"):
        node[last[2:]] = copy.deepcopy(value)


def delete_at(obj: dict, path: Path) -> None:
    parent = get_at(obj, path[:-1]) if len(path) > 1 else obj
    last = path[-1]
    if isinstance(parent, dict) and last.startswith("f:"):
        parent.pop(last[2:], None)
    elif isinstance(parent, list) and last.startswith("k:"):
        wanted = json.loads(last[2:])
        parent[:] = [i for i in parent if _key_of(i) != wanted]


def fields_v1(paths: set[Path]) -> dict:
    tree: dict = {}
    for path in sorted(paths):
        node = tree
        for token in path:
            node = node.setdefault(token, {})
            if token.startswith("k:"):
                node.setdefault(".", {})
    return tree


def paths_of(tree: Mapping[str, Any], prefix: Path = ()) -> set[Path]:
    found: set[Path] = set()
    for token, sub in tree.items():
        if token == ".":
            continue
        path = (*prefix, token)
        children = {k: v for k, v in sub.items() if k != "."}
        if children:
            found |= paths_of(children, path)
        elif not token.startswith("k:"):
            found.add(path)
    return found


def dotted(path: Path) -> str:
    out = ""
    for token in path:
        if token.startswith("f:"):
            out += "." + token[2:]
        else:
            key = json.loads(token[2:])
            out += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in key.items()) + "]"
    return out


# --------------------------------------------------------------------------- the cluster


class Cluster:
    """What the stand-in holds, and the knobs a test turns."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.objects: dict[tuple[str, str, str], dict] = {}
        self.version = 0
        self.events: list[tuple[int, str, str, str, dict]] = []
        self.tokens: dict[str, str] = {}  # token -> "admin" | "read-only"
        self.rollouts: dict[tuple[str, str], str] = {}  # (namespace, deployment) -> mode
        self.only_images: dict[tuple[str, str], str] = {}  # mode only for this image
        self.default_rollout = "ready"
        # Pod proxy answers: (pod, port, path) -> (status, body)
        self.http: Callable[[dict, int, str], tuple[int, str]] = lambda pod, port, path: (200, "ok")
        self.requests: list[tuple[str, str, dict[str, list[str]], str]] = []
        self.stopping = False

    # -- objects -------------------------------------------------------------------

    def get(self, plural: str, namespace: str, name: str) -> dict | None:
        with self.lock:
            found = self.objects.get((plural, namespace, name))
            return copy.deepcopy(found) if found else None

    def items(self, plural: str, namespace: str) -> list[dict]:
        with self.lock:
            return [
                copy.deepcopy(o)
                for (p, ns, _), o in sorted(self.objects.items())
                if p == plural and ns == namespace
            ]

    def _store(self, plural: str, obj: dict, kind: str = "MODIFIED") -> dict:
        meta = obj["metadata"]
        namespace = meta.get("namespace", "")
        key = (plural, namespace, meta["name"])
        self.version += 1
        meta["resourceVersion"] = str(self.version)
        self.objects[key] = obj
        self.events.append((self.version, kind, plural, namespace, copy.deepcopy(obj)))
        del self.events[:-KEEP_EVENTS]
        self.lock.notify_all()
        return obj

    def _remove(self, plural: str, namespace: str, name: str) -> dict | None:
        obj = self.objects.pop((plural, namespace, name), None)
        if obj is not None:
            self.version += 1
            obj["metadata"]["resourceVersion"] = str(self.version)
            self.events.append((self.version, "DELETED", plural, namespace, copy.deepcopy(obj)))
            self.lock.notify_all()
        return obj

    def _new(self, plural: str, namespace: str, name: str) -> dict:
        new = {
            "apiVersion": GROUPS.get(plural, "v1"),
            "kind": KINDS[plural],
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "creationTimestamp": now(),
                "generation": 1,
            },
        }
        if plural in CLUSTER_SCOPED:
            del new["metadata"]["namespace"]
        if plural == "namespaces":  # what the namespace controller reports of a live one
            new["spec"] = {"finalizers": ["kubernetes"]}
            new["status"] = {"phase": "Active"}
        return new

    def _written(self, plural: str, before: dict | None, after: dict) -> dict:
        meta = after["metadata"]
        if before is not None and before.get("spec") != after.get("spec"):
            meta["generation"] = int(before["metadata"].get("generation", 1)) + 1
        if plural == "secrets" and "stringData" in after:
            data = after.setdefault("data", {})
            for k, v in after.pop("stringData").items():
                data[k] = base64.b64encode(str(v).encode()).decode()
        stored = self._store(plural, after, "ADDED" if before is None else "MODIFIED")
        if plural == "deployments":
            self._control(meta["namespace"], meta["name"])
        return stored

    # -- writes ------------------------------------------------------------------------

    def apply(
        self, plural: str, namespace: str, name: str, body: dict, manager: str, force: bool
    ) -> dict:
        with self.lock:
            before = self.objects.get((plural, namespace, name))
            live = copy.deepcopy(before) if before else self._new(plural, namespace, name)
            managed = {e["manager"]: e for e in live["metadata"].get("managedFields") or []}
            applied = owned_paths(body)
            others = {
                m: paths_of(e.get("fieldsV1") or {}) for m, e in managed.items() if m != manager
            }
            conflicts = [
                (m, p)
                for p, value in applied.items()
                for m, ps in others.items()
                if p in ps and get_at(live, p) != value
            ]
            if conflicts and not force:
                raise ApiError(
                    409,
                    "Conflict",
                    f"Apply failed with {len(conflicts)} conflict"
                    f"{'s' if len(conflicts) > 1 else ''}: "
                    + "; ".join(
                        f'conflict with "{m}" using {GROUPS.get(plural, "v1")}: {dotted(p)}'
                        for m, p in conflicts
                    ),
                    [
                        {
                            "reason": "FieldManagerConflict",
                            "message": f'conflict with "{m}" using {GROUPS.get(plural, "v1")}',
                            "field": dotted(p),
                        }
                        for m, p in conflicts
                    ],
                )
            for m, p in conflicts:
                others[m].discard(p)
            mine_before = paths_of((managed.get(manager) or {}).get("fieldsV1") or {})
            shared = set().union(*others.values()) if others else set()
            for path in sorted(mine_before - set(applied) - shared, key=len, reverse=True):
                delete_at(live, path)
            for path, value in applied.items():
                set_at(live, path, value)
            entries = [{**managed[m], "fieldsV1": fields_v1(ps)} for m, ps in others.items() if ps]
            entries.append(
                {
                    "manager": manager,
                    "operation": "Apply",
                    "apiVersion": GROUPS.get(plural, "v1"),
                    "time": now(),
                    "fieldsType": "FieldsV1",
                    "fieldsV1": fields_v1(set(applied)),
                }
            )
            live["metadata"]["managedFields"] = entries
            return copy.deepcopy(self._written(plural, before, live))

    def update(
        self, plural: str, namespace: str, name: str, new: dict, manager: str, replace: bool
    ) -> dict:
        """A merge patch (``replace`` False) or a PUT: an Update that owns what it changes."""
        with self.lock:
            before = self.objects.get((plural, namespace, name))
            if before is None:
                raise _not_found(plural, name)
            if replace:
                wanted_rv = (new.get("metadata") or {}).get("resourceVersion")
                if wanted_rv and wanted_rv != before["metadata"]["resourceVersion"]:
                    raise ApiError(
                        409,
                        "Conflict",
                        f'Operation cannot be fulfilled on {GROUP_NAMES.get(plural, plural)} "{name}": '
                        "the object has been modified; please apply your changes to the latest "
                        "version and try again",
                    )
                live = copy.deepcopy(new)
                live["metadata"] = {**before["metadata"], **(new.get("metadata") or {})}
            else:
                live = _merge(copy.deepcopy(before), new)
            live["metadata"].pop("managedFields", None)
            old_leaves, new_leaves = owned_paths(before), owned_paths(live)
            changed = {p for p, v in new_leaves.items() if old_leaves.get(p, object()) != v}
            entries = []
            for entry in before["metadata"].get("managedFields") or []:
                kept = paths_of(entry.get("fieldsV1") or {}) - changed
                if entry["manager"] == manager:
                    continue
                if kept:
                    entries.append({**entry, "fieldsV1": fields_v1(kept)})
            mine = changed | {
                p
                for e in before["metadata"].get("managedFields") or []
                if e["manager"] == manager
                for p in paths_of(e.get("fieldsV1") or {})
            }
            if mine:
                entries.append(
                    {
                        "manager": manager,
                        "operation": "Update",
                        "apiVersion": GROUPS.get(plural, "v1"),
                        "time": now(),
                        "fieldsType": "FieldsV1",
                        "fieldsV1": fields_v1(mine),
                    }
                )
            live["metadata"]["managedFields"] = entries
            return copy.deepcopy(self._written(plural, before, live))

    def create(self, plural: str, namespace: str, body: dict, manager: str) -> dict:
        name = body["metadata"]["name"]
        with self.lock:
            if (plural, namespace, name) in self.objects:
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'{GROUP_NAMES.get(plural, plural)} "{name}" already exists',
                )
            live = self._new(plural, namespace, name)
            live.update({k: v for k, v in body.items() if k != "metadata"})
            live["metadata"].update(
                {k: v for k, v in body["metadata"].items() if k in ("labels", "annotations")}
            )
            live["metadata"]["managedFields"] = [
                {
                    "manager": manager,
                    "operation": "Update",
                    "apiVersion": GROUPS.get(plural, "v1"),
                    "time": now(),
                    "fieldsType": "FieldsV1",
                    "fieldsV1": fields_v1(set(owned_paths(live))),
                }
            ]
            return copy.deepcopy(self._written(plural, None, live))

    def delete(self, plural: str, namespace: str, name: str) -> dict:
        with self.lock:
            obj = self._remove(plural, namespace, name)
            if obj is None:
                raise _not_found(plural, name)
            if plural == "deployments":
                for rs in self._owned("replicasets", namespace, obj["metadata"]["uid"]):
                    self._drop_replicaset(namespace, rs)
            return obj

    # -- the Deployment controller ------------------------------------------------------

    def _owned(self, plural: str, namespace: str, uid: str) -> list[dict]:
        return [
            o
            for (p, ns, _), o in sorted(self.objects.items())
            if p == plural
            and ns == namespace
            and any(r.get("uid") == uid for r in o["metadata"].get("ownerReferences") or [])
        ]

    def _drop_replicaset(self, namespace: str, rs: dict) -> None:
        for pod in self._owned("pods", namespace, rs["metadata"]["uid"]):
            self._remove("pods", namespace, pod["metadata"]["name"])
        self._remove("replicasets", namespace, rs["metadata"]["name"])

    def _control(self, namespace: str, name: str, ready: int | None = None, mode: str = "") -> None:
        """Bring the Deployment's ReplicaSets, Pods and status to where its mode says."""
        deployment = self.objects[("deployments", namespace, name)]
        spec = deployment["spec"]
        mode = mode or self.rollouts.get((namespace, name), self.default_rollout)
        template = spec["template"]
        only = self.only_images.get((namespace, name))
        images = [c.get("image") for c in template["spec"].get("containers", [])]
        if only is not None and only not in images:
            mode = "ready"
        digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        rs_name = f"{name}-{digest}"
        replicas = int(spec.get("replicas", 1))
        uid = deployment["metadata"]["uid"]
        current = self.objects.get(("replicasets", namespace, rs_name))
        if current is None:
            current = self._new("replicasets", namespace, rs_name)
            current["metadata"]["labels"] = {
                **template["metadata"].get("labels", {}),
                "pod-template-hash": digest,
            }
            current["metadata"]["ownerReferences"] = [
                {"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "uid": uid}
            ]
            current["spec"] = {"replicas": replicas, "template": copy.deepcopy(template)}
        current["spec"]["replicas"] = replicas
        old = [
            rs
            for rs in self._owned("replicasets", namespace, uid)
            if rs["metadata"]["name"] != rs_name
        ]
        if ready is None:
            ready = replicas if mode in ("ready", "restarts") else 0
        ready = min(ready, replicas)
        done = ready >= replicas
        for rs in old if done else []:
            self._drop_replicaset(namespace, rs)
        self._store("replicasets", current)
        self._pods(namespace, current, template, replicas, ready, mode)
        old_pods = 0 if done else sum(int(rs["spec"].get("replicas", 0)) for rs in old)
        status: dict[str, Any] = {
            "observedGeneration": deployment["metadata"].get("generation", 1),
            "replicas": replicas + old_pods,
            "updatedReplicas": replicas,
            "readyReplicas": ready + old_pods,
            "availableReplicas": ready + old_pods,
        }
        if mode == "deadline":
            progressing = {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": f'ReplicaSet "{rs_name}" has timed out progressing.',
            }
        elif done:
            progressing = {
                "type": "Progressing",
                "status": "True",
                "reason": "NewReplicaSetAvailable",
                "message": f'ReplicaSet "{rs_name}" has successfully progressed.',
            }
        else:
            progressing = {
                "type": "Progressing",
                "status": "True",
                "reason": "ReplicaSetUpdated",
                "message": f'ReplicaSet "{rs_name}" is progressing.',
            }
        status["conditions"] = [
            {
                "type": "Available",
                "status": "True" if done else "False",
                "reason": "MinimumReplicasAvailable" if done else "MinimumReplicasUnavailable",
            },
            progressing,
        ]
        deployment["status"] = status
        self._store("deployments", deployment)

    def _pods(
        self, namespace: str, rs: dict, template: dict, replicas: int, ready: int, mode: str
    ) -> None:
        existing = {
            p["metadata"]["name"]: p for p in self._owned("pods", namespace, rs["metadata"]["uid"])
        }
        wanted = {f"{rs['metadata']['name']}-{i:05d}" for i in range(replicas)}
        for name in sorted(set(existing) - wanted):
            self._remove("pods", namespace, name)
        for i in range(replicas):
            name = f"{rs['metadata']['name']}-{i:05d}"
            pod = existing.get(name) or self._new("pods", namespace, name)
            pod["metadata"]["labels"] = dict(rs["metadata"]["labels"])
            pod["metadata"]["ownerReferences"] = [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": rs["metadata"]["name"],
                    "uid": rs["metadata"]["uid"],
                }
            ]
            pod["spec"] = copy.deepcopy(template["spec"])
            is_ready = i < ready
            statuses = []
            for c in template["spec"].get("containers", []):
                image = c.get("image", "")
                repo, at, digest = image.rpartition("@")
                if not at:
                    repo = image.rsplit(":", 1)[0] if ":" in image.split("/")[-1] else image
                    digest = "sha256:" + hashlib.sha256(image.encode()).hexdigest()
                state: dict[str, Any] = {"running": {"startedAt": now()}}
                restarts = 0
                if mode == "crashloop":
                    state = {
                        "waiting": {
                            "reason": "CrashLoopBackOff",
                            "message": "back-off 40s restarting failed container",
                        }
                    }
                    restarts = 4
                elif mode == "restarts":
                    restarts = 7
                statuses.append(
                    {
                        "name": c["name"],
                        "image": image,
                        "imageID": f"docker-pullable://{repo}@{digest}",
                        "ready": is_ready,
                        "restartCount": restarts,
                        "state": state,
                    }
                )
            pod["status"] = {
                "phase": "Running" if mode != "crashloop" else "Running",
                "podIP": f"10.0.0.{i + 10}",
                "conditions": [{"type": "Ready", "status": "True" if is_ready else "False"}],
                "containerStatuses": statuses,
            }
            self._store("pods", pod, "MODIFIED" if name in existing else "ADDED")

    # -- what a test turns ----------------------------------------------------------------

    def rollout(self, namespace: str, name: str, mode: str, image: str | None = None) -> None:
        """How the next rollouts of a Deployment go: ready, manual, deadline, crashloop, restarts.

        With ``image``, only pod templates running that image go that way; others are ready.
        """
        with self.lock:
            self.rollouts[(namespace, name)] = mode
            if image is None:
                self.only_images.pop((namespace, name), None)
            else:
                self.only_images[(namespace, name)] = image

    def progress(self, namespace: str, name: str, ready: int) -> None:
        with self.lock:
            self._control(namespace, name, ready=ready, mode="manual")

    def complete(self, namespace: str, name: str) -> None:
        with self.lock:
            self.rollouts[(namespace, name)] = "ready"
            self._control(namespace, name, mode="ready")

    def exceed_deadline(self, namespace: str, name: str) -> None:
        with self.lock:
            self._control(namespace, name, ready=0, mode="deadline")

    def wait_for(self, check: Callable[[], bool], timeout: float = 10.0) -> bool:
        with self.lock:
            return self.lock.wait_for(check, timeout)

    def edit(self, plural: str, namespace: str, name: str, patch: dict, manager: str) -> dict:
        """Change an object as another tool would (``kubectl edit``, an autoscaler)."""
        return self.update(plural, namespace, name, patch, manager, replace=False)


def _merge(live: Any, patch: Any) -> Any:
    if not isinstance(patch, dict) or not isinstance(live, dict):
        return copy.deepcopy(patch)
    for key, value in patch.items():
        if value is None:
            live.pop(key, None)
        else:
            live[key] = _merge(live.get(key), value)
    return live


def _not_found(plural: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{GROUP_NAMES.get(plural, plural)} "{name}" not found')


def _matches(obj: dict, labels: str, fields: str) -> bool:
    have = obj["metadata"].get("labels") or {}
    for part in filter(None, labels.split(",")):
        k, _, v = part.partition("=")
        if have.get(k) != v:
            return False
    for part in filter(None, fields.split(",")):
        k, _, v = part.partition("=")
        if k == "metadata.name" and obj["metadata"]["name"] != v:
            return False
        if k == "metadata.namespace" and obj["metadata"]["namespace"] != v:
            return False
    return True


# --------------------------------------------------------------------------- HTTP


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        return

    def setup(self) -> None:
        super().setup()
        self.server.connections.add(self.connection)

    def finish(self) -> None:
        self.server.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._serve("PUT")

    def do_PATCH(self) -> None:  # noqa: N802
        self._serve("PATCH")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")

    def _send(self, code: int, body: Any, content_type: str = "application/json") -> None:
        data = (json.dumps(body) if not isinstance(body, str) else body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _serve(self, method: str) -> None:
        cluster = self.server.cluster
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        cluster.requests.append((method, url.path, query, content_type))
        try:
            self._authorize(method, url.path)
            self._route(method, url.path, query, raw, content_type)
        except ApiError as exc:
            self._send(exc.code, exc.status)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _authorize(self, method: str, path: str) -> None:
        header = self.headers.get("Authorization") or ""
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        role = self.server.cluster.tokens.get(token)
        if role is None:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        if role == "read-only" and method != "GET":
            parts = path.strip("/").split("/")
            at = parts.index("namespaces") if "namespaces" in parts else -1
            if at >= 0 and len(parts) > at + 2:
                plural, namespace = parts[at + 2], parts[at + 1]
            else:
                plural, namespace = ("namespaces" if at >= 0 else "?"), ""
            group = GROUPS.get(plural, "v1").rpartition("/")[0]
            verb = {"PATCH": "patch", "PUT": "update", "POST": "create", "DELETE": "delete"}[method]
            raise ApiError(
                403,
                "Forbidden",
                f'{GROUP_NAMES.get(plural, plural)} is forbidden: User "system:serviceaccount:ci:reader" '
                f'cannot {verb} resource "{plural}" in API group "{group}" in the namespace "{namespace}"',
            )

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], raw: bytes, content_type: str
    ) -> None:
        cluster = self.server.cluster
        if path == "/version":
            self._send(
                200, {"major": "1", "minor": "30", "gitVersion": "v1.30.0-quicflow-stand-in"}
            )
            return
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[:2] == ["api", "v1"]:
            api_version, rest = "v1", parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            api_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if rest[:1] == ["namespaces"] and len(rest) <= 2:
            # The cluster-scoped Namespace objects themselves: /api/v1/namespaces[/NAME].
            namespace, plural, rest = "", "namespaces", ["", "", "namespaces", *rest[1:]]
        elif len(rest) < 3 or rest[0] != "namespaces" or rest[2] not in KINDS:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        else:
            namespace, plural = rest[1], rest[2]
        if plural in CLUSTER_SCOPED and namespace:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if GROUPS.get(plural, "v1") != api_version:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        name = rest[3] if len(rest) > 3 else None
        q = {k: v[-1] for k, v in query.items()}
        if name and len(rest) > 5 and rest[4] == "proxy" and plural == "pods":
            self._proxy(namespace, name, "/".join(rest[5:]))
            return
        if name and len(rest) > 4:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        manager = q.get("fieldManager", "")
        if method == "GET" and name is None:
            if q.get("watch") in ("true", "1"):
                self._watch(plural, namespace, q)
                return
            items = [
                o
                for o in cluster.items(plural, namespace)
                if _matches(o, q.get("labelSelector", ""), q.get("fieldSelector", ""))
            ]
            self._send(
                200,
                {
                    "kind": KINDS[plural] + "List",
                    "apiVersion": GROUPS.get(plural, "v1"),
                    "metadata": {"resourceVersion": str(cluster.version)},
                    "items": items,
                },
            )
        elif method == "GET":
            found = cluster.get(plural, namespace, name)  # type: ignore[arg-type]
            if found is None:
                raise _not_found(plural, name or "")
            self._send(200, found)
        elif method == "PATCH" and name:
            body = self._body(raw, content_type)
            if content_type == "application/apply-patch+yaml":
                if not manager:
                    raise ApiError(
                        400,
                        "BadRequest",
                        'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: '
                        "is required for apply patch",
                    )
                meta = body.get("metadata") or {}
                if meta.get("name") not in (None, name):
                    raise ApiError(
                        400,
                        "BadRequest",
                        "the name of the object does not match the name on the URL",
                    )
                if meta.get("namespace") not in (None, namespace) and plural not in CLUSTER_SCOPED:
                    raise ApiError(
                        400,
                        "BadRequest",
                        "the namespace of the provided object does not match the namespace "
                        "sent on the request",
                    )
                if (body.get("kind"), body.get("apiVersion")) != (KINDS[plural], api_version):
                    raise ApiError(
                        400,
                        "BadRequest",
                        f"the kind or apiVersion of the object ({body.get('kind')}, "
                        f"{body.get('apiVersion')}) does not match the URL's "
                        f"({KINDS[plural]}, {api_version})",
                    )
                existed = cluster.get(plural, namespace, name) is not None
                applied = cluster.apply(
                    plural, namespace, name, body, manager, q.get("force") == "true"
                )
                self._send(200 if existed else 201, applied)
            elif content_type in (
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
            ):
                self._send(
                    200,
                    cluster.update(
                        plural, namespace, name, body, manager or "unknown", replace=False
                    ),
                )
            else:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format: {content_type}",
                )
        elif method == "PUT" and name:
            self._send(
                200,
                cluster.update(
                    plural,
                    namespace,
                    name,
                    self._body(raw, content_type),
                    manager or "unknown",
                    replace=True,
                ),
            )
        elif method == "POST" and name is None:
            self._send(
                201,
                cluster.create(
                    plural, namespace, self._body(raw, content_type), manager or "unknown"
                ),
            )
        elif method == "DELETE" and name:
            cluster.delete(plural, namespace, name)
            self._send(
                200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}
            )
        else:
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported here")

    @staticmethod
    def _body(raw: bytes, content_type: str) -> dict:
        try:
            body = (
                yaml.safe_load(raw) if content_type.endswith("yaml") else json.loads(raw or b"{}")
            )
        except (ValueError, yaml.YAMLError) as exc:
            raise ApiError(
                400, "BadRequest", f"the body of the request could not be decoded: {exc}"
            ) from None
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of the request must be an object")
        return body

    def _proxy(self, namespace: str, target: str, path: str) -> None:
        name, _, port = target.partition(":")
        pod = self.server.cluster.get("pods", namespace, name)
        if pod is None:
            raise _not_found("pods", name)
        status, body = self.server.cluster.http(pod, int(port or 80), "/" + path)
        self._send(status, body, "text/plain")

    def _watch(self, plural: str, namespace: str, q: dict[str, str]) -> None:
        cluster = self.server.cluster
        timeout = float(q.get("timeoutSeconds") or 300)
        since = int(q.get("resourceVersion") or 0)
        labels, fields = q.get("labelSelector", ""), q.get("fieldSelector", "")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for event in self._events(cluster, plural, namespace, since, labels, fields, timeout):
            data = (json.dumps(event) + "\n").encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _events(
        self,
        cluster: Cluster,
        plural: str,
        namespace: str,
        since: int,
        labels: str,
        fields: str,
        timeout: float,
    ) -> Iterator[dict]:
        import time

        end = time.monotonic() + timeout
        with cluster.lock:
            if since == 0:
                for o in cluster.items(plural, namespace):
                    if _matches(o, labels, fields):
                        yield {"type": "ADDED", "object": o}
                since = cluster.version
            elif cluster.events and since < cluster.events[0][0] - 1:
                yield {
                    "type": "ERROR",
                    "object": ApiError(410, "Expired", f"too old resource version: {since}").status,
                }
                return
        while not self.server.stopped.is_set():
            with cluster.lock:
                pending = [
                    e
                    for e in cluster.events
                    if e[0] > since
                    and e[2] == plural
                    and e[3] == namespace
                    and _matches(e[4], labels, fields)
                ]
                if not pending:
                    left = end - time.monotonic()
                    if left <= 0:
                        return
                    cluster.lock.wait(min(left, 0.2))
                    continue
                since = max(e[0] for e in pending)
            for _, kind, _, _, obj in pending:
                yield {"type": kind, "object": obj}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], cluster: Cluster):
        self.cluster = cluster
        self.connections: set[socket.socket] = set()
        self.stopped = threading.Event()
        super().__init__(address, _Handler)


def self_signed() -> tuple[bytes, bytes]:
    """A certificate for 127.0.0.1 and its key (PEM), as a cluster's own CA would issue."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver stand-in")])
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


class ApiServer:
    """The stand-in on ``127.0.0.1:port``: ``start``, ``stop``, and a kubeconfig for it.

    With ``tls`` it serves HTTPS with a self-signed certificate (``ca_pem``), as a
    cluster does; kubectl sends a bearer token only over TLS.
    """

    def __init__(self, cluster: Cluster | None = None, port: int = 0, tls: bool = True):
        self.cluster = cluster or Cluster()
        self.port = port
        self.tls = tls
        self.ca_pem, self._key_pem = self_signed() if tls else (b"", b"")
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> ApiServer:
        self._server = _Server(("127.0.0.1", self.port), self.cluster)
        if self.tls:
            import ssl
            import tempfile

            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            with tempfile.TemporaryDirectory() as tmp:
                cert, key = f"{tmp}/tls.crt", f"{tmp}/tls.key"
                with open(cert, "wb") as out:
                    out.write(self.ca_pem)
                with open(key, "wb") as out:
                    out.write(self._key_pem)
                context.load_cert_chain(cert, key)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Go away: stop listening and cut every open connection (watches included)."""
        server = self._server
        if server is None:
            return
        server.stopped.set()
        with self.cluster.lock:
            self.cluster.lock.notify_all()
        server.shutdown()
        server.server_close()
        for conn in list(server.connections):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._server = None

    def kubeconfig(self, token: str, namespace: str = "default", context: str = "stand-in") -> str:
        """A kubeconfig document for this server with a bearer token."""
        return yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": context,
                "clusters": [
                    {
                        "name": "stand-in",
                        "cluster": {
                            "server": self.url,
                            **(
                                {
                                    "certificate-authority-data": base64.b64encode(
                                        self.ca_pem
                                    ).decode()
                                }
                                if self.tls
                                else {}
                            ),
                        },
                    }
                ],
                "users": [{"name": "deployer", "user": {"token": token}}],
                "contexts": [
                    {
                        "name": context,
                        "context": {
                            "cluster": "stand-in",
                            "user": "deployer",
                            "namespace": namespace,
                        },
                    }
                ],
            }
        )


if __name__ == "__main__":  # a stand-in for trying the example's catalog project by hand
    import argparse

    parser = argparse.ArgumentParser(description="Stand-in Kubernetes API server (tests only).")
    parser.add_argument("--port", type=int, default=6443)
    parser.add_argument("--token", required=True, help="the bearer token to accept")
    parser.add_argument("--ca-out", help="write the server's CA certificate (PEM) here")
    args = parser.parse_args()
    stand_in = ApiServer(port=args.port)
    stand_in.cluster.tokens[args.token] = "admin"
    stand_in.start()
    if args.ca_out:
        with open(args.ca_out, "wb") as out:
            out.write(stand_in.ca_pem)
    print(f"stand-in Kubernetes API server on {stand_in.url} (not Kubernetes; for tests)")
    threading.Event().wait()
