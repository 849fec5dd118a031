"""The ``container`` deploy type: run the release's image on each target's Docker daemon.

Every step is a fixed shell script run through the target's executor (a subprocess for
local targets, the agent for agent targets), driving the ``docker`` CLI there. Every
value — image, name, ports, labels, the registry password — reaches the script as an
environment variable; option lists travel newline-separated and are split with
globbing off, so no config value is ever parsed by the shell. The registry password
goes to ``docker login --password-stdin`` from the environment, into a throw-away
``DOCKER_CONFIG``; the app's variables reach the container through an ``--env-file``
(mode 600, deleted after ``docker run``), never its command line.

deploy pulls the image, resolves it to its registry digest and runs that digest; the
container it replaces is kept, stopped, as ``<name>-previous``, so rollback restarts the
previous digest without a pull. Blue-green runs each color as ``<name>-<color>`` on the
color's port; retire removes a color. Several local targets share one daemon, so their
containers are named ``<name>-<target>`` and bound to the target's port.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from reconciler import builds
from reconciler.drivers import DeployContext, Health, StepFailed, check, health, render, run_switch
from reconciler.durations import parse_duration
from reconciler.gitops import model
from reconciler.rules import images
from reconciler.targets.commands import TargetRef

_VARIABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")

# Shared prologue: the option lists in QUICFLOW_RUN_ARGS / _COMMAND are newline-separated.
_PROLOGUE = """\
set -eu
D="${QUICFLOW_DOCKER:-docker}"
NL='
'
"""

_LOGIN = """\
if [ -n "${QUICFLOW_REGISTRY_USER:-}" ]; then
  DOCKER_CONFIG="$(mktemp -d)"; export DOCKER_CONFIG
  cleanup="$cleanup $DOCKER_CONFIG"
  printf '%s' "${QUICFLOW_REGISTRY_PASSWORD:-}" | \\
    "$D" login --username "$QUICFLOW_REGISTRY_USER" --password-stdin "$QUICFLOW_REGISTRY" >/dev/null
fi
"""

DEPLOY = (
    _PROLOGUE
    + """\
cleanup=""
trap 'rm -rf $cleanup' EXIT
"""
    + _LOGIN
    + """\
"$D" pull --quiet "$QUICFLOW_IMAGE_REF" >/dev/null
# Run the registry digest, not the tag: the tag may move; the digest is what was verified.
pinned=""
for found in $("$D" image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$QUICFLOW_IMAGE_REF"); do
  case "$found" in "$QUICFLOW_IMAGE_REPO"@*) pinned="$found"; break;; esac
done
[ -n "$pinned" ] || pinned="$QUICFLOW_IMAGE_REF"
umask 077
envfile="$(mktemp)"; cleanup="$cleanup $envfile"
IFS="$NL"; set -f
for name in $QUICFLOW_ENV_NAMES; do
  printf '%s=%s\\n' "$name" "$(printenv "$name")" >> "$envfile"
done
set --
for word in $QUICFLOW_RUN_ARGS; do set -- "$@" "$word"; done
set -- "$@" --label "quicflow.image=$pinned" "$pinned"
for word in $QUICFLOW_RUN_COMMAND; do set -- "$@" "$word"; done
unset IFS; set +f
if "$D" container inspect "$QUICFLOW_CONTAINER" >/dev/null 2>&1; then
  if [ -n "${QUICFLOW_KEEP_PREVIOUS:-}" ]; then
    "$D" rm -f "$QUICFLOW_CONTAINER-previous" >/dev/null 2>&1 || true
    "$D" stop --time "$QUICFLOW_STOP_TIMEOUT" "$QUICFLOW_CONTAINER" >/dev/null || true
    "$D" rename "$QUICFLOW_CONTAINER" "$QUICFLOW_CONTAINER-previous"
  else
    "$D" rm -f "$QUICFLOW_CONTAINER" >/dev/null
  fi
fi
id=$("$D" run --detach --name "$QUICFLOW_CONTAINER" --env-file "$envfile" "$@")
echo "started $QUICFLOW_CONTAINER ($(echo "$id" | cut -c1-12)) from $pinned"
"""
)

# Restart the kept container when it runs the version to restore; exit 10 when there is
# none, so the driver pulls and runs that version instead.
RESTART_PREVIOUS = (
    _PROLOGUE
    + """\
prev="$QUICFLOW_CONTAINER-previous"
version=$("$D" container inspect --format '{{index .Config.Labels "quicflow.version"}}' "$prev" 2>/dev/null) || exit 10
[ "$version" = "$QUICFLOW_VERSION" ] || exit 10
"$D" rm -f "$QUICFLOW_CONTAINER" >/dev/null 2>&1 || true
"$D" rename "$prev" "$QUICFLOW_CONTAINER"
"$D" start "$QUICFLOW_CONTAINER" >/dev/null
echo "restarted $QUICFLOW_CONTAINER from $("$D" container inspect --format '{{index .Config.Labels "quicflow.image"}}' "$QUICFLOW_CONTAINER")"
"""
)

# Exit codes say what is wrong, since only the code comes back from a target.
INSPECT = (
    _PROLOGUE
    + """\
state=$("$D" container inspect --format '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$QUICFLOW_CONTAINER" 2>/dev/null) || exit 7
echo "$QUICFLOW_CONTAINER: $state"
case "$state" in
  running\\ *) ;;
  *) exit 6;;
esac
[ -n "${QUICFLOW_DOCKER_HEALTH:-}" ] || exit 0
case "$state" in
  *\\ healthy) exit 0;;
  *\\ starting) exit 3;;
  *\\ unhealthy) exit 4;;
  *) exit 5;;
esac
"""
)

REMOVE = (
    _PROLOGUE
    + """\
"$D" rm -f "$QUICFLOW_CONTAINER" >/dev/null 2>&1 || true
echo "removed $QUICFLOW_CONTAINER"
"""
)

_INSPECT_CODES = {
    3: "Docker HEALTHCHECK is still starting",
    4: "Docker HEALTHCHECK reports unhealthy",
    5: "health.docker is set but the image defines no HEALTHCHECK",
    6: "the container is not running",
    7: "the container does not exist",
}


class ContainerDriver:
    """Deploys by running the release's image on each target's Docker daemon."""

    def __init__(
        self,
        deploy: model.DeployConfig,
        strategy: model.Strategy,
        docker_cli: str = "docker",
    ):
        self.deploy_config = deploy
        self.spec: Mapping[str, Any] = deploy.spec
        self.docker_cli = docker_cli
        blue_green = strategy.type is model.StrategyType.BLUE_GREEN
        self.ports = dict(strategy.params.get("ports") or {}) if blue_green else {}
        self.switch_script = strategy.params.get("switch") if blue_green else None
        self.stop_timeout = int(parse_duration(self.spec.get("stop_timeout"), 10.0) or 0)
        self.starts = health.StartPeriods()

    # -- names and values ---------------------------------------------------------

    def container_name(self, ctx: DeployContext, target: TargetRef, color: str | None) -> str:
        """The container's name on the target's daemon."""
        template = self.spec.get("name") or f"{ctx.env.project}-{ctx.env.name}"
        base = render(
            template, {"project": ctx.env.project, "env": ctx.env.name, "target": target.name}
        )
        if target.kind == "local" and "target" not in _PLACEHOLDER.findall(template):
            # Local targets share the reconciler's daemon: one name each.
            base = f"{base}-{target.name}"
        return f"{base}-{color}" if color else base

    def image_ref(self, ctx: DeployContext, target: TargetRef, version: str) -> str:
        """The image reference to pull for ``version`` (by digest when the run knows it)."""
        template = self.spec.get("image") or ctx.env.build.target_image
        if not template:
            raise StepFailed(
                target.name, "deploy.container.image is not set and no build.target_image to use"
            )
        image = render(
            template,
            {
                "version": images.tag_safe(version),
                "project": ctx.env.project,
                "env": ctx.env.name,
            },
        )
        unresolved = _PLACEHOLDER.findall(image)
        if unresolved:
            raise StepFailed(
                target.name,
                f"deploy.container.image: {{{{ {unresolved[0]} }}}} is only known to a build; "
                "name the image by {{ version }}",
            )
        builtins = ctx.variables(None, version)
        digest = builtins.get("QUICFLOW_IMAGE_DIGEST", "")
        if digest and version == ctx.version:
            return f"{builds.repository_of(image)}@{digest}"
        return image

    def _registry_env(self, ctx: DeployContext, target: TargetRef, image: str) -> dict[str, str]:
        name = self.spec.get("registry_credential") or ctx.env.build.registry_credential
        if not name:
            return {}
        secrets: Mapping[str, str] = getattr(ctx, "secrets", {}) or {}
        user, password = secrets.get(f"{name}.username"), secrets.get(f"{name}.password")
        if not user or password is None:
            raise StepFailed(
                target.name,
                f"registry credential {name!r} was not resolved for this run "
                "(it needs a username and a password)",
            )
        return {
            "QUICFLOW_REGISTRY": images.registry_of(image),
            "QUICFLOW_REGISTRY_USER": user,
            "QUICFLOW_REGISTRY_PASSWORD": password,
        }

    def _port_mappings(self, target: TargetRef, color: str | None) -> list[str]:
        mappings = [str(p) for p in self.spec.get("ports") or []]
        host_port = (self.ports.get(color) if color else None) or target.port
        if mappings and host_port:
            # The target's (or color's) port replaces the first mapping's host port, so
            # containers sharing a host, and blue and green, never collide.
            *address, _, container_port = mappings[0].split(":")
            mappings[0] = ":".join([*address, str(host_port), container_port])
        return mappings

    def run_args(
        self, ctx: DeployContext, target: TargetRef, version: str, color: str | None
    ) -> list[str]:
        """The ``docker run`` options (pure, besides reading the run's identity)."""
        spec = self.spec
        run_id = ctx.variables(None, version).get("QUICFLOW_RUN_ID", "")
        labels = {
            **{str(k): str(v) for k, v in (spec.get("labels") or {}).items()},
            "quicflow.project": ctx.env.project,
            "quicflow.env": ctx.env.name,
            "quicflow.version": version,
            "quicflow.run": run_id,
            "quicflow.target": target.name,
        }
        if color:
            labels["quicflow.color"] = color
        args: list[str] = []
        for mapping in self._port_mappings(target, color):
            args += ["--publish", mapping]
        for volume in spec.get("volumes") or []:
            args += ["--volume", str(volume)]
        for key, value in labels.items():
            args += ["--label", f"{key}={value}"]
        if spec.get("restart_policy"):
            args += ["--restart", str(spec["restart_policy"])]
        resources = spec.get("resources") or {}
        if resources.get("cpus"):
            args += ["--cpus", str(resources["cpus"])]
        if resources.get("memory"):
            args += ["--memory", str(resources["memory"])]
        if spec.get("stop_signal"):
            args += ["--stop-signal", str(spec["stop_signal"])]
        args += ["--stop-timeout", str(self.stop_timeout)]
        if spec.get("init", True):
            # PID 1 of a plain image ignores SIGTERM: an init makes stop take ~0.5 s, not
            # the whole stop timeout.
            args.append("--init")
        for word in [*args, *(spec.get("command") or [])]:
            if "\n" in word:
                raise StepFailed(
                    target.name, f"deploy.container: a value contains a newline: {word!r}"
                )
        return args

    def _env(
        self, ctx: DeployContext, target: TargetRef, version: str, color: str | None
    ) -> tuple[dict[str, str], dict[str, str]]:
        """(environment of the script, variables for the container's env file)."""
        variables = ctx.variables(target, version, color)
        if color and self.ports.get(color):
            variables["QUICFLOW_PORT"] = str(self.ports[color])
        for_container = {
            k: v for k, v in variables.items() if _VARIABLE_NAME.match(k) and "\n" not in v
        }
        skipped = sorted(set(variables) - set(for_container))
        if skipped:
            ctx.log(
                f"{target.name}/deploy",
                f"not passed to the container (multi-line or odd names): {', '.join(skipped)}",
            )
        image = self.image_ref(ctx, target, version)
        script_env = {
            **for_container,
            "QUICFLOW_DOCKER": self.docker_cli,
            "QUICFLOW_CONTAINER": self.container_name(ctx, target, color),
            "QUICFLOW_IMAGE_REF": image,
            "QUICFLOW_IMAGE_REPO": builds.repository_of(image),
            "QUICFLOW_ENV_NAMES": "\n".join(for_container),
            "QUICFLOW_RUN_ARGS": "\n".join(self.run_args(ctx, target, version, color)),
            "QUICFLOW_RUN_COMMAND": "\n".join(str(w) for w in self.spec.get("command") or []),
            "QUICFLOW_STOP_TIMEOUT": str(self.stop_timeout),
            **self._registry_env(ctx, target, image),
        }
        if not color:
            script_env["QUICFLOW_KEEP_PREVIOUS"] = "1"
        return script_env, for_container

    # -- the driver steps ---------------------------------------------------------

    async def deploy(
        self, ctx: DeployContext, target: TargetRef, version: str, color: str | None
    ) -> None:
        """Pull the version's image and (re)start the container from its digest."""
        env, _ = self._env(ctx, target, version, color)
        result = await ctx.execute(
            target, DEPLOY, key="container", env=env, timeout=self.deploy_config.timeout
        )
        check(result, target, f"container {env['QUICFLOW_CONTAINER']}")
        self.starts.deployed(target, color)

    async def verify(self, ctx: DeployContext, target: TargetRef, color: str | None) -> Health:
        """The container runs, and every configured health check passes."""
        name = self.container_name(ctx, target, color)
        running = await self._inspect(ctx, target, name, docker_health=False)
        if not running.ok:
            return running
        port = self.ports.get(color) if color else None

        async def docker_health() -> Health:
            return await self._inspect(ctx, target, name, docker_health=True)

        return await health.check(
            ctx,
            target,
            self.deploy_config.health,
            port,
            color,
            docker=docker_health,
            starts=self.starts,
        )

    async def _inspect(
        self, ctx: DeployContext, target: TargetRef, name: str, docker_health: bool
    ) -> Health:
        env = {"QUICFLOW_DOCKER": self.docker_cli, "QUICFLOW_CONTAINER": name}
        if docker_health:
            env["QUICFLOW_DOCKER_HEALTH"] = "1"
        result = await ctx.execute(target, INSPECT, key="inspect", env=env, timeout=30)
        if result.ok:
            return Health(True, f"{name} {'healthy' if docker_health else 'running'}")
        if result.timed_out:
            return Health(False, f"{name}: docker inspect timed out")
        reason = _INSPECT_CODES.get(
            result.exit_code or 0, f"docker inspect exit {result.exit_code}"
        )
        return Health(False, f"{name}: {reason}")

    async def switch(self, ctx: DeployContext, targets: Sequence[TargetRef], color: str) -> None:
        """Run the blue-green ``switch`` script (e.g. repoint a proxy) on every target."""

        def env_for(target: TargetRef) -> dict[str, str]:
            env = ctx.variables(target, ctx.version, color)
            env["QUICFLOW_CONTAINER"] = self.container_name(ctx, target, color)
            if self.ports.get(color):
                env["QUICFLOW_PORT"] = str(self.ports[color])
            return env

        await run_switch(ctx, targets, self.switch_script, env_for, self.deploy_config.timeout)

    async def retire(self, ctx: DeployContext, target: TargetRef, color: str) -> None:
        """Remove the container of a color that no longer serves."""
        env = {
            "QUICFLOW_DOCKER": self.docker_cli,
            "QUICFLOW_CONTAINER": self.container_name(ctx, target, color),
        }
        result = await ctx.execute(target, REMOVE, key="retire", env=env, timeout=60)
        check(result, target, f"removing {env['QUICFLOW_CONTAINER']}")

    async def rollback(
        self, ctx: DeployContext, target: TargetRef, version: str, color: str | None
    ) -> None:
        """Restart the previous container (its digest) if kept; else pull and run ``version``."""
        if not color:
            env = {
                "QUICFLOW_DOCKER": self.docker_cli,
                "QUICFLOW_CONTAINER": self.container_name(ctx, target, color),
                "QUICFLOW_VERSION": version,
            }
            result = await ctx.execute(
                target,
                RESTART_PREVIOUS,
                key="rollback",
                env=env,
                timeout=self.deploy_config.timeout,
            )
            if result.ok:
                return
            if result.exit_code != 10:
                check(result, target, "restarting the previous container")
        await self.deploy(ctx, target, version, color)
