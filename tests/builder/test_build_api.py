"""The build endpoints over the real Reconciler, the real Builder, Docker and the registry.

The registry credential comes from a real SOPS file read by a real CredentialManager;
the app is called in process (ASGI), and the build really runs.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from dockerenv import Registry, commit_app
from gitrepos import ConfigRepo

from reconciler.api.app import ServerSettings, create_app
from reconciler.credential import age, documents, sealing, sops
from reconciler.credential.manager import CredentialManager
from reconciler.engine.reconciling import Reconciler
from reconciler.gitops.repository import GitRepository

pytestmark = pytest.mark.integration


def sops_file(recipient: str, credentials: dict[str, dict[str, str]]) -> str:
    """A credentials.sops.yaml encrypted for ``recipient``."""
    tree = sops.encrypt_tree({"credentials": credentials}, [recipient], documents.RULES)
    return sops.dump_yaml(tree)


USERS = """\
users:
  - {username: bob, email: bob@example.com}
  - {username: dave, email: dave@example.com}
"""


@pytest.fixture
async def client(
    tmp_path: Path, registry: Registry, app_repo: ConfigRepo, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[httpx.AsyncClient, dict, str, Reconciler]]:
    commit_app(app_repo, "1.0")
    identity, recipient = age.generate_identity()
    files = {
        "projects/shop/credentials.sops.yaml": sops_file(
            recipient,
            {
                "registry": {
                    "type": "username_password",
                    "username": registry.username,
                    "password": registry.password,
                }
            },
        )
    }
    name = f"quicflow-test/api-{secrets.token_hex(3)}"
    config = ConfigRepo(tmp_path / "config")
    config.commit(
        {
            "quicflow.yaml": USERS,
            "projects/shop/project.yaml": f"""\
members: [{{user: bob, role: owner}}, {{user: dave, role: viewer}}]
repo: {{url: "{app_repo.path}"}}
build:
  enabled: true
  target_image: "{registry.address}/{name}:{{{{ version }}}}"
  registry_credential: registry
  args: {{VERSION: "1.0"}}
deploy: {{type: script, script: {{run: "true"}}}}
strategy: {{type: rolling}}
""",
            "projects/shop/environments/prod.yaml": 'version: "1.0"\ntargets: [{local: t1}]\n',
            **files,
        }
    )
    for variable in ("SOPS_AGE_KEY", "SOPS_AGE_KEY_FILE", sealing.KEY_ENV):
        monkeypatch.delenv(variable, raising=False)
    manager = CredentialManager.open(
        tmp_path / "credentials", {sealing.KEY_ENV: secrets.token_bytes(32).hex()}
    )
    manager.load_git(files, [identity], backend="native")
    # The engine's own credential manager decrypts the registry credential for its Builder.
    engine = Reconciler(
        GitRepository.open(config.path), tmp_path / "data", environ={"SOPS_AGE_KEY": identity}
    )
    await engine.refresh()
    app = create_app(
        engine, ServerSettings(database=engine.db, credentials=manager, run_scheduler=False)
    )
    tokens = {user: app.state.tokens.create(user) for user in ("bob", "dave")}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://quicflow") as http:
        yield http, tokens, name, engine
    await engine.close()
    manager.close()


async def test_a_build_started_through_the_api_is_recorded_and_its_log_streams(
    client: tuple[httpx.AsyncClient, dict, str, Reconciler], registry: Registry
) -> None:
    http, tokens, name, engine = client
    bob = {"Authorization": f"Bearer {tokens['bob']}"}
    dave = {"Authorization": f"Bearer {tokens['dave']}"}
    url = "/api/release/projects/shop/build"
    refused = await http.post(url, json={"version": "1.0"}, headers=dave)
    assert refused.status_code == 403 and "needs at least" in refused.text
    assert (await http.post(url, json={}, headers=bob)).status_code == 400

    started = await http.post(url, json={"version": "1.0"}, headers=bob)
    assert started.status_code == 202, started.text
    build = started.json()
    assert build["status"] == "running" and build["actor"] == "bob"
    assert engine.builder is engine.builder  # one Builder per reconciler, the API's too
    assert (await engine.builder.wait(build["id"])).status.value == "success"
    for _ in range(600):
        build = (await http.get(f"/api/release/builds/{build['id']}", headers=dave)).json()
        if build["status"] != "running":
            break
        await asyncio.sleep(0.1)
    assert build["status"] == "success", build["error"]
    assert build["digest"] == registry.manifest_digest(name, "1.0")
    assert build["artifact"]["digest"] == build["digest"] and build["artifact"]["size"] > 0

    stream = await http.get(f"/api/release/builds/{build['id']}/logs/stream", headers=dave)
    assert stream.status_code == 200
    assert "build succeeded" in stream.text and "event: end" in stream.text
    assert registry.password not in stream.text

    listed = (await http.get("/api/release/projects/shop/builds", headers=dave)).json()
    assert [b["id"] for b in listed["items"]] == [build["id"]]
    missing = await http.get("/api/release/builds/b-nope", headers=bob)
    assert missing.status_code == 404
