"""The container driver's pure parts, with a recording context instead of a target.

What reaches the target: always one of the fixed scripts, with every value in its
environment; names, ports and labels as the strategies need them; exit codes mapped
to health reasons; rollback falling back to a pull when no previous container is kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest

from reconciler.drivers import StepFailed, container, for_deploy
from reconciler.gitops import model
from reconciler.targets.commands import CommandResult, TargetRef

SPEC = {
    "image": "reg.example:5000/shop/web:{{ version }}",
    "registry_credential": "registry",
    "ports": ["127.0.0.1:8000:80", "9000:9000/udp"],
    "volumes": ["/srv/data:/data:ro"],
    "labels": {"team": "shop; touch /pwned"},
    "command": ["serve", "--flag=$(reboot)"],
    "restart_policy": "unless-stopped",
    "resources": {"cpus": 0.5, "memory": "256m"},
    "stop_signal": "SIGINT",
    "stop_timeout": "3s",
}


@dataclass
class Context:
    """A DeployContext that records commands and answers with scripted exit codes."""

    env: model.Environment
    version: str = "2.0"
    previous_version: str | None = "1.0"
    secrets: dict[str, str] = field(
        default_factory=lambda: {"registry.username": "u", "registry.password": "pw-secret"}
    )
    detail: dict[str, str] = field(default_factory=dict)
    codes: list[int] = field(default_factory=list)
    calls: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)

    def variables(
        self, target: TargetRef | None, version: str, color: str | None = None
    ) -> dict[str, str]:
        return {
            "GREETING": "hi there",
            "MULTI": "a\nb",
            "QUICFLOW_RUN_ID": "r-1",
            "QUICFLOW_VERSION": version,
            "QUICFLOW_IMAGE_DIGEST": self.detail.get("digest", ""),
        }

    async def execute(
        self,
        target: TargetRef,
        script: str,
        *,
        key: str,
        env: Mapping[str, str],
        timeout: float | None = None,
        cwd: str | None = None,
    ) -> CommandResult:
        self.calls.append((key, script, dict(env)))
        code = self.codes.pop(0) if self.codes else 0
        return CommandResult(code, 0.01)

    def log(self, source: str, text: str) -> None:
        return None


def _env(strategy: model.Strategy, spec: Mapping = SPEC, health: Mapping | None = None):
    deploy = model.DeployConfig(model.DeployType.CONTAINER, spec, health or {}, 30.0)
    return model.Environment(
        project="shop",
        name="prod",
        version="2.0",
        tier="production",
        protected=False,
        strategy=strategy,
        deploy=deploy,
        build=model.BuildConfig(),
        pipeline=model.Pipeline(()),
    )


ROLLING = model.Strategy(model.StrategyType.ROLLING, {})
BLUE_GREEN = model.Strategy(
    model.StrategyType.BLUE_GREEN, {"ports": {"blue": 8101, "green": 8102}, "switch": "true"}
)
AGENT = TargetRef("web-1", "agent", "10.0.0.5", 8080)
LOCAL = TargetRef("t1", "local", "127.0.0.1", 18001)


def _driver(env: model.Environment) -> container.ContainerDriver:
    driver = for_deploy(env.deploy, env.strategy)
    assert isinstance(driver, container.ContainerDriver)
    return driver


async def test_deploy_runs_the_fixed_script_with_every_value_in_the_environment() -> None:
    env = _env(ROLLING)
    ctx = Context(env)
    await _driver(env).deploy(ctx, AGENT, "2.0", None)
    ((key, script, sent),) = ctx.calls
    assert key == "container" and script == container.DEPLOY
    for value in ("pw-secret", "reg.example:5000", "pwned", "reboot", "hi there", "shop-prod"):
        assert value not in script
    assert sent["QUICFLOW_CONTAINER"] == "shop-prod"
    assert sent["QUICFLOW_IMAGE_REF"] == "reg.example:5000/shop/web:2.0"
    assert sent["QUICFLOW_IMAGE_REPO"] == "reg.example:5000/shop/web"
    assert sent["QUICFLOW_REGISTRY"] == "reg.example:5000"
    assert (sent["QUICFLOW_REGISTRY_USER"], sent["QUICFLOW_REGISTRY_PASSWORD"]) == (
        "u",
        "pw-secret",
    )
    assert sent["QUICFLOW_ENV_NAMES"].split("\n") == [
        "GREETING",
        "QUICFLOW_RUN_ID",
        "QUICFLOW_VERSION",
        "QUICFLOW_IMAGE_DIGEST",
    ]  # the multi-line value cannot go through an env file
    assert sent["QUICFLOW_RUN_COMMAND"].split("\n") == ["serve", "--flag=$(reboot)"]
    assert sent["QUICFLOW_KEEP_PREVIOUS"] == "1"
    args = sent["QUICFLOW_RUN_ARGS"].split("\n")
    assert args[:4] == ["--publish", "127.0.0.1:8080:80", "--publish", "9000:9000/udp"]
    for pair in (
        ["--volume", "/srv/data:/data:ro"],
        ["--label", "team=shop; touch /pwned"],
        ["--label", "quicflow.project=shop"],
        ["--label", "quicflow.env=prod"],
        ["--label", "quicflow.version=2.0"],
        ["--label", "quicflow.run=r-1"],
        ["--restart", "unless-stopped"],
        ["--cpus", "0.5"],
        ["--memory", "256m"],
        ["--stop-signal", "SIGINT"],
        ["--stop-timeout", "3"],
    ):
        assert any(args[i : i + 2] == pair for i in range(len(args))), pair
    assert args[-1] == "--init"


async def test_local_targets_and_colors_get_their_own_names_and_ports() -> None:
    env = _env(BLUE_GREEN)
    ctx = Context(env)
    driver = _driver(env)
    await driver.deploy(ctx, LOCAL, "2.0", "green")
    sent = ctx.calls[0][2]
    assert sent["QUICFLOW_CONTAINER"] == "shop-prod-t1-green"
    assert "127.0.0.1:8102:80" in sent["QUICFLOW_RUN_ARGS"].split("\n")
    assert "quicflow.color=green" in sent["QUICFLOW_RUN_ARGS"].split("\n")
    assert "QUICFLOW_KEEP_PREVIOUS" not in sent  # a color is replaced, never kept
    named = _env(ROLLING, {**SPEC, "name": "web-{{ env }}"})
    assert _driver(named).container_name(Context(named), LOCAL, None) == "web-prod-t1"
    by_target = _env(ROLLING, {**SPEC, "name": "{{ target }}-app"})
    assert _driver(by_target).container_name(Context(by_target), LOCAL, None) == "t1-app"
    await driver.retire(ctx, LOCAL, "blue")
    assert ctx.calls[-1][1] == container.REMOVE
    assert ctx.calls[-1][2]["QUICFLOW_CONTAINER"] == "shop-prod-t1-blue"


async def test_the_run_s_digest_pins_the_image_of_its_own_version_only() -> None:
    env = _env(ROLLING)
    ctx = Context(env, detail={"digest": "sha256:" + "a" * 64})
    driver = _driver(env)
    assert driver.image_ref(ctx, AGENT, "2.0") == "reg.example:5000/shop/web@sha256:" + "a" * 64
    assert driver.image_ref(ctx, AGENT, "1.0") == "reg.example:5000/shop/web:1.0"


async def test_clear_errors_for_a_missing_image_credential_or_placeholder() -> None:
    no_image = _env(ROLLING, {})
    with pytest.raises(StepFailed, match="deploy.container.image is not set"):
        await _driver(no_image).deploy(Context(no_image), AGENT, "2.0", None)
    env = _env(ROLLING)
    with pytest.raises(StepFailed, match="registry credential 'registry' was not resolved"):
        await _driver(env).deploy(Context(env, secrets={}), AGENT, "2.0", None)
    by_commit = _env(ROLLING, {**SPEC, "image": "r/x:{{ commit }}"})
    with pytest.raises(StepFailed, match="only known to a build"):
        await _driver(by_commit).deploy(Context(by_commit), AGENT, "2.0", None)
    newline = _env(ROLLING, {**SPEC, "labels": {"a": "x\ny"}})
    with pytest.raises(StepFailed, match="newline"):
        await _driver(newline).deploy(Context(newline), AGENT, "2.0", None)


@pytest.mark.parametrize(
    ("codes", "health", "ok", "detail"),
    [
        ([0], {}, True, "no health check configured"),
        ([6], {}, False, "the container is not running"),
        ([7], {}, False, "the container does not exist"),
        ([0, 0], {"docker": True, "retries": 1}, True, "shop-prod healthy"),
        ([0, 4], {"docker": True, "retries": 1}, False, "HEALTHCHECK reports unhealthy"),
        ([0, 3, 0], {"docker": True, "retries": 2, "interval": 0}, True, "healthy"),
        ([0, 5], {"docker": True, "retries": 1}, False, "image defines no HEALTHCHECK"),
    ],
)
async def test_verify_maps_inspect_exit_codes_to_health(
    codes: list[int], health: dict, ok: bool, detail: str
) -> None:
    env = _env(ROLLING, SPEC, health)
    ctx = Context(env, codes=list(codes))
    result = await _driver(env).verify(ctx, AGENT, None)
    assert result.ok is ok and detail in result.detail
    assert all(script == container.INSPECT for _, script, _ in ctx.calls)


async def test_rollback_restarts_the_kept_container_or_pulls_the_old_version() -> None:
    env = _env(ROLLING)
    kept = Context(env, codes=[0])
    await _driver(env).rollback(kept, AGENT, "1.0", None)
    assert [c[1] for c in kept.calls] == [container.RESTART_PREVIOUS]
    assert kept.calls[0][2]["QUICFLOW_VERSION"] == "1.0"
    gone = Context(env, codes=[10, 0])
    await _driver(env).rollback(gone, AGENT, "1.0", None)
    assert [c[1] for c in gone.calls] == [container.RESTART_PREVIOUS, container.DEPLOY]
    assert gone.calls[1][2]["QUICFLOW_IMAGE_REF"] == "reg.example:5000/shop/web:1.0"
    broken = Context(env, codes=[1])
    with pytest.raises(StepFailed, match="restarting the previous container failed"):
        await _driver(env).rollback(broken, AGENT, "1.0", None)
