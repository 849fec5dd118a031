"""Authentication and the project permission matrix, over real HTTP against the real engine.

The matrix test is table-driven: every role × every run action × an unprotected (dev)
and a protected (prod) environment, on the gated config (approval, then a canary
promote) with 0.9.0 and then 1.0.0 released to both. Each action is tried on a run the
real engine put in the state the action applies to. Non-members get 404 (the project
does not exist for them), members without the role 403; an allowed action has its real
effect (a run, a recorded decision, a revert commit, a cancelled run), a refused one none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime

import httpx
import pytest
from api import configs, driving
from api.servers import LiveServer, serving
from gitrepos import ConfigRepo, git
from starlette.applications import Starlette

from reconciler.api.app import ServerSettings, create_app
from reconciler.engine.reconciling import Reconciler
from reconciler.runs import RunState, Trigger

ALLOW = "allow"
ACTIONS = ("deploy", "rollback", "approve", "reject", "cancel", "promote", "view")

# user, role on project app, answer in dev (unprotected), answer in prod (protected)
MATRIX = [
    ("alice", "is_admin", ALLOW, ALLOW),
    ("olga", "owner", ALLOW, ALLOW),
    ("mike", "maintainer", ALLOW, ALLOW),
    ("dev", "developer", ALLOW, 403),
    ("vic", "viewer", 403, 403),
    ("nora", "not a member", 404, 404),
]
VIEW = {"alice": ALLOW, "olga": ALLOW, "mike": ALLOW, "dev": ALLOW, "vic": ALLOW, "nora": 404}
PREVIOUS = "0.9.0"


@pytest.fixture(scope="module")
def api_files() -> Mapping[str, str]:
    return configs.GATED_FILES


@pytest.fixture(scope="module")
def api_releases() -> tuple[str, ...]:
    return (PREVIOUS, "1.0.0")  # so a rollback has an earlier good version to go back to


def _revert(repo: ConfigRepo, commit: str, env: str) -> tuple[str, str]:
    """The environment file at ``commit`` and the commit's message."""
    text = git(repo.path, "show", f"{commit}:projects/app/environments/{env}.yaml")
    return text, git(repo.path, "log", "-1", "--format=%B", commit)


async def _attempt(
    client: httpx.AsyncClient,
    engine: Reconciler,
    repo: ConfigRepo,
    user: str,
    action: str,
    env: str,
) -> tuple[int, str]:
    """``user`` does ``action`` in app/``env``; (HTTP status, its real effect or '' for none)."""
    if action == "deploy":
        before = engine.runs.list("app", env)[1]
        answer = await client.post(f"/api/release/projects/app/environments/{env}/deploy", json={})
        await engine.wait_idle()
        found, total = engine.runs.list("app", env)
        if total == before:
            return answer.status_code, ""
        run = found[0]
        assert (run.actor, run.trigger, run.version) == (user, Trigger.MANUAL, "1.0.0")
        return answer.status_code, f"run {run.id} {run.state.value}"
    if action == "rollback":
        head = engine.repo.ref_target("refs/heads/main")
        answer = await client.post(
            f"/api/release/projects/app/environments/{env}/rollback", json={}
        )
        after = engine.repo.ref_target("refs/heads/main")
        if after == head:
            return answer.status_code, ""
        text, message = _revert(repo, str(after), env)
        assert answer.json()["commit"] == after and f'version: "{PREVIOUS}"' in text
        assert f"Requested by {user}." in message
        return answer.status_code, f"revert commit {after}"
    gate = configs.PROMOTE_GATE if action == "promote" else configs.APPROVAL_GATE
    run = await driving.waiting_at(engine, env, gate)
    if action == "view":
        answer = await client.get(f"/api/release/runs/{run.id}")
        return answer.status_code, ""
    answer = await client.post(f"/api/release/runs/{run.id}/{action}", json={})
    await engine.wait_idle()
    after = driving.current(engine, run)
    decision = engine.runs.decision(run.id, gate)
    if action == "cancel":
        if after.state is not RunState.CANCELLED:
            return answer.status_code, ""
        assert after.error == f"cancelled by {user}"
        return answer.status_code, "cancelled"
    if decision is None:
        assert after.state is RunState.WAITING_APPROVAL and after.detail["gate"] == gate
        return answer.status_code, ""
    assert decision.user == user and decision.approved is (action != "reject")
    return answer.status_code, f"{gate} decided, run {after.state.value}"


@pytest.mark.parametrize(("user", "role", "in_dev", "in_prod"), MATRIX, ids=[m[1] for m in MATRIX])
async def test_permission_matrix(
    server: LiveServer,
    engine: Reconciler,
    api_repo: ConfigRepo,
    tokens: dict[str, str],
    user: str,
    role: str,
    in_dev: object,
    in_prod: object,
) -> None:
    wrong = []
    async with server.client(tokens[user]) as client:
        for env, expected in (("dev", in_dev), ("prod", in_prod)):
            for action in ACTIONS:
                wanted = VIEW[user] if action == "view" else expected
                status, effect = await _attempt(client, engine, api_repo, user, action, env)
                ok = (
                    (status in (200, 202) and (action == "view" or effect != ""))
                    if wanted == ALLOW
                    else (status == wanted and effect == "")
                )
                if not ok:
                    wrong.append(
                        f"{user} ({role}) {action} in {env}: got {status} with effect "
                        f"{effect or 'none'}, wanted {wanted}"
                    )
    assert wrong == []


async def test_refusals_say_which_role_is_needed(
    server: LiveServer, tokens: dict[str, str]
) -> None:
    async with server.client(tokens["dev"]) as client:
        answer = await client.post("/api/release/projects/app/environments/prod/deploy")
    assert answer.status_code == 403
    assert answer.json()["error"] == {
        "code": "forbidden",
        "message": "deploy on protected environment app/prod needs role maintainer or higher; dev is developer",
    }


async def test_non_members_cannot_tell_a_project_exists(
    server: LiveServer, tokens: dict[str, str]
) -> None:
    async with server.client(tokens["nora"]) as client:
        hidden = await client.get("/api/release/projects/app")
        missing = await client.get("/api/release/projects/nothing-here")
        listed = (await client.get("/api/release/projects")).json()
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["error"]["message"] == "project 'app' does not exist"
    assert [p["name"] for p in listed["items"]] == ["other"]


async def test_requests_without_credentials_are_refused(server: LiveServer) -> None:
    async with server.client() as client:
        api = await client.get("/api/release/projects")
        page = await client.get("/runs/x")
        bad = await client.get(
            "/api/release/projects", headers={"Authorization": "Bearer qft_nope"}
        )
    assert api.status_code == 401 and api.headers["www-authenticate"] == "Bearer"
    assert page.status_code == 303 and page.headers["location"] == "/login?next=%2Fruns%2Fx"
    assert bad.status_code == 401


async def test_failed_authentication_is_rate_limited_per_address(
    engine: Reconciler, settings: ServerSettings, tokens: dict[str, str]
) -> None:
    app = create_app(engine, replace(settings, auth_max_failures=3, auth_failure_window=30))
    good = app.state.tokens.create("olga")
    async with serving(app) as live, live.client() as client:
        codes = [
            (
                await client.get(
                    "/api/release/projects", headers={"Authorization": f"Bearer qft_guess{i}"}
                )
            ).status_code
            for i in range(4)
        ]
        blocked = await client.get(
            "/api/release/projects", headers={"Authorization": f"Bearer {good}"}
        )
        still_bad = await client.get(
            "/api/release/projects", headers={"Authorization": "Bearer qft_guess9"}
        )
    assert codes == [401, 401, 401, 429]
    assert still_bad.status_code == 429 and int(still_bad.headers["retry-after"]) > 0
    # A good token from the same address (a NAT, a proxy) is never locked out.
    assert blocked.status_code == 200


async def test_tokens_are_stored_hashed_and_revocable(app: Starlette, server: LiveServer) -> None:
    token = app.state.tokens.create("olga")
    stored = [tuple(row) for row in app.state.tokens.db.query("SELECT * FROM api_tokens")]
    assert token not in repr(stored)
    async with server.client(token) as client:
        assert (await client.get("/api/release/me")).json()["username"] == "olga"
        assert app.state.tokens.revoke(token)
        assert (await client.get("/api/release/me")).status_code == 401


async def test_browser_login_sets_a_strict_session_cookie_that_only_reads(
    server: LiveServer, engine: Reconciler, tokens: dict[str, str]
) -> None:
    runs_before = engine.runs.list()[1]
    async with server.client() as client:
        refused = await client.post("/login", data={"token": "qft_wrong", "next": "/"})
        login = await client.post(
            "/login", data={"token": tokens["olga"], "next": "//evil.example/"}
        )
        cookie = login.headers["set-cookie"]
        page = await client.get("/")
        act = await client.post("/api/release/projects/app/environments/dev/deploy")
        logout = await client.post("/logout")
        after = await client.get("/api/release/me")
    assert refused.status_code == 401
    assert login.status_code == 303 and login.headers["location"] == "/"
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and tokens["olga"] not in cookie
    assert page.status_code == 200 and "olga" in page.text
    assert act.status_code == 403 and act.json()["error"]["code"] == "read_only_session"
    assert engine.runs.list()[1] == runs_before  # nothing was deployed
    assert logout.status_code == 303
    assert after.status_code == 401


async def test_anonymous_status_page_opens_reading_only(
    api_repo: ConfigRepo, engine: Reconciler, settings: ServerSettings
) -> None:
    quicflow = api_repo.read("quicflow.yaml").replace(
        "settings:\n", "settings:\n  anonymous_status_page: true\n"
    )
    api_repo.commit({"quicflow.yaml": quicflow}, message="open the status page")
    await engine.refresh()
    runs_before = engine.runs.list()[1]
    async with serving(create_app(engine, settings)) as live, live.client() as client:
        page = await client.get("/")
        projects = await client.get("/api/release/projects")
        act = await client.post("/api/release/projects/app/environments/dev/deploy")
    assert page.status_code == 200 and "anonymous" in page.text
    assert [p["name"] for p in projects.json()["items"]] == ["app", "other"]
    assert act.status_code == 401
    assert engine.runs.list()[1] == runs_before  # nothing was deployed


async def test_an_open_status_page_gives_anonymous_readers_no_more_than_a_viewer(
    api_repo: ConfigRepo, engine: Reconciler, settings: ServerSettings
) -> None:
    """Trigger records (committers, source IPs), agents, credential audits and the config
    commit in force need a login; the release state does not."""
    quicflow = api_repo.read("quicflow.yaml").replace(
        "settings:\n", "settings:\n  anonymous_status_page: true\n"
    )
    api_repo.commit({"quicflow.yaml": quicflow}, message="open the status page")
    await engine.refresh()
    app = create_app(engine, settings)
    app.state.records.add(
        datetime.now(UTC), "app.gh", "failed", "forged", project="app", source_ip="198.51.100.9"
    )
    token = app.state.tokens.create("vic")  # a viewer of app
    async with serving(app) as live:
        async with live.client() as anonymous:
            records = await anonymous.get("/api/release/triggers/records")
            agents = await anonymous.get("/api/release/agents")
            audit = await anonymous.get("/api/release/credentials/app/app-hook/logs")
            agents_page = await anonymous.get("/agents")
            ready = await anonymous.get("/readyz")
            overview = await anonymous.get("/api/release/projects")
        async with live.client(token) as viewer:
            viewer_records = await viewer.get("/api/release/triggers/records")
            viewer_ready = await viewer.get("/readyz")
    assert records.status_code == 401 and "need a login" in records.json()["error"]["message"]
    assert "198.51.100.9" not in records.text
    assert agents.status_code == 401
    assert audit.status_code in (401, 404) and "198.51.100.9" not in audit.text
    assert agents_page.status_code == 303 and agents_page.headers["location"].startswith("/login")
    assert overview.status_code == 200
    assert ready.status_code == 200 and "commit" not in ready.json()
    assert engine.desired is not None
    assert viewer_ready.json()["commit"] == engine.desired.commit
    assert [r["source_ip"] for r in viewer_records.json()["items"]] == ["198.51.100.9"]


async def test_x_forwarded_for_is_believed_only_from_trusted_proxies(
    engine: Reconciler, settings: ServerSettings
) -> None:
    """Behind a trusted proxy, failures count against the forwarded client; from anyone
    else the header is ignored, so a client cannot pick the address it is counted under."""
    guess = {"Authorization": "Bearer qft_guess"}
    untrusted = create_app(engine, replace(settings, auth_max_failures=2))
    async with serving(untrusted) as live, live.client() as client:
        for client_ip in ("203.0.113.1", "203.0.113.2", "203.0.113.3"):
            spoofed = {**guess, "X-Forwarded-For": client_ip}
            last = await client.get("/api/release/projects", headers=spoofed)
    assert last.status_code == 429  # all three counted against 127.0.0.1

    proxied = create_app(
        engine, replace(settings, auth_max_failures=2, trusted_proxies=("127.0.0.0/8",))
    )
    async with serving(proxied) as live, live.client() as client:
        codes = []
        for client_ip in ("203.0.113.1", "203.0.113.1", "203.0.113.1", "203.0.113.2"):
            forwarded = {**guess, "X-Forwarded-For": f"{client_ip}, 127.0.0.5"}
            codes.append((await client.get("/api/release/projects", headers=forwarded)).status_code)
    assert codes == [401, 401, 429, 401]  # .1 limited; .2, behind the same proxy, is not


def test_a_trusted_proxy_that_is_no_address_is_named() -> None:
    from reconciler.api import auth

    with pytest.raises(ValueError, match="trusted proxy 'proxy.local' is not an IP address"):
        auth.proxy_networks(["10.0.0.0/8", "proxy.local"])


async def test_who_decided_a_gate_and_their_comment_reach_the_run_page_api_and_git(
    server: LiveServer, engine: Reconciler, tokens: dict[str, str], api_repo: ConfigRepo
) -> None:
    run = await driving.start(engine, "dev", "1.1.0")
    assert run.state is RunState.WAITING_APPROVAL
    async with server.client(tokens["olga"]) as client:
        waiting = (await client.get(f"/api/release/runs/{run.id}")).json()
        approved = await client.post(
            f"/api/release/runs/{run.id}/approve", json={"comment": "LGTM, ship it"}
        )
        assert approved.status_code == 200, approved.text
        await engine.wait_idle()
        view = (await client.get(f"/api/release/runs/{run.id}")).json()
    assert waiting["gate"] == configs.APPROVAL_GATE and waiting["decisions"] == []
    (decision,) = view["decisions"]
    assert (decision["gate"], decision["decision"], decision["by"], decision["comment"]) == (
        configs.APPROVAL_GATE,
        "approved",
        "olga",
        "LGTM, ship it",
    )
    async with server.client() as client:
        await client.post("/login", data={"token": tokens["olga"], "next": "/"})
        page = await client.get(f"/runs/{run.id}")  # the client keeps the session cookie
    assert page.status_code == 200
    assert 'id="decisions"' in page.text and "LGTM, ship it" in page.text and "olga" in page.text

    ended = await driving.through_gates(engine, driving.current(engine, run))
    assert ended.state is RunState.SUCCEEDED
    note = git(api_repo.path, "notes", "--ref=quicflow", "show", ended.config_commit)
    assert f"approved {configs.APPROVAL_GATE} by olga" in note and "LGTM, ship it" in note
    state = git(api_repo.path, "log", "-1", "--format=%B", "refs/quicflow/state")
    assert "Decision: approved approval:release by olga" in state and "LGTM, ship it" in state
