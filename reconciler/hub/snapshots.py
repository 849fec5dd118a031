"""The agents snapshot: ``agents.json`` in the hub dir, so ``quicflow agents`` works offline.

The running hub rewrites the file whenever an agent connects or leaves and at least once a
heartbeat interval (at most every ``MAX_INTERVAL`` s), atomically, so a reader sees a whole
file.  It holds what ``quicflow agents`` prints -- name, labels, version, address, last
heartbeat, and with ``--detail`` the processes and containers of each agent's latest status
report (``registry.as_json``, as the API shows them; capped per agent by the protocol).  On
a clean stop the hub writes an empty, "stopped" one; a snapshot much older than its
interval means the hub died without saying so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.hub import registry

SNAPSHOT_FILE = "agents.json"
MAX_INTERVAL = 5.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One snapshot as read back."""

    written: float
    pid: int
    address: str
    interval: float
    running: bool
    agents: tuple[dict[str, Any], ...]

    def is_fresh(self, now: float) -> bool:
        """True when the hub that wrote it is running and has rewritten it on time."""
        return self.running and now - self.written <= 3 * self.interval + 1.0


def interval_for(heartbeat_interval: float) -> float:
    """How often the hub rewrites the snapshot."""
    return min(MAX_INTERVAL, heartbeat_interval)


def render(
    agents: Sequence[registry.AgentInfo],
    *,
    written: float,
    address: str,
    interval: float,
    running: bool = True,
) -> dict[str, Any]:
    """The snapshot's content: built on the event loop, encoded and written by ``write``."""
    return {
        "written": written,
        "pid": os.getpid(),
        "address": address,
        "interval": interval,
        "running": running,
        "agents": [registry.as_json(info) for info in agents],
    }


def write(directory: Path, document: dict[str, Any]) -> None:
    """Replace the snapshot atomically with ``document`` (blocking: run it in a thread)."""
    path = directory / SNAPSHOT_FILE
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(json.dumps(document, separators=(",", ":")).encode())
    os.replace(temporary, path)


def read(directory: Path) -> Snapshot | None:
    """The snapshot in ``directory``, or None when there is none (the hub never ran here)."""
    try:
        document = json.loads((directory / SNAPSHOT_FILE).read_bytes())
    except FileNotFoundError:
        return None
    return Snapshot(
        written=float(document["written"]),
        pid=int(document["pid"]),
        address=str(document["address"]),
        interval=float(document["interval"]),
        running=bool(document["running"]),
        agents=tuple(dict(agent) for agent in document["agents"]),
    )
