"""The registry of connected agents, and target selection by name or label selector.

Pure data: it knows nothing of QUIC.  The server adds an entry when an agent has
authenticated, refreshes it on heartbeats and status reports, and removes it when the
connection ends or the agent is declared lost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent import protocol


@dataclass(frozen=True, slots=True)
class AgentInfo:
    """What the hub knows about one connected agent."""

    name: str
    labels: Mapping[str, str]
    hostname: str
    os: str
    agent_version: str
    connected_since: float
    last_heartbeat: float
    address: str
    heartbeat_interval: float
    status: protocol.StatusReport | None = None


def as_json(info: AgentInfo) -> dict[str, Any]:
    """A JSON-ready view of ``info`` (the agents API, the status page, the snapshot)."""
    return {
        "name": info.name,
        "labels": dict(info.labels),
        "hostname": info.hostname,
        "os": info.os,
        "agent_version": info.agent_version,
        "connected_since": info.connected_since,
        "last_heartbeat": info.last_heartbeat,
        "address": info.address,
        "heartbeat_interval": info.heartbeat_interval,
        **status_json(info.status),
    }


def status_json(report: protocol.StatusReport | None) -> dict[str, Any]:
    """The processes and containers of an agent's latest report (None lists: no report yet).

    Only what the agent collected travels: no command lines, no container environment.
    """
    if report is None:
        return {
            "reported_at": None,
            "processes": None,
            "containers": None,
            "processes_omitted": 0,
            "containers_omitted": 0,
            "notes": [],
        }
    meta = protocol.status_to_meta(report)
    return {"reported_at": meta.pop("time"), **meta}


def size_text(size: int | None) -> str:
    """A memory size for people (``512 B``, ``12.3 MiB``); ``-`` when unknown."""
    if size is None:
        return "-"
    value, unit = float(size), 0
    while value >= 1024 and unit < len(_SIZE_UNITS) - 1:
        value, unit = value / 1024, unit + 1
    return f"{size} B" if unit == 0 else f"{value:.1f} {_SIZE_UNITS[unit]}"


_SIZE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def matches(
    info: AgentInfo,
    names: Sequence[str] | None = None,
    selector: Mapping[str, str] | None = None,
) -> bool:
    """True when ``info`` is one of ``names`` (if given) and carries every label in ``selector``."""
    if names is not None and info.name not in names:
        return False
    if selector:
        return all(info.labels.get(key) == value for key, value in selector.items())
    return True


class Registry:
    """Connected agents by name; at most one entry per name."""

    def __init__(self) -> None:
        self._agents: dict[str, AgentInfo] = {}

    def add(self, info: AgentInfo) -> None:
        """Register (or replace) the agent ``info.name``."""
        self._agents[info.name] = info

    def remove(self, name: str) -> AgentInfo | None:
        """Forget agent ``name``; return what was known."""
        return self._agents.pop(name, None)

    def get(self, name: str) -> AgentInfo | None:
        """The entry of ``name``, if connected."""
        return self._agents.get(name)

    def touch(self, name: str, now: float) -> None:
        """Record a heartbeat from ``name`` at ``now``."""
        info = self._agents.get(name)
        if info is not None:
            self._agents[name] = dataclasses.replace(info, last_heartbeat=now)

    def set_status(self, name: str, report: protocol.StatusReport) -> None:
        """Keep ``report`` as the latest status of ``name``."""
        info = self._agents.get(name)
        if info is not None:
            self._agents[name] = dataclasses.replace(info, status=report)

    def all(self) -> list[AgentInfo]:
        """Every connected agent, sorted by name."""
        return [self._agents[name] for name in sorted(self._agents)]

    def select(
        self,
        names: Sequence[str] | None = None,
        selector: Mapping[str, str] | None = None,
    ) -> list[AgentInfo]:
        """Connected agents matching ``names`` and ``selector`` (both optional), by name."""
        return [info for info in self.all() if matches(info, names, selector)]

    def __len__(self) -> int:
        return len(self._agents)
