"""The ``git_pull`` deploy type: fetch the version into a directory on the target, then restart.

The fetch script is fixed; repository, ref and directory reach it as environment
variables, so no config value is ever interpreted by the shell. A relative
``directory`` is relative to the target's work dir; ``restart`` runs inside the
checkout, with ``QUICFLOW_GIT_DIR`` set to its absolute path.
"""

from __future__ import annotations

from collections.abc import Sequence

from reconciler.drivers import DeployContext, Health, StepFailed, check, render
from reconciler.drivers.script import ScriptDriver
from reconciler.gitops import model
from reconciler.targets.commands import TargetRef

FETCH = """\
set -eu
mkdir -p "$QUICFLOW_GIT_DIR"
cd "$QUICFLOW_GIT_DIR"
[ -d .git ] || git init -q .
git fetch -q --depth 1 "$QUICFLOW_GIT_REPO" "$QUICFLOW_GIT_REF"
git -c advice.detachedHead=false checkout -q --force FETCH_HEAD
git rev-parse HEAD
"""
# Put before the operator's ``restart`` script. It starts where FETCH started (the
# target's work dir, on every executor), so a relative directory names the same checkout.
RESTART_PROLOGUE = """\
cd -- "$QUICFLOW_GIT_DIR" || exit 97
QUICFLOW_GIT_DIR="$(pwd -P)"; export QUICFLOW_GIT_DIR
"""


class GitPullDriver:
    """Deploys by checking out a ref in a directory on each target."""

    def __init__(
        self, deploy: model.DeployConfig, strategy: model.Strategy, repo_url: str | None = None
    ):
        self.deploy_config = deploy
        self.spec = deploy.spec
        self.repo_url = self.spec.get("repo") or repo_url
        self._scripts = ScriptDriver(
            model.DeployConfig(deploy.type, {"run": "true"}, deploy.health, deploy.timeout),
            strategy,
        )

    async def deploy(
        self, ctx: DeployContext, target: TargetRef, version: str, color: str | None
    ) -> None:
        values = {
            "version": version,
            "color": color or "",
            "env": ctx.env.name,
            "project": ctx.env.project,
        }
        env = ctx.variables(target, version, color)
        env.update(
            {
                "QUICFLOW_GIT_REPO": self.repo_url or "",
                "QUICFLOW_GIT_REF": render(self.spec.get("ref", "{{ version }}"), values),
                "QUICFLOW_GIT_DIR": render(self.spec["directory"], values),
            }
        )
        if not env["QUICFLOW_GIT_REPO"]:
            raise StepFailed(
                target.name,
                "git pull: no repository (set deploy.git_pull.repo or the project's repo.url)",
            )
        result = await ctx.execute(
            target, FETCH, key="git-pull", env=env, timeout=self.deploy_config.timeout
        )
        check(result, target, "git pull")
        if self.spec.get("restart"):
            result = await ctx.execute(
                target,
                RESTART_PROLOGUE + self.spec["restart"],
                key="restart",
                env=env,
                timeout=self.deploy_config.timeout,
            )
            check(result, target, "restart script")
        self._scripts.starts.deployed(target, color)  # verify goes through the script driver

    async def verify(self, ctx: DeployContext, target: TargetRef, color: str | None) -> Health:
        return await self._scripts.verify(ctx, target, color)

    async def switch(self, ctx: DeployContext, targets: Sequence[TargetRef], color: str) -> None:
        await self._scripts.switch(ctx, targets, color)

    async def retire(self, ctx: DeployContext, target: TargetRef, color: str) -> None:
        return None  # the old checkout stays on disk for the next color swap

    async def rollback(
        self, ctx: DeployContext, target: TargetRef, version: str, color: str | None
    ) -> None:
        await self.deploy(ctx, target, version, color)
