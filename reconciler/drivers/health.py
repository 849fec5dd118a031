"""Health checks after a deploy: HTTP status and latency, TCP connect, a command on the target,
and (for containers) the container's own Docker HEALTHCHECK status.

All configured checks must pass; each is retried ``retries`` times ``interval`` apart
before the target counts as unhealthy. HTTP goes through httpx.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx

from reconciler.drivers import DeployContext, Health
from reconciler.durations import parse_duration
from reconciler.targets.commands import TargetRef


async def check(
    ctx: DeployContext,
    target: TargetRef,
    spec: Mapping[str, Any],
    port: int | None = None,
    color: str | None = None,
    docker: Callable[[], Awaitable[Health]] | None = None,
) -> Health:
    """Run every configured check against ``target`` (``port`` overrides for blue-green colors).

    ``docker`` reads the container's HEALTHCHECK status; only the container driver has one.
    """
    if not spec or not any(k in spec for k in ("http", "tcp", "command", "docker")):
        return Health(True, "no health check configured")
    retries = int(spec.get("retries", 3))
    interval = parse_duration(spec.get("interval"), 1.0) or 0.0
    timeout = parse_duration(spec.get("timeout"), 2.0) or 2.0
    last = Health(False, "not checked")
    for attempt in range(retries):
        last = await _once(ctx, target, spec, port, timeout, color, docker)
        if last.ok:
            return last
        if attempt + 1 < retries:
            await asyncio.sleep(interval)
    return Health(False, f"{last.detail} (after {retries} attempts)")


async def _once(
    ctx: DeployContext,
    target: TargetRef,
    spec: Mapping[str, Any],
    port: int | None,
    timeout: float,
    color: str | None,
    docker: Callable[[], Awaitable[Health]] | None = None,
) -> Health:
    details = []
    if spec.get("docker"):
        if docker is None:
            return Health(False, "health.docker is set but the deploy type runs no container")
        status = await docker()
        if not status.ok:
            return status
        details.append(status.detail)
    if "http" in spec:
        http = spec["http"]
        the_port = port or target.port or http["port"]
        url = f"{http.get('scheme', 'http')}://{target.address}:{the_port}{http.get('path', '/')}"
        started = time.monotonic()
        try:
            async with httpx.AsyncClient(timeout=timeout) as client:
                response = await client.get(url)
        except httpx.HTTPError as exc:
            return Health(False, f"GET {url}: {type(exc).__name__}")
        latency = time.monotonic() - started
        expected = list(http.get("expect_status", [200]))
        if response.status_code not in expected:
            return Health(False, f"GET {url}: status {response.status_code}, expected {expected}")
        max_latency = http.get("max_latency")
        if max_latency is not None and latency > _seconds(max_latency):
            return Health(False, f"GET {url}: {latency * 1000:.0f} ms, above {max_latency}")
        details.append(f"GET {url} {response.status_code} in {latency * 1000:.0f} ms")
    if "tcp" in spec:
        the_port = port or spec["tcp"]["port"]
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(target.address, the_port), timeout
            )
            writer.close()
            await writer.wait_closed()
        except (OSError, TimeoutError) as exc:
            return Health(False, f"TCP {target.address}:{the_port}: {type(exc).__name__}")
        details.append(f"TCP {target.address}:{the_port} open")
    if "command" in spec:
        # The argv is joined for the shell with each word quoted: no config value is interpreted.
        script = " ".join(shlex.quote(part) for part in spec["command"])
        env = ctx.variables(target, ctx.version, color)
        result = await ctx.execute(target, script, key="health", env=env, timeout=timeout)
        if not result.ok:
            return Health(
                False,
                f"health command exited {result.exit_code}"
                if not result.timed_out
                else "health command timed out",
            )
        details.append("health command ok")
    return Health(True, "; ".join(details))


def _seconds(value: Any) -> float:
    return parse_duration(value) or 0.0
