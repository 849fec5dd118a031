"""The permission matrix: every role × action × protected/unprotected environment."""

from __future__ import annotations

import itertools

import pytest

from reconciler.auth.permissions import (
    PERMISSIONS,
    Action,
    Role,
    allowed,
    roles_allowed,
    weakest_role,
)

OWN, MNT, DEV, VIEW = "owner", "maintainer", "developer", "viewer"

# Written out independently of the module's data, row by row as in the requirements.
EXPECTED: dict[tuple[str, bool], set[str]] = {
    ("change_config", False): {OWN, MNT},
    ("change_config", True): {OWN, MNT},
    ("manage_members", False): {OWN},
    ("manage_members", True): {OWN},
    ("deploy", True): {OWN, MNT},
    ("approve", True): {OWN, MNT},
    ("rollback", True): {OWN, MNT},
    ("deploy", False): {OWN, MNT, DEV},
    ("approve", False): {OWN, MNT, DEV},
    ("rollback", False): {OWN, MNT, DEV},
    ("view", False): {OWN, MNT, DEV, VIEW},
    ("view", True): {OWN, MNT, DEV, VIEW},
    ("trigger_build", False): {OWN, MNT, DEV},
    ("trigger_build", True): {OWN, MNT, DEV},
}

CASES = [
    (role, action, protected, role.value in EXPECTED[(action.value, protected)])
    for role, action, protected in itertools.product(Role, Action, (False, True))
]


def test_expected_table_covers_every_action() -> None:
    assert {action for action, _ in EXPECTED} == {a.value for a in Action}
    assert set(PERMISSIONS) == {(Action(a), p) for a, p in EXPECTED}


@pytest.mark.parametrize(
    ("role", "action", "protected", "expected"),
    CASES,
    ids=[f"{r}-{a}-{'protected' if p else 'other'}" for r, a, p, _ in CASES],
)
def test_matrix(role: Role, action: Action, protected: bool, expected: bool) -> None:
    assert allowed(role, action, protected) is expected
    # plain strings, as they come from the config repo, give the same answer
    assert allowed(role.value, action.value, protected) is expected
    # admins may do everything, whatever their role
    assert allowed(role, action, protected, is_admin=True) is True
    assert (role in roles_allowed(action, protected)) is expected


@pytest.mark.parametrize(("action", "protected"), [(a, p) for a in Action for p in (False, True)])
def test_non_members(action: Action, protected: bool) -> None:
    assert allowed(None, action, protected) is False
    assert allowed(None, action, protected, is_admin=True) is True


@pytest.mark.parametrize(
    ("action", "protected", "expected"),
    [
        ("deploy", True, (Role.OWNER, Role.MAINTAINER)),
        ("deploy", False, (Role.OWNER, Role.MAINTAINER, Role.DEVELOPER)),
        ("manage_members", False, (Role.OWNER,)),
        ("view", True, (Role.OWNER, Role.MAINTAINER, Role.DEVELOPER, Role.VIEWER)),
    ],
)
def test_roles_allowed_most_powerful_first(
    action: str, protected: bool, expected: tuple[Role, ...]
) -> None:
    assert roles_allowed(action, protected) == expected
    assert weakest_role(action, protected) is expected[-1]


@pytest.mark.parametrize(
    ("role", "rank"),
    [(Role.OWNER, 4), (Role.MAINTAINER, 3), (Role.DEVELOPER, 2), (Role.VIEWER, 1)],
)
def test_rank(role: Role, rank: int) -> None:
    assert role.rank == rank
    assert role.at_least(Role.VIEWER)
    assert role.at_least(role)
    assert Role.OWNER.at_least(role)


def test_protection_only_matters_for_release_actions() -> None:
    protectable = {a for a in Action if a.depends_on_protection}
    assert protectable == {Action.DEPLOY, Action.APPROVE, Action.ROLLBACK}
    for action in set(Action) - protectable:
        assert PERMISSIONS[(action, True)] == PERMISSIONS[(action, False)]


@pytest.mark.parametrize(
    ("role", "action"), [("admin", "view"), ("Owner", "view"), ("owner", "delete"), (OWN, "")]
)
def test_unknown_names_fail_loudly(role: str, action: str) -> None:
    with pytest.raises(ValueError):
        allowed(role, action, protected=False)


def test_matrix_is_read_only() -> None:
    with pytest.raises(TypeError):
        PERMISSIONS[(Action.VIEW, False)] = frozenset()  # type: ignore[index]
