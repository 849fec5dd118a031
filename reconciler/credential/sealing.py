"""The sealed store: AES-256-GCM credentials created outside Git (e.g. issued at runtime).

The key comes from ``QUIC_FLOW_SECRET_KEY`` (32 bytes as base64 or hex).  Each record
keeps the id of the key that sealed it (first 8 bytes of its SHA-256, hex) beside the
ciphertext, and the record's id and type as GCM additional data, so a ciphertext copied
onto another row does not open.  ``QUIC_FLOW_SECRET_KEY_PREVIOUS`` is accepted for
decryption; ``rotate`` re-seals every record still under it with the current key, one
transaction per record and guarded by the old key id, so a crash leaves each record
either old or new and the next start carries on.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import json
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from reconciler import errors
from reconciler.credential import model
from reconciler.store import credentials as stored
from reconciler.store import database as store_database

KEY_ENV = "QUIC_FLOW_SECRET_KEY"
PREVIOUS_KEY_ENV = "QUIC_FLOW_SECRET_KEY_PREVIOUS"
KEY_SIZE = 32
NONCE_SIZE = 12
SOURCE = "sealed"


def parse_key(text: str, variable: str = KEY_ENV) -> bytes:
    """Decode a 32-byte key given as hex or base64 (standard or URL-safe)."""
    text = text.strip()
    candidates = []
    if len(text) == 2 * KEY_SIZE:
        with contextlib.suppress(ValueError):
            candidates.append(bytes.fromhex(text))
    padded = text + "=" * (-len(text) % 4)
    for alphabet in (padded, padded.replace("-", "+").replace("_", "/")):
        # validate=True: without it stray characters are silently dropped.
        with contextlib.suppress(binascii.Error, ValueError):
            candidates.append(base64.b64decode(alphabet, validate=True))
    for key in candidates:
        if len(key) == KEY_SIZE:
            return key
    # Never echo the value: a malformed key may still be most of a real one.
    raise errors.CredentialError(
        f"{variable} must be 32 bytes written as 64 hex digits or base64 "
        f"(got {len(text)} characters that decode to neither); "
        "generate one with: python -c 'import secrets; print(secrets.token_hex(32))'"
    )


def key_id(key: bytes) -> str:
    """The id stored beside each ciphertext: first 8 bytes of SHA-256 of the key, hex."""
    return hashlib.sha256(key).digest()[:8].hex()


@dataclass(frozen=True, slots=True)
class SealingKeys:
    """The current sealing key and, during a rotation, the previous one."""

    current: bytes | None = field(default=None, repr=False)
    previous: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SealingKeys:
        """Read the keys from the environment (a malformed key is an error at once)."""
        env = os.environ if environ is None else environ
        current = env.get(KEY_ENV, "").strip()
        previous = env.get(PREVIOUS_KEY_ENV, "").strip()
        return cls(
            current=parse_key(current, KEY_ENV) if current else None,
            previous=parse_key(previous, PREVIOUS_KEY_ENV) if previous else None,
        )

    @property
    def current_id(self) -> str | None:
        """Key id of the current key."""
        return key_id(self.current) if self.current else None

    @property
    def previous_id(self) -> str | None:
        """Key id of the previous key."""
        return key_id(self.previous) if self.previous else None

    def for_id(self, wanted: str) -> bytes | None:
        """The key whose id is ``wanted``, if we hold it."""
        for key in (self.current, self.previous):
            if key is not None and key_id(key) == wanted:
                return key
        return None


def _aad(credential_id: str, kind: str) -> bytes:
    return f"quicflow-sealed:{credential_id}:{kind}".encode()


def _now() -> datetime:
    return datetime.now(UTC)


class SealedStore:
    """Credentials sealed with AES-256-GCM in the operational store."""

    def __init__(
        self,
        database: store_database.Database,
        keys: SealingKeys,
        clock: Callable[[], datetime] = _now,
    ):
        self.database = database
        self.records = stored.SealedCredentials(database)
        self.keys = keys
        self.clock = clock

    # ----------------------------------------------------------------- start-up

    def start(self) -> int:
        """Check the keys against the stored records, then finish any rotation.

        Refuses (CredentialError) when records exist and the key is missing, or when a
        record was sealed with a key we do not hold.  Returns how many were re-sealed.
        """
        counts = self.records.count_by_key()
        if not counts:
            return 0
        if self.keys.current is None:
            raise errors.CredentialError(
                f"{KEY_ENV} is not set but {self.database.location} holds "
                f"{sum(counts.values())} sealed credential(s); set it to the key they were "
                f"sealed with (or the new key, with the old one in {PREVIOUS_KEY_ENV})"
            )
        unknown = sorted(k for k in counts if self.keys.for_id(k) is None)
        if unknown:
            ids = self.records.ids_under(unknown)
            raise errors.CredentialError(
                f"{self.database.location}: {len(ids)} sealed credential(s) ({', '.join(ids[:5])}"
                f"{', …' if len(ids) > 5 else ''}) were sealed with key id(s) "
                f"{', '.join(unknown)}, which is neither {KEY_ENV} (id {self.keys.current_id}) "
                f"nor {PREVIOUS_KEY_ENV}"
                + (f" (id {self.keys.previous_id})" if self.keys.previous_id else "")
            )
        return self.rotate()

    def rotate(self, limit: int | None = None) -> int:
        """Re-seal records not under the current key (at most ``limit``); return how many."""
        current_id = self.keys.current_id
        if current_id is None:
            raise errors.CredentialError(f"{KEY_ENV} is not set: nothing to rotate to")
        done = 0
        for row in self.records.not_under(current_id):
            if limit is not None and done >= limit:
                break
            reseal = functools.partial(self._reseal, row["id"], row["type"], row["key_id"])
            # False: another process re-sealed it meanwhile (the store guards the update).
            if self.records.reseal(row["id"], row["key_id"], reseal):
                done += 1
        return done

    def pending_rotation(self) -> int:
        """How many records are not yet under the current key."""
        return self.records.count_not_under(self.keys.current_id or "")

    # ------------------------------------------------------------------- records

    def put(
        self,
        name: str,
        scope: model.Scope,
        kind: model.CredentialType,
        values: Mapping[str, str],
        *,
        description: str = "",
        actor: str = "",
    ) -> tuple[model.CredentialInfo, bool]:
        """Seal (create or replace) a credential; return its info and whether it is new."""
        problems = model.check_values(kind, dict(values), f"credential {name}")
        if problems:
            raise errors.CredentialError("\n".join(problems))
        credential_id = scope.credential_id(name)
        now = self.clock().isoformat()
        nonce, ciphertext = self._seal(credential_id, str(kind), dict(values))
        created_by, created_at, created = self.records.put(
            credential_id,
            name=name,
            project=scope.project,
            kind=str(kind),
            description=description,
            actor=actor,
            now=now,
            key_id=self.keys.current_id,
            nonce=nonce,
            ciphertext=ciphertext,
        )
        info = model.CredentialInfo(
            name=name,
            type=kind,
            scope=scope,
            description=description,
            source=SOURCE,
            created_by=created_by,
            created_at=created_at,
        )
        return info, created

    def get(self, credential_id: str) -> model.Credential | None:
        """The credential with its values, or None if there is no such record."""
        row = self.records.get(credential_id)
        if row is None:
            return None
        values = self._open(row["id"], row["type"], row["key_id"], row["nonce"], row["ciphertext"])
        return model.Credential(self._info(row), {k: model.Secret(v) for k, v in values.items()})

    def infos(self) -> list[model.CredentialInfo]:
        """Metadata of every sealed credential (no decryption)."""
        return [self._info(row) for row in self.records.infos()]

    def delete(self, credential_id: str) -> bool:
        """Remove a record; True if it existed."""
        return self.records.delete(credential_id)

    # ------------------------------------------------------------------ crypto

    def _reseal(
        self, credential_id: str, kind: str, sealed_with: str, nonce: bytes, ciphertext: bytes
    ) -> tuple[str, bytes, bytes]:
        """Open a record sealed with key ``sealed_with`` and seal it with the current key."""
        values = self._open(credential_id, kind, sealed_with, nonce, ciphertext)
        nonce, ciphertext = self._seal(credential_id, kind, values)
        current = self.keys.current_id
        assert current is not None  # _seal refuses to seal without a current key
        return current, nonce, ciphertext

    def _seal(self, credential_id: str, kind: str, values: dict[str, str]) -> tuple[bytes, bytes]:
        if self.keys.current is None:
            raise errors.CredentialError(f"{KEY_ENV} is not set: cannot seal credentials")
        nonce = secrets.token_bytes(NONCE_SIZE)
        plain = json.dumps(values, sort_keys=True).encode()
        return nonce, AESGCM(self.keys.current).encrypt(nonce, plain, _aad(credential_id, kind))

    def _open(
        self, credential_id: str, kind: str, sealed_with: str, nonce: bytes, ciphertext: bytes
    ) -> dict[str, str]:
        key = self.keys.for_id(sealed_with)
        if key is None:
            raise errors.CredentialError(
                f"sealed credential {credential_id}: sealed with key id {sealed_with}, "
                f"which is neither {KEY_ENV} nor {PREVIOUS_KEY_ENV}"
            )
        try:
            plain = AESGCM(key).decrypt(nonce, ciphertext, _aad(credential_id, kind))
        except InvalidTag:
            raise errors.CredentialError(
                f"sealed credential {credential_id}: ciphertext does not authenticate "
                "(corrupted or moved between records)"
            ) from None
        return json.loads(plain)

    @staticmethod
    def _info(row: store_database.Row) -> model.CredentialInfo:
        project = row["project"]
        return model.CredentialInfo(
            name=str(row["name"]),
            type=model.CredentialType(str(row["type"])),
            scope=model.Scope(str(project)) if project else model.GLOBAL,
            description=str(row["description"] or ""),
            source=SOURCE,
            created_by=str(row["created_by"] or ""),
            created_at=str(row["created_at"] or ""),
        )
