"""The project permission matrix, as data, and the checks against it.

| action                                   | owner | maintainer | developer | viewer |
|------------------------------------------|:-----:|:----------:|:---------:|:------:|
| change_config                            |   ✓   |     ✓      |           |        |
| manage_members                           |   ✓   |            |           |        |
| deploy / approve / rollback, protected   |   ✓   |     ✓      |           |        |
| deploy / approve / rollback, other envs  |   ✓   |     ✓      |     ✓     |        |
| view (runs and logs)                     |   ✓   |     ✓      |     ✓     |   ✓    |
| trigger_build                            |   ✓   |     ✓      |     ✓     |        |

Users flagged ``is_admin`` may do everything; a user with no role on the project
(``None``) may do nothing. Only deploy, approve and rollback depend on whether the
environment is protected (production); for other actions the flag is ignored.

Every rule built on the matrix is a function here returning a ``Verdict`` — the engine
(run actions from the API, the CLI and schedules) and the HTTP layer ask these and
decide nothing themselves:

- ``may_deploy``: the matrix's ``deploy``; forcing a deploy past a release window is for
  owners (and admins) only.
- ``may_approve`` / ``may_reject``: the matrix's ``approve``, and, at a stage gate that
  names roles, one of those roles (admins excepted).
- ``may_approve_change``: the four-eyes rule of an environment — the author of the
  change or the person who started the run may not approve its gate; ``gate_roles`` and
  ``approvers`` say who may (the status page lists them).
- ``may_promote`` and ``may_cancel``: the matrix's ``deploy`` (they continue or stop one).
- ``may_rollback``: the matrix's ``rollback``; ``may_trigger_build``: ``trigger_build``.
- ``may_read_credential_audit``: admins, and the owners and maintainers of the
  credential's project (who may change its config); global credentials: admins only.
- ``may_view`` / ``sees_every_project``: members see their projects, admins all of
  them, and anonymous readers all of them while ``settings.anonymous_status_page`` is on.
- ``may_read_operations``: records that name people and addresses — trigger records
  (committers, source IPs), the agent list (hosts, addresses), credential audits — need
  a login: an open status page gives anonymous readers the release state, never more
  than a viewer sees.
- ``may_act``: a run action as the HTTP layer names it, worded for an HTTP answer.

An ``Actor`` is a user as seen on one project (their role there); ``None`` for an actor
is the system itself (poll, webhook, schedule), which may do every run action. Pure:
no I/O, and no import of ``reconciler.gitops`` (``gitops.policy`` imports this module),
so callers pass roles and flags, not model objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType


class Role(StrEnum):
    """A member's role on a project; ``rank`` orders them by power (owner highest)."""

    OWNER = "owner"
    MAINTAINER = "maintainer"
    DEVELOPER = "developer"
    VIEWER = "viewer"

    @property
    def rank(self) -> int:
        """4 for owner down to 1 for viewer."""
        return _RANKS[self]

    def at_least(self, other: Role) -> bool:
        """Whether this role is as powerful as ``other`` or more."""
        return self.rank >= other.rank


_RANKS = {Role.OWNER: 4, Role.MAINTAINER: 3, Role.DEVELOPER: 2, Role.VIEWER: 1}


class Action(StrEnum):
    """Something a member may want to do on a project."""

    CHANGE_CONFIG = "change_config"
    MANAGE_MEMBERS = "manage_members"
    DEPLOY = "deploy"
    APPROVE = "approve"
    ROLLBACK = "rollback"
    VIEW = "view"
    TRIGGER_BUILD = "trigger_build"

    @property
    def depends_on_protection(self) -> bool:
        """Whether a protected (production) environment needs a stronger role."""
        return self in _PROTECTABLE


_PROTECTABLE = frozenset({Action.DEPLOY, Action.APPROVE, Action.ROLLBACK})

_EVERYONE = frozenset(Role)
_OWNER_MAINTAINER = frozenset({Role.OWNER, Role.MAINTAINER})
_UP_TO_DEVELOPER = frozenset({Role.OWNER, Role.MAINTAINER, Role.DEVELOPER})

#: The matrix: (action, protected) → roles allowed. Keys exist for both values of
#: ``protected`` so a lookup never needs to know which actions care.
PERMISSIONS: Mapping[tuple[Action, bool], frozenset[Role]] = MappingProxyType(
    {
        (Action.CHANGE_CONFIG, False): _OWNER_MAINTAINER,
        (Action.CHANGE_CONFIG, True): _OWNER_MAINTAINER,
        (Action.MANAGE_MEMBERS, False): frozenset({Role.OWNER}),
        (Action.MANAGE_MEMBERS, True): frozenset({Role.OWNER}),
        (Action.DEPLOY, False): _UP_TO_DEVELOPER,
        (Action.DEPLOY, True): _OWNER_MAINTAINER,
        (Action.APPROVE, False): _UP_TO_DEVELOPER,
        (Action.APPROVE, True): _OWNER_MAINTAINER,
        (Action.ROLLBACK, False): _UP_TO_DEVELOPER,
        (Action.ROLLBACK, True): _OWNER_MAINTAINER,
        (Action.VIEW, False): _EVERYONE,
        (Action.VIEW, True): _EVERYONE,
        (Action.TRIGGER_BUILD, False): _UP_TO_DEVELOPER,
        (Action.TRIGGER_BUILD, True): _UP_TO_DEVELOPER,
    }
)


def allowed(
    role: Role | str | None, action: Action | str, protected: bool, is_admin: bool = False
) -> bool:
    """Whether a member with ``role`` (None: not a member) may do ``action``.

    Unknown role or action names raise ``ValueError``: they are bugs or config the
    schema should have rejected, and failing loudly is safer than guessing.
    """
    if is_admin:
        return True
    if role is None:
        return False
    return Role(role) in PERMISSIONS[(Action(action), bool(protected))]


def roles_allowed(action: Action | str, protected: bool) -> tuple[Role, ...]:
    """The roles that may do ``action``, most powerful first."""
    roles = PERMISSIONS[(Action(action), bool(protected))]
    return tuple(sorted(roles, key=lambda role: role.rank, reverse=True))


def weakest_role(action: Action | str, protected: bool) -> Role:
    """The least powerful role that may do ``action`` (for "needs at least X" messages)."""
    return roles_allowed(action, protected)[-1]


# -- rules over the matrix ---------------------------------------------------------------


class Refusal(StrEnum):
    """Why an action was refused (the HTTP layer answers 401, 404 and 403 for them)."""

    ANONYMOUS = "anonymous"  # nobody logged in
    NOT_MEMBER = "not_member"  # no role on the project: it is not even shown
    ROLE = "role"  # a member whose role is too weak


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether an action is allowed; when not, why, naming the role that was needed."""

    allowed: bool
    reason: str = ""
    refusal: Refusal | None = None


ALLOWED = Verdict(True)


@dataclass(frozen=True, slots=True)
class Actor:
    """A user as seen on one project: their role there (None: not a member), or anonymous."""

    username: str
    role: Role | None = None
    is_admin: bool = False
    anonymous: bool = False

    @classmethod
    def on_project(cls, username: str, role: Role | str | None, is_admin: bool = False) -> Actor:
        """The actor for ``username`` holding ``role`` (a name from the config repo) on a project."""
        return cls(username, Role(role) if role is not None else None, is_admin)

    @property
    def role_name(self) -> str:
        """The role for messages: its name, or 'not a member'."""
        return self.role.value if self.role is not None else "not a member"


#: Nobody logged in: a reader of the status page when it is open to everyone.
ANONYMOUS = Actor("anonymous", anonymous=True)

_ANONYMOUS_ACTS = Verdict(False, "anonymous readers may not act; log in", Refusal.ANONYMOUS)


def _may(actor: Actor | None, action: Action, project: str, protected: bool, verb: str) -> Verdict:
    """The matrix check of a run action, worded for the engine's callers (CLI, API)."""
    if actor is None:
        return ALLOWED  # the system itself: poll, webhook, schedule
    if actor.anonymous:
        return _ANONYMOUS_ACTS
    if allowed(actor.role, action, protected, actor.is_admin):
        return ALLOWED
    needed = " or ".join(role.value for role in roles_allowed(action, protected))
    return Verdict(
        False,
        f"{actor.username} ({actor.role_name}) may not {verb} in "
        f"{project}{' (protected)' if protected else ''}: needs {needed}",
        Refusal.ROLE,
    )


def may_deploy(
    actor: Actor | None, project: str, env: str, protected: bool, *, force: bool = False
) -> Verdict:
    """Deploy to ``project``/``env``; ``force`` (past a release window) needs an owner."""
    verdict = _may(actor, Action.DEPLOY, project, protected, "deploy")
    if not verdict.allowed or actor is None or not force:
        return verdict
    if actor.is_admin or actor.role is Role.OWNER:
        return ALLOWED
    return Verdict(
        False,
        f"only an owner may force a deploy outside the release window of {project}/{env}",
        Refusal.ROLE,
    )


def may_approve(
    actor: Actor | None,
    project: str,
    protected: bool,
    *,
    stage: str = "",
    stage_roles: tuple[str, ...] | None = None,
) -> Verdict:
    """Approve a gate; at a stage naming ``stage_roles``, only those roles (or an admin)."""
    return _decide(actor, project, protected, stage, stage_roles, "approve")


def may_reject(
    actor: Actor | None,
    project: str,
    protected: bool,
    *,
    stage: str = "",
    stage_roles: tuple[str, ...] | None = None,
) -> Verdict:
    """Reject a gate: the same people who may approve it."""
    return _decide(actor, project, protected, stage, stage_roles, "reject")


def _decide(
    actor: Actor | None,
    project: str,
    protected: bool,
    stage: str,
    stage_roles: tuple[str, ...] | None,
    verb: str,
) -> Verdict:
    verdict = _may(actor, Action.APPROVE, project, protected, verb)
    if not verdict.allowed or actor is None or actor.is_admin or stage_roles is None:
        return verdict
    if actor.role is not None and actor.role.value in stage_roles:
        return ALLOWED
    return Verdict(
        False,
        f"{actor.username} ({actor.role_name}) may not {verb} stage {stage!r}: "
        f"needs {' or '.join(stage_roles)}",
        Refusal.ROLE,
    )


def may_approve_change(
    actor: Actor | None,
    project: str,
    env: str,
    *,
    four_eyes: bool,
    authors: Mapping[str, str],
    started_by: str = "",
) -> Verdict:
    """The four-eyes rule of an environment (``approval.four_eyes``) at one of its gates.

    ``authors`` maps each user who wrote a config commit the run applies to that commit's
    id; ``started_by`` is the user who started the run ('' for the system). With the rule
    on, neither may approve (admins included: the rule is about a second person, not
    about power); rejecting one's own change stays allowed. Ask it after ``may_approve``.
    """
    if actor is None or not four_eyes or actor.anonymous:
        return ALLOWED
    where = f"{project}/{env}"
    if actor.username in authors:
        commit = authors[actor.username][:10]
        return Verdict(
            False,
            f"four-eyes rule on {where}: {actor.username} wrote this change (commit {commit}) "
            "and may not approve it; another member must",
            Refusal.ROLE,
        )
    if started_by and actor.username == started_by:
        return Verdict(
            False,
            f"four-eyes rule on {where}: {actor.username} started this run "
            "and may not approve it; another member must",
            Refusal.ROLE,
        )
    return ALLOWED


def gate_roles(protected: bool, stage_roles: tuple[str, ...] | None) -> tuple[Role, ...]:
    """The roles that may approve a gate: the matrix's, narrowed to the stage's if it names any."""
    roles = roles_allowed(Action.APPROVE, protected)
    if stage_roles is None:
        return roles
    return tuple(role for role in roles if role.value in stage_roles)


def approvers(
    members: Iterable[tuple[str, str]],
    admins: Iterable[str],
    protected: bool,
    stage_roles: tuple[str, ...] | None,
    excluded: Iterable[str] = (),
) -> tuple[str, ...]:
    """Who may approve a gate: members ``(user, role)`` holding a gate role, then admins,
    without ``excluded`` (the four-eyes rule's authors and starter), each once, sorted."""
    roles = {role.value for role in gate_roles(protected, stage_roles)}
    left_out = set(excluded)
    found = sorted({user for user, role in members if role in roles} - left_out)
    found += sorted(set(admins) - left_out - set(found))
    return tuple(found)


def may_promote(actor: Actor | None, project: str, protected: bool) -> Verdict:
    """Let a canary paused for manual promotion go on: as deploying."""
    return _may(actor, Action.DEPLOY, project, protected, "promote")


def may_cancel(actor: Actor | None, project: str, protected: bool) -> Verdict:
    """Cancel a run: as deploying."""
    return _may(actor, Action.DEPLOY, project, protected, "cancel")


def may_rollback(actor: Actor | None, project: str, protected: bool) -> Verdict:
    """Roll an environment back (by revert commit or pinned)."""
    return _may(actor, Action.ROLLBACK, project, protected, "rollback")


def may_trigger_build(actor: Actor | None, project: str) -> Verdict:
    """Start (or cancel) an image build of ``project``."""
    if actor is None:
        return ALLOWED
    if actor.anonymous:
        return _ANONYMOUS_ACTS
    if allowed(actor.role, Action.TRIGGER_BUILD, False, actor.is_admin):
        return ALLOWED
    needed = weakest_role(Action.TRIGGER_BUILD, False)
    return Verdict(False, f"triggering a build of {project} needs at least {needed}", Refusal.ROLE)


#: Who may change a project's config may read who used its credentials.
_AUDIT = Action.CHANGE_CONFIG


def may_read_credential_audit(actor: Actor, project: str | None) -> Verdict:
    """Read the use audit of a credential of ``project`` (None: a global credential)."""
    if actor.is_admin:
        return ALLOWED
    if actor.anonymous:
        return Verdict(False, "the audit of credentials needs a login", Refusal.ANONYMOUS)
    if project is None:
        return Verdict(False, "the audit of global credentials is for admins", Refusal.ROLE)
    if actor.role is None:
        return Verdict(False, f"{actor.username} is not a member of {project}", Refusal.NOT_MEMBER)
    if allowed(actor.role, _AUDIT, False):
        return ALLOWED
    needed = " or ".join(role.value for role in roles_allowed(_AUDIT, False))
    return Verdict(False, f"the audit of a project's credentials needs {needed}", Refusal.ROLE)


def may_read_operations(actor: Actor, what: str) -> Verdict:
    """Read ``what`` (trigger records, the agent list): any logged-in user, never anonymous."""
    if actor.anonymous:
        return Verdict(False, f"{what} need a login", Refusal.ANONYMOUS)
    return ALLOWED


def sees_every_project(actor: Actor, anonymous_status_page: bool) -> bool:
    """Admins see every project, and anonymous readers while the status page is open."""
    return actor.is_admin or (actor.anonymous and anonymous_status_page)


def may_view(actor: Actor, project: str, anonymous_status_page: bool) -> Verdict:
    """See ``project`` at all (its runs, logs, builds); non-members do not know it exists."""
    if sees_every_project(actor, anonymous_status_page):
        return ALLOWED
    if actor.anonymous:
        return Verdict(False, "log in to see projects", Refusal.ANONYMOUS)
    if allowed(actor.role, Action.VIEW, False):
        return ALLOWED
    return Verdict(False, f"{actor.username} is not a member of {project}", Refusal.NOT_MEMBER)


#: Run actions as the HTTP layer names them → the matrix action that governs them.
RUN_ACTIONS: Mapping[str, Action] = MappingProxyType(
    {
        "deploy": Action.DEPLOY,
        "cancel": Action.DEPLOY,
        "promote": Action.DEPLOY,
        "approve": Action.APPROVE,
        "reject": Action.APPROVE,
        "rollback": Action.ROLLBACK,
        "view": Action.VIEW,
    }
)


def may_act(actor: Actor, action: str, project: str, env: str | None, protected: bool) -> Verdict:
    """A run action (a key of ``RUN_ACTIONS``) asked over HTTP, worded for the answer.

    Stage roles of an approval gate are the engine's to check (it knows the gate a run
    waits at): it asks ``may_approve`` with them.
    """
    rule = RUN_ACTIONS[action]
    if actor.anonymous:
        return ALLOWED if rule is Action.VIEW else _ANONYMOUS_ACTS
    if allowed(actor.role, rule, protected, actor.is_admin):
        return ALLOWED
    needed = weakest_role(rule, protected)
    where = f"{project}/{env}" if env else project
    kind = "protected environment " if protected else ""
    return Verdict(
        False,
        f"{action} on {kind}{where} needs role {needed} or higher; "
        f"{actor.username} is {actor.role_name}",
        Refusal.ROLE,
    )
