"""The hub's self-signed identity: generated once, kept, fingerprinted like openssl does."""

from __future__ import annotations

import hashlib
import ipaddress
import stat
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from reconciler.hub import tls


def test_identity_is_generated_once_and_kept(tmp_path: Path) -> None:
    first = tls.ensure_identity(tmp_path / "data")
    pem = first.certificate.read_bytes()
    again = tls.ensure_identity(tmp_path / "data")
    assert again == first and again.certificate.read_bytes() == pem
    assert stat.S_IMODE(first.key.stat().st_mode) == 0o600


def test_fingerprint_is_sha256_of_der_in_openssl_format(tmp_path: Path) -> None:
    identity = tls.ensure_identity(tmp_path)
    certificate = x509.load_pem_x509_certificate(identity.certificate.read_bytes())
    digest = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
    fingerprint = identity.fingerprint()
    assert fingerprint.replace(":", "").lower() == digest
    assert len(fingerprint.split(":")) == 32 and fingerprint == fingerprint.upper()


def test_certificate_names_loopback_and_localhost(tmp_path: Path) -> None:
    identity = tls.ensure_identity(tmp_path, names=("hub.example",))
    certificate = x509.load_pem_x509_certificate(identity.certificate.read_bytes())
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "hub.example"} <= set(names.get_values_for_type(x509.DNSName))
    assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)


def test_configured_certificate_is_used_as_is(tmp_path: Path) -> None:
    identity = tls.ensure_identity(tmp_path / "data", tmp_path / "c.pem", tmp_path / "k.pem")
    assert identity == tls.HubIdentity(tmp_path / "c.pem", tmp_path / "k.pem")
    assert not (tmp_path / "data").exists()
