"""The Kubernetes API adapter: the one module that imports the ``kubernetes`` client.

``ClusterApi`` is built from a ``clusters.ClusterSource`` (a kubeconfig or bearer
token from a credential, or the pod's service account) and offers what the driver
uses: get, list, server-side apply with our field manager, delete, watch, and GET
through the API server's pod proxy. Objects go in and come out as plain dicts in the
API's JSON shape (camelCase), never as the client's model classes. Every call is
blocking: callers run it in a thread.

Errors become our hierarchy, named after what the API server said: 401 and 403 are
``PermanentError``s that name the cluster and the credential; a 409 from an apply lists
the conflicting managers and fields; a server that cannot be reached is a
``TemporaryError``. No message carries a token, a kubeconfig or a request body.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote

import kubernetes.client
import kubernetes.config
import kubernetes.watch
import urllib3
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from reconciler.drivers.kubernetes import FIELD_MANAGER
from reconciler.drivers.kubernetes.clusters import (
    BearerToken,
    ClusterConfigError,
    ClusterSource,
    InCluster,
    Kubeconfig,
)
from reconciler.drivers.kubernetes.specs import plain
from reconciler.errors import PermanentError, TemporaryError

#: kind → (API group path, plural); the kinds the driver reads and writes (the ones a
#: user's manifest may hold are ``overlays.KINDS``).
RESOURCES: dict[str, tuple[str, str]] = {
    "Deployment": ("/apis/apps/v1", "deployments"),
    "ReplicaSet": ("/apis/apps/v1", "replicasets"),
    "Service": ("/api/v1", "services"),
    "Pod": ("/api/v1", "pods"),
    "Secret": ("/api/v1", "secrets"),
    "ConfigMap": ("/api/v1", "configmaps"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Ingress": ("/apis/networking.k8s.io/v1", "ingresses"),
    "Namespace": ("/api/v1", "namespaces"),
}
#: Kinds outside any namespace: their path has no ``namespaces/<ns>/``.
CLUSTER_SCOPED = frozenset({"Namespace"})
REQUEST_TIMEOUT = 30.0


class ClusterError(PermanentError):
    """The API server refused a request; ``status`` is its HTTP code."""

    def __init__(self, message: str, status: int = 0, reason: str = ""):
        super().__init__(message)
        self.status = status
        self.reason = reason


class ApplyConflict(ClusterError):
    """Server-side apply found fields another manager owns (409 Conflict)."""


class ClusterUnreachable(TemporaryError):
    """The API server did not answer (refused, reset, timed out)."""


def _selector(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


class ClusterApi:
    """One cluster's API server, as the driver uses it."""

    def __init__(self, source: ClusterSource, request_timeout: float = REQUEST_TIMEOUT):
        self.origin = source.origin
        self.timeout = request_timeout
        self._files: list[str] = []
        configuration = kubernetes.client.Configuration()
        try:
            if isinstance(source, Kubeconfig):
                kubernetes.config.load_kube_config_from_dict(
                    dict(source.document),
                    context=source.context,
                    client_configuration=configuration,
                    persist_config=False,
                )
            elif isinstance(source, BearerToken):
                configuration.host = source.server.rstrip("/")
                configuration.api_key = {"BearerToken": source.token}
                configuration.api_key_prefix = {"BearerToken": "Bearer"}
                if source.certificate_authority:
                    configuration.ssl_ca_cert = self._file(source.certificate_authority)
            else:
                assert isinstance(source, InCluster)
                kubernetes.config.load_incluster_config(client_configuration=configuration)
        except ConfigException as exc:
            where = (
                "no deploy.kubernetes.kubeconfig_credential is set and the reconciler does "
                "not run in a Kubernetes pod"
                if isinstance(source, InCluster)
                else f"{source.origin} is not a usable kubeconfig"
            )
            # The library's message names keys and files, never a credential's value.
            raise ClusterConfigError(f"{where}: {exc}") from None
        configuration.retries = False  # one attempt: the driver retries, and says so
        self.server = configuration.host
        self.client = kubernetes.client.ApiClient(configuration)

    def _file(self, content: str) -> str:
        handle, path = tempfile.mkstemp(prefix="quicflow-ca-", suffix=".crt")
        with os.fdopen(handle, "w") as out:
            out.write(content)
        self._files.append(path)
        return path

    def close(self) -> None:
        self.client.close()
        for path in self._files:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def __repr__(self) -> str:
        return f"ClusterApi({self.server}, {self.origin})"

    # -- requests --------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, Any]] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | None = None,
        what: str = "",
        stream: bool = False,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        request = self.client.param_serialize(
            method,
            path,
            query_params=query or [],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self.client.call_api(
                *request, _request_timeout=timeout if timeout is not None else self.timeout
            )
        except ApiException as exc:
            raise self._refused(
                exc.status, exc.reason, exc.body, what or f"{method} {path}"
            ) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ClusterUnreachable(
                f"Kubernetes API server {self.server} did not answer {what or method + ' ' + path}: "
                f"{_reason(exc)}"
            ) from None
        if stream:
            if not 200 <= response.status <= 299:
                response.read()
                raise self._refused(response.status, response.reason, response.data, what)
            return response.response
        try:
            response.read()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ClusterUnreachable(
                f"Kubernetes API server {self.server} broke off {what}: {_reason(exc)}"
            ) from None
        if not 200 <= response.status <= 299:
            raise self._refused(response.status, response.reason, response.data, what)
        return json.loads(response.data) if response.data else {}

    def _refused(self, code: Any, http_reason: Any, payload: Any, what: str) -> ClusterError:
        """Our error for a refused request, from the API server's Status object."""
        status = int(code or 0)
        message, reason, causes = "", "", []
        try:
            body = json.loads(payload or "{}")
            message = str(body.get("message") or "")
            reason = str(body.get("reason") or "")
            causes = list((body.get("details") or {}).get("causes") or [])
        except (TypeError, ValueError):
            message = ""
        if status == 0:
            # The client's own failure before any answer: TLS, mostly.
            text = str(http_reason or "").replace("\n", " ")
            detail = text.split("] ", 1)[-1] if "] " in text else text
            return ClusterError(
                f"no TLS session with Kubernetes API server {self.server} on {what}: "
                f"{detail[:200]} (is the cluster's CA in the kubeconfig, or "
                "deploy.kubernetes.certificate_authority?)",
                0,
                "TLS",
            )
        if status == 401:
            return ClusterError(
                f"Kubernetes API server {self.server} rejected the credentials of "
                f"{self.origin} (401 Unauthorized) on {what}: the token or certificate is "
                "wrong or expired",
                status,
                reason or "Unauthorized",
            )
        if status == 403:
            return ClusterError(
                f"Kubernetes API server {self.server} forbids {what} to {self.origin} "
                f"(403 Forbidden): {message or 'no RBAC rule allows it'}",
                status,
                reason or "Forbidden",
            )
        if status == 409 and causes:
            fields = ", ".join(
                f"{c.get('field', '?')} ({c.get('message', 'conflict')})" for c in causes
            )
            return ApplyConflict(
                f"{what}: fields owned by another field manager: {fields}", status, reason
            )
        return ClusterError(
            f"Kubernetes API server {self.server} answered {status} {reason or http_reason} "
            f"to {what}: {message or 'no message'}",
            status,
            reason,
        )

    @staticmethod
    def path(kind: str, namespace: str, name: str | None = None) -> str:
        group, plural = RESOURCES[kind]
        if kind in CLUSTER_SCOPED:
            base = f"{group}/{plural}"
        else:
            base = f"{group}/namespaces/{quote(namespace, safe='')}/{plural}"
        return f"{base}/{quote(name, safe='')}" if name else base

    # -- what the driver uses ------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            found: dict[str, Any] = self._request(
                "GET",
                self.path(kind, namespace, name),
                what=f"reading {kind} {namespace}/{name}",
            )
            return found
        except ClusterError as exc:
            if exc.status == 404:
                return None
            raise

    def list(
        self, kind: str, namespace: str, labels: Mapping[str, str]
    ) -> tuple[list[dict[str, Any]], str]:
        """The objects whose labels include ``labels``, and the list's resourceVersion."""
        found = self._request(
            "GET",
            self.path(kind, namespace),
            query=[("labelSelector", _selector(labels))],
            what=f"listing {RESOURCES[kind][1]} in {namespace}",
        )
        return list(found.get("items") or []), str(
            (found.get("metadata") or {}).get("resourceVersion") or ""
        )

    def apply(self, obj: Mapping[str, Any], force: bool = False) -> dict[str, Any]:
        """Server-side apply of ``obj`` as our field manager (``force`` takes conflicting fields)."""
        kind = str(obj["kind"])
        meta = obj["metadata"]
        namespace = str(meta.get("namespace") or "")
        query: list[tuple[str, Any]] = [("fieldManager", FIELD_MANAGER)]
        if force:
            query.append(("force", "true"))
        where = f"{namespace}/" if namespace else ""
        applied: dict[str, Any] = self._request(
            "PATCH",
            self.path(kind, namespace, meta["name"]),
            query=query,
            body=plain(obj),  # JSON is YAML: the client sends it as application/apply-patch+yaml
            content_type="application/apply-patch+yaml",
            what=f"applying {kind} {where}{meta['name']}",
        )
        return applied

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete the object (its dependents in the background); False if it was not there."""
        try:
            self._request(
                "DELETE",
                self.path(kind, namespace, name),
                body={
                    "kind": "DeleteOptions",
                    "apiVersion": "v1",
                    "propagationPolicy": "Background",
                },
                what=f"deleting {kind} {namespace}/{name}",
            )
            return True
        except ClusterError as exc:
            if exc.status == 404:
                return False
            raise

    def watch(
        self, kind: str, namespace: str, name: str, resource_version: str, timeout: float
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Events of one object after ``resource_version``, for at most ``timeout`` seconds."""
        query: list[tuple[str, Any]] = [
            ("watch", "true"),
            ("fieldSelector", f"metadata.name={name}"),
            ("timeoutSeconds", max(1, int(timeout))),
            ("allowWatchBookmarks", "true"),
        ]
        if resource_version:
            query.append(("resourceVersion", resource_version))
        what = f"watching {kind} {namespace}/{name}"
        response = self._request(
            "GET",
            self.path(kind, namespace),
            query=query,
            timeout=timeout + 10,
            what=what,
            stream=True,
        )
        try:
            for line in kubernetes.watch.watch.iter_resp_lines(response):
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    status = event.get("object") or {}
                    raise ClusterError(
                        f"{what}: {status.get('message') or 'watch ended with an error'}",
                        int(status.get("code") or 0),
                        str(status.get("reason") or ""),
                    )
                yield str(event.get("type")), dict(event.get("object") or {})
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ClusterUnreachable(
                f"Kubernetes API server {self.server} broke off {what}: {_reason(exc)}"
            ) from None
        finally:
            response.release_conn()

    def proxy_get(
        self, namespace: str, pod: str, port: int, path: str, timeout: float
    ) -> tuple[int, str]:
        """GET ``path`` on ``pod:port`` through the API server's pod proxy: (status, body)."""
        resource = (
            f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(pod, safe='')}:{port}"
            f"/proxy/{quote(path.lstrip('/'), safe='/')}"
        )
        request = self.client.param_serialize(
            "GET", resource, header_params={"Accept": "*/*"}, auth_settings=["BearerToken"]
        )
        try:
            response = self.client.call_api(*request, _request_timeout=timeout)
            response.read()
        except ApiException as exc:
            raise self._refused(
                exc.status, exc.reason, exc.body, f"GET {path} on pod {pod}"
            ) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ClusterUnreachable(
                f"Kubernetes API server {self.server} did not proxy GET {path} to pod {pod}: "
                f"{_reason(exc)}"
            ) from None
        if response.status in (401, 403):
            raise self._refused(
                response.status, response.reason, response.data, f"GET {path} on pod {pod}"
            )
        return int(response.status), (response.data or b"").decode("utf-8", "replace")[:200]


def _reason(exc: BaseException) -> str:
    """A short cause of a connection failure (urllib3 wraps the socket error)."""
    inner: BaseException | None = getattr(exc, "reason", None)
    while isinstance(inner, urllib3.exceptions.HTTPError) and getattr(inner, "reason", None):
        inner = inner.reason  # type: ignore[assignment]
    cause = inner if isinstance(inner, BaseException) else exc
    text = str(cause)
    # urllib3 messages carry the connection object's repr first: keep what follows.
    if ">: " in text:
        text = text.split(">: ", 1)[1]
    return f"{type(cause).__name__}: {text}"[:200]
