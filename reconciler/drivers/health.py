"""Health checks after a deploy: HTTP status and latency, TCP connect, a command on the target,
and (for containers) the container's own Docker HEALTHCHECK status.

All configured checks must pass; each is retried ``retries`` times ``interval`` apart
before the target counts as unhealthy. HTTP goes through httpx.

``start_period`` follows Docker's HEALTHCHECK: for that long after a deploy, failed
checks do not count against ``retries`` (the app may still be starting); the first
check that passes ends the start period, so later checks of the same deploy (canary
analysis) count every failure. ``StartPeriods`` remembers, per target and color, when
the start period began and whether it has ended.
"""

from __future__ import annotations

import asyncio
import shlex
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx

from reconciler.drivers import DeployContext, Health
from reconciler.durations import format_duration, parse_duration
from reconciler.targets.commands import TargetRef

Clock = Callable[[], float]
# With interval 0, checks in the start period would follow each other without a pause.
START_PERIOD_MIN_INTERVAL = 0.1


class StartPeriods:
    """When each (target, color) began its start period; forgotten once a check passes.

    A target this driver did not deploy (a run resumed after a crash, whose deploy step
    was done before it) starts its period at its first check: the safe side, since the
    time of that deploy is not known here.
    """

    def __init__(self, clock: Clock = time.monotonic):
        self.clock = clock
        self._since: dict[tuple[str, str | None], float] = {}
        self._passed: set[tuple[str, str | None]] = set()

    def deployed(self, target: TargetRef, color: str | None) -> None:
        key = (target.name, color)
        self._since[key] = self.clock()
        self._passed.discard(key)

    def since(self, target: TargetRef, color: str | None) -> float | None:
        """When the start period began, or None once a check has passed since the deploy."""
        key = (target.name, color)
        if key in self._passed:
            return None
        return self._since.setdefault(key, self.clock())

    def passed(self, target: TargetRef, color: str | None) -> None:
        key = (target.name, color)
        self._since.pop(key, None)
        self._passed.add(key)


async def check(
    ctx: DeployContext,
    target: TargetRef,
    spec: Mapping[str, Any],
    port: int | None = None,
    color: str | None = None,
    docker: Callable[[], Awaitable[Health]] | None = None,
    starts: StartPeriods | None = None,
    probe: Callable[[], Awaitable[Health]] | None = None,
) -> Health:
    """Run every configured check against ``target`` (``port`` overrides for blue-green colors).

    ``docker`` reads the container's HEALTHCHECK status; only the container driver has one.
    ``starts`` tells when the target's start period began (None: no start period).
    ``probe`` replaces the checks of ``spec`` with a driver's own (the Kubernetes driver
    reads pods through the API server); ``spec`` still gives retries, interval and
    start period.
    """
    if probe is None and (
        not spec or not any(k in spec for k in ("http", "tcp", "command", "docker"))
    ):
        return Health(True, "no health check configured")
    retries = int(spec.get("retries", 3))
    interval = parse_duration(spec.get("interval"), 1.0) or 0.0
    timeout = parse_duration(spec.get("timeout"), 2.0) or 2.0
    start_period = parse_duration(spec.get("start_period"), 0.0) or 0.0
    since = starts.since(target, color) if starts is not None and start_period else None
    clock = starts.clock if starts is not None else time.monotonic
    grace_until = since + start_period if since is not None else None
    last = Health(False, "not checked")
    attempts = failures = 0
    while True:
        probed_at = clock()
        last = (
            await probe()
            if probe is not None
            else await _once(ctx, target, spec, port, timeout, color, docker)
        )
        attempts += 1
        if last.ok:
            if starts is not None:
                starts.passed(target, color)
            return last
        in_start_period = grace_until is not None and probed_at < grace_until
        if not in_start_period:
            failures += 1
            if failures >= retries:
                break
        await asyncio.sleep(
            max(interval, START_PERIOD_MIN_INTERVAL) if in_start_period else interval
        )
    within = f" and a {format_duration(start_period)} start period" if grace_until else ""
    return Health(False, f"{last.detail} (after {attempts} attempts{within})")


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
