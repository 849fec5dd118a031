"""Deploy drivers: how a release reaches a target (script, git_pull, container, kubernetes).

A driver knows *what* to do for its deploy type; strategies decide *when* and *where*;
executors (``reconciler.targets``) decide *how a command gets there*. Every
driver offers the same steps — deploy, verify, switch, retire, rollback — so rolling,
canary and blue-green work over any of them. Drivers never build shell strings from
config values: values travel as environment variables of fixed scripts. The
``kubernetes`` driver runs no command on a host: its one target is the cluster
namespace, reached through the API server (``reconciler.drivers.kubernetes``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from reconciler.gitops import model
from reconciler.targets import resolving
from reconciler.targets.commands import CommandResult, TargetRef

_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")


class StepFailed(Exception):
    """A driver step failed on a target; the message says where and why (already masked)."""

    def __init__(self, target: str, message: str, timed_out: bool = False):
        super().__init__(f"{target}: {message}")
        self.target = target
        self.timed_out = timed_out


@dataclass(frozen=True, slots=True)
class Health:
    ok: bool
    detail: str = ""


class DeployContext(Protocol):
    """What a driver may use of the run it works for."""

    env: model.Environment
    version: str
    previous_version: str | None

    def variables(
        self, target: TargetRef | None, version: str, color: str | None = None
    ) -> dict[str, str]: ...

    async def execute(
        self,
        target: TargetRef,
        script: str,
        *,
        key: str,
        env: Mapping[str, str],
        timeout: float | None = None,
        cwd: str | None = None,
    ) -> CommandResult: ...

    def log(self, source: str, text: str) -> None: ...


class Driver(Protocol):
    """The steps every deploy type offers to the strategies."""

    async def deploy(
        self, ctx: DeployContext, target: TargetRef, version: str, color: str | None
    ) -> None: ...

    async def verify(self, ctx: DeployContext, target: TargetRef, color: str | None) -> Health: ...

    async def switch(
        self, ctx: DeployContext, targets: Sequence[TargetRef], color: str
    ) -> None: ...

    async def retire(self, ctx: DeployContext, target: TargetRef, color: str) -> None: ...

    async def rollback(
        self, ctx: DeployContext, target: TargetRef, version: str, color: str | None
    ) -> None: ...


def render(text: str, values: Mapping[str, str | None]) -> str:
    """Replace ``{{ name }}`` placeholders; unknown names are left as they are."""
    return _PLACEHOLDER.sub(
        lambda m: str(values[m.group(1)]) if values.get(m.group(1)) is not None else m.group(0),
        text,
    )


def for_deploy(
    deploy: model.DeployConfig, strategy: model.Strategy, repo_url: str | None = None
) -> Driver:
    """The driver for a deploy config (imported lazily: drivers import this module)."""
    from reconciler.drivers import container, git_pull, script

    if deploy.type is model.DeployType.KUBERNETES:
        from reconciler.drivers.kubernetes import driving

        return driving.KubernetesDriver(deploy, strategy)
    if deploy.type is model.DeployType.CONTAINER:
        return container.ContainerDriver(deploy, strategy)
    if deploy.type is model.DeployType.SCRIPT:
        return script.ScriptDriver(deploy, strategy)
    if deploy.type is model.DeployType.GIT_PULL:
        return git_pull.GitPullDriver(deploy, strategy, repo_url)
    raise StepFailed("*", f"deploy type {deploy.type.value!r} is not available in this build yet")


def targets_of(
    env: model.Environment, desired: model.DesiredState, data_dir: Path
) -> list[TargetRef]:
    """The targets a run of ``env`` deploys to: for Kubernetes, its one cluster namespace."""
    if env.deploy.type is model.DeployType.KUBERNETES:
        from reconciler.drivers.kubernetes import specs

        spec = specs.read(env.deploy)
        return [TargetRef(specs.target_name(spec), "kubernetes", spec.server or "", None)]
    return resolving.resolve(env, desired, data_dir)


async def run_switch(
    ctx: DeployContext,
    targets: Sequence[TargetRef],
    script: str | None,
    env_for: Callable[[TargetRef], dict[str, str]],
    timeout: float | None,
) -> None:
    """Blue-green: run the ``switch`` script (e.g. repoint a proxy) on every target, in order."""
    if not script:
        return
    for target in targets:
        result = await ctx.execute(
            target, script, key="switch", env=env_for(target), timeout=timeout
        )
        check(result, target, "switch script")


def check(result: CommandResult, target: TargetRef, what: str) -> None:
    """Raise StepFailed unless the command succeeded."""
    if result.timed_out:
        raise StepFailed(
            target.name, f"{what} timed out after {result.duration:.1f}s", timed_out=True
        )
    if result.cancelled:
        raise StepFailed(target.name, f"{what} was cancelled")
    if result.exit_code != 0:
        detail = result.error or (
            f"signal {result.signal}" if result.signal else f"exit code {result.exit_code}"
        )
        raise StepFailed(target.name, f"{what} failed ({detail})")
