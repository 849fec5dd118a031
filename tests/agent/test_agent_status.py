"""Host status from /proc: watched processes by name or pid, and change detection."""

from __future__ import annotations

import os
from pathlib import Path

from agent import protocol, status


def test_watched_pid_and_name_are_sampled_from_proc(tmp_path: Path) -> None:
    own_name = Path(f"/proc/{os.getpid()}/comm").read_text().strip()
    collector = status.StatusCollector(
        [str(os.getpid()), own_name, "no-such-process-xyz"],
        docker_socket=tmp_path / "no-docker.sock",
    )
    collector.collect()
    sum(i * i for i in range(200_000))  # burn a little cpu between samples
    report = collector.collect()
    by_pid = report.processes[0]
    assert by_pid.pid == os.getpid() and by_pid.state in {"running", "sleeping"}
    assert by_pid.memory_bytes > 1 << 20 and by_pid.cpu_percent >= 0
    assert any(p.pid == os.getpid() and p.name == own_name for p in report.processes[1:])
    assert report.processes[-1] == protocol.ProcessStatus("no-such-process-xyz", None, "absent")
    assert report.containers == () and report.notes == ()


def test_no_docker_socket_means_no_containers_and_nothing_to_report(tmp_path: Path) -> None:
    collector = status.StatusCollector(docker_socket=tmp_path / "docker.sock")
    assert not collector.has_sources()
    assert collector.collect().containers == ()


def test_only_shape_changes_count_as_change() -> None:
    base = protocol.StatusReport(1.0, (protocol.ProcessStatus("app", 10, "sleeping", 1.0, 100),))
    busier = protocol.StatusReport(2.0, (protocol.ProcessStatus("app", 10, "sleeping", 50.0, 900),))
    restarted = protocol.StatusReport(3.0, (protocol.ProcessStatus("app", 11, "sleeping"),))
    assert status.changed(None, base)
    assert not status.changed(base, busier)
    assert status.changed(base, restarted)
