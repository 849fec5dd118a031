"""Which roles a change to the config repo needs, and whether its authors hold them.

Compares the desired state at a base commit with the one at a head commit under the
permission matrix: deploying to a protected (production) environment needs owner or
maintainer, other environments developer and up; changing project settings needs owner
or maintainer; changing members needs owner. Roles are read from the **base** commit —
a pull request cannot grant itself the role it needs. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from reconciler.auth.permissions import Action, allowed, roles_allowed
from reconciler.gitops import model


@dataclass(frozen=True, slots=True)
class Requirement:
    """One change and the roles that may make it."""

    project: str
    what: str
    action: str
    protected: bool
    roles: tuple[str, ...]
    env: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "project": self.project,
            "environment": self.env,
            "change": self.what,
            "action": self.action,
            "protected": self.protected,
            "roles": list(self.roles),
        }


@dataclass(frozen=True, slots=True)
class AuthorCheck:
    """Whether one commit author may make every change of the pull request."""

    email: str
    name: str
    user: str | None
    allowed: bool
    missing: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            "email": self.email,
            "name": self.name,
            "user": self.user,
            "allowed": self.allowed,
            "missing": list(self.missing),
        }


@dataclass(frozen=True, slots=True)
class PolicyReport:
    requirements: tuple[Requirement, ...]
    authors: tuple[AuthorCheck, ...]

    @property
    def allowed(self) -> bool:
        return all(a.allowed for a in self.authors)


def requirements(
    base: model.DesiredState | None, head: model.DesiredState
) -> tuple[Requirement, ...]:
    """The changes from ``base`` to ``head`` and the roles each needs."""
    out: list[Requirement] = []
    base_projects = base.projects if base else {}
    for name in sorted(set(base_projects) | set(head.projects)):
        old, new = base_projects.get(name), head.projects.get(name)
        if old is None or new is None:
            # Creating or deleting a project changes its settings and members alike.
            out.append(
                _req(
                    name,
                    "project added" if old is None else "project removed",
                    Action.MANAGE_MEMBERS,
                    False,
                )
            )
            continue
        if old.members_hash != new.members_hash:
            out.append(_req(name, "members changed", Action.MANAGE_MEMBERS, False))
        if old.settings_hash != new.settings_hash:
            out.append(_req(name, "project settings changed", Action.CHANGE_CONFIG, False))
        for env in sorted(set(old.environments) | set(new.environments)):
            o, n = old.environments.get(env), new.environments.get(env)
            protected = bool((o and o.protected) or (n and n.protected))
            if o is None or n is None:
                out.append(
                    _req(
                        name,
                        "environment added" if o is None else "environment removed",
                        Action.CHANGE_CONFIG,
                        protected,
                        env,
                    )
                )
            elif o.version != n.version:
                out.append(
                    _req(name, f"version {o.version} → {n.version}", Action.DEPLOY, protected, env)
                )
            elif _env_fingerprint(o) != _env_fingerprint(n):
                out.append(
                    _req(name, "environment settings changed", Action.DEPLOY, protected, env)
                )
    return tuple(out)


def check_authors(
    base: model.DesiredState | None,
    head: model.DesiredState,
    reqs: Iterable[Requirement],
    authors: Iterable[tuple[str, str]],
) -> tuple[AuthorCheck, ...]:
    """For each (name, email) author: does their role in the base commit allow every change?"""
    roles_from = base or head
    reqs = tuple(reqs)
    checks: dict[str, AuthorCheck] = {}
    for name, email in authors:
        key = email.lower()
        if key in checks:
            continue
        user = roles_from.user_by_email(email)
        if user is None:
            checks[key] = AuthorCheck(
                email, name, None, not reqs, tuple(f"{r.project}: {r.what}" for r in reqs)
            )
            continue
        missing = []
        for r in reqs:
            project = roles_from.projects.get(r.project)
            role = project.role_of(user.username) if project else None
            if not allowed(role, Action(r.action), r.protected, is_admin=user.is_admin):
                env = f"/{r.env}" if r.env else ""
                missing.append(
                    f"{r.project}{env}: {r.what} needs {' or '.join(r.roles)} (has {role or 'no role'})"
                )
        checks[key] = AuthorCheck(email, name, user.username, not missing, tuple(missing))
    return tuple(checks.values())


def report(
    base: model.DesiredState | None, head: model.DesiredState, authors: Iterable[tuple[str, str]]
) -> PolicyReport:
    reqs = requirements(base, head)
    return PolicyReport(reqs, check_authors(base, head, reqs, authors))


def _req(
    project: str, what: str, action: Action, protected: bool, env: str | None = None
) -> Requirement:
    roles = tuple(r.value for r in roles_allowed(action, protected))
    return Requirement(project, what, action.value, protected, roles, env)


def _env_fingerprint(env: model.Environment) -> tuple[object, ...]:
    return (
        env.config_hash,
        env.strategy,
        env.release_windows,
        env.protected,
        env.tier,
        env.auto_update,
    )
