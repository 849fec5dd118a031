"""One agent serves three ``quicflow serve`` replicas; the replica running a step on it dies.

Real processes: three ``python -m reconciler serve`` on one PostgreSQL schema with leases
of 3 s, and one ``python -m agent`` connected to the hubs of all three (``--server`` and
``--pin-sha256`` once per replica, one token issued on the first replica's hub and
registered on the others with ``quicflow agent-token create web-1 --token-file``). Six
project/envs, shared among the replicas, all target that agent; each run's pipeline runs
a ``prepare`` task on it, then the deploy, whose script sleeps on the agent. Every step
appends a line to a marker file of its environment (outside the data dirs), so a step
run twice anywhere shows.

While the deploys sleep, the replica holding the most of them is SIGKILLed. The others
take over its leases, interrupt its runs and resume them; the resumed runs re-issue the
deploy in flight under its old command id, which the agent adopts (it is still running
there) -- so every release completes once, the deploy's marker is written once, and the
finished ``prepare`` step is not repeated.
"""

from __future__ import annotations

import os
import re
import signal
from collections import Counter
from pathlib import Path

import pytest
from gitrepos import ConfigRepo
from postgres import fresh_dsn
from releasing import USERS
from replicas import Replicas, owner_of

pytestmark = pytest.mark.integration

REPLICAS = ["a", "b", "c"]
PROJECTS = ("shop", "blog", "wiki")
ENVS = ("dev", "prod")
TTL = 3.0
SLEEP = 8  # seconds each deploy sleeps on the agent: the kill lands inside it


def settings() -> str:
    return (
        USERS
        + "settings:\n  poll_interval: 1s\n  push_history: false\n"
        + "agents:\n  - {name: web-1, labels: {role: web}}\n"
    )


def project_yaml(markers: Path) -> str:
    marker = f'"{markers}/$QUICFLOW_PROJECT.$QUICFLOW_ENV"'
    return f"""\
members:
  - {{user: bob, role: owner}}
deploy:
  type: script
  timeout: 60s
  script:
    run: |
      echo "start $QUICFLOW_VERSION" >> {marker}
      sleep {SLEEP}
      echo "end $QUICFLOW_VERSION" >> {marker}
pipeline:
  stages:
    - name: prepare
      tasks:
        - name: prepare
          run_on: targets
          run: echo "prepare $QUICFLOW_VERSION" >> {marker}
    - name: release
      tasks:
        - {{name: deploy, uses: deploy}}
"""


def env_yaml(version: str) -> str:
    return f'version: "{version}"\ntargets:\n  - {{agent: web-1}}\n'


def markers_of(markers: Path) -> dict[str, list[str]]:
    return {f.name: f.read_text().splitlines() for f in sorted(markers.iterdir())}


def test_an_agent_serves_every_replica_and_its_step_is_adopted_after_a_kill(
    tmp_path: Path,
) -> None:
    dsn = fresh_dsn()
    markers = tmp_path / "markers"
    markers.mkdir()
    repo = ConfigRepo(tmp_path / "config")
    repo.commit({"quicflow.yaml": settings()})  # no environments yet
    replicas = Replicas(tmp_path, dsn, repo, TTL)
    try:
        # The operator's set-up, before the replicas start: one token for all hubs, and
        # each hub's pin.
        token_file = replicas.agent_token("web-1", REPLICAS)
        for name in REPLICAS:
            replicas.fingerprint(name)
        for name in REPLICAS:
            replicas.start(name)
        agent = replicas.agent("web-1", REPLICAS, token_file)
        agent_log = tmp_path / "agent-web-1.log"

        def connected_everywhere() -> bool:
            assert agent.poll() is None, agent_log.read_text()
            log = agent_log.read_text()
            return all(
                f"connected to hub 127.0.0.1:{replicas.quic_port(name)} as 'web-1'" in log
                for name in REPLICAS
            )

        replicas.wait("the agent on every replica's hub", connected_everywhere, 40)
        replicas.wait(
            "three replicas",
            lambda: len(replicas.query("SELECT owner FROM replicas")) == len(REPLICAS),
            40,
        )

        files = {}
        for project in PROJECTS:
            files[f"projects/{project}/project.yaml"] = project_yaml(markers)
            for env in ENVS:
                files[f"projects/{project}/environments/{env}.yaml"] = env_yaml("1.0")
        repo.commit(files, message="six project/envs at 1.0, all on web-1")
        every = {f"{project}.{env}" for project in PROJECTS for env in ENVS}

        def all_sleeping() -> bool:
            found = markers_of(markers)
            return set(found) == every and all("start 1.0" in lines for lines in found.values())

        replicas.wait("every deploy sleeping on the agent", all_sleeping, 40)
        running = [r for r in replicas.runs("1.0") if r["state"] == "running"]
        assert len(running) == len(every), running
        owners = Counter(owner_of(r) for r in running)
        assert len(owners) >= 2, owners  # shared among the replicas, all through one agent
        victim_owner, _ = owners.most_common(1)[0]
        pid = int(victim_owner.rsplit(":", 2)[1])
        (victim,) = [n for n, p in replicas.procs.items() if p.pid == pid]
        victim_runs = {r["id"] for r in running if owner_of(r) == victim_owner}
        in_flight = replicas.query(
            "SELECT s.run_id, s.key, s.status FROM steps s WHERE s.run_id = ANY(%s)",
            list(victim_runs),
        )
        assert {str(s["key"]) for s in in_flight if s["status"] == "running"} >= {"deploy:web-1"}

        os.kill(pid, signal.SIGKILL)
        replicas.procs[victim].wait()

        def released() -> bool:
            done = [r for r in replicas.runs("1.0") if r["state"] == "succeeded"]
            return {(r["project"], r["env"]) for r in done} == {
                (project, env) for project in PROJECTS for env in ENVS
            }

        replicas.wait("1.0 everywhere", released, 40)
        assert agent.poll() is None

        # Every release completed once; the victim's runs were interrupted and resumed by
        # a survivor.
        final = replicas.runs("1.0")
        assert Counter(str(r["state"]) for r in final) == Counter(
            {"succeeded": len(every), "interrupted": len(victim_runs)}
        ), final
        assert {r["id"] for r in final if r["state"] == "interrupted"} == victim_runs
        resumed = [r for r in final if r["state"] == "succeeded" and r["resumes"]]
        assert {r["resumes"] for r in resumed} == victim_runs
        assert all(owner_of(r) != victim_owner for r in resumed)

        # No step ran twice: each environment prepared, started and ended its deploy once
        # -- the victim's deploys too, adopted on the agent while they slept.
        assert markers_of(markers) == {
            name: ["prepare 1.0", "start 1.0", "end 1.0"] for name in sorted(every)
        }
        survivors = {replicas.quic_port(n) for n in REPLICAS if n != victim}
        adopted = re.findall(
            r"command \S+deploy:web-1\S* from hub 127\.0\.0\.1:(\d+) is running here: "
            r"attached to it, not run again",
            agent_log.read_text(),
        )
        assert len(adopted) == len(victim_runs), adopted
        assert {int(port) for port in adopted} <= survivors
    finally:
        replicas.stop()
