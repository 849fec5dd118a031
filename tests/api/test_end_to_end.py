"""The server with the real engine: a signed GitHub push starts a real run whose log streams over SSE.

Everything is real here: the config repo (git), SOPS credentials decrypted with an age
key, the Reconciler with local targets, the Starlette app under uvicorn, httpx.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from api.configs import API_FILES, HOOK_SECRET
from api.servers import LiveServer, serving
from api.test_webhooks import github_headers, github_push
from gitrepos import ConfigRepo

from reconciler.api.app import ServerSettings, create_app
from reconciler.api.auth import TokenStore
from reconciler.engine.commands import open_credentials
from reconciler.engine.reconciling import Reconciler
from reconciler.gitops.repository import GitRepository
from reconciler.runs import RunState

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def real_engine(
    repo: ConfigRepo, age_identity: tuple[str, str], data: Path
) -> AsyncIterator[tuple[Reconciler, LiveServer]]:
    """The real Reconciler behind the app under uvicorn, as ``quicflow serve`` wires them."""
    reconciler = Reconciler(
        GitRepository.open(repo.path), data, environ={"SOPS_AGE_KEY": age_identity[0]}
    )
    try:
        await reconciler.refresh()
        credentials = await open_credentials(reconciler)
        assert credentials is not None
        settings = ServerSettings(
            database=reconciler.db, credentials=credentials, run_scheduler=False
        )
        async with serving(create_app(reconciler, settings)) as server:
            yield reconciler, server
    finally:
        await reconciler.close()


async def test_signed_push_runs_a_real_deploy_and_streams_its_log(
    api_repo: ConfigRepo, age_identity: tuple[str, str], tmp_path: Path
) -> None:
    async with real_engine(api_repo, age_identity, tmp_path / "data") as (reconciler, server):
        token = TokenStore(reconciler.db).create("alice")
        body = github_push(sha="a" * 40)
        started = time.perf_counter()
        headers = github_headers(body)
        async with server.client() as anonymous:
            answer = await anonymous.post(
                "/api/release/webhooks/app.gh/trigger", content=body, headers=headers
            )
        assert answer.status_code == 202, answer.text
        run_id = answer.json()["run_id"]
        async with server.client(token) as client:
            # The run was created by the real engine, as a webhook run of the pushed commit.
            run = (await client.get(f"/api/release/runs/{run_id}")).json()
            assert (run["trigger"], run["version"], run["environment"]) == (
                "webhook",
                "a" * 40,
                "dev",
            )
            latency = time.perf_counter() - started
            lines = []
            async with client.stream("GET", f"/api/release/runs/{run_id}/logs/stream") as stream:
                async for raw in stream.aiter_lines():
                    if raw.startswith("data:"):
                        lines.append(json.loads(raw[5:])["line"])
                    if raw.startswith("event: end"):
                        break
            await reconciler.wait_idle()
            final = (await client.get(f"/api/release/runs/{run_id}")).json()
        assert final["state"] == RunState.SUCCEEDED.value, final
        assert "deploy" in lines  # the script's own output, streamed live
        assert latency < 5  # generous: this asserts the path works, the benchmark measures it
        record = reconciler.history.record("app", "dev")
        assert record is not None and record.version == "a" * 40
        # The same delivery again is acknowledged and not acted on twice.
        async with server.client() as anonymous:
            again = await anonymous.post(
                "/api/release/webhooks/app.gh/trigger", content=body, headers=headers
            )
        assert again.status_code == 200 and "duplicate" in again.json()["reason"]
        assert reconciler.runs.list(project="app", env="dev")[1] == 1


LEAKY_DEPLOY = r"""
echo "plain: $LEAK"
printf 'b64: %s\n' "$(printf '%s' "$LEAK" | base64)"
head="${LEAK%???????}"; tail="${LEAK#"$head"}"
printf 'split: %s' "$head"; sleep 0.2; printf '%s\n' "$tail"
"""


async def test_a_secret_echoed_by_a_deploy_is_masked_everywhere(
    api_repo: ConfigRepo, age_identity: tuple[str, str], tmp_path: Path
) -> None:
    """Plain, base64 and split over two writes: the secret appears in no log, note, API answer or page."""
    indented = "\n".join("      " + line for line in LEAKY_DEPLOY.strip().splitlines())
    project = (
        API_FILES["projects/app/project.yaml"]
        .replace('  script: {run: "echo deploy"}', f"  script:\n    run: |\n{indented}")
        .replace("deploy:\n", "variables:\n  LEAK: {secret: app-hook}\ndeploy:\n", 1)
    )
    commit = api_repo.commit({"projects/app/project.yaml": project})
    forms = [HOOK_SECRET, base64.b64encode(HOOK_SECRET.encode()).decode()]
    async with real_engine(api_repo, age_identity, tmp_path / "data") as (reconciler, server):
        report = await reconciler.reconcile_once(only="app/dev")
        (run,) = report.runs
        assert run.state is RunState.SUCCEEDED, run.error
        stored = "\n".join(line.line for line in reconciler.logs.read(run.id))
        assert "plain: ***" in stored and "b64: ***" in stored and "split: ***" in stored
        seen = [stored, reconciler.history.note(commit) or ""]
        token = TokenStore(reconciler.db).create("alice")
        async with server.client(token) as client:
            for path in (
                f"/api/release/runs/{run.id}",
                f"/api/release/runs/{run.id}/logs",
                f"/api/release/runs/{run.id}/logs/export",
                "/api/release/projects",
                "/api/release/credentials",
                f"/runs/{run.id}",
                f"/runs/{run.id}/logs",
                "/",
            ):
                answer = await client.get(path)
                assert answer.status_code == 200, (path, answer.status_code)
                seen.append(answer.text)
    for text in seen:
        for form in forms:
            assert form not in text


async def test_a_build_webhook_for_a_project_that_does_not_build_is_refused_and_recorded(
    api_repo: ConfigRepo, age_identity: tuple[str, str], tmp_path: Path
) -> None:
    """The real engine has a Builder; project ``app`` enables no build → 422, a failed record."""
    async with real_engine(api_repo, age_identity, tmp_path / "data") as (reconciler, server):
        body = github_push("refs/tags/v3")
        async with server.client() as anonymous:
            answer = await anonymous.post(
                "/api/release/webhooks/app.gh-build/trigger",
                content=body,
                headers=github_headers(body),
            )
        assert answer.status_code == 422, answer.text
        assert "no enabled build settings" in answer.json()["error"]["message"]
        async with server.client(TokenStore(reconciler.db).create("alice")) as client:
            listed = await client.get(
                "/api/release/triggers/records", params={"trigger": "app.gh-build"}
            )
        (record,) = listed.json()["items"]
        assert record["status"] == "failed" and "no enabled build settings" in record["reason"]
        assert reconciler.builder.store.list("app", 10) == []
