"""The native SOPS implementation: round trips, the format spec, tampering, the binary."""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from reconciler import errors
from reconciler.credential import age, documents, sops

PLAIN = """\
credentials:
  registry:
    type: username_password
    description: Harbor robot
    username: robot$ci
    password: "p4ss:word with spaces"
  deploy:
    type: ssh_key
    private_key: |
      -----BEGIN OPENSSH PRIVATE KEY-----
      b3BlbnNzaC1rZXktdjEAAAAA
      -----END OPENSSH PRIVATE KEY-----
settings:
  replicas: 3
  ratio: 0.25
  big: 1.0e+20
  enabled: true
  tags: [a, 2, false]
  empty: ""
  nothing: null
  plain_unencrypted: visible
  when: 2024-01-02T03:04:05Z
"""
NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
ENC = re.compile(
    r"^ENC\[AES256_GCM,data:([^,]*),iv:([^,]+),tag:([^,]+),type:(str|int|float|bool)\]$"
)


def _encrypt(recipient: str, rules: sops.EncryptionRules | None = None) -> str:
    return sops.encrypt_text(PLAIN, [recipient], rules, source="c.yaml", backend="native", now=NOW)


def test_round_trip_keeps_values_types_and_order(identity: tuple[str, str]) -> None:
    secret, recipient = identity
    text = _encrypt(recipient)
    data = sops.decrypt_text(text, [secret], source="c.yaml", backend="native")
    assert data == sops.load_yaml(PLAIN, "plain")
    assert list(data["settings"]) == list(sops.load_yaml(PLAIN, "plain")["settings"])
    # Timestamps stay strings, as sops' YAML library decodes them into interface{}.
    assert data["settings"]["when"] == "2024-01-02T03:04:05Z"
    assert "p4ss:word" not in text and "robot$ci" not in text


def test_file_follows_the_sops_format(identity: tuple[str, str]) -> None:
    """Checks the spec independently of the implementation: AAD, MAC, metadata."""
    secret, recipient = identity
    tree = yaml.safe_load(_encrypt(recipient))
    meta = tree["sops"]
    assert list(meta) == ["age", "lastmodified", "mac", "unencrypted_suffix", "version"]
    assert meta["lastmodified"] == "2025-01-02T03:04:05Z"
    assert meta["unencrypted_suffix"] == "_unencrypted"
    assert meta["age"][0]["recipient"] == recipient
    assert meta["age"][0]["enc"].startswith("-----BEGIN AGE ENCRYPTED FILE-----")
    data_key = age.decrypt(meta["age"][0]["enc"], [secret])
    assert len(data_key) == 32

    def open_value(value: str, aad: str) -> bytes:
        data, iv, tag, _ = ENC.match(value).groups()
        iv_bytes = base64.b64decode(iv)
        assert len(iv_bytes) == 32 and len(base64.b64decode(tag)) == 16
        return AESGCM(data_key).decrypt(
            iv_bytes, base64.b64decode(data) + base64.b64decode(tag), aad.encode()
        )

    password = tree["credentials"]["registry"]["password"]
    assert ENC.match(password).group(4) == "str"
    assert open_value(password, "credentials:registry:password:") == b"p4ss:word with spaces"
    # List items share their parent's path; ints, floats and bools keep their type name.
    tags = tree["settings"]["tags"]
    assert [ENC.match(t).group(4) for t in tags] == ["str", "int", "bool"]
    assert open_value(tags[2], "settings:tags:") == b"False"
    assert open_value(tree["settings"]["big"], "settings:big:") == b"100000000000000000000"
    assert tree["settings"]["empty"] == ""
    assert tree["settings"]["nothing"] is None
    assert tree["settings"]["plain_unencrypted"] == "visible"
    # MAC: SHA-512 over every leaf in order, upper-case hex, AAD = lastmodified.
    leaves = [
        b"username_password",
        b"Harbor robot",
        b"robot$ci",
        b"p4ss:word with spaces",
        b"ssh_key",
        b"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
        b"-----END OPENSSH PRIVATE KEY-----\n",
        b"3",
        b"0.25",
        b"100000000000000000000",
        b"True",
        b"a",
        b"2",
        b"False",
        b"",
        b"visible",
        b"2024-01-02T03:04:05Z",
    ]
    expected = hashlib.sha512(b"".join(leaves)).hexdigest().upper()
    assert open_value(meta["mac"], "2025-01-02T03:04:05Z").decode() == expected


def test_encrypted_regex_keeps_names_and_types_readable(identity: tuple[str, str]) -> None:
    secret, recipient = identity
    text = _encrypt(recipient, documents.RULES)
    tree = yaml.safe_load(text)
    registry = tree["credentials"]["registry"]
    assert registry["type"] == "username_password"
    assert registry["description"] == "Harbor robot"
    assert registry["username"].startswith("ENC[")
    assert tree["settings"]["replicas"] == 3
    assert tree["sops"]["encrypted_regex"] == documents.ENCRYPTED_REGEX
    data = sops.decrypt_text(text, [secret], source="c.yaml", backend="native")
    assert data["credentials"]["registry"]["password"] == "p4ss:word with spaces"


def test_mac_only_encrypted(identity: tuple[str, str]) -> None:
    secret, recipient = identity
    rules = sops.EncryptionRules(encrypted_regex=documents.ENCRYPTED_REGEX, mac_only_encrypted=True)
    text = _encrypt(recipient, rules)
    assert yaml.safe_load(text)["sops"]["mac_only_encrypted"] is True
    # Unencrypted values are outside the MAC in this mode, so changing one is accepted.
    changed = text.replace("description: Harbor robot", "description: Other")
    data = sops.decrypt_text(changed, [secret], source="c.yaml", backend="native")
    assert data["credentials"]["registry"]["description"] == "Other"


def test_edit_with_same_key_keeps_unchanged_ciphertext(identity: tuple[str, str]) -> None:
    secret, recipient = identity
    text = _encrypt(recipient, documents.RULES)
    decrypted = sops.decrypt_tree(sops.load_yaml(text, "c.yaml"), [secret], source="c.yaml")
    data = decrypted.data
    data["credentials"]["registry"]["password"] = "new-password"
    again = sops.encrypt_tree(data, source="c.yaml", reuse=decrypted)
    before = yaml.safe_load(text)["credentials"]["registry"]
    after = again["credentials"]["registry"]
    assert after["username"] == before["username"]
    assert after["password"] != before["password"]
    assert again["sops"]["age"] == yaml.safe_load(text)["sops"]["age"]
    redone = sops.decrypt_text(sops.dump_yaml(again), [secret], source="c.yaml", backend="native")
    assert redone["credentials"]["registry"]["password"] == "new-password"


def test_rotate_data_key(identity: tuple[str, str], other_identity: tuple[str, str]) -> None:
    secret, recipient = identity
    text = _encrypt(recipient)
    decrypted = sops.decrypt_tree(sops.load_yaml(text, "c.yaml"), [secret], source="c.yaml")
    rotated = sops.rotate_data_key(decrypted, add_recipients=[other_identity[1]])
    assert [a["recipient"] for a in rotated["sops"]["age"]] == [recipient, other_identity[1]]
    for key in (secret, other_identity[0]):
        again = sops.decrypt_tree(rotated, [key], source="c.yaml")
        assert again.data == decrypted.data
        assert again.data_key != decrypted.data_key


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param(
            lambda t: t.replace(
                t["credentials"]["registry"]["password"], t["credentials"]["registry"]["username"]
            ),
            "cannot decrypt the value at credentials:registry:password",
            id="value-swapped",
        ),
        pytest.param(
            lambda t: t.replace("ENC[AES256_GCM,data:", "ENC[AES256_GCM,data:AA", 1),
            "cannot decrypt the value",
            id="value-bytes-changed",
        ),
        pytest.param(
            lambda t: t.replace("description: Harbor robot", "description: Harbor robbed"),
            "MAC mismatch",
            id="clear-value-changed",
        ),
        pytest.param(
            lambda t: t.replace("registry:", "registri:", 1),
            "cannot decrypt the value at credentials:registri:",
            id="key-renamed",
        ),
        pytest.param(
            lambda t: t.replace(t["sops"]["mac"], t["credentials"]["registry"]["password"]),
            "MAC cannot be decrypted",
            id="mac-replaced",
        ),
        pytest.param(
            lambda t: t.replace("2025-01-02T03:04:05Z", "2025-01-02T03:04:06Z"),
            "MAC cannot be decrypted",
            id="lastmodified-changed",
        ),
    ],
)
def test_tampered_file_is_refused_naming_the_file(identity, change, message) -> None:
    secret, recipient = identity
    text = _encrypt(recipient, documents.RULES)

    class Text(str):
        """The file text, indexable like the parsed tree to pick the part to change."""

        def __getitem__(self, key):  # type: ignore[override]
            return yaml.safe_load(self)[key]

    tampered = change(Text(text))
    assert tampered != text
    with pytest.raises(errors.CredentialError) as caught:
        sops.decrypt_text(tampered, [secret], source="projects/shop/c.yaml", backend="native")
    assert str(caught.value).startswith("projects/shop/c.yaml: ")
    assert message in str(caught.value)
    assert "p4ss" not in str(caught.value)


def test_mac_mismatch_when_a_value_is_replaced_by_a_valid_one(identity: tuple[str, str]) -> None:
    """A value re-encrypted with the right key but not via sops still fails the MAC."""
    secret, recipient = identity
    text = _encrypt(recipient, documents.RULES)
    tree = sops.load_yaml(text, "c.yaml")
    data_key = age.decrypt(tree["sops"]["age"][0]["enc"], [secret])
    tree["credentials"]["registry"]["password"] = sops.encrypt_value(
        "evil", data_key, b"credentials:registry:password:"
    )
    with pytest.raises(errors.CredentialError, match=r"^c\.yaml: MAC mismatch"):
        sops.decrypt_tree(tree, [secret], source="c.yaml")


def test_wrong_type_does_not_leak_the_plaintext(identity: tuple[str, str]) -> None:
    text = _encrypt(identity[1], documents.RULES)
    tree = sops.load_yaml(text, "c.yaml")
    password = tree["credentials"]["registry"]["password"]
    tree["credentials"]["registry"]["password"] = password.replace("type:str", "type:int")
    with pytest.raises(errors.CredentialError) as caught:
        sops.decrypt_tree(tree, [identity[0]], source="c.yaml")
    assert "does not parse as its type 'int'" in str(caught.value)
    # Not in the message, nor in any exception a traceback would print.
    shown: BaseException | None = caught.value
    while shown is not None:
        assert "p4ss" not in str(shown)
        shown = shown.__cause__ or (None if shown.__suppress_context__ else shown.__context__)


def test_wrong_key_is_refused(identity: tuple[str, str], other_identity: tuple[str, str]) -> None:
    text = _encrypt(identity[1])
    with pytest.raises(errors.CredentialError) as caught:
        sops.decrypt_text(text, [other_identity[0]], source="c.yaml", backend="native")
    assert "c.yaml: none of the given age identities can decrypt the data key" in str(caught.value)
    assert identity[1] in str(caught.value)
    with pytest.raises(errors.CredentialError, match="SOPS_AGE_KEY_FILE"):
        sops.decrypt_text(text, [], source="c.yaml", backend="native")


def test_not_encrypted_and_bad_yaml(identity: tuple[str, str]) -> None:
    with pytest.raises(errors.CredentialError, match="c.yaml: sops metadata not found"):
        sops.decrypt_text(PLAIN, [identity[0]], source="c.yaml", backend="native")
    with pytest.raises(errors.CredentialError, match=r"c\.yaml: not valid YAML at line \d+"):
        sops.load_yaml("a: [", "c.yaml")
    with pytest.raises(errors.CredentialError, match="more than one"):
        sops.EncryptionRules(encrypted_regex="x", unencrypted_suffix="_u")


def test_identities_from_env_like_sops(
    identity: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret, recipient = identity
    key_file = tmp_path / "keys.txt"
    key_file.write_text(f"# created: now\n# public key: {recipient}\n{secret}\n")
    text = _encrypt(recipient)
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(key_file))
    assert sops.decrypt_text(text, source="c.yaml", backend="native")["settings"]["replicas"] == 3
    monkeypatch.delenv("SOPS_AGE_KEY_FILE")
    monkeypatch.setenv("SOPS_AGE_KEY", secret)
    assert age.identities_from_env() == [secret]
    monkeypatch.delenv("SOPS_AGE_KEY")
    default = Path(age.os.environ["XDG_CONFIG_HOME"]) / "sops" / "age" / "keys.txt"
    default.parent.mkdir(parents=True)
    default.write_text(secret + "\n")
    try:
        assert age.identities_from_env() == [secret]
    finally:
        default.unlink()
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(tmp_path / "missing.txt"))
    with pytest.raises(errors.CredentialError, match="SOPS_AGE_KEY_FILE=.*missing.txt"):
        age.identities_from_env()


def test_secret_values_not_in_repr(identity: tuple[str, str]) -> None:
    secret, recipient = identity
    text = _encrypt(recipient)
    decrypted = sops.decrypt_tree(sops.load_yaml(text, "c.yaml"), [secret], source="c.yaml")
    assert "p4ss" not in repr(decrypted)
    assert repr(decrypted.data_key) not in repr(decrypted)


@pytest.mark.skipif(shutil.which("age") is None, reason="the age CLI is not installed")
def test_age_cli_backend_interoperates_with_pyrage(
    identity: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Data keys wrapped by one age implementation open with the other."""
    secret, recipient = identity
    text = _encrypt(recipient)  # wrapped by the default backend
    if age.pyrage is None:
        pytest.skip("pyrage is not installed: only the CLI backend is available")
    monkeypatch.setattr(age, "pyrage", None)
    assert age.backend() == "cli"
    assert age.recipient_of(secret) == recipient
    assert sops.decrypt_text(text, [secret], source="c.yaml", backend="native")["settings"]
    by_cli = _encrypt(recipient)
    monkeypatch.undo()
    assert sops.decrypt_text(by_cli, [secret], source="c.yaml", backend="native")["settings"]


SOPS_BINARY = shutil.which("sops")
needs_sops = pytest.mark.skipif(
    SOPS_BINARY is None,
    reason="the sops binary is not on PATH (no Debian or PyPI package ships it here)",
)


@needs_sops
def test_binary_decrypts_native_files(identity: tuple[str, str], tmp_path: Path) -> None:
    secret, recipient = identity
    path = tmp_path / "credentials.sops.yaml"
    path.write_text(_encrypt(recipient, documents.RULES))
    out = subprocess.run(
        [SOPS_BINARY, "--decrypt", "--output-type", "json", str(path)],
        env={"SOPS_AGE_KEY": secret, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        check=True,
    )
    assert yaml.safe_load(out.stdout)["credentials"]["registry"]["password"] == (
        "p4ss:word with spaces"
    )


@needs_sops
def test_native_decrypts_binary_files(identity: tuple[str, str]) -> None:
    secret, recipient = identity
    text = sops.encrypt_text(PLAIN, [recipient], documents.RULES, backend="binary")
    data = sops.decrypt_text(text, [secret], source="c.yaml", backend="native")
    assert data["credentials"]["registry"]["password"] == "p4ss:word with spaces"
    assert data["settings"]["big"] == 1e20
