"""The registry of connected agents and target selection."""

from __future__ import annotations

import json

from agent import protocol
from reconciler.hub import registry


def info(name: str, **labels: str) -> registry.AgentInfo:
    return registry.AgentInfo(name, labels, "host", "Linux", "1", 1.0, 1.0, "127.0.0.1:1", 15.0)


def test_select_by_names_and_label_selector() -> None:
    agents = registry.Registry()
    for entry in (
        info("web-2", role="web", zone="b"),
        info("web-1", role="web", zone="a"),
        info("db-1", role="db", zone="a"),
    ):
        agents.add(entry)
    assert [a.name for a in agents.all()] == ["db-1", "web-1", "web-2"]
    assert [a.name for a in agents.select()] == ["db-1", "web-1", "web-2"]
    assert [a.name for a in agents.select(selector={"role": "web"})] == ["web-1", "web-2"]
    assert [a.name for a in agents.select(selector={"role": "web", "zone": "a"})] == ["web-1"]
    assert [a.name for a in agents.select(names=["db-1", "nope"])] == ["db-1"]
    assert agents.select(names=["db-1"], selector={"role": "web"}) == []
    assert agents.select(names=[]) == []


def test_heartbeat_status_and_removal() -> None:
    agents = registry.Registry()
    agents.add(info("a"))
    agents.touch("a", 5.0)
    report = protocol.StatusReport(5.0)
    agents.set_status("a", report)
    current = agents.get("a")
    assert current is not None and current.last_heartbeat == 5.0 and current.status == report
    agents.touch("ghost", 1.0)  # unknown names are ignored
    assert agents.remove("a") == current and agents.get("a") is None and len(agents) == 0


def test_json_view_for_the_api() -> None:
    entry = registry.AgentInfo(
        "a", {"role": "web"}, "h", "Linux", "1", 1.0, 2.0, "127.0.0.1:9", 15.0,
        protocol.StatusReport(3.0, (protocol.ProcessStatus("app", 7, "running"),)),
    )  # fmt: skip
    view = registry.as_json(entry)
    assert json.loads(json.dumps(view)) == view
    assert view["labels"] == {"role": "web"} and view["reported_at"] == 3.0
    assert view["processes"] == [
        {
            "name": "app",
            "pid": 7,
            "state": "running",
            "cpu_percent": 0.0,
            "memory_bytes": 0,
            "started": None,
        }
    ]
    assert view["containers"] == [] and view["notes"] == []
    # Before its first report an agent has no lists (not empty ones: nothing is known).
    quiet = registry.as_json(info("b"))
    assert quiet["processes"] is None and quiet["containers"] is None


def test_sizes_read_as_people_write_them() -> None:
    assert [registry.size_text(n) for n in (None, 512, 1536, 12_900_000, 5 << 30)] == [
        "-",
        "512 B",
        "1.5 KiB",
        "12.3 MiB",
        "5.0 GiB",
    ]
