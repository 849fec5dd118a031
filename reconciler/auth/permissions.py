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
"""

from __future__ import annotations

from collections.abc import Mapping
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
