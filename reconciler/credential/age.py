"""age encryption of SOPS data keys: pyrage when installed, else the ``age`` CLI.

The only module that imports pyrage or runs ``age``/``age-keygen``.  SOPS stores each
recipient's copy of the data key as an ASCII-armored age file, so ``encrypt`` always
armors.  Identities (``AGE-SECRET-KEY-1…``) are read the way sops reads them:
``SOPS_AGE_KEY`` (keys inline), ``SOPS_AGE_KEY_FILE``, then
``$XDG_CONFIG_HOME/sops/age/keys.txt`` (``~/.config/sops/age/keys.txt``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from reconciler import errors

try:  # pyrage is optional: the age CLI from Debian's `age` package does the same job.
    import pyrage
except ImportError:  # pragma: no cover - depends on the machine
    pyrage = None

INSTALL_HINT = "install pyrage (pip install pyrage) or the age CLI (apt-get install age)"


def backend() -> str:
    """Which age implementation is in use: "pyrage", "cli" or "" (none)."""
    if pyrage is not None:
        return "pyrage"
    if shutil.which("age") and shutil.which("age-keygen"):
        return "cli"
    return ""


def _require_backend() -> str:
    name = backend()
    if not name:
        raise errors.CredentialError(f"no age implementation available: {INSTALL_HINT}")
    return name


def parse_identities(text: str) -> list[str]:
    """The age secret keys in a keys file's text (comments and blank lines skipped)."""
    keys = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keys.append(line)
    return keys


def identities_from_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """Every age identity sops would find in this environment (may be empty)."""
    env = os.environ if environ is None else environ
    found: list[str] = []
    if env.get("SOPS_AGE_KEY"):
        found += parse_identities(env["SOPS_AGE_KEY"])
    key_file = env.get("SOPS_AGE_KEY_FILE")
    if key_file:
        try:
            found += parse_identities(Path(key_file).read_text())
        except OSError as exc:
            raise errors.CredentialError(
                f"SOPS_AGE_KEY_FILE={key_file}: cannot read age keys: {exc.strerror}"
            ) from None
    config_home = env.get("XDG_CONFIG_HOME") or (
        str(Path(env["HOME"]) / ".config") if env.get("HOME") else ""
    )
    if config_home:
        default = Path(config_home) / "sops" / "age" / "keys.txt"
        if default.is_file():
            found += parse_identities(default.read_text())
    return found


def generate_identity() -> tuple[str, str]:
    """A new X25519 identity as (secret key, recipient)."""
    if _require_backend() == "pyrage":
        identity = pyrage.x25519.Identity.generate()
        return str(identity), str(identity.to_public())
    out = _run(["age-keygen"], b"").decode()
    secret = parse_identities(out)[0]
    return secret, recipient_of(secret)


def recipient_of(identity: str) -> str:
    """The public recipient (``age1…``) of a secret identity."""
    if _require_backend() == "pyrage":
        try:
            return str(pyrage.x25519.Identity.from_str(identity).to_public())
        except Exception:  # noqa: BLE001 - pyrage raises its own exception classes
            raise errors.CredentialError("not a valid age identity") from None
    return _run(["age-keygen", "-y"], identity.encode() + b"\n").decode().strip()


def encrypt(plaintext: bytes, recipients: Sequence[str]) -> str:
    """Encrypt ``plaintext`` to every recipient; return an ASCII-armored age file."""
    if not recipients:
        raise errors.CredentialError("no age recipients to encrypt to")
    if _require_backend() == "pyrage":
        try:
            parsed = [pyrage.x25519.Recipient.from_str(r.strip()) for r in recipients]
        except Exception:  # noqa: BLE001
            raise errors.CredentialError(
                f"invalid age recipient in {', '.join(recipients)}"
            ) from None
        return pyrage.encrypt(plaintext, parsed, armored=True).decode()
    args = ["age", "--encrypt", "--armor"]
    for r in recipients:
        args += ["-r", r.strip()]
    return _run(args, plaintext).decode()


def decrypt(armored: str, identities: Sequence[str]) -> bytes:
    """Decrypt an armored age file with any of ``identities``; CredentialError if none fits."""
    if not identities:
        raise errors.CredentialError(
            "no age identity: set SOPS_AGE_KEY_FILE or SOPS_AGE_KEY to the private key"
        )
    if _require_backend() == "pyrage":
        try:
            parsed = [pyrage.x25519.Identity.from_str(i) for i in identities]
        except Exception:  # noqa: BLE001
            raise errors.CredentialError("an age identity could not be parsed") from None
        try:
            return pyrage.decrypt(armored.encode(), parsed)
        except Exception:  # noqa: BLE001
            raise errors.CredentialError("no age identity matches the recipients") from None
    # The CLI only reads identities from a file: write them to a private temp file.
    with tempfile.NamedTemporaryFile("w", prefix="quicflow-age-", delete=True) as keys:
        os.chmod(keys.name, 0o600)
        keys.write("\n".join(identities) + "\n")
        keys.flush()
        try:
            return _run(["age", "--decrypt", "-i", keys.name], armored.encode())
        except errors.CredentialError:
            raise errors.CredentialError("no age identity matches the recipients") from None


def _run(args: list[str], stdin: bytes) -> bytes:
    # Arguments are a list (no shell); stderr is not echoed because it could quote input.
    proc = subprocess.run(args, input=stdin, capture_output=True, check=False, timeout=30)
    if proc.returncode != 0:
        raise errors.CredentialError(f"{args[0]} failed (exit {proc.returncode})")
    return proc.stdout
