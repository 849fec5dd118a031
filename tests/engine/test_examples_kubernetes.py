"""The example's ``catalog`` project, deployed when asked for, against the stand-in API server.

The example turns Kubernetes off (``settings.features.kubernetes: false``), so the
demo never reaches for a cluster by default. Here, as the README tells a user to, a
copy of the example turns it on and points catalog/dev at a stand-in API server
(``kubeapi.ApiServer``: not Kubernetes, see its docstring) that accepts the example's
own encrypted service-account token; a real ``quicflow apply`` subprocess with the demo
age key then releases it blue-green.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from gitrepos import ROOT, ConfigRepo, git
from kubeapi import ApiServer

from reconciler.credential import age, sops

pytestmark = pytest.mark.integration

AGE_KEY = ROOT / "examples" / "demo-age-key.txt"
CATALOG = "projects/catalog"


def _catalog_token(repo: Path) -> str:
    identities = age.parse_identities(AGE_KEY.read_text())
    doc = sops.decrypt_text((repo / CATALOG / "credentials.sops.yaml").read_text(), identities)
    return str(doc["credentials"]["catalog-kubeconfig"]["token"])


@pytest.fixture
def server() -> Iterator[ApiServer]:
    stand_in = ApiServer().start()
    yield stand_in
    stand_in.stop()


def _apply(repo: Path, data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOPS_", "QUIC_FLOW_"))}
    env.update(PYTHONPATH=str(ROOT), SOPS_AGE_KEY_FILE=str(AGE_KEY))
    return subprocess.run(
        [sys.executable, "-m", "reconciler", "apply", "--repo", str(repo), "--data", str(data)]
        + list(extra),
        cwd=data.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_catalog_deploys_to_the_stand_in_only_when_asked(
    example_repo: ConfigRepo, server: ApiServer, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    # By default: skipped, saying why, and no request reaches any cluster.
    off = _apply(example_repo.path, data, "--only", "catalog")
    assert off.returncode == 0, off.stdout + off.stderr
    skipped = [line for line in off.stdout.splitlines() if line.startswith("skipped catalog/")]
    assert len(skipped) == 3
    assert all("settings.features.kubernetes" in line for line in skipped)

    token = _catalog_token(example_repo.path)
    server.cluster.tokens[token] = "admin"
    ca = server.ca_pem.decode()
    settings = (example_repo.path / "quicflow.yaml").read_text()
    dev = example_repo.path / CATALOG / "environments" / "dev.yaml"
    override = "\n".join(
        [
            "overrides:",
            "  deploy:",
            "    kubernetes:",
            f"      server: {server.url}",
            "      certificate_authority: |",
            *[f"        {line}" for line in ca.strip().splitlines()],
            "",
        ]
    )
    example_repo.commit(
        {
            "quicflow.yaml": settings.replace("kubernetes: false", "kubernetes: true"),
            str(dev.relative_to(example_repo.path)): dev.read_text() + override,
        },
        message="try catalog on the stand-in",
    )
    plan = subprocess.run(
        [
            sys.executable,
            "-m",
            "reconciler",
            "plan",
            "--repo",
            str(example_repo.path),
            "--only",
            "catalog/dev",
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert plan.returncode == 0, plan.stderr
    assert (
        "apply Deployment catalog/catalog-blue: registry.example.com/acme/catalog:0.9.4"
        in plan.stdout
    )
    assert "switch Service catalog/catalog to blue" in plan.stdout

    on = _apply(example_repo.path, data, "--only", "catalog/dev")
    assert on.returncode == 0, on.stdout + on.stderr
    assert "catalog/dev" in on.stdout and "succeeded" in on.stdout, on.stdout
    blue = server.cluster.get("deployments", "catalog", "catalog-blue")
    assert blue is not None and blue["spec"]["replicas"] == 2, plan.stdout
    image = blue["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "registry.example.com/acme/catalog:0.9.4"
    service = server.cluster.get("services", "catalog", "catalog")
    assert service is not None and service["spec"]["selector"]["quicflow.dev/color"] == "blue"
    state = git(example_repo.path, "log", "--format=%s", "refs/quicflow/state").splitlines()
    assert "catalog/dev: nothing -> 0.9.4 succeeded" in state
    assert token not in on.stdout + on.stderr
