"""The JSON API over real HTTP: health, authentication, projects, runs, errors."""

from __future__ import annotations

from api import driving
from api.servers import LiveServer
from gitrepos import ConfigRepo

from reconciler.engine.reconciling import Reconciler
from reconciler.runs import RunState, Trigger


async def test_health_and_readiness_need_no_login(server: LiveServer) -> None:
    async with server.client() as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


async def test_projects_show_desired_deployed_and_last_run(
    server: LiveServer, engine: Reconciler, tokens: dict[str, str]
) -> None:
    # A first release that fails: dev has a last run but nothing deployed yet. The manual
    # deploy committed its version to Git, so Git asks for it and holds it as failed.
    run = await driving.start(engine, "dev", "1.0.1-fails")
    assert run.state is RunState.FAILED
    async with server.client(tokens["vic"]) as client:
        answer = await client.get("/api/release/projects")
    assert answer.status_code == 200
    (project,) = answer.json()["items"]  # vic sees only app
    assert project["name"] == "app" and project["role"] == "viewer"
    dev = next(e for e in project["environments"] if e["name"] == "dev")
    assert dev["desired_version"] == "1.0.1-fails"
    assert dev["deployed_version"] is None
    assert dev["drift"] == "failed_before"
    assert dev["last_run"]["id"] == run.id


async def test_run_actions_the_engine_refuses_answer_with_its_reason(
    server: LiveServer, engine: Reconciler, api_repo: ConfigRepo, tokens: dict[str, str]
) -> None:
    """The API lets these through; the real engine refuses them, and the answer says why."""
    gate = "pipeline:\n  stages:\n    - name: release\n      approval: {roles: [owner]}\n"
    tasks = "      tasks:\n        - {name: deploy, uses: deploy}\n"
    project = api_repo.read("projects/app/project.yaml") + gate + tasks
    api_repo.commit({"projects/app/project.yaml": project}, message="owners sign dev off")
    await engine.refresh()
    run = await driving.start(engine, "dev")
    assert run.state is RunState.WAITING_APPROVAL
    runs = f"/api/release/runs/{run.id}"
    async with server.client(tokens["mike"]) as mike, server.client(tokens["olga"]) as olga:
        by_role = await mike.post(f"{runs}/approve", json={})  # dev: maintainers may approve …
        promote = await olga.post(f"{runs}/promote", json={})  # … a gate, not a canary step
        approved = await olga.post(f"{runs}/approve", json={"comment": "ship it"})
        await engine.wait_idle()
        again = await olga.post(f"{runs}/approve", json={})
        unknown = await olga.post("/api/release/runs/r-nope/approve", json={})
        rollback = await olga.post("/api/release/projects/app/environments/dev/rollback")
        pinned = await olga.post(
            "/api/release/projects/app/environments/dev/rollback",
            json={"to_version": "0.9.0", "pin": True},
        )
        await engine.wait_idle()
    assert by_role.status_code == 403
    assert "may not approve stage 'release': needs owner" in by_role.json()["error"]["message"]
    assert promote.status_code == 409
    assert promote.json()["error"]["message"] == (
        f"run {run.id} waits at 'approval:release'; use approve"
    )
    assert approved.status_code == 200
    decision = engine.runs.decision(run.id, "approval:release")
    assert decision is not None and (decision.user, decision.comment) == ("olga", "ship it")
    assert driving.current(engine, run).state is RunState.SUCCEEDED
    assert again.status_code == 409
    assert again.json()["error"]["message"] == (
        f"run {run.id} is succeeded, not waiting for approval"
    )
    assert unknown.status_code == 404
    assert rollback.status_code == 409  # 1.0.0 is the only release so far
    assert "no earlier successful version" in rollback.json()["error"]["message"]
    assert pinned.status_code == 202 and pinned.json()["commit"] is None
    back = engine.runs.get(pinned.json()["run"]["id"])
    assert back is not None
    assert (back.trigger, back.version, back.actor) == (Trigger.ROLLBACK, "0.9.0", "olga")
    assert back.state is RunState.WAITING_APPROVAL  # a pinned rollback passes the gates too


async def test_writes_to_configuration_answer_405_naming_the_file_to_commit(
    server: LiveServer, tokens: dict[str, str]
) -> None:
    async with server.client(tokens["olga"]) as client:
        webhook = await client.post("/api/release/projects/app/webhooks", json={"name": "x"})
        env = await client.put("/api/release/projects/app/environments/prod", json={})
        members = await client.delete("/api/release/projects/app/members")
        credentials = await client.post("/api/release/credentials", json={})
    assert webhook.status_code == 405
    assert webhook.json()["error"]["code"] == "method_not_allowed"
    assert (
        "create webhooks by committing to projects/app/project.yaml"
        in (webhook.json()["error"]["message"])
    )
    assert "GET" in webhook.headers["allow"]
    assert "projects/app/environments/prod.yaml" in env.json()["error"]["message"]
    assert env.status_code == members.status_code == credentials.status_code == 405
    assert "projects/app/project.yaml (members)" in members.json()["error"]["message"]
    assert "credentials.sops.yaml" in credentials.json()["error"]["message"]
