"""A real Prometheus scrapes ``/metrics`` of a running ``quicflow serve`` and counts its run.

Debian's ``prometheus`` package (``.ci/run`` installs it) runs on loopback with a scrape
config naming the server and an admin's API token; the server is a real
``python -m reconciler serve`` that deploys a script release at start. A query through
Prometheus's HTTP API then returns the run counter for that deploy.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from gitrepos import ROOT, ConfigRepo
from releasing import USERS, free_ports

pytestmark = pytest.mark.integration

PROJECT = """\
members:
  - {user: bob, role: owner}
deploy:
  type: script
  timeout: 20s
  script:
    run: echo "deploying $QUICFLOW_VERSION"
"""
QUERY = 'quicflow_runs_total{project="app",env="dev",status="succeeded"}'


def wait_for(what: str, check, timeout: float = 90.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = check()
        except httpx.HTTPError:
            found = None
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def stop(process: subprocess.Popen[str]) -> str:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
    if process.stdout is None:
        return ""
    with process.stdout:
        return process.stdout.read()


def test_prometheus_scrapes_the_run_counter_after_a_deploy(tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail(
            "Debian's prometheus is not installed: apt-get install prometheus (.ci/run does)"
        )
    repo = ConfigRepo(tmp_path / "config")
    repo.commit(
        {
            "quicflow.yaml": USERS + "settings:\n  poll_interval: 1s\n",
            "projects/app/project.yaml": PROJECT,
            "projects/app/environments/dev.yaml": 'version: "1.0"\ntargets:\n  - {local: t1}\n',
        }
    )
    data = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    token = subprocess.run(
        [sys.executable, "-m", "reconciler", "token", "create", "alice"]
        + ["--data", str(data), "--repo", str(repo.path)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    token_file = tmp_path / "token"
    token_file.write_text(token)
    http, prometheus_port, quic = free_ports(3)
    server = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "serve", "--repo", str(repo.path), "--data", str(data)]
        + ["--http", f"127.0.0.1:{http}", "--quic", f"127.0.0.1:{quic}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: quicflow\n"
        "    metrics_path: /metrics\n"
        f"    authorization: {{type: Bearer, credentials_file: {token_file}}}\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{http}']}}]\n"
    )
    prometheus = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}"]
        + [f"--web.listen-address=127.0.0.1:{prometheus_port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{http}"
    api = f"http://127.0.0.1:{prometheus_port}/api/v1"
    try:
        auth = {"Authorization": f"Bearer {token}"}

        def deployed() -> bool:
            if httpx.get(f"{base}/readyz", timeout=5).status_code != 200:
                return False
            runs = httpx.get(f"{base}/api/release/runs", headers=auth, timeout=5).json()["items"]
            return bool(runs) and runs[0]["state"] == "succeeded"

        wait_for("the deploy", deployed)
        direct = httpx.get(f"{base}/metrics", headers=auth, timeout=5).text
        assert 'quicflow_runs_total{env="dev",project="app",status="succeeded"} 1.0' in direct

        def scraped() -> list[dict[str, object]] | None:
            answer = httpx.get(f"{api}/query", params={"query": QUERY}, timeout=5).json()
            assert answer["status"] == "success", answer
            return answer["data"]["result"] or None

        (series,) = wait_for("Prometheus to scrape the counter", scraped)
        assert series["metric"]["job"] == "quicflow"  # type: ignore[index]
        assert series["value"][1] == "1"  # type: ignore[index]
        targets = httpx.get(f"{api}/targets", timeout=5).json()["data"]["activeTargets"]
        assert [t["health"] for t in targets] == ["up"]
    finally:
        prometheus_out = stop(prometheus)
        server_out = stop(server)
        print(prometheus_out[-3000:], server_out[-3000:])
