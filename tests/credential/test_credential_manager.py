"""The credential manager: scope is enforced and every use leaves an audit entry."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler import errors
from reconciler.credential import auditing, documents, model, sealing, sops
from reconciler.credential.manager import CredentialManager

KEY = secrets.token_bytes(32)


def _file(recipient: str, creds: dict) -> str:
    tree = sops.encrypt_tree({"credentials": creds}, [recipient], documents.RULES)
    return sops.dump_yaml(tree)


class Clock:
    """A clock that moves one second per reading."""

    def __init__(self) -> None:
        self.now = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture
def manager(tmp_path: Path, identity: tuple[str, str]) -> Iterator[CredentialManager]:
    secret, recipient = identity
    mgr = CredentialManager.open(tmp_path, {sealing.KEY_ENV: KEY.hex()}, clock=Clock())
    mgr.load_git(
        {
            "credentials.sops.yaml": _file(
                recipient,
                {
                    "registry": {
                        "type": "username_password",
                        "description": "shared registry",
                        "username": "ci",
                        "password": "global-registry-pw",
                    }
                },
            ),
            "projects/shop/credentials.sops.yaml": _file(
                recipient,
                {
                    "github": {"type": "access_token", "token": "shop-github-token"},
                    "registry": {
                        "type": "username_password",
                        "username": "shop",
                        "password": "shop-registry-pw",
                    },
                },
            ),
            "projects/blog/credentials.sops.yaml": _file(
                recipient, {"deploy-token": {"type": "access_token", "token": "blog-token"}}
            ),
        },
        [secret],
        backend="native",
    )
    yield mgr
    mgr.close()


def test_project_sees_own_and_global_credentials(manager: CredentialManager) -> None:
    assert manager.get("github", "shop", "run:1").token == "shop-github-token"
    # The project's own credential shadows the global one of the same name.
    assert manager.get("registry", "shop", "run:1").password == "shop-registry-pw"
    assert manager.get("registry", "blog", "run:2").password == "global-registry-pw"
    assert manager.get("global:registry", "shop", "run:1").password == "global-registry-pw"


def test_cross_project_use_is_refused(manager: CredentialManager) -> None:
    with pytest.raises(errors.PermissionDenied, match="belongs to project blog"):
        manager.get("deploy-token", "shop", "run:1")
    with pytest.raises(errors.PermissionDenied, match="project:blog:deploy-token belongs to"):
        manager.get("project:blog:deploy-token", "shop", "run:1")
    with pytest.raises(errors.PermissionDenied):
        manager.get("github", None, "callback:alerts")  # a global caller
    with pytest.raises(errors.CredentialError, match="'nope' does not exist"):
        manager.get("nope", "shop", "run:1")
    # Refused attempts hand out nothing and are not recorded as uses.
    assert manager.logs("project:blog:deploy-token") == []


def test_every_use_is_audited(manager: CredentialManager) -> None:
    manager.get("github", "shop", "run:41")
    manager.get("github", "shop", "user:alice", source_ip="192.0.2.7")
    entries = manager.logs("project:shop:github")
    assert [(e.action, e.actor, e.source_ip) for e in entries] == [
        (auditing.Action.USE, "user:alice", "192.0.2.7"),
        (auditing.Action.USE, "run:41", None),
    ]
    assert entries[0].at > entries[1].at
    info = manager.info("project:shop:github")
    assert info.last_used_at == entries[0].at
    assert manager.info("global:registry").last_used_at == ""


def test_list_is_metadata_only(manager: CredentialManager) -> None:
    manager.create(
        "issued", "shop", model.CredentialType.ACCESS_TOKEN, {"token": "sealed-tok"}, "user:bob"
    )
    listed = manager.list("shop")
    assert [i.id for i in listed] == [
        "global:registry",
        "project:shop:github",
        "project:shop:issued",
        "project:shop:registry",
    ]
    dumped = json.dumps([i.as_dict() for i in manager.list()]) + repr(manager.list())
    for value in ("global-registry-pw", "shop-github-token", "sealed-tok", "blog-token"):
        assert value not in dumped
    assert {i.source for i in listed} == {
        "credentials.sops.yaml",
        "projects/shop/credentials.sops.yaml",
        "sealed",
    }


def test_sealed_credentials_are_audited(manager: CredentialManager) -> None:
    manager.create("issued", "shop", model.CredentialType.ACCESS_TOKEN, {"token": "a"}, "user:bob")
    manager.create(
        "issued",
        "shop",
        model.CredentialType.ACCESS_TOKEN,
        {"token": "b"},
        "user:bob",
        source_ip="198.51.100.1",
    )
    assert manager.get("issued", "shop", "run:7").token == "b"
    with pytest.raises(errors.PermissionDenied):
        manager.get("issued", "blog", "run:8")
    manager.delete("project:shop:issued", "user:carol")
    actions = [(e.action, e.actor) for e in manager.logs("project:shop:issued")]
    assert actions == [
        (auditing.Action.DELETE, "user:carol"),
        (auditing.Action.USE, "run:7"),
        (auditing.Action.UPDATE, "user:bob"),
        (auditing.Action.CREATE, "user:bob"),
    ]
    with pytest.raises(errors.CredentialError, match="defined in projects/shop/credentials"):
        manager.create("github", "shop", model.CredentialType.ACCESS_TOKEN, {"token": "x"}, "u")
    with pytest.raises(errors.CredentialError, match="remove it there"):
        manager.delete("project:shop:github", "u")


def test_secret_values_for_masking(manager: CredentialManager) -> None:
    values = set(manager.secret_values("shop"))
    assert values == {"global-registry-pw", "shop-github-token", "shop-registry-pw"}
    assert manager.logs("project:shop:github") == []  # not a use


def test_load_git_is_all_or_nothing(
    manager: CredentialManager, identity: tuple[str, str], other_identity: tuple[str, str]
) -> None:
    good = _file(identity[1], {"x": {"type": "access_token", "token": "t"}})
    wrong_key = _file(other_identity[1], {"y": {"type": "access_token", "token": "t"}})
    with pytest.raises(errors.CredentialError, match="projects/blog/credentials.sops.yaml: none"):
        manager.load_git(
            {
                "credentials.sops.yaml": good,
                "projects/blog/credentials.sops.yaml": wrong_key,
            },
            [identity[0]],
            backend="native",
        )
    # The credentials in force are unchanged.
    assert manager.get("github", "shop", "run:1").token == "shop-github-token"


def test_reopening_with_sealed_credentials_needs_the_key(tmp_path: Path) -> None:
    mgr = CredentialManager.open(tmp_path, {sealing.KEY_ENV: KEY.hex()})
    mgr.create("t", None, model.CredentialType.ACCESS_TOKEN, {"token": "v"}, "user:a")
    mgr.close()
    with pytest.raises(errors.CredentialError, match="QUIC_FLOW_SECRET_KEY is not set"):
        CredentialManager.open(tmp_path, {})
