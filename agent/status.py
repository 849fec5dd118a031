"""Host status for the hub: watched processes (from /proc) and, if Docker runs here, containers.

A ``StatusCollector`` samples on demand; the client sends a report on an interval and
whenever the *shape* of the report changes (a process appears, disappears or changes
state; a container changes state or health) -- cpu and memory alone do not count as a
change, or every sample would be one.  The ``docker`` package is imported lazily and only
when a Docker socket exists, so hosts without Docker need neither.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from agent import protocol

DOCKER_SOCKET = Path("/var/run/docker.sock")
LABEL_PREFIX = "quicflow."  # only our labels travel to the hub
PROC = Path("/proc")
STATES = {
    "R": "running",
    "S": "sleeping",
    "D": "disk-sleep",
    "T": "stopped",
    "t": "tracing-stop",
    "Z": "zombie",
    "X": "dead",
    "I": "idle",
}


class StatusCollector:
    """Samples watched processes (by name or pid) and Docker containers."""

    def __init__(
        self,
        watch: Sequence[str] = (),
        proc: Path = PROC,
        docker_socket: Path = DOCKER_SOCKET,
    ) -> None:
        self.watch = tuple(watch)
        self._proc = proc
        self._docker_socket = docker_socket
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._page = os.sysconf("SC_PAGE_SIZE")
        # pid -> (cpu ticks, monotonic time) of the previous sample, for cpu percentages.
        self._previous: dict[int, tuple[int, float]] = {}

    def has_sources(self) -> bool:
        """True when there is anything to report (watched processes or a Docker socket)."""
        return bool(self.watch) or self._docker_socket.exists()

    def collect(self) -> protocol.StatusReport:
        """Take one sample (blocking: reads /proc, may call the Docker API)."""
        processes: list[protocol.ProcessStatus] = []
        for watched in self.watch:
            processes += self._processes(watched)
        containers, notes = self._containers()
        return protocol.StatusReport(time.time(), tuple(processes), tuple(containers), tuple(notes))

    def _processes(self, watched: str) -> list[protocol.ProcessStatus]:
        if watched.isdigit():
            pids = [int(watched)]
        else:
            pids = [pid for pid in self._pids() if self._name(pid) == watched]
        found = [status for pid in pids if (status := self._sample(watched, pid)) is not None]
        return found or [protocol.ProcessStatus(watched, None, "absent")]

    def _pids(self) -> list[int]:
        return [int(entry.name) for entry in self._proc.iterdir() if entry.name.isdigit()]

    def _name(self, pid: int) -> str | None:
        try:
            return (self._proc / str(pid) / "comm").read_text().strip()
        except OSError:
            return None

    def _sample(self, watched: str, pid: int) -> protocol.ProcessStatus | None:
        try:
            stat = (self._proc / str(pid) / "stat").read_text()
            statm = (self._proc / str(pid) / "statm").read_text().split()
        except OSError:
            return None
        # The command name in field 2 may contain spaces and parentheses: split after it.
        fields = stat[stat.rindex(")") + 2 :].split()
        state = STATES.get(fields[0], fields[0])
        ticks = int(fields[11]) + int(fields[12])
        now = time.monotonic()
        previous = self._previous.get(pid)
        self._previous[pid] = (ticks, now)
        cpu = 0.0
        if previous is not None and now > previous[1]:
            cpu = 100.0 * (ticks - previous[0]) / self._ticks / (now - previous[1])
        return protocol.ProcessStatus(
            name=watched,
            pid=pid,
            state=state,
            cpu_percent=round(max(cpu, 0.0), 1),
            memory_bytes=int(statm[1]) * self._page,
        )

    def _containers(self) -> tuple[list[protocol.ContainerStatus], list[str]]:
        if not self._docker_socket.exists():
            return [], []
        try:
            import docker  # noqa: PLC0415 - optional, only where a Docker socket exists
        except ImportError:
            return [], ["docker socket present but the 'docker' package is not installed"]
        try:
            client = docker.DockerClient(base_url=f"unix://{self._docker_socket}", timeout=5)
            try:
                return [_container(c) for c in client.containers.list(all=True)], []
            finally:
                client.close()
        except Exception as failure:  # noqa: BLE001 - status must not kill the agent
            return [], [f"docker: {failure}"]


def changed(previous: protocol.StatusReport | None, current: protocol.StatusReport) -> bool:
    """True when ``current`` differs from ``previous`` in more than cpu, memory and time."""
    if previous is None:
        return True
    return _shape(previous) != _shape(current)


def _shape(report: protocol.StatusReport) -> tuple[object, ...]:
    return (
        tuple((p.name, p.pid, p.state) for p in report.processes),
        tuple(
            (c.name, c.image, c.digest, c.state, c.health, tuple(sorted(c.labels.items())))
            for c in report.containers
        ),
        report.notes,
    )


def _container(container: object) -> protocol.ContainerStatus:
    attrs = getattr(container, "attrs", {}) or {}
    state = attrs.get("State", {}) or {}
    config = attrs.get("Config", {}) or {}
    image = config.get("Image", "")
    digest = attrs.get("Image")
    labels = {
        str(k): str(v)
        for k, v in (config.get("Labels") or {}).items()
        if k.startswith(LABEL_PREFIX)
    }
    health = (state.get("Health") or {}).get("Status")
    return protocol.ContainerStatus(
        name=str(getattr(container, "name", "")),
        image=str(image),
        digest=digest,
        state=str(state.get("Status", "unknown")),
        health=health,
        labels=labels,
    )
