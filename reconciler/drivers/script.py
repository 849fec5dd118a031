"""The ``script`` deploy type: a shell script run on each target with the merged variables.

deploy runs ``deploy.script.run`` with ``QUICFLOW_VERSION`` set; rollback runs
``deploy.script.rollback`` (or ``run`` again) with the version to restore; blue-green
passes ``QUICFLOW_COLOR`` and ``QUICFLOW_PORT`` and runs the strategy's ``switch``
script on every target. Scripts run in the target's work dir, or in ``workdir``
(relative to it unless absolute).
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

from reconciler.drivers import DeployContext, Health, check, health, run_switch
from reconciler.gitops import model
from reconciler.targets.commands import TargetRef


class ScriptDriver:
    """Deploys by running a script on each target."""

    def __init__(self, deploy: model.DeployConfig, strategy: model.Strategy):
        self.deploy_config = deploy
        self.spec = deploy.spec
        self.starts = health.StartPeriods()
        self.ports = (
            dict(strategy.params.get("ports") or {})
            if strategy.type is model.StrategyType.BLUE_GREEN
            else {}
        )
        self.switch_script = (
            strategy.params.get("switch")
            if strategy.type is model.StrategyType.BLUE_GREEN
            else None
        )

    def _workdir(self, target: TargetRef) -> str | None:
        """``script.workdir``; a relative one is relative to the target's work dir."""
        workdir = self.spec.get("workdir")
        if not workdir:
            return None
        # An absolute workdir stays as it is (posixpath.join keeps the absolute part).
        return posixpath.join(target.work_dir, workdir) if target.work_dir else workdir

    def _env(
        self, ctx: DeployContext, target: TargetRef, version: str, color: str | None
    ) -> dict[str, str]:
        env = ctx.variables(target, version, color)
        if color and self.ports.get(color):
            env["QUICFLOW_PORT"] = str(self.ports[color])
        return env

    async def deploy(
        self, ctx: DeployContext, target: TargetRef, version: str, color: str | None
    ) -> None:
        result = await ctx.execute(
            target,
            self.spec["run"],
            key="deploy",
            env=self._env(ctx, target, version, color),
            timeout=self.deploy_config.timeout,
            cwd=self._workdir(target),
        )
        check(result, target, "deploy script")
        self.starts.deployed(target, color)

    async def verify(self, ctx: DeployContext, target: TargetRef, color: str | None) -> Health:
        port = self.ports.get(color) if color else None
        return await health.check(
            ctx, target, self.deploy_config.health, port, color, starts=self.starts
        )

    async def switch(self, ctx: DeployContext, targets: Sequence[TargetRef], color: str) -> None:
        await run_switch(
            ctx,
            targets,
            self.switch_script,
            lambda target: self._env(ctx, target, ctx.version, color),
            self.deploy_config.timeout,
        )

    async def retire(self, ctx: DeployContext, target: TargetRef, color: str) -> None:
        script = self.spec.get("retire")
        if script:
            result = await ctx.execute(
                target,
                script,
                key="retire",
                env=self._env(ctx, target, ctx.version, color),
                timeout=self.deploy_config.timeout,
            )
            check(result, target, "retire script")

    async def rollback(
        self, ctx: DeployContext, target: TargetRef, version: str, color: str | None
    ) -> None:
        script = self.spec.get("rollback") or self.spec["run"]
        env = self._env(ctx, target, version, color)
        env["QUICFLOW_PREVIOUS_VERSION"] = version  # what the rollback restores
        result = await ctx.execute(
            target,
            script,
            key="rollback",
            env=env,
            timeout=self.deploy_config.timeout,
            cwd=self._workdir(target),
        )
        check(result, target, "rollback script")
        self.starts.deployed(target, color)
