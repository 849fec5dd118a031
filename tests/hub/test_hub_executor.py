"""``HubExecutor``: what it tells an agent a command is for, and where it runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from reconciler.drivers import container, git_pull
from reconciler.engine.agents import HubExecutor, deploy_type_of
from reconciler.hub.server import Hub
from reconciler.targets.commands import TargetRef

if TYPE_CHECKING:
    from conftest import Fleet


def test_the_drivers_fixed_programs_are_their_deploy_type_and_anything_else_is_script() -> None:
    assert deploy_type_of(git_pull.FETCH) == "git_pull"
    for program in (
        container.DEPLOY,
        container.INSPECT,
        container.REMOVE,
        container.RESTART_PREVIOUS,
    ):
        assert deploy_type_of(program) == "container"
    # Shell from the config repo, even the restart of a git_pull deploy.
    assert deploy_type_of(git_pull.RESTART_PROLOGUE + "systemctl restart app") == "script"
    assert deploy_type_of("echo deploy") == "script"


@pytest.mark.integration
async def test_agent_targets_run_in_their_work_dir_and_refusals_are_step_errors(
    hub: Hub, fleet: Fleet
) -> None:
    agent = fleet.spawn(hub, "web-1", extra=("--allow-deploy-types", "git_pull"))
    await hub.wait_for_agents(["web-1"], timeout=10)
    executor = HubExecutor(hub)
    target = TargetRef("web-1", "agent", work_dir="quicflow/shop/prod")
    lines: list[str] = []
    result = await executor.run(
        target, "run-1:web-1/git-pull", git_pull.FETCH,
        {"QUICFLOW_GIT_REPO": "/no/such/repo", "QUICFLOW_GIT_REF": "v1", "QUICFLOW_GIT_DIR": "app"},
        30, lambda channel, text: lines.append(text),
    )  # fmt: skip
    # Accepted (it is the git_pull program) and run inside the target's work dir, where
    # it created the checkout before the fetch failed.
    assert result.exit_code not in (0, None) and not result.error
    assert (agent.work_dir / "quicflow" / "shop" / "prod" / "app" / ".git").is_dir()

    result = await executor.run(
        target, "run-1:web-1/restart", "echo restarted", {}, 30, lambda channel, text: None
    )
    assert result.exit_code is None
    assert result.error.startswith("refused: this agent does not accept 'script' commands")
