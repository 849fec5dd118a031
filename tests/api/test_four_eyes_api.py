"""The four-eyes rule over HTTP: ``POST /runs/{id}/approve`` by the change's author is a 403.

The real engine and server on ``GATED_FILES`` with ``approval: {four_eyes: true}`` on
app/dev. olga (owner) commits a release; the run waits at its approval; olga's approve
answers 403 naming the rule and her commit, mike's (maintainer) passes the gate.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from api import configs, driving
from api.servers import LiveServer
from gitrepos import ConfigRepo

from reconciler.engine.reconciling import Reconciler
from reconciler.runs import RunState

DEV_FILE = "projects/app/environments/dev.yaml"
DEV = 'version: "{}"\napproval: {{four_eyes: true}}\ntargets:\n  - {{local: dev-1}}\n'


@pytest.fixture(scope="module")
def api_files() -> Mapping[str, str]:
    return {**configs.GATED_FILES, DEV_FILE: DEV.format("1.0.0")}


async def test_the_author_of_a_release_may_not_approve_it_over_http(
    server: LiveServer, engine: Reconciler, api_repo: ConfigRepo, tokens: dict[str, str]
) -> None:
    commit = api_repo.commit(
        {DEV_FILE: DEV.format("1.1.0")}, "release 1.1.0", ("Olga Owner", "olga@example.com")
    )
    await engine.refresh()
    run = await driving.start(engine, "dev")
    assert (run.version, run.state) == ("1.1.0", RunState.WAITING_APPROVAL)
    approve = f"/api/release/runs/{run.id}/approve"
    async with server.client(tokens["olga"]) as olga, server.client(tokens["mike"]) as mike:
        refused = await olga.post(approve, json={"comment": "mine, fine"})
        shown = await olga.get(f"/api/release/runs/{run.id}")
        approved = await mike.post(approve, json={"comment": "reviewed"})
    assert refused.status_code == 403
    assert refused.json()["error"]["message"] == (
        f"four-eyes rule on app/dev: olga wrote this change (commit {commit[:10]}) "
        "and may not approve it; another member must"
    )
    assert shown.json()["state"] == "waiting_approval" and shown.json()["decisions"] == []
    assert approved.status_code == 200
    decision = engine.runs.decision(run.id, configs.APPROVAL_GATE)
    assert decision is not None and (decision.user, decision.comment) == ("mike", "reviewed")
