"""The server with the real engine: a signed GitHub push starts a real run whose log streams over SSE.

Everything is real here, as in the whole API suite: the config repo (git), SOPS
credentials decrypted with an age key, the Reconciler with local targets, the Starlette
app under uvicorn, httpx. These follow one release end to end: from the push to the
streamed log and the history, and a secret through every place it could leak.
"""

from __future__ import annotations

import base64
import json
import time

import pytest
from api import configs
from api.configs import HOOK_SECRET
from api.servers import LiveServer
from api.test_webhooks import github_headers, github_push
from gitrepos import ConfigRepo

from reconciler.engine.reconciling import Reconciler
from reconciler.runs import RunState

pytestmark = pytest.mark.integration


async def test_signed_push_runs_a_real_deploy_and_streams_its_log(
    engine: Reconciler, server: LiveServer, tokens: dict[str, str]
) -> None:
    body = github_push(sha="a" * 40)
    started = time.perf_counter()
    headers = github_headers(body)
    async with server.client() as anonymous:
        answer = await anonymous.post(
            "/api/release/webhooks/app.gh/trigger", content=body, headers=headers
        )
    assert answer.status_code == 202, answer.text
    run_id = answer.json()["run_id"]
    async with server.client(tokens["alice"]) as client:
        # The run was created by the real engine, as a webhook run of the pushed commit.
        run = (await client.get(f"/api/release/runs/{run_id}")).json()
        assert (run["trigger"], run["version"], run["environment"]) == ("webhook", "a" * 40, "dev")
        latency = time.perf_counter() - started
        lines = []
        async with client.stream("GET", f"/api/release/runs/{run_id}/logs/stream") as stream:
            async for raw in stream.aiter_lines():
                if raw.startswith("data:"):  # a "lines" event: many lines at once
                    lines.extend(line["line"] for line in json.loads(raw[5:]))
                if raw.startswith("event: end"):
                    break
        await engine.wait_idle()
        final = (await client.get(f"/api/release/runs/{run_id}")).json()
    assert final["state"] == RunState.SUCCEEDED.value, final
    assert "deploy" in lines  # the script's own output, streamed live
    assert latency < 5  # generous: this asserts the path works, the benchmark measures it
    record = engine.history.record("app", "dev")
    assert record is not None and record.version == "a" * 40
    # The same delivery again is acknowledged and not acted on twice.
    async with server.client() as anonymous:
        again = await anonymous.post(
            "/api/release/webhooks/app.gh/trigger", content=body, headers=headers
        )
    assert again.status_code == 200 and "duplicate" in again.json()["reason"]
    assert engine.runs.list(project="app", env="dev")[1] == 1


LEAKY_DEPLOY = r"""
echo "plain: $LEAK"
printf 'b64: %s\n' "$(printf '%s' "$LEAK" | base64)"
head="${LEAK%???????}"; tail="${LEAK#"$head"}"
printf 'split: %s' "$head"; sleep 0.2; printf '%s\n' "$tail"
"""


async def test_a_secret_echoed_by_a_deploy_is_masked_everywhere(
    api_repo: ConfigRepo, engine: Reconciler, server: LiveServer, tokens: dict[str, str]
) -> None:
    """Plain, base64 and split over two writes: the secret appears in no log, note, API answer or page."""
    indented = "\n".join("      " + line for line in LEAKY_DEPLOY.strip().splitlines())
    leaky = f"variables:\n  LEAK: {{secret: app-hook}}\ndeploy:\n  type: script\n  script:\n    run: |\n{indented}\n"
    project = api_repo.read("projects/app/project.yaml").replace(configs.DEPLOY, leaky)
    commit = api_repo.commit({"projects/app/project.yaml": project})
    forms = [HOOK_SECRET, base64.b64encode(HOOK_SECRET.encode()).decode()]
    report = await engine.reconcile_once(only="app/dev")  # loads the commit, releases dev
    (run,) = report.runs
    assert run.state is RunState.SUCCEEDED, run.error
    stored = "\n".join(line.line for line in engine.logs.read(run.id))
    assert "plain: ***" in stored and "b64: ***" in stored and "split: ***" in stored
    seen = [stored, engine.history.note(commit) or ""]
    async with server.client(tokens["alice"]) as client:
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
