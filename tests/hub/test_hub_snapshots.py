"""The agents snapshot the hub writes for ``quicflow agents``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from agent import protocol
from reconciler.hub import registry, snapshots


def info(name: str) -> registry.AgentInfo:
    return registry.AgentInfo(
        name=name,
        labels={"role": "web"},
        hostname=f"{name}.example",
        os="Linux 6.1",
        agent_version="1.2.3",
        connected_since=100.0,
        last_heartbeat=110.0,
        address="10.0.0.5:40000",
        heartbeat_interval=15.0,
    )


def test_written_snapshot_reads_back_and_is_fresh_while_rewritten_on_time(tmp_path: Path) -> None:
    assert snapshots.read(tmp_path) is None
    content = snapshots.render(
        [info("web-1"), info("web-2")], written=1000.0, address="0.0.0.0:4433", interval=5.0
    )
    snapshots.write(tmp_path, content)
    snapshot = snapshots.read(tmp_path)
    assert snapshot is not None
    assert [a["name"] for a in snapshot.agents] == ["web-1", "web-2"]
    assert snapshot.agents[0]["labels"] == {"role": "web"}
    assert snapshot.agents[0]["last_heartbeat"] == 110.0
    assert snapshot.address == "0.0.0.0:4433" and snapshot.running
    assert snapshot.is_fresh(1010.0) and not snapshot.is_fresh(1017.0)
    assert list(tmp_path.iterdir()) == [tmp_path / snapshots.SNAPSHOT_FILE]  # no temp left


def test_a_stopped_hub_snapshot_is_never_fresh_and_holds_no_agents(tmp_path: Path) -> None:
    content = snapshots.render([], written=1000.0, address="h:1", interval=5.0, running=False)
    snapshots.write(tmp_path, content)
    snapshot = snapshots.read(tmp_path)
    assert snapshot is not None and not snapshot.is_fresh(1000.0) and snapshot.agents == ()


def test_the_snapshot_carries_each_agent_s_latest_status_report(tmp_path: Path) -> None:
    report = protocol.StatusReport(
        105.0,
        (protocol.ProcessStatus("nginx", 12, "sleeping", 0.5, 4096, started=90.0),),
        (protocol.ContainerStatus("shop-prod", "r/shop:1", None, "running", "healthy"),),
    )
    reporting = dataclasses.replace(info("web-1"), status=report)
    snapshots.write(
        tmp_path, snapshots.render([reporting, info("web-2")], written=0, address="", interval=1)
    )
    snapshot = snapshots.read(tmp_path)
    assert snapshot is not None
    first, second = snapshot.agents
    assert first == registry.as_json(reporting)  # what the API shows
    assert first["processes"][0]["pid"] == 12 and first["containers"][0]["health"] == "healthy"
    assert second["processes"] is None and second["containers"] is None


def test_interval_follows_the_heartbeat_up_to_five_seconds() -> None:
    assert snapshots.interval_for(0.5) == 0.5
    assert snapshots.interval_for(15.0) == snapshots.MAX_INTERVAL == 5.0
