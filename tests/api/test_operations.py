"""Credentials and alerts over HTTP: metadata without values, audit for the right roles, alert records."""

from __future__ import annotations

import pytest
from api.configs import HOOK_SECRET
from api.servers import serving
from gitrepos import ConfigRepo
from starlette.applications import Starlette

from reconciler.alert.notifier import Notifier
from reconciler.api.app import ServerSettings, create_app
from reconciler.credential.manager import CredentialManager
from reconciler.events import Event, EventType
from reconciler.gitops.loading import Loader
from reconciler.gitops.repository import GitRepository
from reconciler.store.database import Database


@pytest.fixture
def app(engine, database: Database, credentials: CredentialManager) -> Starlette:  # noqa: ANN001
    notifier = Notifier(database, desired=lambda: engine.desired)
    return create_app(
        engine,
        ServerSettings(
            database=database, credentials=credentials, notifier=notifier, run_scheduler=False
        ),
    )


async def test_credentials_list_metadata_never_values(
    app: Starlette, tokens: dict[str, str]
) -> None:
    async with serving(app) as server:
        async with server.client(tokens["vic"]) as viewer:
            answer = await viewer.get("/api/release/credentials")
        assert answer.status_code == 200
        ids = {c["id"] for c in answer.json()["items"]}
        assert ids == {"global:config-hook", "project:app:app-hook"}
        assert HOOK_SECRET not in answer.text
        async with server.client(tokens["nora"]) as outsider:  # member of another project only
            other = await outsider.get("/api/release/credentials")
        assert {c["id"] for c in other.json()["items"]} == {"global:config-hook"}


async def test_credential_audit_is_for_admins_owners_and_maintainers(
    app: Starlette, tokens: dict[str, str], credentials: CredentialManager
) -> None:
    credentials.get("app-hook", "app", actor="run:app/dev")  # one recorded use
    async with serving(app) as server:
        expected = {"alice": 200, "olga": 200, "mike": 200, "dev": 403, "vic": 403, "nora": 404}
        for user, status in expected.items():
            async with server.client(tokens[user]) as client:
                answer = await client.get("/api/release/credentials/project:app:app-hook/logs")
            assert answer.status_code == status, (user, answer.text)
            if status == 200:
                (entry,) = answer.json()["items"]
                assert (entry["action"], entry["actor"]) == ("use", "run:app/dev")
        async with server.client(tokens["olga"]) as owner:
            assert (
                await owner.get("/api/release/credentials/global:config-hook/logs")
            ).status_code == 403
            assert (await owner.get("/api/release/credentials/nope/logs")).status_code == 404


ALERTING = {
    "quicflow.yaml": """\
users:
  - {username: alice, email: alice@example.com, is_admin: true}
callbacks:
  - {name: ops, type: webhook, url: "http://127.0.0.1:9/hook", retry: {attempts: 1, timeout: 1s}}
alert_rules:
  - {name: prod-failed, event: deploy_failed, environment: prod, severity: critical, callbacks: [ops]}
""",
    "projects/app/project.yaml": "members:\n  - {user: alice, role: owner}\ndeploy:\n  type: script\n"
    "  script: {run: 'true'}\n",
    "projects/app/environments/prod.yaml": 'version: "1"\ntargets:\n  - {local: p}\n',
}


async def test_alert_rules_and_history(
    engine,
    database: Database,
    credentials: CredentialManager,
    tokens: dict[str, str],
    tmp_path,  # noqa: ANN001
) -> None:
    repo = ConfigRepo(tmp_path / "alerting")
    repo.commit(ALERTING)
    alerting = Loader(GitRepository.open(repo.path)).load().raise_for_problems()
    notifier = Notifier(database, desired=lambda: alerting)
    app = create_app(
        engine,
        ServerSettings(
            database=database, credentials=credentials, notifier=notifier, run_scheduler=False
        ),
    )
    await notifier.handle(
        Event(
            EventType.DEPLOY_FAILED,
            "2026-11-29T10:00:00Z",
            "r-1",
            "app",
            "prod",
            "1",
            error="health check failed",
        )
    )
    async with serving(app) as server:
        async with server.client(tokens["alice"]) as admin:
            rules = (await admin.get("/api/release/alerts/rules")).json()["items"]
            assert [(r["name"], r["severity"]) for r in rules] == [("prod-failed", "critical")]
            (record,) = (await admin.get("/api/release/alerts/history")).json()["items"]
            assert (record["severity"], record["project"], record["run"]) == (
                "critical",
                "app",
                "r-1",
            )
        async with server.client(tokens["vic"]) as viewer:  # a viewer of app sees its alerts
            assert len((await viewer.get("/api/release/alerts/history")).json()["items"]) == 1
        async with server.client(tokens["nora"]) as outsider:
            assert (await outsider.get("/api/release/alerts/history")).json()["items"] == []
            assert (
                await outsider.get("/api/release/alerts/history?project=app")
            ).status_code == 404
    await notifier.close()
