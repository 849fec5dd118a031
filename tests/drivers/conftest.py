"""Fixtures of the container driver tests: two pushed test images (1.0 healthy, 2.0 not)."""

from __future__ import annotations

import secrets
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from dockerenv import Registry, app_files, registry_or_skip, remove_test_objects

# The agent fleet and hub fixtures of the hub tests, shared rather than copied.
from hub.conftest import fleet, hub  # noqa: F401


def _docker(registry: Registry, *args: str, config: Path, stdin: str | None = None) -> str:
    result = subprocess.run(
        [registry.docker, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={"DOCKER_CONFIG": str(config), "DOCKER_BUILDKIT": "1", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="session")
def images() -> Iterator[dict]:
    """Push ``web:1.0`` (healthy) and ``web:2.0`` (health endpoint answers 500)."""
    registry = registry_or_skip()
    repository = f"{registry.address}/quicflow-test/web-{secrets.token_hex(3)}"
    digests: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "docker-config"
        config.mkdir()
        _docker(
            registry,
            "login",
            "--username",
            registry.username,
            "--password-stdin",
            registry.address,
            config=config,
            stdin=registry.password,
        )
        for version, healthy in (("1.0", True), ("2.0", False)):
            context = Path(tmp) / version
            for name, text in app_files(version, healthy).items():
                (context / name).parent.mkdir(parents=True, exist_ok=True)
                (context / name).write_text(text)
            (context / "www" / "cgi-bin" / "healthz").chmod(0o755)
            (context / "busybox").write_bytes(Path(registry.busybox or "/bin/busybox").read_bytes())
            (context / "busybox").chmod(0o755)
            tag = f"{repository}:{version}"
            _docker(
                registry,
                "build",
                "-q",
                "--label",
                "quicflow.test=1",
                "-t",
                tag,
                str(context),
                config=config,
            )
            _docker(registry, "push", tag, config=config)
            name = repository.split("/", 1)[1]
            digest = registry.manifest_digest(name, version)
            assert digest is not None
            digests[version] = digest
    yield {"registry": registry, "repository": repository, "digests": digests}
    remove_test_objects(registry.docker)
