"""credentials.sops.yaml documents: listing without keys, parsing, adding credentials."""

from __future__ import annotations

import pytest

from reconciler import errors
from reconciler.credential import documents, model, sops

DOC = {
    "credentials": {
        "harbor": {
            "type": "username_password",
            "description": "Harbor robot",
            "username": "robot",
            "password": "harbor-pw-1",
        },
        "github": {"type": "access_token", "token": "ghp_token_value"},
        "deploy": {
            "type": "ssh_key",
            "private_key": "-----BEGIN KEY-----\nAAAA\n-----END KEY-----\n",
            "known_hosts": "git.example.com ssh-ed25519 AAAA",
        },
    }
}


def _encrypted(recipient: str, doc: dict = DOC, rules=documents.RULES) -> str:
    return sops.dump_yaml(
        sops.encrypt_tree(doc, [recipient], rules, source="credentials.sops.yaml")
    )


def test_scope_for_path() -> None:
    assert documents.scope_for_path("credentials.sops.yaml") == model.GLOBAL
    assert documents.scope_for_path("projects/shop/credentials.sops.yaml") == model.Scope("shop")
    assert documents.project_credentials_path("shop") == "projects/shop/credentials.sops.yaml"
    with pytest.raises(ValueError):
        documents.scope_for_path("projects/shop/other.yaml")


def test_list_without_decrypting(identity: tuple[str, str]) -> None:
    text = _encrypted(identity[1])
    infos = documents.list_credentials(text, "projects/shop/credentials.sops.yaml")
    by_name = {i.name: i for i in infos}
    assert by_name["harbor"].type is model.CredentialType.USERNAME_PASSWORD
    assert by_name["harbor"].description == "Harbor robot"
    assert by_name["github"].id == "project:shop:github"
    assert by_name["deploy"].source == "projects/shop/credentials.sops.yaml"


def test_list_refuses_encrypted_types_and_plain_secrets(identity: tuple[str, str]) -> None:
    everything = _encrypted(identity[1], rules=sops.EncryptionRules())
    with pytest.raises(errors.CredentialError, match="credentials.harbor.type is encrypted"):
        documents.list_credentials(everything, "credentials.sops.yaml")
    leaky = _encrypted(identity[1], rules=sops.EncryptionRules(encrypted_regex="^username$"))
    with pytest.raises(errors.CredentialError) as caught:
        documents.list_credentials(leaky, "credentials.sops.yaml")
    assert "credentials.sops.yaml: credentials.harbor.password is not encrypted" in str(
        caught.value
    )
    assert "harbor-pw-1" not in str(caught.value)
    with pytest.raises(errors.CredentialError, match="not encrypted with sops"):
        documents.list_credentials("credentials: {}\n", "credentials.sops.yaml")


def test_load_credentials(identity: tuple[str, str]) -> None:
    text = _encrypted(identity[1])
    creds = documents.load_credentials(
        text, "credentials.sops.yaml", identities=[identity[0]], backend="native"
    )
    assert creds["harbor"].username == "robot"
    assert creds["harbor"].password == "harbor-pw-1"
    assert creds["github"].value() == "ghp_token_value"
    assert creds["deploy"].known_hosts.startswith("git.example.com")
    assert sorted(creds["harbor"].secret_values()) == ["harbor-pw-1"]
    for cred in creds.values():
        for value in cred.secret_values():
            assert value not in repr(cred) and value not in str(cred)


def test_parse_reports_every_problem() -> None:
    bad = {
        "credentials": {
            "a": {"type": "username_password", "username": "u"},
            "b": {"type": "access_token", "token": "t", "password": "p"},
            "c": {"type": "magic"},
            "Bad Name": {"type": "access_token", "token": "t"},
        }
    }
    with pytest.raises(errors.CredentialError) as caught:
        documents.parse_credentials(bad, "credentials.sops.yaml")
    assert "credentials.Bad Name: not a valid credential name" in str(caught.value)
    bad["credentials"].pop("Bad Name")
    with pytest.raises(errors.CredentialError) as caught:
        documents.parse_credentials(bad, "credentials.sops.yaml")
    message = str(caught.value)
    assert "credentials.a: type username_password needs field 'password'" in message
    assert "credentials.b: field 'password' does not belong to type access_token" in message
    assert "credentials.c.type must be one of" in message


def test_set_credential_keeps_creation_fields() -> None:
    doc = documents.set_credential(
        DOC,
        "harbor",
        model.CredentialType.USERNAME_PASSWORD,
        {"username": "robot2", "password": "new"},
        created_by="alice",
        created_at="2025-01-01T00:00:00Z",
    )
    harbor = doc["credentials"]["harbor"]
    assert harbor["description"] == "Harbor robot"
    assert harbor["password"] == "new"
    assert DOC["credentials"]["harbor"]["password"] == "harbor-pw-1"  # input not mutated
    with pytest.raises(errors.CredentialError, match="needs field 'token'"):
        documents.set_credential({}, "x", model.CredentialType.ACCESS_TOKEN, {})
