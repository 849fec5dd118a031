"""The agents snapshot the hub writes for ``quicflow agents``."""

from __future__ import annotations

from pathlib import Path

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


def test_a_stopped_hub_snapshot_is_never_fresh_and_holds_no_status(tmp_path: Path) -> None:
    content = snapshots.render([], written=1000.0, address="h:1", interval=5.0, running=False)
    snapshots.write(tmp_path, content)
    snapshot = snapshots.read(tmp_path)
    assert snapshot is not None and not snapshot.is_fresh(1000.0) and snapshot.agents == ()
    document = snapshots.render([info("a")], written=0, address="", interval=1)
    assert "status" not in document["agents"][0]


def test_interval_follows_the_heartbeat_up_to_five_seconds() -> None:
    assert snapshots.interval_for(0.5) == 0.5
    assert snapshots.interval_for(15.0) == snapshots.MAX_INTERVAL == 5.0
