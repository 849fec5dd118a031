"""Which cluster a deploy talks to: a kubeconfig or token from a credential, or in-cluster.

Pure: the credential's value comes in as a string (resolved by the credential center
for the run) and goes out as a ``ClusterSource`` that ``api`` turns into a client.
A credential holds either a whole kubeconfig (YAML, with clusters, users, contexts)
or a bare bearer token, which then needs ``deploy.kubernetes.server``. Without
``kubeconfig_credential`` the reconciler uses the service account of the pod it runs
in. Errors name the credential and the field at fault; no repr shows a value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from reconciler.drivers.kubernetes.specs import KubernetesSpec
from reconciler.errors import PermanentError


class ClusterConfigError(PermanentError):
    """The cluster reference cannot be used; the message says which setting and why."""


@dataclass(frozen=True, slots=True, repr=False)
class Kubeconfig:
    """A kubeconfig document and the context to use (None: its current-context)."""

    document: Mapping[str, Any]
    context: str | None
    origin: str

    def __repr__(self) -> str:
        return f"Kubeconfig({self.origin}, context={self.context!r})"


@dataclass(frozen=True, slots=True, repr=False)
class BearerToken:
    """A bearer token for an API server named in the deploy config."""

    server: str
    token: str
    certificate_authority: str | None
    origin: str

    def __repr__(self) -> str:
        return f"BearerToken({self.origin}, server={self.server!r})"


@dataclass(frozen=True, slots=True)
class InCluster:
    """The service account of the pod the reconciler runs in."""

    origin: str = "the in-cluster service account"


ClusterSource = Kubeconfig | BearerToken | InCluster


def source_for(spec: KubernetesSpec, value: str | None) -> ClusterSource:
    """The cluster of ``spec``; ``value`` is its ``kubeconfig_credential``'s value (if any)."""
    name = spec.kubeconfig_credential
    if not name:
        return InCluster()
    origin = f"credential {name!r}"
    if value is None or not value.strip():
        raise ClusterConfigError(f"deploy.kubernetes.kubeconfig_credential: {origin} is empty")
    document = _kubeconfig(value)
    if document is None:
        if not spec.server:
            raise ClusterConfigError(
                f"deploy.kubernetes: {origin} holds a bare token, not a kubeconfig, so "
                "deploy.kubernetes.server must name the API server"
            )
        if "\n" in value.strip():
            raise ClusterConfigError(
                f"deploy.kubernetes.kubeconfig_credential: {origin} is neither a kubeconfig "
                "(apiVersion v1, kind Config) nor a one-line token"
            )
        return BearerToken(spec.server, value.strip(), spec.certificate_authority, origin)
    contexts = [
        str(c.get("name")) for c in document.get("contexts") or [] if isinstance(c, Mapping)
    ]
    wanted = spec.context or document.get("current-context")
    if not wanted and len(contexts) == 1:
        wanted = contexts[0]
    if not wanted:
        raise ClusterConfigError(
            f"deploy.kubernetes.context: {origin} is a kubeconfig without current-context; "
            f"name one of its contexts ({', '.join(contexts) or 'it has none'})"
        )
    if wanted not in contexts:
        field = "deploy.kubernetes.context" if spec.context else "current-context"
        raise ClusterConfigError(
            f"{field}: {origin} has no context {wanted!r} (it has: {', '.join(contexts) or 'none'})"
        )
    return Kubeconfig(document, str(wanted), origin)


def _kubeconfig(value: str) -> Mapping[str, Any] | None:
    """The kubeconfig in ``value``, or None when it is no kubeconfig (a bare token)."""
    try:
        document = yaml.safe_load(value)
    except yaml.YAMLError:
        return None  # the parser's message could quote the value: never pass it on
    if not isinstance(document, Mapping) or "clusters" not in document:
        return None
    if document.get("kind", "Config") != "Config":
        raise ClusterConfigError(
            f"kubeconfig: kind must be Config, got {str(document.get('kind'))[:40]!r}"
        )
    return document
