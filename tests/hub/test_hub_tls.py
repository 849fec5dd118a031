"""The hub's self-signed identity: generated once, kept, fingerprinted like openssl does."""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import stat
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from reconciler.hub import tls

if TYPE_CHECKING:
    from conftest import Fleet


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


def test_configured_names_and_addresses_are_in_the_san(tmp_path: Path) -> None:
    identity = tls.ensure_identity(tmp_path, names=("hub.example.com", "10.1.2.3", "fd00::7"))
    names = tls.certificate_names(identity.certificate.read_bytes())
    assert {"hub.example.com", "localhost", "10.1.2.3", "fd00::7", "127.0.0.1"} <= names
    certificate = x509.load_pem_x509_certificate(identity.certificate.read_bytes())
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    # Addresses are IP entries (what TLS clients match an address against), not DNS names.
    assert ipaddress.ip_address("10.1.2.3") in san.get_values_for_type(x509.IPAddress)
    assert "10.1.2.3" not in san.get_values_for_type(x509.DNSName)
    assert tls.missing_names(identity.certificate, ("HUB.example.com.", "10.1.2.3")) == ()


def test_changed_names_keep_the_certificate_and_say_what_it_lacks(tmp_path: Path) -> None:
    """Regenerating would lock out every pinned agent: the hub warns and the operator rotates."""
    first = tls.ensure_identity(tmp_path, names=("old.example.com",))
    pem = first.certificate.read_bytes()
    again = tls.ensure_identity(tmp_path, names=("old.example.com", "new.example.com", "10.9.9.9"))
    assert again.certificate.read_bytes() == pem
    assert tls.missing_names(
        again.certificate, ("old.example.com", "new.example.com", "10.9.9.9")
    ) == (
        "new.example.com",
        "10.9.9.9",
    )
    # Rotating as the README says: remove the pair, and the next start makes a new one.
    again.certificate.unlink()
    again.key.unlink()
    rotated = tls.ensure_identity(tmp_path, names=("old.example.com", "new.example.com"))
    assert rotated.fingerprint() != tls.certificate_fingerprint(pem)
    assert tls.missing_names(rotated.certificate, ("new.example.com",)) == ()


def test_a_brought_certificate_is_checked_before_use(tmp_path: Path) -> None:
    mine = tls.ensure_identity(tmp_path / "mine", names=("hub.example.com",))
    other = tls.ensure_identity(tmp_path / "other")
    assert tls.load_brought(mine.certificate, mine.key) == mine
    with pytest.raises(ValueError, match="not the private key of the certificate"):
        tls.load_brought(mine.certificate, other.key)
    with pytest.raises(ValueError, match="missing.pem: cannot read it"):
        tls.load_brought(tmp_path / "missing.pem", mine.key)
    (tmp_path / "garbage.pem").write_text("-----BEGIN NOTHING-----\n")
    with pytest.raises(ValueError, match="garbage.pem: not a PEM certificate"):
        tls.load_brought(tmp_path / "garbage.pem", mine.key)
    with pytest.raises(ValueError, match="not an unencrypted PEM private key") as raised:
        tls.load_brought(mine.certificate, mine.certificate)
    assert "BEGIN" not in str(raised.value)  # what a file holds never shows in the error


async def test_the_hub_warns_how_to_rotate_when_its_certificate_lacks_a_name(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from reconciler.hub.server import Hub

    tls.ensure_identity(tmp_path / "hub")  # e.g. made by 'quicflow hub fingerprint' first
    hub = Hub(tmp_path / "hub", port=0, names=("hub.example.com",))
    await hub.start()
    try:
        assert "does not name hub.example.com" in caplog.text
        assert "to rotate: stop serve, delete" in caplog.text and "re-pin" in caplog.text
    finally:
        await hub.stop()


@pytest.mark.integration
async def test_an_agent_verifying_with_ca_reaches_the_hub_by_a_configured_address(
    tmp_path: Path, fleet: Fleet
) -> None:
    """127.0.0.2 stands for the hub's address on the network: only a certificate naming
    it lets an agent that dials it with ``--ca`` in; a pinned agent never minded."""
    from reconciler.hub.server import Hub

    unnamed = Hub(tmp_path / "unnamed", host="127.0.0.2", port=0, heartbeat_interval=0.5)
    named = Hub(
        tmp_path / "named", host="127.0.0.2", port=0, heartbeat_interval=0.5, names=("127.0.0.2",)
    )
    await unnamed.start()
    await named.start()
    try:
        for hub in (unnamed, named):
            assert hub.identity is not None
            fleet.spawn(
                hub,
                "by-address",
                ca=hub.identity.certificate,
                extra=("--server", f"127.0.0.2:{hub.port}"),
            )
        await named.wait_for_agents(["by-address"], timeout=15)
        refused = fleet.agents[0]
        await refused.wait_log("cannot reach hub")
        assert unnamed.agents() == []
        assert unnamed.identity is not None
        fleet.spawn(unnamed, "pinned", extra=("--server", f"127.0.0.2:{unnamed.port}"))
        await unnamed.wait_for_agents(["pinned"], timeout=15)
    finally:
        await unnamed.stop()
        await named.stop()


def test_a_process_finding_no_identity_waits_for_the_one_being_made(tmp_path: Path) -> None:
    """``hub fingerprint`` and a starting ``serve`` racing: the second reads the first's pair."""
    hub_dir = tmp_path / "hub"
    hub_dir.mkdir()
    code = (
        "import sys; from pathlib import Path; from reconciler.hub import tls;"
        " print(tls.ensure_identity(Path(sys.argv[1])).fingerprint())"
    )
    with (hub_dir / tls.IDENTITY_LOCK).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a process in the middle of generating it
        other = subprocess.Popen(
            [sys.executable, "-c", code, str(hub_dir)], stdout=subprocess.PIPE, text=True
        )
        with pytest.raises(subprocess.TimeoutExpired):
            other.wait(timeout=2)  # it waits for the lock instead of generating a pair
        made = tls.HubIdentity(hub_dir / tls.CERTIFICATE_FILE, hub_dir / tls.KEY_FILE)
        tls._generate(made, ())
    printed = other.communicate(timeout=60)[0].strip()
    assert printed == made.fingerprint()
