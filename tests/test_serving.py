"""``quicflow serve`` start-up: a failed start harms nothing (issue 17, item 3).

Real ``python -m reconciler serve`` processes on a real config repo. With its HTTP port
taken, ``serve`` used to start deploying anyway, cancel the runs when the port failed,
write "cancelled" into Git although the targets had the version, and hold the release
after a good restart until a dummy commit. Now it binds the port first and exits 1
naming ``--http``, before anything deploys: no run, no state commit, no note. A good
start afterwards deploys the release as usual, and logs one line per run start and end.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gitrepos import ROOT, ConfigRepo, git
from releasing import USERS, free_ports

pytestmark = pytest.mark.integration

PROJECT = """\
members:
  - {user: bob, role: owner}
deploy:
  type: script
  timeout: 20s
  script:
    run: echo "$QUICFLOW_VERSION" >> deploys.log
"""


def serve(repo: Path, data: Path, http: int, quic: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "reconciler", "serve", "--repo", str(repo), "--data", str(data)]
        + ["--http", f"127.0.0.1:{http}", "--quic", f"127.0.0.1:{quic}"],
        cwd=data.parent,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_with_its_http_port_taken_exits_before_any_deploy(tmp_path: Path) -> None:
    repo = ConfigRepo(tmp_path / "config")
    repo.commit(
        {
            "quicflow.yaml": USERS + "settings:\n  poll_interval: 1s\n",
            "projects/app/project.yaml": PROJECT,
            "projects/app/environments/dev.yaml": 'version: "1.0"\ntargets:\n  - {local: t1}\n',
        }
    )
    data = tmp_path / "data"
    deploys = data / "targets" / "app" / "dev" / "t1" / "deploys.log"
    (http,) = free_ports(1)
    taken = socket.create_server(("127.0.0.1", http))
    try:
        failed = serve(repo.path, data, http, udp_port())
        out, _ = failed.communicate(timeout=60)
    finally:
        taken.close()

    assert failed.returncode == 1, out
    assert f"--http 127.0.0.1:{http}: cannot listen there" in out
    assert "Traceback" not in out
    assert not deploys.exists()
    assert git(repo.path, "for-each-ref", "refs/quicflow", "refs/notes") == ""  # nothing in Git

    good = serve(repo.path, data, http, udp_port())
    try:
        deadline = time.monotonic() + 60
        while not (deploys.exists() and "refs/quicflow/state" in git(repo.path, "for-each-ref")):
            assert good.poll() is None, good.communicate()[0]
            assert time.monotonic() < deadline, "the good start did not deploy"
            time.sleep(0.1)
    finally:
        good.send_signal(signal.SIGTERM)
        out, _ = good.communicate(timeout=60)
    # uvicorn raises the SIGTERM again once it has stopped serving; either way it stopped.
    assert good.returncode in (0, -signal.SIGTERM), out
    assert deploys.read_text().split() == ["1.0"]
    # One line per run start and end: project/env, versions, trigger, outcome.
    started = [line for line in out.splitlines() if " started: app/dev" in line]
    ended = [line for line in out.splitlines() if " ended " in line and "app/dev" in line]
    assert len(started) == 1 and "app/dev (nothing) -> 1.0 (trigger poll)" in started[0]
    assert (
        len(ended) == 1 and "ended succeeded: app/dev (nothing) -> 1.0 (trigger poll)" in ended[0]
    )
    record = json.loads(git(repo.path, "show", "refs/quicflow/state:app/dev.json"))
    assert (record["version"], record["outcome"], record["last_failure"]) == (
        "1.0",
        "succeeded",
        None,
    )
