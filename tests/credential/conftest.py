"""Fixtures for the credential tests: age identities made in the test, a clean environment."""

from __future__ import annotations

import pytest

from reconciler.credential import age


@pytest.fixture(scope="session")
def identity() -> tuple[str, str]:
    """An age identity generated for this test session: (secret key, recipient)."""
    return age.generate_identity()


@pytest.fixture(scope="session")
def other_identity() -> tuple[str, str]:
    """A second, unrelated age identity."""
    return age.generate_identity()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No age keys or sealing keys leak in from the developer's environment."""
    for name in (
        "SOPS_AGE_KEY",
        "SOPS_AGE_KEY_FILE",
        "SOPS_AGE_RECIPIENTS",
        "QUIC_FLOW_SECRET_KEY",
        "QUIC_FLOW_SECRET_KEY_PREVIOUS",
    ):
        monkeypatch.delenv(name, raising=False)
    # An empty config home, so ~/.config/sops/age/keys.txt is never picked up.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config")))
