"""The SOPS file format (YAML store, age recipients) implemented natively, plus the binary.

Written from the sops sources (``aes/cipher.go``, ``sops.go``, ``stores/stores.go``,
``cmd/sops/common``) so that files we write are valid sops files and files sops writes
decrypt here:

- each value becomes ``ENC[AES256_GCM,data:…,iv:…,tag:…,type:…]``: AES-256-GCM under a
  random 32-byte data key, a 32-byte IV, the 16-byte tag apart, base64 (standard,
  padded); the additional data is the value's path of mapping keys joined with ``:``
  plus a trailing ``:`` (list items keep their parent's path); empty strings stay empty;
- the MAC is SHA-512 over every leaf value in document order (``True``/``False`` for
  booleans, Go's shortest ``'f'`` format for floats), as upper-case hex, itself
  encrypted as a ``str`` value with ``lastmodified`` (RFC 3339, seconds) as additional
  data; with ``mac_only_encrypted`` only encrypted leaves count, after a fixed prefix;
- the ``sops`` block lists ``age`` recipients (``recipient`` + armored age file of the
  raw data key), ``lastmodified``, ``mac``, the one encryption rule in force
  (``unencrypted_suffix`` ``_unencrypted`` by default, or ``encrypted_suffix``,
  ``unencrypted_regex``, ``encrypted_regex``) and ``version``.

YAML comments are not kept (PyYAML drops them); sops would have encrypted them and
leaves them out of the MAC, so dropping them keeps files valid.  Scalars are resolved
as sops' YAML library does when it decodes into ``interface{}``: only ``true``/``false``
are booleans and timestamps stay strings, so the MAC sees the same bytes.

When the ``sops`` binary is on PATH, ``decrypt_text``/``encrypt_text`` with backend
"auto" use it through ``subprocess`` (argument lists, never a shell); otherwise, and
with backend "native", this module does the work with ``cryptography`` and ``age``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import yaml
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from reconciler import errors
from reconciler.credential import age

# The sops release whose format we write (3.9 and later omit empty key lists).
SOPS_VERSION = "3.9.4"
DEFAULT_UNENCRYPTED_SUFFIX = "_unencrypted"
METADATA_KEY = "sops"
DATA_KEY_SIZE = 32
IV_SIZE = 32  # sops uses a 32-byte GCM nonce, not the usual 12
TAG_SIZE = 16
# sha256(b"sops"): prefixes the MAC when only encrypted values are covered, so the two
# kinds of MAC can never be equal.
MAC_ONLY_ENCRYPTED_PREFIX = hashlib.sha256(b"sops").digest()
_ENC_RE = re.compile(r"^ENC\[AES256_GCM,data:(.+),iv:(.+),tag:(.+),type:(.+)\]")
# Master-key kinds sops knows besides age: we keep them as found, we cannot use them.
_OTHER_KEY_KINDS = ("kms", "gcp_kms", "azure_kv", "hc_vault", "pgp")
_RULE_KEYS = ("unencrypted_suffix", "encrypted_suffix", "unencrypted_regex", "encrypted_regex")


def _fail(source: str, message: str) -> errors.CredentialError:
    return errors.CredentialError(f"{source}: {message}")


# --------------------------------------------------------------------------- YAML


class _Loader(yaml.CSafeLoader if hasattr(yaml, "CSafeLoader") else yaml.SafeLoader):  # type: ignore[misc]
    """SafeLoader resolving scalars like sops' YAML library (see the module docstring)."""


_BOOL = "tag:yaml.org,2002:bool"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, _TIMESTAMP)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


class _Dumper(yaml.SafeDumper):
    """SafeDumper that writes multi-line strings as literal blocks (keys, certificates)."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value and not value.endswith((" ", "\t")) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def load_yaml(text: str, source: str) -> dict[str, Any]:
    """Parse one YAML document with sops' scalar rules; CredentialError naming ``source``."""
    try:
        docs = list(yaml.load_all(text, Loader=_Loader))  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise _fail(source, f"not valid YAML{where}") from None
    docs = [d for d in docs if d is not None]
    if len(docs) != 1:
        raise _fail(source, f"expected one YAML document, found {len(docs)}")
    if not isinstance(docs[0], dict):
        raise _fail(source, "the top level must be a mapping")
    return docs[0]


def dump_yaml(tree: Mapping[str, Any]) -> str:
    """Write a tree as YAML, keeping key order (sops' MAC depends on it)."""
    return yaml.dump(
        dict(tree),
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=1 << 16,  # never fold the long ENC[...] strings
    )


# ---------------------------------------------------------------------- metadata


@dataclass(frozen=True, slots=True)
class EncryptionRules:
    """Which values sops encrypts; at most one rule may be set (sops refuses more)."""

    unencrypted_suffix: str = ""
    encrypted_suffix: str = ""
    unencrypted_regex: str = ""
    encrypted_regex: str = ""
    mac_only_encrypted: bool = False

    def __post_init__(self) -> None:
        if sum(1 for k in _RULE_KEYS if getattr(self, k)) > 1:
            raise errors.CredentialError(
                "cannot use more than one of unencrypted_suffix, encrypted_suffix, "
                "unencrypted_regex or encrypted_regex"
            )

    def effective(self) -> EncryptionRules:
        """These rules, with sops' default (``_unencrypted`` suffix) when none is set."""
        if any(getattr(self, k) for k in _RULE_KEYS):
            return self
        return EncryptionRules(
            unencrypted_suffix=DEFAULT_UNENCRYPTED_SUFFIX,
            mac_only_encrypted=self.mac_only_encrypted,
        )

    def should_encrypt(self, path: Sequence[str]) -> bool:
        """Whether the value at ``path`` (its mapping keys) is encrypted; sops' logic."""
        encrypted = True
        if self.unencrypted_suffix and any(p.endswith(self.unencrypted_suffix) for p in path):
            encrypted = False
        if self.encrypted_suffix:
            encrypted = any(p.endswith(self.encrypted_suffix) for p in path)
        # Go's regexp.Match finds a match anywhere, like re.search.
        if self.unencrypted_regex and any(re.search(self.unencrypted_regex, p) for p in path):
            encrypted = False
        if self.encrypted_regex:
            encrypted = any(re.search(self.encrypted_regex, p) for p in path)
        return encrypted

    def as_metadata(self) -> dict[str, Any]:
        """The rule keys as they appear in the ``sops`` block."""
        out: dict[str, Any] = {k: getattr(self, k) for k in _RULE_KEYS if getattr(self, k)}
        if self.mac_only_encrypted:
            out["mac_only_encrypted"] = True
        return out


@dataclass(frozen=True, slots=True)
class AgeRecipient:
    """One age recipient and its armored copy of the data key."""

    recipient: str
    enc: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Metadata:
    """The ``sops`` block of an encrypted file."""

    age: tuple[AgeRecipient, ...]
    lastmodified: str
    mac: str = field(repr=False)
    version: str
    rules: EncryptionRules
    # Master keys of other kinds (pgp, kms, …) exactly as found, so rewriting keeps them.
    other_keys: tuple[tuple[str, Any], ...] = field(default=(), repr=False)

    @property
    def recipients(self) -> tuple[str, ...]:
        """The age recipients (public keys) the data key is encrypted to."""
        return tuple(a.recipient for a in self.age)

    def to_dict(self) -> dict[str, Any]:
        """The ``sops`` block in the order sops writes it."""
        out: dict[str, Any] = {}
        for kind, value in self.other_keys:
            if kind != "pgp":
                out[kind] = value
        out["age"] = [{"recipient": a.recipient, "enc": a.enc} for a in self.age]
        out["lastmodified"] = self.lastmodified
        out["mac"] = self.mac
        for kind, value in self.other_keys:
            if kind == "pgp":
                out[kind] = value
        out.update(self.rules.as_metadata())
        out["version"] = self.version
        return out


def is_encrypted(tree: Mapping[str, Any]) -> bool:
    """Whether a parsed document carries a ``sops`` metadata block."""
    return isinstance(tree.get(METADATA_KEY), dict)


def read_metadata(tree: Mapping[str, Any], source: str) -> Metadata:
    """Parse and check the ``sops`` block of ``tree`` (no decryption)."""
    raw = tree.get(METADATA_KEY)
    if not isinstance(raw, dict):
        raise _fail(source, "sops metadata not found (is the file encrypted?)")
    if raw.get("key_groups"):
        raise _fail(source, "sops key_groups (Shamir secret sharing) are not supported")
    entries = raw.get("age") or []
    if not isinstance(entries, list) or not all(
        isinstance(e, dict)
        and isinstance(e.get("recipient"), str)
        and isinstance(e.get("enc"), str)
        for e in entries
    ):
        raise _fail(source, "sops.age must be a list of {recipient, enc}")
    others = tuple((k, raw[k]) for k in _OTHER_KEY_KINDS if raw.get(k))
    if not entries and not others:
        raise _fail(source, "sops metadata lists no keys")
    for key in ("lastmodified", "mac", "version"):
        if not isinstance(raw.get(key), str | int | float) or raw.get(key) in ("", None):
            raise _fail(source, f"sops.{key} is missing")
    try:
        rules = EncryptionRules(
            **{k: str(raw[k]) for k in _RULE_KEYS if raw.get(k)},
            mac_only_encrypted=bool(raw.get("mac_only_encrypted", False)),
        )
    except errors.CredentialError as exc:
        raise _fail(source, str(exc)) from None
    return Metadata(
        age=tuple(AgeRecipient(e["recipient"].strip(), e["enc"]) for e in entries),
        lastmodified=str(raw["lastmodified"]),
        mac=str(raw["mac"]),
        version=str(raw["version"]),
        rules=rules,
        other_keys=others,
    )


def format_lastmodified(moment: datetime) -> str:
    """RFC 3339 with whole seconds, as Go's ``time.RFC3339`` writes it."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.replace(microsecond=0)
    text = moment.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def _normalise_lastmodified(value: str, source: str) -> str:
    # sops parses the stored time and formats it again for the MAC's additional data,
    # which drops fractional seconds; do the same so such files still verify.
    try:
        moment = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise _fail(source, f"sops.lastmodified {value!r} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise _fail(source, f"sops.lastmodified {value!r} has no time zone")
    return format_lastmodified(moment)


# ------------------------------------------------------------------------- values


def _go_float(value: float) -> str:
    """Go's ``strconv.FormatFloat(v, 'f', -1, 64)``: shortest digits, no exponent."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    text = format(Decimal(repr(value)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _to_bytes(value: Any) -> tuple[bytes, str]:
    """A leaf's bytes for the MAC and cipher, and its sops type name."""
    # bool before int: in Python a bool is an int.
    if isinstance(value, bool):
        return (b"True" if value else b"False"), "bool"
    if isinstance(value, int):
        return str(value).encode(), "int"
    if isinstance(value, float):
        return _go_float(value).encode(), "float"
    if isinstance(value, bytes):
        return value, "bytes"
    if isinstance(value, str):
        return value.encode(), "str"
    raise TypeError(f"cannot encrypt a value of type {type(value).__name__}")


def _from_bytes(data: bytes, kind: str) -> Any:
    text = data.decode()
    if kind == "str":
        return text
    if kind in ("int", "int64"):
        return int(text)
    if kind == "float":
        return float(text)
    if kind == "bool":
        if text in ("1", "t", "T", "TRUE", "true", "True"):
            return True
        if text in ("0", "f", "F", "FALSE", "false", "False"):
            return False
        raise ValueError(f"invalid bool {text!r}")
    if kind == "bytes":
        return data
    raise ValueError(f"unknown datatype {kind!r}")


def _aad(path: Sequence[str]) -> bytes:
    return (":".join(path) + ":").encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def encrypt_value(value: Any, key: bytes, additional_data: bytes, iv: bytes | None = None) -> Any:
    """One value as ``ENC[AES256_GCM,…]`` (empty strings stay empty, as in sops)."""
    if value == "" or value == b"":
        return ""
    plain, kind = _to_bytes(value)
    iv = iv or secrets.token_bytes(IV_SIZE)
    sealed = AESGCM(key).encrypt(iv, plain, additional_data)
    data, tag = sealed[:-TAG_SIZE], sealed[-TAG_SIZE:]
    return f"ENC[AES256_GCM,data:{_b64(data)},iv:{_b64(iv)},tag:{_b64(tag)},type:{kind}]"


def decrypt_value(text: str, key: bytes, additional_data: bytes) -> tuple[Any, bytes]:
    """Decrypt one ``ENC[…]`` string; return the typed value and its IV.

    Raises ValueError (without any value in the message) when it is not a sops value or
    fails authentication.
    """
    if text == "":
        return "", b""
    match = _ENC_RE.match(text)
    if match is None:
        raise ValueError("not an ENC[AES256_GCM,...] value")
    try:
        data, iv, tag = (base64.b64decode(match.group(i), validate=True) for i in (1, 2, 3))
    except binascii.Error:
        raise ValueError("bad base64 in ENC[...] value") from None
    if len(iv) < 8 or len(tag) != TAG_SIZE:
        raise ValueError("bad iv or tag length in ENC[...] value")
    try:
        plain = AESGCM(key).decrypt(iv, data + tag, additional_data)
    except InvalidTag:
        raise ValueError("authentication failed") from None
    try:
        return _from_bytes(plain, match.group(4)), iv
    except (ValueError, UnicodeDecodeError):
        # Python's messages quote the offending text, which here is the plaintext.
        raise ValueError(f"the value does not parse as its type {match.group(4)!r}") from None


# --------------------------------------------------------------------------- tree

Leaf = Callable[[Any, tuple[str, ...]], Any]


def _walk(node: Any, path: tuple[str, ...], on_leaf: Leaf, source: str) -> Any:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if not isinstance(k, str):
                raise _fail(
                    source, f"key {k!r} under {':'.join(path) or 'top level'} is not a string"
                )
            out[k] = _walk(v, (*path, k), on_leaf, source)
        return out
    if isinstance(node, list):
        # sops gives list items their parent's path (no index).
        return [_walk(v, path, on_leaf, source) for v in node]
    if node is None:
        return None
    return on_leaf(node, path)


@dataclass(frozen=True, slots=True)
class Decrypted:
    """A decrypted sops document: plain data, its metadata and (privately) its data key."""

    source: str
    data: dict[str, Any] = field(repr=False)
    metadata: Metadata
    data_key: bytes = field(repr=False)
    # (additional data, type, plaintext) -> IV: re-encrypting an unchanged value reuses
    # its IV, so an edit changes only the lines that changed (as sops does).
    ivs: dict[tuple[bytes, bytes], bytes] = field(repr=False, default_factory=dict)


def _mac_hasher(rules: EncryptionRules) -> Any:
    hasher = hashlib.sha512()
    if rules.mac_only_encrypted:
        hasher.update(MAC_ONLY_ENCRYPTED_PREFIX)
    return hasher


def encrypt_tree(
    plain: Mapping[str, Any],
    recipients: Sequence[str] = (),
    rules: EncryptionRules | None = None,
    *,
    source: str = "<document>",
    now: datetime | None = None,
    reuse: Decrypted | None = None,
) -> dict[str, Any]:
    """Encrypt a plain document; return it with ENC values and a ``sops`` block.

    With ``reuse`` (a previous decryption of the same file), its data key, recipients,
    other master keys and rules are kept and unchanged values keep their ciphertext.
    Otherwise a fresh data key is wrapped for each age ``recipient``.
    """
    if METADATA_KEY in plain:
        raise _fail(source, "already has a sops block (decrypt it first)")
    if reuse is not None:
        data_key = reuse.data_key
        age_keys = reuse.metadata.age
        other_keys = reuse.metadata.other_keys
        rules = reuse.metadata.rules if rules is None else rules
        ivs = reuse.ivs
    else:
        if not recipients:
            raise _fail(source, "no age recipients given")
        data_key = secrets.token_bytes(DATA_KEY_SIZE)
        age_keys = tuple(AgeRecipient(r.strip(), age.encrypt(data_key, [r])) for r in recipients)
        other_keys = ()
        ivs = {}
    rules = (rules or EncryptionRules()).effective()
    hasher = _mac_hasher(rules)

    def on_leaf(value: Any, path: tuple[str, ...]) -> Any:
        try:
            plain_bytes, kind = _to_bytes(value)
        except TypeError as exc:
            raise _fail(source, f"at {':'.join(path)}: {exc}") from None
        encrypted = rules.should_encrypt(path)
        if not rules.mac_only_encrypted or encrypted:
            hasher.update(plain_bytes)
        if not encrypted:
            return value
        aad = _aad(path)
        return encrypt_value(
            value, data_key, aad, ivs.get((aad, kind.encode() + b":" + plain_bytes))
        )

    data = _walk(dict(plain), (), on_leaf, source)
    lastmodified = format_lastmodified(now or datetime.now(UTC))
    mac = encrypt_value(hasher.hexdigest().upper(), data_key, lastmodified.encode())
    metadata = Metadata(
        age=age_keys,
        lastmodified=lastmodified,
        mac=mac,
        version=SOPS_VERSION,
        rules=rules,
        other_keys=other_keys,
    )
    data[METADATA_KEY] = metadata.to_dict()
    return data


def unwrap_data_key(metadata: Metadata, identities: Sequence[str], source: str) -> bytes:
    """The data key, from the first age recipient one of ``identities`` can open."""
    if not metadata.age:
        raise _fail(source, "no age recipients in the sops block (other key kinds unsupported)")
    if not identities:
        raise _fail(
            source, "no age identity to decrypt with: set SOPS_AGE_KEY_FILE or SOPS_AGE_KEY"
        )
    for entry in metadata.age:
        try:
            key = age.decrypt(entry.enc, identities)
        except errors.CredentialError:
            continue
        if len(key) != DATA_KEY_SIZE:
            raise _fail(source, f"data key for {entry.recipient} has {len(key)} bytes, not 32")
        return key
    raise _fail(
        source,
        "none of the given age identities can decrypt the data key "
        f"(recipients: {', '.join(metadata.recipients)})",
    )


def decrypt_tree(
    tree: Mapping[str, Any],
    identities: Sequence[str],
    *,
    source: str = "<document>",
    verify_mac: bool = True,
) -> Decrypted:
    """Decrypt every value and check the MAC; CredentialError naming ``source`` if not."""
    metadata = read_metadata(tree, source)
    data_key = unwrap_data_key(metadata, identities, source)
    rules = metadata.rules.effective()
    hasher = _mac_hasher(rules)
    ivs: dict[tuple[bytes, bytes], bytes] = {}

    def on_leaf(value: Any, path: tuple[str, ...]) -> Any:
        encrypted = rules.should_encrypt(path)
        where = ":".join(path)
        iv = b""
        if encrypted:
            if not isinstance(value, str):
                raise _fail(source, f"value at {where} should be encrypted but is not")
            aad = _aad(path)
            try:
                value, iv = decrypt_value(value, data_key, aad)
            except ValueError as exc:
                raise _fail(source, f"cannot decrypt the value at {where}: {exc}") from None
        try:
            plain_bytes, kind = _to_bytes(value)
        except TypeError as exc:
            raise _fail(source, f"at {where}: {exc}") from None
        if iv:
            ivs[(aad, kind.encode() + b":" + plain_bytes)] = iv
        if not rules.mac_only_encrypted or encrypted:
            hasher.update(plain_bytes)
        return value

    body = {k: v for k, v in tree.items() if k != METADATA_KEY}
    data = _walk(body, (), on_leaf, source)
    if verify_mac:
        lastmodified = _normalise_lastmodified(metadata.lastmodified, source)
        try:
            stored, _ = decrypt_value(metadata.mac, data_key, lastmodified.encode())
        except ValueError:
            raise _fail(
                source, "the MAC cannot be decrypted: the mac or lastmodified was altered"
            ) from None
        if not isinstance(stored, str) or stored.upper() != hasher.hexdigest().upper():
            raise _fail(
                source,
                "MAC mismatch: the file was changed without sops (values, keys or their "
                "order differ from what was signed); refusing to use it",
            )
    return Decrypted(source=source, data=data, metadata=metadata, data_key=data_key, ivs=ivs)


def rotate_data_key(
    decrypted: Decrypted,
    *,
    add_recipients: Sequence[str] = (),
    remove_recipients: Sequence[str] = (),
    now: datetime | None = None,
) -> dict[str, Any]:
    """Re-encrypt a decrypted document under a new data key (``sops rotate``)."""
    if decrypted.metadata.other_keys:
        kinds = ", ".join(k for k, _ in decrypted.metadata.other_keys)
        raise _fail(decrypted.source, f"cannot rotate natively: the file also uses {kinds}")
    recipients = [r for r in decrypted.metadata.recipients if r not in remove_recipients]
    recipients += [r for r in add_recipients if r not in recipients]
    return encrypt_tree(
        decrypted.data,
        recipients,
        decrypted.metadata.rules,
        source=decrypted.source,
        now=now,
    )


# ------------------------------------------------------------ text and the binary


def sops_binary() -> str | None:
    """Path of the ``sops`` binary when it is on PATH."""
    return shutil.which("sops")


def _use_binary(backend: str) -> bool:
    if backend not in ("auto", "native", "binary"):
        raise ValueError(f"unknown sops backend {backend!r}")
    if backend == "binary" and not sops_binary():
        raise errors.CredentialError("the sops binary is not on PATH")
    return backend == "binary" or (backend == "auto" and sops_binary() is not None)


def _binary_env(identities: Sequence[str] | None) -> dict[str, str]:
    env = dict(os.environ)
    if identities:
        env["SOPS_AGE_KEY"] = "\n".join(identities)
    return env


def _run_sops(args: list[str], stdin: str, env: Mapping[str, str], source: str) -> str:
    binary = sops_binary() or "sops"
    proc = subprocess.run(
        [binary, *args],
        input=stdin.encode(),
        capture_output=True,
        env=dict(env),
        check=False,
        timeout=60,
    )
    if proc.returncode != 0:
        # sops' stderr names the problem (MAC mismatch, no key) and never a value.
        detail = proc.stderr.decode(errors="replace").strip().splitlines()
        raise _fail(source, f"sops failed: {detail[-1] if detail else proc.returncode}")
    return proc.stdout.decode()


def decrypt_text(
    text: str,
    identities: Sequence[str] | None = None,
    *,
    source: str = "<document>",
    backend: str = "auto",
) -> dict[str, Any]:
    """Decrypt a sops YAML document; identities default to those sops finds in the env."""
    if _use_binary(backend):
        out = _run_sops(
            ["--decrypt", "--input-type", "yaml", "--output-type", "json", "/dev/stdin"],
            text,
            _binary_env(identities),
            source,
        )
        return json.loads(out)
    if identities is None:
        identities = age.identities_from_env()
    return decrypt_tree(load_yaml(text, source), identities, source=source).data


def encrypt_text(
    text: str,
    recipients: Sequence[str],
    rules: EncryptionRules | None = None,
    *,
    source: str = "<document>",
    backend: str = "auto",
    now: datetime | None = None,
) -> str:
    """Encrypt a plain YAML document for age ``recipients``; return sops YAML."""
    if _use_binary(backend):
        args = ["--encrypt", "--input-type", "yaml", "--output-type", "yaml"]
        args += ["--age", ",".join(recipients)]
        for key, value in (rules or EncryptionRules()).as_metadata().items():
            args += (
                [f"--{key.replace('_', '-')}"]
                if value is True
                else [f"--{key.replace('_', '-')}", value]
            )
        return _run_sops([*args, "/dev/stdin"], text, os.environ, source)
    return dump_yaml(
        encrypt_tree(load_yaml(text, source), recipients, rules, source=source, now=now)
    )
