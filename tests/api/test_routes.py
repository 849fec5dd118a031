"""The JSON API over real HTTP: health, authentication, projects, runs, errors."""

from __future__ import annotations

from api.recording import RecordingEngine
from api.servers import LiveServer

from reconciler.runs import RunState


async def test_health_and_readiness_need_no_login(server: LiveServer) -> None:
    async with server.client() as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


async def test_projects_show_desired_deployed_and_last_run(
    server: LiveServer, engine: RecordingEngine, tokens: dict[str, str]
) -> None:
    run = engine.add_run("app", "dev", "1.0.0", state=RunState.SUCCEEDED)
    async with server.client(tokens["vic"]) as client:
        answer = await client.get("/api/release/projects")
    assert answer.status_code == 200
    (project,) = answer.json()["items"]  # vic sees only app
    assert project["name"] == "app" and project["role"] == "viewer"
    dev = next(e for e in project["environments"] if e["name"] == "dev")
    assert dev["desired_version"] == "1.0.0"
    assert dev["deployed_version"] is None
    assert dev["drift"] == "never_deployed"
    assert dev["last_run"]["id"] == run.id
