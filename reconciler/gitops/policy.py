"""Which roles a change to the config repo needs, and whether its authors hold them.

Compares the desired state where a change starts (the merge-base of the pull request's
branch with main, so a stale branch is judged by what it changes, not by what main did
since) with the one at its head, under the permission matrix: deploying to a protected
(production) environment needs owner or maintainer, other environments developer and
up; changing project settings or credentials needs owner or maintainer; changing members
needs owner; changing what ``quicflow.yaml`` and the global credentials declare — users
and who is admin, agents, callbacks, alert rules, settings — needs an admin.

Roles are read from the **base** (main as it is now), never from the change: a pull
request cannot grant itself a role, and when the base is invalid no author is allowed
(roles cannot be read). What this can and cannot prove: authors are matched to users by
the email of their commits, which whoever makes a commit writes themselves; the check
binds identities only together with the Git host's branch protection (who may push or
merge) or signed commits. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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
    problem: str = ""  # why roles could not be read at all (an invalid base)

    @property
    def allowed(self) -> bool:
        return not self.problem and all(a.allowed for a in self.authors)

    def refusals(self) -> tuple[str, ...]:
        """Why the change is not allowed, one line per author (empty when it is)."""
        out = [self.problem] if self.problem else []
        for a in self.authors:
            if not a.allowed:
                who = a.user or f"{a.name} <{a.email}> (no user with this email)"
                out.append(f"{who}: " + "; ".join(a.missing))
        return tuple(out)


_FROM_BASE = object()  # ``report``'s roles_from not given: read roles from ``base``
#: The pseudo-role of ``is_admin: true`` users: what ``quicflow.yaml`` declares needs it.
ADMIN = "admin"
#: The ``project`` of requirements on ``quicflow.yaml`` and the global credentials.
GLOBAL = "quicflow.yaml"


def requirements(
    base: model.DesiredState | None, head: model.DesiredState
) -> tuple[Requirement, ...]:
    """The changes from ``base`` to ``head`` and the roles each needs."""
    out: list[Requirement] = list(_global_requirements(base, head))
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
        if (base.project_credentials if base else {}).get(name) != head.project_credentials.get(
            name
        ):
            out.append(_req(name, "project credentials changed", Action.CHANGE_CONFIG, False))
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


def _global_requirements(
    base: model.DesiredState | None, head: model.DesiredState
) -> list[Requirement]:
    """What changed in ``quicflow.yaml`` and the global credentials: each needs an admin."""
    changes = []
    old_users = base.users if base else {}
    for username in sorted(set(old_users) | set(head.users)):
        old, new = old_users.get(username), head.users.get(username)
        if old is None:
            what = f"user {username} added" + (" as admin" if new and new.is_admin else "")
        elif new is None:
            what = f"user {username} removed"
        elif old.is_admin != new.is_admin:
            what = f"user {username} {'made' if new.is_admin else 'no longer'} admin"
        elif old != new:
            what = f"user {username} changed (email or name)"
        else:
            continue
        changes.append(what)
    parts = (
        ("agents", lambda d: d.agents),
        ("callbacks", lambda d: d.callbacks),
        ("alert rules", lambda d: d.alert_rules),
        ("settings", lambda d: d.settings),
        ("global credentials", lambda d: d.credentials),
    )
    for label, part in parts:
        if base is None or part(base) != part(head):
            if base is None and not part(head):
                continue
            changes.append(f"{label} changed")
    return [Requirement(GLOBAL, what, "administer", False, (ADMIN,)) for what in changes]


def check_authors(
    base: model.DesiredState | None,
    head: model.DesiredState,
    reqs: Iterable[Requirement],
    authors: Iterable[tuple[str, str]],
) -> tuple[AuthorCheck, ...]:
    """For each (name, email) author: does their role in the base commit allow every change?

    ``base`` None (no valid base): nobody's role can be read, so nobody is allowed —
    roles are never read from the change itself.
    """
    reqs = tuple(reqs)
    checks: dict[str, AuthorCheck] = {}
    for name, email in authors:
        key = email.lower()
        if key in checks:
            continue
        user = base.user_by_email(email) if base is not None else None
        if base is None or user is None:
            checks[key] = AuthorCheck(
                email,
                name,
                None,
                not reqs,
                tuple(f"{r.project}{f'/{r.env}' if r.env else ''}: {r.what}" for r in reqs),
            )
            continue
        missing = []
        for r in reqs:
            if r.project == GLOBAL:
                if not user.is_admin:
                    missing.append(f"{GLOBAL}: {r.what} needs an admin")
                continue
            project = base.projects.get(r.project)
            role = project.role_of(user.username) if project else None
            if not allowed(role, Action(r.action), r.protected, is_admin=user.is_admin):
                env = f"/{r.env}" if r.env else ""
                missing.append(
                    f"{r.project}{env}: {r.what} needs {' or '.join(r.roles)} (has {role or 'no role'})"
                )
        checks[key] = AuthorCheck(email, name, user.username, not missing, tuple(missing))
    return tuple(checks.values())


def report(
    base: model.DesiredState | None,
    head: model.DesiredState,
    authors: Iterable[tuple[str, str]],
    *,
    roles_from: model.DesiredState | None | object = _FROM_BASE,
    base_problem: str = "",
) -> PolicyReport:
    """The changes from ``base`` to ``head`` and whether ``authors`` may make them.

    Roles come from ``roles_from`` (main's tip, when ``base`` is the merge-base of a
    stale branch) or else from ``base``; ``base_problem`` says why there is no valid
    base to read them from (then nobody is allowed).
    """
    reqs = requirements(base, head)
    roles = base if roles_from is _FROM_BASE else roles_from
    assert roles is None or isinstance(roles, model.DesiredState)
    problem = base_problem
    if roles is None and not problem:
        problem = "no valid base commit to read roles from"
    if problem:
        problem = f"roles cannot be read from the base: {problem}; nobody is allowed"
    return PolicyReport(reqs, check_authors(roles, head, reqs, authors), problem)


#: The trailer with which an admin accepts a refused change under ``enforce_policy``.
ACCEPT_TRAILER = "Quicflow-Policy: accept"


@dataclass(frozen=True, slots=True)
class Commit:
    """A commit as the enforced check reads it."""

    id: str
    parents: tuple[str, ...]
    author_name: str
    author_email: str
    message: str


def enforced(
    in_force: model.DesiredState,
    head: model.DesiredState,
    commits: Sequence[Commit],
    made_here: frozenset[str] = frozenset(),
) -> PolicyReport:
    """``settings.enforce_policy``: may ``commits`` (from the commit in force to ``head``,
    oldest first) take ``head`` into force? Roles come from ``in_force``.

    Not judged: commits the reconciler made itself (``made_here``: version bumps and
    reverts it committed after its own permission check), and everything an admin
    accepted — the newest commit authored by an admin whose message ends with the
    trailer ``Quicflow-Policy: accept`` vouches for itself and its ancestors.
    """
    by_id = {c.id: c for c in commits}
    accepted: set[str] = set()
    for commit in reversed(commits):
        user = in_force.user_by_email(commit.author_email)
        if user is not None and user.is_admin and ACCEPT_TRAILER in commit.message:
            stack = [commit.id]
            while stack:
                current = stack.pop()
                if current in accepted or current not in by_id:
                    continue
                accepted.add(current)
                stack.extend(by_id[current].parents)
            break
    authors = [
        (c.author_name, c.author_email)
        for c in commits
        if c.id not in made_here and (c.id not in accepted or ACCEPT_TRAILER in c.message)
    ]
    return report(in_force, head, authors)


def refused_commit(report: PolicyReport, commit: str) -> str:
    """The problem the reconciler reports for a commit on main its policy check refuses."""
    why = " | ".join(report.refusals())
    return (
        f"commit {commit[:10]} is refused by settings.enforce_policy: {why}; "
        "the last commit that passed stays in force"
    )


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
        env.four_eyes,
    )
