"""The Docker adapter of the builder: the ``docker`` CLI run as subprocesses.

The CLI rather than the Engine API because BuildKit's build sessions (streamed
progress with cache hits, ``--cache-from`` a registry, inline cache) are what the CLI
speaks; the docker SDK only drives the classic builder. Arguments are argv lists,
never a shell string; the registry password reaches ``docker login`` on stdin; each
build gets its own ``DOCKER_CONFIG`` directory so logins never leak between projects.

Which CLI: ``QUICFLOW_DOCKER`` if set, else Debian's ``/usr/bin/docker`` (BuildKit built
in) when present, else ``docker`` on PATH. A client or daemon without BuildKit is
detected up front and the build falls back to the classic builder with a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

LineHandler = Callable[[str], None]
_DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64}) size: (\d+)")
# The oldest Engine API that serves BuildKit sessions (Docker 18.09).
_BUILDKIT_API = (1, 39)


class DockerError(Exception):
    """A Docker command failed; the message is meant for the build record (callers mask it)."""


class DaemonUnreachable(DockerError):
    """No Docker daemon answers the CLI."""


def default_cli() -> str:
    """The docker CLI to use (see the module docstring)."""
    chosen = os.environ.get("QUICFLOW_DOCKER")
    if chosen:
        return chosen
    if Path("/usr/bin/docker").exists():
        return "/usr/bin/docker"
    return shutil.which("docker") or "docker"


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the client and daemon offer, found by ``DockerCli.probe``."""

    client_version: str
    server_version: str
    api_version: str
    buildkit: bool
    warning: str = ""


@dataclass(frozen=True, slots=True)
class CommandOutput:
    exit_code: int
    lines: list[str] = field(default_factory=list)

    def tail(self, n: int = 15) -> str:
        """The last ``n`` non-empty output lines, for an error message."""
        return "\n".join([line for line in self.lines if line.strip()][-n:])


class DockerCli:
    """Runs docker CLI commands with a given environment (DOCKER_HOST, DOCKER_CONFIG…)."""

    def __init__(self, cli: str | None = None, environ: Mapping[str, str] | None = None):
        self.cli = cli or default_cli()
        self.environ = dict(os.environ if environ is None else environ)

    async def run(
        self,
        args: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdin: bytes | None = None,
        on_line: LineHandler | None = None,
        cwd: str | None = None,
    ) -> CommandOutput:
        """Run ``docker ARGS``; stream merged stdout/stderr lines to ``on_line``."""
        try:
            proc = await asyncio.create_subprocess_exec(
                self.cli,
                *args,
                env={**self.environ, **(env or {})},
                cwd=cwd,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise DaemonUnreachable(f"docker CLI {self.cli!r} not found") from None
        lines: list[str] = []
        try:
            if stdin is not None:
                assert proc.stdin is not None
                proc.stdin.write(stdin)
                await proc.stdin.drain()
                proc.stdin.close()
            assert proc.stdout is not None
            async for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                lines.append(line)
                if len(lines) > 2000:  # only the tail is ever reported
                    del lines[:1000]
                if on_line is not None:
                    on_line(line)
            code = await proc.wait()
        except asyncio.CancelledError:
            # Kill the whole group: a cancelled build must not keep BuildKit busy.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                await asyncio.shield(proc.wait())
            raise
        return CommandOutput(code, lines)

    async def probe(self) -> Capabilities:
        """Check that a daemon answers and whether BuildKit can be used; raise DaemonUnreachable."""
        out = await self.run(["version", "--format", "{{json .}}"])
        info: dict = {}
        for line in out.lines:
            with contextlib.suppress(ValueError):
                info = json.loads(line)
        server = info.get("Server") or {}
        if out.exit_code != 0 or not server:
            where = self.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
            raise DaemonUnreachable(
                f"Docker daemon unreachable at {where}: {out.tail(3) or 'no answer'}"
            )
        client = info.get("Client") or {}
        client_version = str(client.get("Version", ""))
        api = str(server.get("ApiVersion") or server.get("APIVersion") or "")
        capabilities = dict(
            client_version=client_version,
            server_version=str(server.get("Version", "")),
            api_version=api,
        )
        if _version_tuple(api) < _BUILDKIT_API or server.get("Os", "linux") != "linux":
            return Capabilities(
                **capabilities,
                buildkit=False,
                warning=f"the Docker daemon (API {api}) does not serve BuildKit: "
                "using the classic builder (no inline cache)",
            )
        # Clients from 23.0 hand DOCKER_BUILDKIT=1 to the buildx plugin; older ones have
        # BuildKit built in.
        if _version_tuple(client_version) >= (23,):
            buildx = await self.run(["buildx", "version"])
            if buildx.exit_code != 0:
                return Capabilities(
                    **capabilities,
                    buildkit=False,
                    warning=f"docker CLI {self.cli} {client_version} has no buildx plugin, so "
                    "BuildKit is unavailable: using the classic builder (set QUICFLOW_DOCKER to a "
                    "BuildKit-capable client such as /usr/bin/docker)",
                )
        return Capabilities(**capabilities, buildkit=True)

    async def login(self, registry: str, username: str, password: str, config_dir: Path) -> None:
        """Log in to ``registry`` into ``config_dir``; the password goes through stdin."""
        out = await self.run(
            ["login", "--username", username, "--password-stdin", registry],
            env={"DOCKER_CONFIG": str(config_dir)},
            stdin=password.encode(),
        )
        if out.exit_code != 0:
            raise DockerError(f"registry login to {registry} as {username!r} failed: {out.tail(3)}")

    async def push(self, image: str, config_dir: Path, on_line: LineHandler) -> tuple[str, int]:
        """Push ``image``; return the registry's manifest digest and the manifest size."""
        out = await self.run(
            ["push", image], env={"DOCKER_CONFIG": str(config_dir)}, on_line=on_line
        )
        if out.exit_code != 0:
            raise DockerError(f"push of {image} failed: {out.tail(3)}")
        for line in reversed(out.lines):
            match = _DIGEST.search(line)
            if match:
                return match.group(1), int(match.group(2))
        raise DockerError(f"push of {image} printed no digest")

    async def inspect_image(self, image: str) -> dict:
        """``docker image inspect`` of one image."""
        out = await self.run(["image", "inspect", image])
        if out.exit_code != 0:
            raise DockerError(f"inspect of {image} failed: {out.tail(3)}")
        return json.loads("\n".join(out.lines))[0]

    async def remove_image(self, image: str) -> None:
        """Remove a local image tag (errors ignored: it is only tidying)."""
        await self.run(["image", "rm", "--no-prune", image])


def build_args(
    *,
    context: str,
    dockerfile: str,
    tag: str,
    args: Mapping[str, str],
    target: str | None,
    labels: Mapping[str, str],
    cache_from: Sequence[str],
    buildkit: bool,
) -> list[str]:
    """The argv of ``docker build`` for one build (pure)."""
    argv = ["build", "--file", dockerfile, "--tag", tag]
    if buildkit:
        argv += ["--progress", "plain"]
    for name, value in args.items():
        argv += ["--build-arg", f"{name}={value}"]
    if buildkit:
        # Inline cache metadata lets the next build reuse layers straight from the registry.
        argv += ["--build-arg", "BUILDKIT_INLINE_CACHE=1"]
    if target:
        argv += ["--target", target]
    for name, value in labels.items():
        argv += ["--label", f"{name}={value}"]
    for image in cache_from:
        argv += ["--cache-from", image]
    argv.append(context)
    return argv


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in re.split(r"[.+-]", text):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts)
