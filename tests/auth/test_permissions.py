"""The permission matrix, and every rule built on it, as pure functions.

First the matrix itself: every role × action × protected/unprotected environment. Then
the rules the engine and the HTTP layer ask (``may_deploy`` … ``may_view``): the six
users of the API suite (admin, owner, maintainer, developer, viewer, non-member) × every
run action × dev and prod, forcing a deploy past a release window, stage roles of an
approval gate, anonymous readers of the status page, builds and the credential audit.
"""

from __future__ import annotations

import itertools

import pytest

from reconciler.auth import permissions
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


# -- the rules over the matrix: every action of the engine and the HTTP layer ------------


ANY = permissions.ANONYMOUS
ALLOW = "allow"
ROLE = permissions.Refusal.ROLE
HIDDEN = permissions.Refusal.NOT_MEMBER
LOGIN = permissions.Refusal.ANONYMOUS

# The six users of the API suite, as they stand on project "app".
USERS = {
    "alice": permissions.Actor.on_project("alice", None, is_admin=True),
    "olga": permissions.Actor.on_project("olga", "owner"),
    "mike": permissions.Actor.on_project("mike", "maintainer"),
    "dev": permissions.Actor.on_project("dev", "developer"),
    "vic": permissions.Actor.on_project("vic", "viewer"),
    "nora": permissions.Actor.on_project("nora", None),
}

# user → (answer in dev, answer in prod) for deploy, approve, reject, promote, cancel,
# rollback; written out from the requirements, independently of the module's data.
RUN_MATRIX = {
    "alice": (ALLOW, ALLOW),
    "olga": (ALLOW, ALLOW),
    "mike": (ALLOW, ALLOW),
    "dev": (ALLOW, ROLE),
    "vic": (ROLE, ROLE),
    "nora": (ROLE, ROLE),
}
VIEW_MATRIX = {
    "alice": ALLOW,
    "olga": ALLOW,
    "mike": ALLOW,
    "dev": ALLOW,
    "vic": ALLOW,
    "nora": HIDDEN,
}

RULES = {
    "deploy": lambda actor, protected: permissions.may_deploy(actor, "app", "env", protected),
    "approve": lambda actor, protected: permissions.may_approve(actor, "app", protected),
    "reject": lambda actor, protected: permissions.may_reject(actor, "app", protected),
    "promote": lambda actor, protected: permissions.may_promote(actor, "app", protected),
    "cancel": lambda actor, protected: permissions.may_cancel(actor, "app", protected),
    "rollback": lambda actor, protected: permissions.may_rollback(actor, "app", protected),
}


def _answer(verdict: permissions.Verdict) -> object:
    assert verdict.allowed is (verdict.refusal is None)
    assert verdict.allowed or verdict.reason  # a refusal always says why
    return ALLOW if verdict.allowed else verdict.refusal


@pytest.mark.parametrize("user", list(USERS))
def test_run_action_matrix_for_six_users_in_dev_and_prod(user: str) -> None:
    wrong = []
    for env, protected, expected in (
        ("dev", False, RUN_MATRIX[user][0]),
        ("prod", True, RUN_MATRIX[user][1]),
    ):
        for action, rule in RULES.items():
            got = _answer(rule(USERS[user], protected))
            if got != expected:
                wrong.append(f"{user} {action} in {env}: {got}, wanted {expected}")
            # The HTTP layer's wording of the same rule gives the same answer.
            http = _answer(permissions.may_act(USERS[user], action, "app", env, protected))
            if http != expected:
                wrong.append(f"{user} {action} over HTTP in {env}: {http}, wanted {expected}")
        view = _answer(permissions.may_view(USERS[user], "app", anonymous_status_page=False))
        if view != VIEW_MATRIX[user]:
            wrong.append(f"{user} view in {env}: {view}, wanted {VIEW_MATRIX[user]}")
    assert wrong == []


@pytest.mark.parametrize("action", list(RULES))
@pytest.mark.parametrize("protected", [False, True])
def test_the_system_itself_may_do_every_run_action(action: str, protected: bool) -> None:
    assert RULES[action](None, protected) == permissions.ALLOWED


def test_refusals_name_the_actor_the_action_and_the_roles_needed() -> None:
    assert permissions.may_deploy(USERS["dev"], "app", "prod", True).reason == (
        "dev (developer) may not deploy in app (protected): needs owner or maintainer"
    )
    assert permissions.may_rollback(USERS["vic"], "app", False).reason == (
        "vic (viewer) may not rollback in app: needs owner or maintainer or developer"
    )
    assert permissions.may_cancel(USERS["nora"], "app", True).reason == (
        "nora (not a member) may not cancel in app (protected): needs owner or maintainer"
    )
    assert permissions.may_act(USERS["dev"], "deploy", "app", "prod", True).reason == (
        "deploy on protected environment app/prod needs role maintainer or higher; dev is developer"
    )
    assert permissions.may_act(USERS["vic"], "approve", "app", None, False).reason == (
        "approve on app needs role developer or higher; vic is viewer"
    )


@pytest.mark.parametrize(
    ("user", "protected", "expected"),
    [
        ("alice", True, ALLOW),
        ("olga", True, ALLOW),
        ("olga", False, ALLOW),
        ("mike", True, "only an owner"),
        ("mike", False, "only an owner"),
        ("dev", False, "only an owner"),
        ("dev", True, "may not deploy"),  # the matrix refuses first
        ("vic", False, "may not deploy"),
        ("nora", False, "may not deploy"),
    ],
)
def test_forcing_a_deploy_outside_the_release_window_is_for_owners(
    user: str, protected: bool, expected: str
) -> None:
    verdict = permissions.may_deploy(USERS[user], "app", "prod", protected, force=True)
    if expected == ALLOW:
        assert verdict == permissions.ALLOWED
    else:
        assert not verdict.allowed and verdict.refusal is ROLE
        assert expected in verdict.reason
    assert permissions.may_deploy(None, "app", "prod", protected, force=True).allowed
    if expected == "only an owner":
        assert verdict.reason == (
            "only an owner may force a deploy outside the release window of app/prod"
        )
        assert permissions.may_deploy(USERS[user], "app", "prod", protected).allowed


@pytest.mark.parametrize(
    ("stage_roles", "protected", "allowed_users"),
    [
        (None, False, {"alice", "olga", "mike", "dev"}),  # no stage roles: the matrix alone
        (("owner",), False, {"alice", "olga"}),
        (("owner", "maintainer"), False, {"alice", "olga", "mike"}),
        (("developer",), False, {"alice", "dev"}),
        (("developer",), True, {"alice"}),  # the matrix still applies in production
        (("viewer",), False, {"alice"}),  # a viewer may not approve, whatever the stage says
    ],
)
def test_approving_a_stage_needs_one_of_its_roles(
    stage_roles: tuple[str, ...] | None, protected: bool, allowed_users: set[str]
) -> None:
    for rule in (permissions.may_approve, permissions.may_reject):
        allowed_now = {
            user
            for user, actor in USERS.items()
            if rule(actor, "app", protected, stage="release", stage_roles=stage_roles).allowed
        }
        assert allowed_now == allowed_users, rule.__name__
        assert rule(None, "app", protected, stage="release", stage_roles=stage_roles).allowed


def test_a_stage_refusal_names_the_stage_and_its_roles() -> None:
    verdict = permissions.may_approve(
        USERS["mike"], "app", False, stage="release", stage_roles=("owner",)
    )
    assert verdict.reason == "mike (maintainer) may not approve stage 'release': needs owner"
    verdict = permissions.may_reject(
        USERS["dev"], "app", False, stage="release", stage_roles=("owner", "maintainer")
    )
    assert (
        verdict.reason
        == "dev (developer) may not reject stage 'release': needs owner or maintainer"
    )


@pytest.mark.parametrize("action", list(RULES))
def test_anonymous_readers_may_not_act(action: str) -> None:
    for protected in (False, True):
        verdict = RULES[action](ANY, protected)
        assert (verdict.allowed, verdict.refusal) == (False, LOGIN)
        assert verdict.reason == "anonymous readers may not act; log in"
        assert permissions.may_act(ANY, action, "app", "dev", protected) == verdict
    assert permissions.may_trigger_build(ANY, "app").refusal is LOGIN


@pytest.mark.parametrize("page_open", [False, True])
def test_anonymous_readers_see_every_project_only_while_the_status_page_is_open(
    page_open: bool,
) -> None:
    view = permissions.may_view(ANY, "app", anonymous_status_page=page_open)
    assert view.allowed is page_open
    assert view.refusal is (None if page_open else LOGIN)
    assert permissions.sees_every_project(ANY, page_open) is page_open
    assert permissions.may_act(ANY, "view", "app", None, False).allowed
    assert permissions.sees_every_project(USERS["alice"], page_open)
    for user in ("olga", "mike", "dev", "vic", "nora"):
        assert not permissions.sees_every_project(USERS[user], page_open)


def test_triggering_a_build_needs_a_developer() -> None:
    answers = {u: _answer(permissions.may_trigger_build(a, "app")) for u, a in USERS.items()}
    assert answers == {
        "alice": ALLOW,
        "olga": ALLOW,
        "mike": ALLOW,
        "dev": ALLOW,
        "vic": ROLE,
        "nora": ROLE,
    }
    assert permissions.may_trigger_build(USERS["vic"], "app").reason == (
        "triggering a build of app needs at least developer"
    )
    assert permissions.may_trigger_build(None, "app").allowed


def test_the_credential_audit_is_for_admins_owners_and_maintainers() -> None:
    project = {
        u: _answer(permissions.may_read_credential_audit(a, "app")) for u, a in USERS.items()
    }
    assert project == {
        "alice": ALLOW,
        "olga": ALLOW,
        "mike": ALLOW,
        "dev": ROLE,
        "vic": ROLE,
        "nora": HIDDEN,
    }
    assert permissions.may_read_credential_audit(USERS["dev"], "app").reason == (
        "the audit of a project's credentials needs owner or maintainer"
    )
    global_ = {u: _answer(permissions.may_read_credential_audit(a, None)) for u, a in USERS.items()}
    assert global_ == {"alice": ALLOW, **{u: ROLE for u in USERS if u != "alice"}}
    assert permissions.may_read_credential_audit(USERS["olga"], None).reason == (
        "the audit of global credentials is for admins"
    )
    # Anonymous readers of an open status page are viewers: no audit for them.
    assert permissions.may_read_credential_audit(ANY, "app").refusal is LOGIN
    assert permissions.may_read_credential_audit(ANY, None).refusal is LOGIN


def test_the_http_run_actions_map_onto_the_matrix() -> None:
    assert dict(permissions.RUN_ACTIONS) == {
        "deploy": Action.DEPLOY,
        "cancel": Action.DEPLOY,
        "promote": Action.DEPLOY,
        "approve": Action.APPROVE,
        "reject": Action.APPROVE,
        "rollback": Action.ROLLBACK,
        "view": Action.VIEW,
    }


def test_an_actor_with_an_unknown_role_fails_loudly() -> None:
    with pytest.raises(ValueError):
        permissions.Actor.on_project("x", "admin")
    assert USERS["nora"].role_name == "not a member"
    assert USERS["olga"].role is Role.OWNER


# -- the four-eyes rule and who may approve a gate ---------------------------------------

BOB_OWNER = permissions.Actor.on_project("bob", "owner")
ADMIN = permissions.Actor.on_project("alice", None, is_admin=True)


def test_four_eyes_refuses_the_author_and_the_starter_but_not_others() -> None:
    def verdict(actor: permissions.Actor | None, rule: bool = True) -> permissions.Verdict:
        return permissions.may_approve_change(
            actor,
            "shop",
            "prod",
            four_eyes=rule,
            authors={"bob": "0123456789abcdef", "alice": "fedcba9876543210"},
            started_by="carol",
        )

    author = verdict(BOB_OWNER)
    assert not author.allowed and author.refusal is permissions.Refusal.ROLE
    assert author.reason == (
        "four-eyes rule on shop/prod: bob wrote this change (commit 0123456789) "
        "and may not approve it; another member must"
    )
    assert not verdict(ADMIN).allowed  # admins are a second pair of eyes like anyone
    starter = verdict(permissions.Actor.on_project("carol", "maintainer"))
    assert "carol started this run" in starter.reason and not starter.allowed
    assert verdict(permissions.Actor.on_project("mike", "maintainer")).allowed
    assert verdict(None).allowed  # the system itself
    assert verdict(BOB_OWNER, rule=False).allowed  # the rule is off


def test_approvers_are_the_gate_roles_members_then_admins_without_the_excluded() -> None:
    members = [("olga", "owner"), ("mike", "maintainer"), ("dev", "developer"), ("vic", "viewer")]
    assert permissions.approvers(members, ["alice"], False, None) == (
        "dev",
        "mike",
        "olga",
        "alice",
    )
    # Protected: the matrix keeps developers out even when the stage names them.
    assert permissions.approvers(members, ["alice"], True, ("owner", "developer")) == (
        "olga",
        "alice",
    )
    assert permissions.approvers(members, ["alice"], False, None, excluded=("mike", "alice")) == (
        "dev",
        "olga",
    )
    assert permissions.gate_roles(True, None) == (Role.OWNER, Role.MAINTAINER)
