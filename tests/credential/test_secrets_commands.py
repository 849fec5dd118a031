"""``quicflow secrets``: values come from prompts, files are valid sops files afterwards."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from reconciler.credential import model, sealing, sops
from reconciler.credential.commands import secrets_group
from reconciler.store.database import Database


@pytest.fixture
def keyed_env(identity: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """SOPS_AGE_KEY and SOPS_AGE_RECIPIENTS set to the test identity."""
    secret, recipient = identity
    monkeypatch.setenv("SOPS_AGE_KEY", secret)
    monkeypatch.setenv("SOPS_AGE_RECIPIENTS", recipient)
    return identity


def _decrypt(path: Path, secret: str) -> dict:
    return sops.decrypt_text(path.read_text(), [secret], source=str(path), backend="native")


def test_set_prompts_hidden_and_writes_sops(keyed_env: tuple[str, str], tmp_path: Path) -> None:
    path = tmp_path / "credentials.sops.yaml"
    runner = CliRunner()
    result = runner.invoke(
        secrets_group,
        ["set", str(path), "harbor", "--type", "username_password", "--description", "Harbor"],
        input="robot\nsup3r-secret\nsup3r-secret\n",
    )
    assert result.exit_code == 0, result.output
    assert "sup3r-secret" not in result.output  # hidden prompt: not echoed
    text = path.read_text()
    assert "sup3r-secret" not in text and "description: Harbor" in text
    harbor = _decrypt(path, keyed_env[0])["credentials"]["harbor"]
    assert harbor["password"] == "sup3r-secret"
    assert harbor["type"] == "username_password"
    # A second credential keeps the first one's ciphertext (same data key and IV).
    before = yaml.safe_load(text)["credentials"]["harbor"]["password"]
    result = runner.invoke(
        secrets_group, ["set", str(path), "gh", "--type", "access_token"], input="tok-123\n"
    )
    assert result.exit_code == 0, result.output
    after = yaml.safe_load(path.read_text())["credentials"]
    assert after["harbor"]["password"] == before
    assert _decrypt(path, keyed_env[0])["credentials"]["gh"]["token"] == "tok-123"


def test_set_ssh_key_from_file(keyed_env: tuple[str, str], tmp_path: Path) -> None:
    key = tmp_path / "id_ed25519"
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n")
    path = tmp_path / "credentials.sops.yaml"
    args = ["set", str(path), "deploy", "--type", "ssh_key", "--private-key-file", str(key)]
    result = CliRunner().invoke(secrets_group, args, input="\n")
    assert result.exit_code == 0, result.output
    deploy = _decrypt(path, keyed_env[0])["credentials"]["deploy"]
    assert deploy["private_key"] == key.read_text()
    assert "passphrase" not in deploy


def test_encrypt_then_decrypt(keyed_env: tuple[str, str], tmp_path: Path) -> None:
    path = tmp_path / "credentials.sops.yaml"
    path.write_text("credentials:\n  gh:\n    type: access_token\n    token: plain-tok\n")
    runner = CliRunner()
    result = runner.invoke(secrets_group, ["encrypt", str(path), "--native"])
    assert result.exit_code == 0, result.output
    assert "plain-tok" not in path.read_text()
    assert yaml.safe_load(path.read_text())["credentials"]["gh"]["type"] == "access_token"
    result = runner.invoke(secrets_group, ["decrypt", str(path), "--native"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output)["credentials"]["gh"]["token"] == "plain-tok"
    # Tampering is reported as a clean error naming the file.
    path.write_text(path.read_text().replace("type: access_token", "type: ssh_key"))
    result = runner.invoke(secrets_group, ["decrypt", str(path), "--native"])
    assert result.exit_code == 1
    assert f"{path}: MAC mismatch" in result.output


def test_edit_runs_the_editor(
    keyed_env: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "credentials.sops.yaml"
    path.write_text(
        sops.encrypt_text(
            "credentials:\n  gh:\n    type: access_token\n    token: old-tok\n",
            [keyed_env[1]],
            backend="native",
        )
    )
    editor = tmp_path / "editor.py"
    editor.write_text(
        "import sys, pathlib\n"
        "p = pathlib.Path(sys.argv[1])\n"
        "p.write_text(p.read_text().replace('old-tok', 'new-tok'))\n"
    )
    monkeypatch.setenv("EDITOR", f"{sys.executable} {editor}")
    monkeypatch.delenv("VISUAL", raising=False)
    result = CliRunner().invoke(secrets_group, ["edit", str(path)])
    assert result.exit_code == 0, result.output
    assert _decrypt(path, keyed_env[0])["credentials"]["gh"]["token"] == "new-tok"


def test_rotate_file_and_store(
    keyed_env: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "credentials.sops.yaml"
    path.write_text(
        sops.encrypt_text("credentials: {a: {type: access_token, token: t}}\n", [keyed_env[1]])
    )
    old_enc = yaml.safe_load(path.read_text())["sops"]["age"][0]["enc"]
    runner = CliRunner()
    result = runner.invoke(secrets_group, ["rotate", str(path)])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(path.read_text())["sops"]["age"][0]["enc"] != old_enc
    assert _decrypt(path, keyed_env[0])["credentials"]["a"]["token"] == "t"

    key_a, key_b = secrets.token_bytes(32), secrets.token_bytes(32)
    data_dir = tmp_path / "data"
    store = sealing.SealedStore(Database.open(data_dir), sealing.SealingKeys(key_a))
    store.put("x", model.GLOBAL, model.CredentialType.ACCESS_TOKEN, {"token": "v"})
    store.database.close()
    monkeypatch.setenv(sealing.KEY_ENV, key_b.hex())
    monkeypatch.setenv(sealing.PREVIOUS_KEY_ENV, key_a.hex())
    result = runner.invoke(secrets_group, ["rotate", "--data-dir", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert "1 re-sealed" in result.output
    store = sealing.SealedStore(Database.open(data_dir), sealing.SealingKeys(key_b))
    assert store.get("global:x").token == "v"
    store.database.close()
