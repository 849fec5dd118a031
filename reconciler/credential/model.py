"""The credential model: types, scopes, secret values and the metadata shown to people.

Pure data, no I/O.  Secret values are wrapped in ``Secret`` so that no ``repr``, ``str``
or f-string of a credential can leak them; code that needs the value asks for it with
``Secret.reveal()``, which is easy to grep for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class CredentialType(StrEnum):
    """The kinds of credential QUIC-Flow knows how to use."""

    USERNAME_PASSWORD = "username_password"
    ACCESS_TOKEN = "access_token"
    SSH_KEY = "ssh_key"


# Which value fields each type may carry, and which of them must be present.
VALUE_FIELDS: dict[CredentialType, tuple[str, ...]] = {
    CredentialType.USERNAME_PASSWORD: ("username", "password"),
    CredentialType.ACCESS_TOKEN: ("token",),
    CredentialType.SSH_KEY: ("private_key", "passphrase", "known_hosts"),
}
REQUIRED_FIELDS: dict[CredentialType, tuple[str, ...]] = {
    CredentialType.USERNAME_PASSWORD: ("username", "password"),
    CredentialType.ACCESS_TOKEN: ("token",),
    CredentialType.SSH_KEY: ("private_key",),
}
# The field a bare reference ``{secret: NAME}`` means, per type.
DEFAULT_FIELD: dict[CredentialType, str] = {
    CredentialType.USERNAME_PASSWORD: "password",
    CredentialType.ACCESS_TOKEN: "token",
    CredentialType.SSH_KEY: "private_key",
}
ALL_VALUE_FIELDS: tuple[str, ...] = (
    "username",
    "password",
    "token",
    "private_key",
    "passphrase",
    "known_hosts",
)
# Fields that are secret (masked in logs).  A username is not secret enough to mask
# everywhere (it appears in URLs and audit text) but it is still only given out with the
# rest of the credential.
SECRET_FIELDS: frozenset[str] = frozenset({"password", "token", "private_key", "passphrase"})


class Secret:
    """A secret string that never shows itself in ``repr``, ``str`` or formatting."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        """Return the secret value; call only where the value is really needed."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __len__(self) -> int:
        return len(self._value)

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Secret:
        return self

    def __reduce__(self) -> tuple[object, ...]:
        # Pickling would write the value somewhere we do not control.
        raise TypeError("Secret values cannot be pickled")


@dataclass(frozen=True, slots=True)
class Scope:
    """Where a credential may be used: everywhere (``project`` is None) or in one project."""

    project: str | None = None

    @property
    def is_global(self) -> bool:
        """True for the global scope."""
        return self.project is None

    def allows(self, project: str | None) -> bool:
        """Whether a run or request of ``project`` may use a credential of this scope."""
        return self.project is None or self.project == project

    def credential_id(self, name: str) -> str:
        """The stable id of credential ``name`` in this scope (used by the API and audit)."""
        if self.project is None:
            return f"global:{name}"
        return f"project:{self.project}:{name}"

    def __str__(self) -> str:
        return "global" if self.project is None else f"project {self.project}"


GLOBAL = Scope()


def parse_credential_id(credential_id: str) -> tuple[Scope, str]:
    """Split an id made by ``Scope.credential_id`` back into scope and name."""
    parts = credential_id.split(":")
    if len(parts) == 2 and parts[0] == "global" and parts[1]:
        return GLOBAL, parts[1]
    if len(parts) == 3 and parts[0] == "project" and parts[1] and parts[2]:
        return Scope(parts[1]), parts[2]
    raise ValueError(f"not a credential id: {credential_id!r}")


@dataclass(frozen=True, slots=True)
class CredentialInfo:
    """What may be shown about a credential: everything except its values."""

    name: str
    type: CredentialType
    scope: Scope
    description: str = ""
    source: str = ""  # file path in the config repo, or "sealed" for the AES-GCM store
    created_by: str = ""
    created_at: str = ""
    last_used_at: str = ""

    @property
    def id(self) -> str:
        """The credential's stable id."""
        return self.scope.credential_id(self.name)

    def as_dict(self) -> dict[str, str | None]:
        """A JSON-ready view (for the API): metadata only."""
        return {
            "id": self.id,
            "name": self.name,
            "type": str(self.type),
            "scope": "global" if self.scope.is_global else "project",
            "project": self.scope.project,
            "description": self.description,
            "source": self.source,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "last_used_at": self.last_used_at or None,
        }


@dataclass(frozen=True, slots=True)
class Credential:
    """A credential with its values; handed out only by the credential manager."""

    info: CredentialInfo
    values: dict[str, Secret] = field(repr=False, default_factory=dict)

    @property
    def name(self) -> str:
        """The credential's name."""
        return self.info.name

    @property
    def type(self) -> CredentialType:
        """The credential's type."""
        return self.info.type

    @property
    def id(self) -> str:
        """The credential's stable id."""
        return self.info.id

    def value(self, field_name: str | None = None) -> str:
        """The plain value of ``field_name`` (default: the type's main field)."""
        key = field_name or DEFAULT_FIELD[self.info.type]
        secret = self.values.get(key)
        if secret is None:
            raise KeyError(f"credential {self.info.id} has no field {key!r}")
        return secret.reveal()

    @property
    def username(self) -> str | None:
        """The username of a ``username_password`` credential."""
        return self._plain("username")

    @property
    def password(self) -> str | None:
        """The password of a ``username_password`` credential."""
        return self._plain("password")

    @property
    def token(self) -> str | None:
        """The token of an ``access_token`` credential."""
        return self._plain("token")

    @property
    def private_key(self) -> str | None:
        """The private key of an ``ssh_key`` credential."""
        return self._plain("private_key")

    @property
    def passphrase(self) -> str | None:
        """The passphrase of an ``ssh_key`` credential, if any."""
        return self._plain("passphrase")

    @property
    def known_hosts(self) -> str | None:
        """The known-hosts entry of an ``ssh_key`` credential, if any."""
        return self._plain("known_hosts")

    def secret_values(self) -> list[str]:
        """Every value that must be masked in output (for ``reconciler.log.masking``)."""
        return [s.reveal() for k, s in self.values.items() if k in SECRET_FIELDS and s.reveal()]

    def _plain(self, key: str) -> str | None:
        secret = self.values.get(key)
        return None if secret is None else secret.reveal()


def check_values(kind: CredentialType, values: dict[str, str], where: str) -> list[str]:
    """Problems with ``values`` for a credential of ``kind`` (empty when fine); pure."""
    problems = []
    allowed = VALUE_FIELDS[kind]
    for key in values:
        if key not in allowed:
            problems.append(f"{where}: field {key!r} does not belong to type {kind}")
    for key in REQUIRED_FIELDS[kind]:
        if not values.get(key):
            problems.append(f"{where}: type {kind} needs field {key!r}")
    return problems
