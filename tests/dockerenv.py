"""Test helpers for the real Docker daemon and registry that tests/docker_env.sh starts.

Tests skip (with the reason) when the daemon or registry is not there. Every image and
container a test makes carries the label ``quicflow.test=1`` and is removed by label.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from gitrepos import ConfigRepo

STATE = Path("/tmp/quicflow-registry.json")
TEST_LABEL = "quicflow.test=1"
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


@dataclass(frozen=True, slots=True)
class Registry:
    """The authenticated local registry and the BuildKit-capable docker CLI."""

    address: str
    username: str
    password: str
    docker: str
    busybox: str

    def manifest_digest(self, name: str, tag: str) -> str | None:
        """The registry's own digest of ``name:tag`` (Docker-Content-Digest), or None."""
        response = httpx.get(
            f"http://{self.address}/v2/{name}/manifests/{tag}",
            headers={"Accept": MANIFEST_V2},
            auth=(self.username, self.password),
        )
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.headers["Docker-Content-Digest"]


@dataclass(frozen=True, slots=True)
class Login:
    """A stand-in for a username/password credential from the credential store."""

    username: str | None
    password: str | None
    token: str | None = None


def registry_or_skip() -> Registry:
    """The registry from /tmp/quicflow-registry.json, or skip the test saying why."""
    if not STATE.exists():
        pytest.skip("Docker is not set up: run tests/docker_env.sh (as root) first")
    data = json.loads(STATE.read_text())
    if not data.get("available"):
        pytest.skip(f"Docker could not be started: {data.get('reason')}")
    docker = data["docker"]
    ping = subprocess.run([docker, "info", "--format", "{{.ID}}"], capture_output=True)
    if ping.returncode != 0:
        pytest.skip(f"no Docker daemon answers {docker}: run tests/docker_env.sh")
    try:
        code = httpx.get(f"http://{data['address']}/v2/", timeout=2).status_code
    except httpx.HTTPError as exc:
        pytest.skip(f"registry {data['address']} does not answer: {exc}")
    if code != 401:
        pytest.skip(f"registry {data['address']} answers {code}, expected 401 (auth required)")
    return Registry(
        data["address"], data["username"], data["password"], docker, data.get("busybox", "")
    )


def remove_test_objects(docker: str) -> None:
    """Remove every container and image labelled quicflow.test=1."""
    containers = subprocess.run(
        [docker, "ps", "-aq", "--filter", f"label={TEST_LABEL}"], capture_output=True, text=True
    ).stdout.split()
    if containers:
        subprocess.run([docker, "rm", "-f", *containers], capture_output=True)
    images = subprocess.run(
        [docker, "image", "ls", "-q", "--filter", f"label={TEST_LABEL}"],
        capture_output=True,
        text=True,
    ).stdout.split()
    if images:
        subprocess.run([docker, "image", "rm", "-f", *set(images)], capture_output=True)


DOCKERFILE = """\
FROM scratch
LABEL quicflow.test=1
COPY busybox /bin/busybox
COPY www /www
ARG VERSION=dev
ENV APP_VERSION=$VERSION
EXPOSE 8000
HEALTHCHECK --interval=1s --timeout=2s --retries=1 \
  CMD ["/bin/busybox", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8000/cgi-bin/healthz"]
ENTRYPOINT ["/bin/busybox", "httpd", "-f", "-p", "8000", "-h", "/www"]
"""
# The health endpoint is a CGI script so a version can answer a real HTTP 500.
HEALTH_CGI = """\
#!/bin/busybox sh
echo "Status: {status}"
echo "Content-Type: text/plain"
echo
echo "{text}"
"""


def app_files(version: str, healthy: bool = True) -> dict[str, str]:
    """The files of the test application at one version (busybox is copied separately)."""
    status, text = ("200 OK", "ok") if healthy else ("500 Internal Server Error", "broken")
    return {
        "Dockerfile": DOCKERFILE,
        "www/index.html": f"version {version}\n",
        "www/cgi-bin/healthz": HEALTH_CGI.format(status=status, text=text),
    }


def make_app_repo(path: Path, busybox: str) -> ConfigRepo:
    """A real Git repository of the test app (no commit yet), with busybox in it."""
    repo = ConfigRepo(path)
    shutil.copy(busybox or "/bin/busybox", path / "busybox")
    return repo


def commit_app(repo: ConfigRepo, version: str, healthy: bool = True, tag: bool = True) -> str:
    """Commit the app at ``version`` (tagged ``version``); return the commit id."""
    from gitrepos import git

    repo.write(app_files(version, healthy))
    (repo.path / "www" / "cgi-bin" / "healthz").chmod(0o755)
    commit = repo.commit(message=f"app {version}")
    if tag:
        git(repo.path, "tag", "-f", version)
    return commit
