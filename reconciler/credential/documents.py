"""``credentials.sops.yaml`` documents: listing without decrypting, parsing into credentials.

Format (global file at the repo root, project files at
``projects/<p>/credentials.sops.yaml``)::

    credentials:
      registry:
        type: username_password      # username_password | access_token | ssh_key
        description: Harbor robot account
        username: ENC[AES256_GCM,...]
        password: ENC[AES256_GCM,...]
    sops: {...}

The recommended rule ``encrypted_regex: ^(username|password|token|private_key|passphrase|known_hosts)$``
keeps names, types and descriptions readable in Git, so the config loader can check
references with ``list_credentials`` before any key is at hand.  Pure except
``load_credentials``, which decrypts through ``sops``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from reconciler import errors
from reconciler.credential import model, sops

CREDENTIALS_FILE = "credentials.sops.yaml"
ENCRYPTED_REGEX = "^(username|password|token|private_key|passphrase|known_hosts)$"
RULES = sops.EncryptionRules(encrypted_regex=ENCRYPTED_REGEX)
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
_INFO_FIELDS = ("description", "created_by", "created_at")
_PROJECT_FILE = re.compile(r"^projects/([a-z0-9][a-z0-9_-]{0,62})/credentials\.sops\.yaml$")


def project_credentials_path(project: str) -> str:
    """The repo path of a project's credentials file."""
    return f"projects/{project}/{CREDENTIALS_FILE}"


def scope_for_path(path: str) -> model.Scope:
    """The scope of the credentials file at repo ``path``; ValueError for other paths."""
    if path == CREDENTIALS_FILE:
        return model.GLOBAL
    match = _PROJECT_FILE.match(path)
    if match:
        return model.Scope(match.group(1))
    raise ValueError(f"{path} is not a credentials file")


def _entries(tree: Mapping[str, Any], source: str) -> dict[str, dict[str, Any]]:
    creds = tree.get("credentials")
    if creds is None:
        return {}
    if not isinstance(creds, dict):
        raise errors.CredentialError(f"{source}: 'credentials' must be a mapping of names")
    problems = []
    for name, body in creds.items():
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            problems.append(f"{source}: credentials.{name}: not a valid credential name")
        elif not isinstance(body, dict):
            problems.append(f"{source}: credentials.{name}: must be a mapping")
    if problems:
        raise errors.CredentialError("\n".join(problems))
    return creds


def _type_of(name: str, body: Mapping[str, Any], source: str) -> model.CredentialType:
    raw = body.get("type")
    if isinstance(raw, str) and raw.startswith("ENC["):
        raise errors.CredentialError(
            f"{source}: credentials.{name}.type is encrypted; encrypt with "
            f"encrypted_regex '{ENCRYPTED_REGEX}' so types stay readable"
        )
    try:
        return model.CredentialType(raw if isinstance(raw, str) else "")
    except ValueError:
        allowed = ", ".join(t.value for t in model.CredentialType)
        raise errors.CredentialError(
            f"{source}: credentials.{name}.type must be one of {allowed}, not {raw!r}"
        ) from None


def _readable(value: Any) -> str:
    # An encrypted description is noise to a reader; show nothing rather than ENC[...].
    if not isinstance(value, str) or value.startswith("ENC["):
        return ""
    return value


def list_credentials(
    text: str, source: str, scope: model.Scope | None = None
) -> list[model.CredentialInfo]:
    """Names, types and descriptions of an encrypted file, without decrypting it.

    Also refuses a file whose secret fields are stored in plain text, since that file
    leaked its secrets into Git.
    """
    scope = scope or scope_for_path(source)
    tree = sops.load_yaml(text, source)
    if not sops.is_encrypted(tree):
        raise errors.CredentialError(f"{source}: not encrypted with sops (no sops block)")
    out = []
    problems = []
    for name, body in _entries(tree, source).items():
        kind = _type_of(name, body, source)
        for key in model.SECRET_FIELDS:
            value = body.get(key)
            if isinstance(value, str) and value and not value.startswith("ENC["):
                problems.append(f"{source}: credentials.{name}.{key} is not encrypted")
        out.append(
            model.CredentialInfo(
                name=name,
                type=kind,
                scope=scope,
                source=source,
                **{k: _readable(body.get(k)) for k in _INFO_FIELDS},
            )
        )
    if problems:
        raise errors.CredentialError("\n".join(problems))
    return out


def parse_credentials(
    data: Mapping[str, Any], source: str, scope: model.Scope | None = None
) -> dict[str, model.Credential]:
    """Typed credentials from a decrypted document; every problem reported at once."""
    scope = scope or scope_for_path(source)
    out: dict[str, model.Credential] = {}
    problems: list[str] = []
    for name, body in _entries(data, source).items():
        try:
            kind = _type_of(name, body, source)
        except errors.CredentialError as exc:
            problems.append(str(exc))
            continue
        values: dict[str, str] = {}
        for key, value in body.items():
            if key in ("type", *_INFO_FIELDS):
                continue
            if key not in model.ALL_VALUE_FIELDS:
                problems.append(f"{source}: credentials.{name}: unknown field {key!r}")
            elif not isinstance(value, str):
                problems.append(f"{source}: credentials.{name}.{key} must be a string")
            else:
                values[key] = value
        problems += model.check_values(kind, values, f"{source}: credentials.{name}")
        info = model.CredentialInfo(
            name=name,
            type=kind,
            scope=scope,
            source=source,
            **{k: str(body.get(k) or "") for k in _INFO_FIELDS},
        )
        out[name] = model.Credential(info, {k: model.Secret(v) for k, v in values.items()})
    if problems:
        raise errors.CredentialError("\n".join(problems))
    return out


def load_credentials(
    text: str,
    source: str,
    scope: model.Scope | None = None,
    identities: Sequence[str] | None = None,
    *,
    backend: str = "auto",
) -> dict[str, model.Credential]:
    """Decrypt (MAC checked) and parse one credentials file."""
    data = sops.decrypt_text(text, identities, source=source, backend=backend)
    return parse_credentials(data, source, scope)


def set_credential(
    data: Mapping[str, Any],
    name: str,
    kind: model.CredentialType,
    values: Mapping[str, str],
    *,
    description: str | None = None,
    created_by: str = "",
    created_at: str = "",
) -> dict[str, Any]:
    """A copy of plain document ``data`` with credential ``name`` added or replaced."""
    if not NAME_PATTERN.match(name):
        raise errors.CredentialError(f"{name!r} is not a valid credential name")
    problems = model.check_values(kind, dict(values), f"credential {name}")
    if problems:
        raise errors.CredentialError("\n".join(problems))
    doc = {k: v for k, v in data.items()}
    creds = dict(doc.get("credentials") or {})
    old = creds.get(name) or {}
    body: dict[str, Any] = {"type": str(kind)}
    desc = description if description is not None else old.get("description")
    if desc:
        body["description"] = desc
    body["created_by"] = old.get("created_by") or created_by
    body["created_at"] = old.get("created_at") or created_at
    body = {k: v for k, v in body.items() if v}
    body.update({k: v for k, v in values.items() if v})
    creds[name] = body
    doc["credentials"] = creds
    return doc
