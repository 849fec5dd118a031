"""Builds started by the engine: a signed tag webhook, a pipeline ``uses: build``, image automation.

Everything is real: the config and application repos (git), SOPS credentials read by
the Reconciler's own CredentialManager, the Reconciler's Builder with Docker BuildKit
pushing to the htpasswd-protected local registry, the Starlette app under uvicorn
(webhooks) or in process (the build API), and containers on the local daemon.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from api.configs import HOOK_SECRET
from api.servers import serving
from api.test_webhooks import github_headers, github_push
from dockerenv import Registry, commit_app, remove_test_objects
from gitrepos import ConfigRepo, git
from releasing import USERS, free_ports

from reconciler.api.app import ServerSettings, create_app
from reconciler.auth.tokens import TokenStore
from reconciler.builds import BuildStatus
from reconciler.credential import age, documents, sops
from reconciler.engine.reconciling import Reconciler
from reconciler.gitops.repository import GitRepository
from reconciler.runs import RunState

pytestmark = pytest.mark.integration

PROJECT = "projects/shop/project.yaml"
PROD = "projects/shop/environments/prod.yaml"
HTTP_HEALTH = """\
  health:
    http: {path: /cgi-bin/healthz, port: 8000}
    retries: 10
    interval: 200ms
    timeout: 1s
"""


@dataclass
class World:
    """A config repo naming a real app repo, and a Reconciler over it."""

    registry: Registry
    config: ConfigRepo
    app: ConfigRepo
    image: str  # repository path in the registry (without the registry address)
    engine: Reconciler

    def project(self, deploy: str, extra: str = "") -> str:
        return f"""\
members: [{{user: bob, role: owner}}]
repo: {{url: "{self.app.path}"}}
build:
  enabled: true
  target_image: "{self.registry.address}/{self.image}:{{{{ version }}}}"
  registry_credential: registry
  args: {{VERSION: "1.0"}}
{deploy}strategy: {{type: rolling}}
triggers:
  webhooks:
    - {{name: gh-build, source: github, secret: app-hook, events: [tag], action: build}}
{extra}"""

    def main_file(self, path: str) -> str:
        return git(self.config.path, "show", f"main:{path}")


@pytest.fixture
async def world(tmp_path: Path, registry: Registry, app_repo: ConfigRepo) -> AsyncIterator[World]:
    identity, recipient = age.generate_identity()
    plain = (
        "credentials:\n"
        "  registry:\n    type: username_password\n"
        f"    username: {registry.username}\n    password: {registry.password}\n"
        f"  app-hook:\n    type: access_token\n    token: {HOOK_SECRET}\n"
    )
    config = ConfigRepo(tmp_path / "config")
    config.commit(
        {
            "quicflow.yaml": USERS,
            "projects/shop/credentials.sops.yaml": sops.encrypt_text(
                plain, [recipient], documents.RULES
            ),
        }
    )
    engine = Reconciler(
        GitRepository.open(config.path), tmp_path / "data", environ={"SOPS_AGE_KEY": identity}
    )
    found = World(
        registry, config, app_repo, f"quicflow-test/engine-{secrets.token_hex(3)}", engine
    )
    yield found
    await engine.close()
    remove_test_objects(registry.docker)


SCRIPT_DEPLOY = 'deploy: {type: script, script: {run: "echo deployed $QUICFLOW_VERSION"}}\n'


async def test_a_signed_tag_webhook_builds_the_tag_on_the_engine_s_builder(world: World) -> None:
    commit_app(world.app, "1.0")
    commit_app(world.app, "1.1")
    world.config.commit(
        {
            PROJECT: world.project(SCRIPT_DEPLOY),
            PROD: 'version: "1.0"\ntargets: [{local: t1}]\n',
        }
    )
    engine = world.engine
    await engine.refresh()
    assert engine.desired is not None, engine.problems
    credentials = engine.credentials.manager(engine.desired)
    app = create_app(
        engine, ServerSettings(database=engine.db, credentials=credentials, run_scheduler=False)
    )
    async with serving(app) as server:
        body = github_push("refs/tags/1.1", sha="b" * 40)
        async with server.client() as anonymous:
            answer = await anonymous.post(
                "/api/release/webhooks/shop.gh-build/trigger",
                content=body,
                headers=github_headers(body),
            )
        assert answer.status_code == 202, answer.text
        reply = answer.json()
        assert reply["status"] == "success" and reply["build_id"] in reply["reason"]
        build = await engine.builder.wait(reply["build_id"])
        assert build.status is BuildStatus.SUCCESS, build.error
        # The tag was built (its commit, not the payload's), tagged with the tag name.
        assert build.version == "1.1" and build.commit == git(world.app.path, "rev-parse", "1.1")
        assert build.digest == world.registry.manifest_digest(world.image, "1.1")
        async with server.client(TokenStore(engine.db).create("bob")) as bob:
            listed = await bob.get("/api/release/triggers/records", params={"project": "shop"})
    (record,) = listed.json()["items"]
    assert (record["trigger_id"], record["status"]) == ("shop.gh-build", "success")
    assert record["reason"] == f"build {build.id} started" and record["tag"] == "1.1"


async def test_a_pipeline_build_stage_deploys_the_digest_it_built(world: World) -> None:
    commit_app(world.app, "2.0")
    (port,) = free_ports(1)
    container = f"""\
deploy:
  type: container
  timeout: 60s
  container:
    ports: ["8000:8000"]
    labels: {{quicflow.test: "1"}}
    restart_policy: "no"
    stop_timeout: 2s
{HTTP_HEALTH}"""
    pipeline = """\
pipeline:
  stages:
    - name: build
      tasks: [{name: image, uses: build}]
    - name: release
      tasks: [{name: deploy, uses: deploy}]
"""
    world.config.commit(
        {
            PROJECT: world.project(container, pipeline),
            PROD: f'version: "2.0"\ntargets: [{{local: t1, port: {port}}}]\n',
        }
    )
    report = await world.engine.reconcile_once()
    assert report.problems == (), report.problems
    (run,) = report.runs
    assert run.state is RunState.SUCCEEDED, run.error
    built = world.registry.manifest_digest(world.image, "2.0")
    assert built is not None
    assert run.detail["image_digest"] == built
    assert run.detail["image"] == f"{world.registry.address}/{world.image}:2.0"
    inspected = subprocess.run(
        [world.registry.docker, "container", "inspect", "shop-prod-t1"],
        capture_output=True,
        text=True,
        check=True,
    )
    labels = json.loads(inspected.stdout)[0]["Config"]["Labels"]
    assert labels["quicflow.image"].endswith(f"@{built}")  # the container runs that digest
    record = world.engine.history.record("shop", "prod")
    assert record is not None and record.image_digest == built
    # A pipeline build is not followed by image automation (nothing to bump, no commit).
    assert "Deploy 2.0" not in git(world.config.path, "log", "-1", "--format=%s", "main")
    async with httpx.AsyncClient(timeout=5) as http:
        page = await http.get(f"http://127.0.0.1:{port}/")
    assert page.text == "version 2.0\n"


async def test_a_successful_build_bumps_auto_updating_environments_and_the_next_pass_deploys(
    world: World,
) -> None:
    commit_app(world.app, "1.0")
    commit_app(world.app, "1.1")
    world.config.commit(
        {
            PROJECT: world.project(SCRIPT_DEPLOY),
            PROD: 'version: "1.0"\nauto_update: true\ntargets: [{local: t1}]\n',
            "projects/shop/environments/stage.yaml": 'version: "1.0"\ntargets: [{local: t1}]\n',
        }
    )
    engine = world.engine
    first = await engine.reconcile_once()
    assert {r.env: r.state for r in first.runs} == {
        "prod": RunState.SUCCEEDED,
        "stage": RunState.SUCCEEDED,
    }
    before = git(world.config.path, "rev-parse", "main")
    app = create_app(engine, ServerSettings(database=engine.db, run_scheduler=False))
    token = TokenStore(engine.db).create("bob")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://quicflow",
        headers={"Authorization": f"Bearer {token}"},
    ) as http:
        started = await http.post("/api/release/projects/shop/build", json={"version": "1.1"})
        assert started.status_code == 202, started.text
    build = await engine.builder.wait(started.json()["id"])  # includes what follows the build
    assert build.status is BuildStatus.SUCCESS, build.error

    head = git(world.config.path, "rev-parse", "main")
    assert git(world.config.path, "rev-parse", "main~1") == before  # exactly one new commit
    subject, author = git(world.config.path, "log", "-1", "--format=%s%n%an", "main").splitlines()
    assert subject == f"Deploy 1.1 to shop/prod (build {build.id})" and author == "quicflow"
    assert git(world.config.path, "diff", "--name-only", before, head).split() == [PROD]
    assert world.main_file(PROD).startswith('version: "1.1"\n')
    assert 'version: "1.0"' in world.main_file("projects/shop/environments/stage.yaml")

    second = await engine.reconcile_once()
    assert second.commit == head
    (run,) = second.runs
    assert (run.env, run.version, run.state) == ("prod", "1.1", RunState.SUCCEEDED)
    assert engine.history.record("shop", "prod").version == "1.1"  # type: ignore[union-attr]
    assert (await engine.reconcile_once()).runs == []  # nothing left to do
    await asyncio.sleep(0)
