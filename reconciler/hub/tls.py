"""The hub's TLS identity: a self-signed certificate kept in the data dir, and its fingerprint.

Agents pin the SHA-256 fingerprint of the DER certificate (``quicflow hub fingerprint``
prints it) or trust the certificate file as a CA.  The key never leaves the data dir and is
written with mode 0600.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CERTIFICATE_FILE = "hub-cert.pem"
KEY_FILE = "hub-key.pem"
VALIDITY = datetime.timedelta(days=3650)


@dataclass(frozen=True, slots=True)
class HubIdentity:
    """Paths of the hub's certificate and private key."""

    certificate: Path
    key: Path

    def fingerprint(self) -> str:
        """SHA-256 fingerprint of the certificate, as ``AB:CD:...`` (the format openssl prints)."""
        return certificate_fingerprint(self.certificate.read_bytes())


def ensure_identity(
    data_dir: Path,
    certificate: Path | None = None,
    key: Path | None = None,
    names: tuple[str, ...] = (),
) -> HubIdentity:
    """Return the configured identity, or the one in ``data_dir`` (generated on first use)."""
    if certificate is not None and key is not None:
        return HubIdentity(certificate, key)
    data_dir.mkdir(parents=True, exist_ok=True)
    identity = HubIdentity(data_dir / CERTIFICATE_FILE, data_dir / KEY_FILE)
    if not (identity.certificate.exists() and identity.key.exists()):
        _generate(identity, names)
    return identity


def certificate_fingerprint(pem: bytes) -> str:
    """SHA-256 fingerprint of the first certificate in ``pem``."""
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    return format_fingerprint(hashlib.sha256(der).digest())


def format_fingerprint(digest: bytes) -> str:
    """Format a digest as colon-separated upper-case hex."""
    return ":".join(f"{byte:02X}" for byte in digest)


def _generate(identity: HubIdentity, names: tuple[str, ...]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    hostname = socket.gethostname()
    dns_names = sorted({"localhost", hostname, *names} - {""})
    alternative_names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    alternative_names += [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"quicflow hub {hostname}")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_private(identity.key, key_pem)
    # The certificate is written last: its presence means the pair is complete.
    identity.certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def _write_private(path: Path, content: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(content)
    os.replace(temporary, path)
