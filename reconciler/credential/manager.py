"""The credential manager: the one way drivers, builder, webhooks and callbacks get a value.

It knows two sources — the decrypted ``credentials.sops.yaml`` files of the config commit
in force (``load_git``) and the sealed store — and, for every value it hands out,
checks scope (global, or the asking project's own) and records the use.
"""

from __future__ import annotations

import builtins
import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from reconciler import errors
from reconciler.credential import auditing, documents, model, sealing
from reconciler.store import database as store_database


def _now() -> datetime:
    return datetime.now(UTC)


class CredentialManager:
    """Scope-checked, audited access to every credential."""

    def __init__(
        self,
        sealed: sealing.SealedStore,
        audit: auditing.AuditLog,
        clock: Callable[[], datetime] = _now,
    ):
        self.sealed = sealed
        self.audit = audit
        self.clock = clock
        self._git: dict[str, model.Credential] = {}
        self._opened: store_database.Database | None = None

    @classmethod
    def open(
        cls,
        data_dir: str | Path,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], datetime] = _now,
    ) -> CredentialManager:
        """Open the operational store of ``data_dir`` and manage its credentials (``using``).

        The manager owns that connection: ``close`` closes it.
        """
        database = store_database.Database.open(data_dir)
        try:
            manager = cls.using(database, environ, clock)
        except BaseException:
            database.close()
            raise
        manager._opened = database
        return manager

    @classmethod
    def using(
        cls,
        database: store_database.Database,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], datetime] = _now,
    ) -> CredentialManager:
        """The credentials of an open store: check the sealing keys, finish any rotation.

        The store stays the caller's: ``close`` leaves it open.
        """
        env = os.environ if environ is None else environ
        keys = sealing.SealingKeys.from_env(env)
        store = sealing.SealedStore(database, keys, clock)
        store.start()
        return cls(store, auditing.AuditLog(database), clock)

    def close(self) -> None:
        """Close the store if ``open`` opened it."""
        if self._opened is not None:
            self._opened.close()

    # ------------------------------------------------------------ Git credentials

    def load_git(
        self,
        files: Mapping[str, str],
        identities: Sequence[str] | None = None,
        *,
        backend: str = "auto",
    ) -> None:
        """Decrypt the credentials files of a config commit (repo path -> text).

        All or nothing: if any file fails, the credentials in force stay as they were and
        CredentialError lists every failing file.
        """
        loaded: dict[str, model.Credential] = {}
        problems = []
        for path, text in sorted(files.items()):
            try:
                creds = documents.load_credentials(
                    text, path, documents.scope_for_path(path), identities, backend=backend
                )
            except (errors.CredentialError, ValueError) as exc:
                problems.append(str(exc))
                continue
            for cred in creds.values():
                loaded[cred.id] = cred
        if problems:
            raise errors.CredentialError("\n".join(problems))
        self.set_git_credentials(loaded.values())

    def set_git_credentials(self, credentials: Iterable[model.Credential]) -> None:
        """Replace the credentials that come from Git."""
        self._git = {c.id: c for c in credentials}

    # -------------------------------------------------------------------- lookup

    def _find(self, credential_id: str) -> model.Credential | None:
        found = self._git.get(credential_id)
        return found if found is not None else self.sealed.get(credential_id)

    def _resolve(self, ref: str, project: str | None) -> model.Credential:
        if ":" in ref:
            try:
                scope, name = model.parse_credential_id(ref)
            except ValueError:
                raise errors.CredentialError(
                    f"{ref!r} is neither a name nor a credential id"
                ) from None
            if not scope.allows(project):
                raise errors.PermissionDenied(
                    f"credential {ref} belongs to {scope}; "
                    f"{'project ' + project if project else 'a global caller'} may use only "
                    "global credentials and its own"
                )
            found = self._find(scope.credential_id(name))
            if found is None:
                raise errors.CredentialError(f"credential {ref} does not exist")
            return found
        candidates = [model.GLOBAL.credential_id(ref)]
        if project is not None:
            # A project's own credential shadows a global one of the same name.
            candidates.insert(0, model.Scope(project).credential_id(ref))
        for credential_id in candidates:
            found = self._find(credential_id)
            if found is not None:
                return found
        elsewhere = sorted(
            i.scope.project or ""
            for i in self._all_infos()
            if i.name == ref and not i.scope.allows(project)
        )
        if elsewhere:
            raise errors.PermissionDenied(
                f"credential {ref!r} belongs to project {', '.join(elsewhere)}; "
                f"project {project} may use only global credentials and its own"
            )
        where = f"project {project} or global" if project else "global"
        raise errors.CredentialError(f"credential {ref!r} does not exist ({where})")

    def get(
        self, name: str, project: str | None, actor: str, source_ip: str | None = None
    ) -> model.Credential:
        """The credential ``name`` (or id) for ``project``, recording the use by ``actor``.

        ``project`` None means a global caller (e.g. an alert callback), which may use
        only global credentials.
        """
        credential = self._resolve(name, project)
        at = self.clock().isoformat()
        self.audit.record(credential.id, auditing.Action.USE, actor, at, source_ip)
        return dataclasses.replace(
            credential, info=dataclasses.replace(credential.info, last_used_at=at)
        )

    def secret_values(self, project: str | None) -> list[str]:
        """Every secret value ``project`` could obtain, for building a log Masker.

        Not a use (nothing leaves the process unmasked), so not audited.
        """
        out: list[str] = []
        for credential_id in (i.id for i in self._all_infos() if i.scope.allows(project)):
            credential = self._find(credential_id)
            if credential is not None:
                out += credential.secret_values()
        return out

    # ----------------------------------------------------------------- metadata

    def _all_infos(self) -> list[model.CredentialInfo]:
        infos = {c.id: c.info for c in self._git.values()}
        for info in self.sealed.infos():
            infos.setdefault(info.id, info)
        return list(infos.values())

    def list(self, project: str | None = None) -> list[model.CredentialInfo]:
        """Metadata (never values) of all credentials, or those ``project`` may use."""
        infos = [i for i in self._all_infos() if project is None or i.scope.allows(project)]
        last_used = self.audit.last_used(i.id for i in infos)
        return sorted(
            (dataclasses.replace(i, last_used_at=last_used.get(i.id, "")) for i in infos),
            key=lambda i: i.id,
        )

    def info(self, credential_id: str) -> model.CredentialInfo:
        """Metadata of one credential."""
        for info in self.list():
            if info.id == credential_id:
                return info
        raise errors.CredentialError(f"credential {credential_id} does not exist")

    def logs(self, credential_id: str, limit: int = 100) -> builtins.list[auditing.AuditEntry]:
        """The audit entries of one credential, newest first."""
        return self.audit.entries(credential_id, limit)

    # --------------------------------------------------------- sealed credentials

    def create(
        self,
        name: str,
        project: str | None,
        kind: model.CredentialType,
        values: Mapping[str, str],
        actor: str,
        *,
        description: str = "",
        source_ip: str | None = None,
    ) -> model.CredentialInfo:
        """Create or update a sealed credential (audited as create or update)."""
        if not documents.NAME_PATTERN.match(name):
            raise errors.CredentialError(f"{name!r} is not a valid credential name")
        scope = model.Scope(project) if project else model.GLOBAL
        credential_id = scope.credential_id(name)
        if credential_id in self._git:
            raise errors.CredentialError(
                f"credential {credential_id} is defined in {self._git[credential_id].info.source}"
                "; change it there (quicflow secrets set)"
            )
        info, created = self.sealed.put(
            name, scope, kind, values, description=description, actor=actor
        )
        action = auditing.Action.CREATE if created else auditing.Action.UPDATE
        self.audit.record(credential_id, action, actor, self.clock().isoformat(), source_ip)
        return info

    def delete(self, credential_id: str, actor: str, source_ip: str | None = None) -> None:
        """Delete a sealed credential (audited); Git credentials are removed in Git."""
        if credential_id in self._git:
            raise errors.CredentialError(
                f"credential {credential_id} is defined in "
                f"{self._git[credential_id].info.source}; remove it there"
            )
        if not self.sealed.delete(credential_id):
            raise errors.CredentialError(f"credential {credential_id} does not exist")
        self.audit.record(
            credential_id, auditing.Action.DELETE, actor, self.clock().isoformat(), source_ip
        )
