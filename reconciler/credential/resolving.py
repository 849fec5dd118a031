"""Resolving an environment's secrets for a run: values by secret ref, and their Masker.

A desired state names its credentials files (``credentials.sops.yaml``, globally and per
project) by Git blob. ``CredentialResolver`` loads the files of one desired-state commit
into the ``CredentialManager`` once — runs of several environments ask at the same
time, from threads — and again only when the commit changes. ``resolve`` turns the
secret refs of an environment (its variables, its tasks' variables, and the registry
login of a container deploy, the kubeconfig of a Kubernetes one) into values, each use recorded by the manager, plus a
Masker of every secret the project may see, so no run log line shows one.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import Protocol

from reconciler.credential import age
from reconciler.credential.manager import CredentialManager
from reconciler.errors import PermanentError, QuicFlowError
from reconciler.gitops import model
from reconciler.log.masking import Masker
from reconciler.store.database import Database


class Blobs(Protocol):
    """What the resolver reads from the config repo: file contents by blob id."""

    def blob(self, blob_id: str) -> bytes: ...


def name_of(ref: model.SecretRef) -> str:
    """The key a secret ref's value is kept under in a run (``credential.field``)."""
    return f"{ref.credential}.{ref.field or ''}"


def secret_refs(env: model.Environment) -> dict[str, model.SecretRef]:
    """Every secret ref a run of ``env`` needs, by ``name_of``."""
    refs: dict[str, model.SecretRef] = {}
    for mapping in [env.variables, *[t.variables for s in env.pipeline.stages for t in s.tasks]]:
        for value in mapping.values():
            if isinstance(value, model.SecretRef):
                refs[name_of(value)] = value
    # The container driver logs in to the registry with this credential's two fields.
    registry = env.deploy.spec.get("registry_credential") or env.build.registry_credential
    if env.deploy.type is model.DeployType.CONTAINER and registry:
        for part in ("username", "password"):
            ref = model.SecretRef(registry, part)
            refs[name_of(ref)] = ref
    # The Kubernetes driver reaches its cluster with this credential's default field
    # (a kubeconfig or a token).
    kubeconfig = env.deploy.spec.get("kubeconfig_credential")
    if env.deploy.type is model.DeployType.KUBERNETES and kubeconfig:
        ref = model.SecretRef(kubeconfig)
        refs[name_of(ref)] = ref
    return refs


class CredentialResolver:
    """The credentials of the desired state in force, loaded once per commit."""

    def __init__(self, repo: Blobs, database: Database, environ: Mapping[str, str] | None = None):
        self.repo = repo
        # The engine's own store: the credential tables live in it, so no second connection.
        self.database = database
        self.environ = environ
        self._manager: CredentialManager | None = None
        self._commit: str | None = None
        self._lock = threading.Lock()

    def manager(self, desired: model.DesiredState) -> CredentialManager:
        """The manager holding ``desired``'s credentials files (blocking: call in a thread)."""
        with self._lock:
            if self._manager is None:
                self._manager = CredentialManager.using(self.database, self.environ)
            if self._commit != desired.commit:
                sources = [c.source for c in desired.credentials.values()]
                sources += [
                    c.source
                    for creds in desired.project_credentials.values()
                    for c in creds.values()
                ]
                files = {
                    source.path: self.repo.blob(source.blob).decode()
                    for source in {s.path: s for s in sources}.values()
                }
                identities = age.identities_from_env(self.environ)
                self._manager.load_git(files, identities or None)
                self._commit = desired.commit
            return self._manager

    async def resolve(
        self, env: model.Environment, desired: model.DesiredState
    ) -> tuple[dict[str, str], Masker]:
        """The secret values a run of ``env`` uses (by ``name_of``) and the project's Masker."""
        refs = secret_refs(env)
        if not refs:
            return {}, Masker([])
        manager = await asyncio.to_thread(self.manager, desired)
        values: dict[str, str] = {}
        for key, ref in refs.items():
            try:
                credential = manager.get(ref.credential, env.project, actor=f"run:{env.key}")
                values[key] = credential.value(ref.field)
            except (KeyError, QuicFlowError) as exc:
                raise PermanentError(f"variable secret {ref.credential!r}: {exc}") from None
        return values, Masker(manager.secret_values(env.project))

    def close(self) -> None:
        """Release the manager (the store stays open: it is the engine's)."""
        if self._manager is not None:
            self._manager.close()
