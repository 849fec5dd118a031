"""Host status for the hub: watched processes (from /proc) and QUIC-Flow's Docker containers.

A ``StatusCollector`` samples on demand; the client sends a report on an interval and
whenever the *shape* of the report changes (a process appears, disappears or changes
state; a container changes state or health or restarts) -- cpu and memory alone do not
count as a change, or every sample would be one.

Only containers QUIC-Flow's container driver started are listed: the Docker query itself
filters on the driver's labels (``OWN_LABELS``), so other containers on the host are never
even seen, let alone sent.  A process's cpu share comes from /proc and a container's from
its cgroup, both as the difference between two samples; a container's memory is its
cgroup's (as ``docker stats`` counts it) -- Docker's own stats API waits a second per
container, which is too slow for a sample.  The ``docker`` package is imported lazily and
only when a Docker socket exists, so hosts without Docker need neither; one client serves
the collector's life.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from agent import protocol, spawning

DOCKER_SOCKET = Path("/var/run/docker.sock")
CGROUP = Path("/sys/fs/cgroup")
LABEL_PREFIX = "quicflow."  # only our labels travel to the hub
# The container driver (reconciler/drivers/container.py) sets both on every container it
# starts. Not the project alone: images QUIC-Flow builds carry ``quicflow.project`` too,
# and a container inherits its image's labels whoever starts it.
OWN_LABELS = ("quicflow.project", "quicflow.env")
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
    """Samples watched processes (by name or pid) and QUIC-Flow's Docker containers."""

    def __init__(
        self,
        watch: Sequence[str] = (),
        proc: Path = PROC,
        docker_socket: Path = DOCKER_SOCKET,
        cgroup: Path = CGROUP,
        limit: int = protocol.MAX_STATUS_ENTRIES,
    ) -> None:
        self.watch = tuple(watch)
        self._proc = proc
        self._docker_socket = docker_socket
        self._cgroup = cgroup
        self._limit = limit
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._boot = _boot_time(proc)
        self._docker: Any = None  # made at the first sample that needs it, then kept
        # pid or container id -> (cpu seconds, monotonic time) of the previous sample.
        self._previous: dict[int | str, tuple[float, float]] = {}
        self._current: dict[int | str, tuple[float, float]] = {}

    def has_sources(self) -> bool:
        """True when there is anything to report (watched processes or a Docker socket)."""
        return bool(self.watch) or self._docker_socket.exists()

    def collect(self) -> protocol.StatusReport:
        """Take one sample (blocking: reads /proc, may call the Docker API)."""
        self._current = {}
        processes: list[protocol.ProcessStatus] = []
        for watched in self.watch:
            processes += self._processes(watched)
        containers, notes = self._containers()
        # Only what this sample saw: pids and containers that went away are forgotten.
        self._previous = self._current
        limit = self._limit
        if len(processes) > limit or len(containers) > limit:
            notes.append(f"at most {limit} processes and {limit} containers are listed")
        return protocol.StatusReport(
            time.time(),
            tuple(processes[:limit]),
            tuple(containers[:limit]),
            tuple(notes),
            processes_omitted=max(0, len(processes) - limit),
            containers_omitted=max(0, len(containers) - limit),
        )

    def close(self) -> None:
        """Close the Docker client, if one was made."""
        client, self._docker = self._docker, None
        if client is not None:
            client.close()

    # -- processes --------------------------------------------------------------------

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
            process = spawning.parse_stat((self._proc / str(pid) / "stat").read_text())
            statm = (self._proc / str(pid) / "statm").read_text().split()
        except (OSError, ValueError, IndexError):
            return None
        state = STATES.get(process.state, process.state)
        cpu_seconds = process.cpu_ticks / self._ticks
        started = None if self._boot is None else self._boot + process.start_time / self._ticks
        return protocol.ProcessStatus(
            # Watched by pid, the process's own name says more than the number again.
            name=process.name if watched.isdigit() else watched,
            pid=pid,
            state=state,
            cpu_percent=self._cpu_percent(pid, cpu_seconds),
            memory_bytes=int(statm[1]) * self._page,
            started=started,
        )

    def _cpu_percent(self, key: int | str, cpu_seconds: float) -> float:
        """Percent of one core used since the previous sample (0.0 at the first one)."""
        now = time.monotonic()
        previous = self._previous.get(key)
        self._current[key] = (cpu_seconds, now)
        if previous is None or now <= previous[1]:
            return 0.0
        return round(max(100.0 * (cpu_seconds - previous[0]) / (now - previous[1]), 0.0), 1)

    # -- containers -------------------------------------------------------------------

    def _containers(self) -> tuple[list[protocol.ContainerStatus], list[str]]:
        if not self._docker_socket.exists():
            return [], []
        try:
            client = self._client()
            found = client.containers.list(
                all=True, filters={"label": list(OWN_LABELS)}, ignore_removed=True
            )
        except ImportError:
            return [], ["docker socket present but the 'docker' package is not installed"]
        except Exception as failure:  # noqa: BLE001 - status must not kill the agent
            # The daemon may have restarted: the next sample starts with a fresh client.
            self._drop_client()
            return [], [f"docker: {failure}"]
        containers = [self._container(container) for container in found]
        return sorted(containers, key=lambda c: c.name), []

    def _client(self) -> Any:
        if self._docker is None:
            import docker  # noqa: PLC0415 - optional, only where a Docker socket exists

            # docker-py leaves its socket open when the daemon refuses the connection; a
            # stopped daemon would cost one such socket a sample.
            if not _answers(self._docker_socket):
                raise ConnectionError(f"nothing answers at {self._docker_socket}")
            self._docker = docker.DockerClient(base_url=f"unix://{self._docker_socket}", timeout=5)
        return self._docker

    def _drop_client(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - a broken client is dropped either way
            self._docker = None

    def _container(self, container: Any) -> protocol.ContainerStatus:
        attrs = getattr(container, "attrs", {}) or {}
        state = attrs.get("State", {}) or {}
        config = attrs.get("Config", {}) or {}
        labels = {
            str(k): str(v)
            for k, v in (config.get("Labels") or {}).items()
            if k.startswith(LABEL_PREFIX)
        }
        full_id = str(attrs.get("Id") or "")
        cpu_percent = memory = None
        pid = int(state.get("Pid") or 0)
        if pid:
            cpu_seconds, memory = self._cgroup_usage(pid)
            if cpu_seconds is not None:
                cpu_percent = self._cpu_percent(full_id, cpu_seconds)
        return protocol.ContainerStatus(
            name=str(getattr(container, "name", "")),
            image=str(config.get("Image", "")),
            digest=attrs.get("Image"),
            state=str(state.get("Status", "unknown")),
            health=(state.get("Health") or {}).get("Status"),
            labels=labels,
            id=full_id[:12],
            started=_docker_time(state.get("StartedAt")),
            cpu_percent=cpu_percent,
            memory_bytes=memory,
        )

    def _cgroup_usage(self, pid: int) -> tuple[float | None, int | None]:
        """Cpu seconds and memory bytes of the cgroup of ``pid`` (cgroup v2 or v1)."""
        try:
            lines = (self._proc / str(pid) / "cgroup").read_text().splitlines()
        except OSError:
            return None, None
        paths: dict[str, str] = {}
        for line in lines:
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(","):
                paths[controller] = path.lstrip("/")
        cpu: float | None = None
        memory: int | None = None
        if "" in paths:  # the unified (v2) hierarchy; a hybrid host has it without controllers
            unified = self._cgroup / paths[""]
            usage = _keyed(unified / "cpu.stat").get("usage_usec")
            cpu = None if usage is None else usage / 1e6
            memory = _memory(unified / "memory.current", unified / "memory.stat", "inactive_file")
        if cpu is None and "cpuacct" in paths:
            for mount in ("cpuacct", "cpu,cpuacct"):
                usage = _number(self._cgroup / mount / paths["cpuacct"] / "cpuacct.usage")
                if usage is not None:
                    cpu = usage / 1e9
                    break
        if memory is None and "memory" in paths:
            v1 = self._cgroup / "memory" / paths["memory"]
            memory = _memory(
                v1 / "memory.usage_in_bytes", v1 / "memory.stat", "total_inactive_file"
            )
        return cpu, memory


def changed(previous: protocol.StatusReport | None, current: protocol.StatusReport) -> bool:
    """True when ``current`` differs from ``previous`` in more than cpu, memory and time."""
    if previous is None:
        return True
    return _shape(previous) != _shape(current)


def _shape(report: protocol.StatusReport) -> tuple[object, ...]:
    return (
        tuple((p.name, p.pid, p.state) for p in report.processes),
        tuple(
            (
                c.name,
                c.id,
                c.image,
                c.digest,
                c.state,
                c.health,
                c.started,
                tuple(sorted(c.labels.items())),
            )
            for c in report.containers
        ),
        report.notes,
        report.processes_omitted,
        report.containers_omitted,
    )


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def _boot_time(proc: Path) -> float | None:
    try:
        for line in (proc / "stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def _docker_time(value: Any) -> float | None:
    """Epoch seconds of a Docker timestamp; None for Docker's zero time (never started)."""
    if not value or str(value).startswith("0001-"):
        return None
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None


def _number(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _keyed(path: Path) -> dict[str, int]:
    """A cgroup ``key value`` file (cpu.stat, memory.stat) as a dict; empty if unreadable."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    found = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            found[key] = int(value)
    return found


def _memory(usage: Path, stat: Path, inactive: str) -> int | None:
    """Memory in use as ``docker stats`` counts it: usage less the inactive file cache."""
    used = _number(usage)
    if used is None:
        return None
    return max(used - _keyed(stat).get(inactive, 0), 0)
