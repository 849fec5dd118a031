"""Host status: watched processes from the real /proc, QUIC-Flow's containers from real Docker.

The Docker tests run two busybox containers on this machine's daemon, one with the labels
the container driver sets and one without any, and let the collector talk to the daemon
through a recording relay of its socket: so they see what the agent reports and what it
asked the daemon for.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from dockerenv import registry_or_skip

from agent import protocol, status

DOCKER_SOCKET = Path("/var/run/docker.sock")


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
    # Watched by pid, a process is shown by its own name.
    assert by_pid.pid == os.getpid() and by_pid.name == own_name
    assert by_pid.state in {"running", "sleeping"}
    assert by_pid.memory_bytes > 1 << 20 and by_pid.cpu_percent >= 0
    assert any(p.pid == os.getpid() and p.name == own_name for p in report.processes[1:])
    assert report.processes[-1] == protocol.ProcessStatus("no-such-process-xyz", None, "absent")
    assert report.containers == () and report.notes == ()


def test_a_process_start_time_and_cpu_come_from_proc(tmp_path: Path) -> None:
    before = time.time()
    child = subprocess.Popen(["sh", "-c", "while :; do :; done"])
    try:
        collector = status.StatusCollector([str(child.pid)], docker_socket=tmp_path / "none")
        first = collector.collect().processes[0]
        assert first.cpu_percent == 0.0  # no earlier sample to compare with
        # Wait (bounded) until the busy loop has used a clock tick of cpu since then.
        started = Path(f"/proc/{child.pid}/stat").read_text().split(") ")[1].split()
        ticks = int(started[11]) + int(started[12])
        for _ in range(500):
            now = Path(f"/proc/{child.pid}/stat").read_text().split(") ")[1].split()
            if int(now[11]) + int(now[12]) > ticks + 1:
                break
            time.sleep(0.01)
        second = collector.collect().processes[0]
    finally:
        child.kill()
        child.wait()
    assert second.name == "sh" and second.state == "running"
    assert second.cpu_percent > 0
    # /proc counts start times in clock ticks since boot: a tick of slack either way.
    assert first.started is not None and before - 1 <= first.started <= time.time() + 1
    assert second.started == first.started


def test_no_docker_socket_means_no_containers_and_nothing_to_report(tmp_path: Path) -> None:
    collector = status.StatusCollector(docker_socket=tmp_path / "docker.sock")
    assert not collector.has_sources()
    assert collector.collect().containers == ()


def test_a_report_lists_at_most_its_limit_and_counts_the_rest(tmp_path: Path) -> None:
    pid = str(os.getpid())
    collector = status.StatusCollector([pid, pid, pid], docker_socket=tmp_path / "no", limit=2)
    report = collector.collect()
    assert [p.pid for p in report.processes] == [os.getpid()] * 2
    assert report.processes_omitted == 1
    assert report.notes == ("at most 2 processes and 2 containers are listed",)


def test_only_shape_changes_count_as_change() -> None:
    base = protocol.StatusReport(1.0, (protocol.ProcessStatus("app", 10, "sleeping", 1.0, 100),))
    busier = protocol.StatusReport(2.0, (protocol.ProcessStatus("app", 10, "sleeping", 50.0, 900),))
    restarted = protocol.StatusReport(3.0, (protocol.ProcessStatus("app", 11, "sleeping"),))
    assert status.changed(None, base)
    assert not status.changed(base, busier)
    assert status.changed(base, restarted)
    running = protocol.ContainerStatus(
        "web", "img", None, "running", "healthy", id="a", started=1.0
    )
    busy = protocol.ContainerStatus(
        "web", "img", None, "running", "healthy", id="a", started=1.0, cpu_percent=90.0
    )
    again = protocol.ContainerStatus("web", "img", None, "running", "healthy", id="a", started=2.0)
    assert not status.changed(
        protocol.StatusReport(1.0, containers=(running,)),
        protocol.StatusReport(2.0, containers=(busy,)),
    )
    assert status.changed(  # restarted in place: same name and id, a new start time
        protocol.StatusReport(1.0, containers=(running,)),
        protocol.StatusReport(2.0, containers=(again,)),
    )


# -- Docker ------------------------------------------------------------------------------


class RecordingSocket:
    """A unix socket relaying to the Docker socket; keeps every byte clients sent."""

    def __init__(self, path: Path, target: Path) -> None:
        self.path, self.target = path, target
        self.sent = bytearray()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        self._listener.listen()
        self._listener.settimeout(0.05)
        self._threads = [threading.Thread(target=self._accept)]
        self._threads[0].start()

    def requests(self) -> list[str]:
        """The request targets (path and query) sent so far."""
        with self._lock:
            text = bytes(self.sent).decode(errors="replace")
        return [line.split()[1] for line in text.splitlines() if line.endswith("HTTP/1.1")]

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._relay, args=(client,))
            self._threads.append(thread)
            thread.start()

    def _relay(self, client: socket.socket) -> None:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.connect(str(self.target))
        back = threading.Thread(target=self._pump, args=(upstream, client, False))
        back.start()
        self._pump(client, upstream, True)
        back.join()
        client.close()
        upstream.close()

    def _pump(self, source: socket.socket, sink: socket.socket, record: bool) -> None:
        source.settimeout(0.05)
        try:
            while not self._stop.is_set():
                try:
                    data = source.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                if record:
                    with self._lock:
                        self.sent.extend(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)


@dataclass(frozen=True)
class Containers:
    """The two test containers: ``ours`` carries the driver's labels, ``other`` none."""

    ours: str
    other: str
    ours_name: str
    other_name: str


@pytest.fixture(scope="module")
def containers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containers]:
    docker = registry_or_skip().docker
    context = tmp_path_factory.mktemp("busybox-image")
    (context / "busybox").write_bytes(Path("/bin/busybox").read_bytes())
    (context / "busybox").chmod(0o755)
    # No LABEL in the image: a container inherits its image's labels, and ``other``
    # must carry none at all. Both are removed by id at the end.
    (context / "Dockerfile").write_text(
        "FROM scratch\n"
        "COPY busybox /bin/busybox\n"
        'HEALTHCHECK --interval=1s CMD ["/bin/busybox", "true"]\n'
        'ENTRYPOINT ["/bin/busybox", "sleep", "600"]\n'
    )
    suffix = secrets.token_hex(3)
    image = f"quicflow-test/agent-status-{suffix}:1"

    def run(*args: str) -> str:
        done = subprocess.run([docker, *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout.strip()

    run("build", "-q", "-t", image, str(context))
    started: list[str] = []
    try:
        ours_name, other_name = f"qf-status-ours-{suffix}", f"qf-status-other-{suffix}"
        labels = {
            "quicflow.project": "shop",
            "quicflow.env": "prod",
            "quicflow.version": "1.0",
            "quicflow.target": "web-1",
            "quicflow.test": "1",
            "team": "payments",  # not ours: it does not travel
        }
        label_args = [arg for k, v in labels.items() for arg in ("--label", f"{k}={v}")]
        started.append(run("run", "-d", "--name", ours_name, *label_args, image))
        started.append(run("run", "-d", "--no-healthcheck", "--name", other_name, image))
        yield Containers(started[0], started[1], ours_name, other_name)
    finally:
        if started:
            subprocess.run([docker, "rm", "-f", *started], capture_output=True)
        subprocess.run([docker, "image", "rm", "-f", image], capture_output=True)


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RecordingSocket]:
    relay = RecordingSocket(tmp_path / "docker.sock", DOCKER_SOCKET)
    try:
        yield relay
    finally:
        relay.close()


def test_only_quicflow_containers_are_asked_for_and_reported(
    containers: Containers, relay: RecordingSocket
) -> None:
    collector = status.StatusCollector(docker_socket=relay.path)
    try:
        assert collector.has_sources()
        report = collector.collect()
        for _ in range(100):  # the health check runs every second: wait for its verdict
            (ours,) = [c for c in report.containers if c.name == containers.ours_name]
            if ours.health not in (None, "starting"):
                break
            time.sleep(0.1)
            report = collector.collect()
        # Between two samples of a running container, its cgroup gives cpu and memory.
        report = collector.collect()
        requests = relay.requests()
    finally:
        collector.close()

    names = [c.name for c in report.containers]
    assert containers.ours_name in names and containers.other_name not in names
    (ours,) = [c for c in report.containers if c.name == containers.ours_name]
    assert ours.id == containers.ours[:12] and ours.state == "running"
    assert ours.health == "healthy" and ours.image.startswith("quicflow-test/agent-status-")
    assert ours.labels == {
        "quicflow.project": "shop",
        "quicflow.env": "prod",
        "quicflow.version": "1.0",
        "quicflow.target": "web-1",
        "quicflow.test": "1",
    }
    assert ours.started is not None and ours.started <= time.time()
    assert ours.memory_bytes is not None and ours.memory_bytes > 0
    assert ours.cpu_percent is not None and ours.cpu_percent >= 0
    assert report.notes == () and report.containers_omitted == 0

    # Docker did the filtering: every listing asked for the driver's labels, and the other
    # container was never named in any request (not even inspected).
    listings = [r for r in requests if urlsplit(r).path.endswith("/containers/json")]
    assert listings
    for listing in listings:
        query = parse_qs(urlsplit(listing).query)
        assert json.loads(query["filters"][0]) == {"label": ["quicflow.project", "quicflow.env"]}
    assert not any(containers.other in r or containers.other_name in r for r in requests)
    # One client for the collector's life: the daemon's version was asked once, at the start.
    assert len([r for r in requests if urlsplit(r).path == "/version"]) == 1


def test_a_daemon_that_does_not_answer_is_a_note_not_a_failure(tmp_path: Path) -> None:
    dead = tmp_path / "docker.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(dead))
    listener.close()  # the socket file exists; nothing listens on it
    collector = status.StatusCollector(docker_socket=dead)
    report = collector.collect()
    assert report.containers == ()
    assert len(report.notes) == 1 and report.notes[0].startswith("docker: ")
    collector.close()
