"""Reconciler replicas as real processes on one PostgreSQL schema (tests, benchmarks).

``Replicas(tmp, dsn, repo, ttl).start(name)`` runs ``python -m reconciler serve`` with a
data dir of its own, ``QUICFLOW_STORE`` set to ``dsn`` and leases of ``ttl`` seconds;
``query`` reads the shared store, ``wait`` polls a condition while watching that no
replica died unexpectedly (a SIGKILLed one is expected).  Each replica's hub listens on
``quic_port(name)``; ``agent_token`` issues one agent token and registers it on every
replica's hub, and ``fingerprint`` prints a hub's pin, both through the real CLI, as an
operator setting up an agent for all replicas would; ``agent`` starts ``python -m agent``
on the hubs of some replicas.  Ask for the fingerprints before the replicas start:
``hub fingerprint`` creates a missing identity, and so does a starting hub.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from gitrepos import ROOT, ConfigRepo
from psycopg.rows import dict_row


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Replicas:
    def __init__(self, tmp: Path, dsn: str, repo: ConfigRepo, ttl: float = 3.0):
        self.tmp, self.dsn, self.repo, self.ttl = tmp, dsn, repo, ttl
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._quic_ports: dict[str, int] = {}
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self._pins: dict[str, str] = {}

    def data(self, name: str) -> Path:
        """The data dir of replica ``name``."""
        return self.tmp / f"data-{name}"

    def quic_port(self, name: str) -> int:
        """The UDP port replica ``name``'s hub listens on (the same after a restart)."""
        return self._quic_ports.setdefault(name, free_port(socket.SOCK_DGRAM))

    def start(self, name: str) -> None:
        with (self.tmp / f"{name}.log").open("ab") as log:
            self.procs[name] = self._spawn(self.data(name), self.quic_port(name), log)

    def _environ(self) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "QUICFLOW_STORE": self.dsn,
            "QUICFLOW_LEASE_TTL": str(self.ttl),
        }

    def _spawn(self, data: Path, quic_port: int, log: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "reconciler", "serve", "--repo", str(self.repo.path)]
            + ["--data", str(data), "--http", f"127.0.0.1:{free_port()}"]
            + ["--quic", f"127.0.0.1:{quic_port}"],
            cwd=self.tmp,
            env=self._environ(),
            stdout=log,  # type: ignore[arg-type]
            stderr=subprocess.STDOUT,
        )

    def cli(self, *args: str) -> str:
        """Run ``quicflow ARGS`` (``python -m reconciler``); its stdout."""
        done = subprocess.run(
            [sys.executable, "-m", "reconciler", *args],
            cwd=self.tmp,
            env=self._environ(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            pytest.fail(f"quicflow {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
        return done.stdout

    def agent_token(self, agent: str, names: list[str]) -> Path:
        """Issue ``agent``'s token on the first replica's hub, register it on the others'."""
        token_file = self.tmp / f"{agent}.token"
        first, *others = names
        token_file.write_text(
            self.cli("agent-token", "create", agent, "--data", str(self.data(first)))
        )
        token_file.chmod(0o600)
        for name in others:
            self.cli(
                "agent-token", "create", agent, "--token-file", str(token_file),
                "--data", str(self.data(name)),
            )  # fmt: skip
        return token_file

    def fingerprint(self, name: str) -> str:
        """The SHA-256 pin of replica ``name``'s hub (``quicflow hub fingerprint``)."""
        if name not in self._pins:
            self._pins[name] = self.cli("hub", "fingerprint", "--data", str(self.data(name)))
        return self._pins[name].strip()

    def agent(self, agent: str, names: list[str], token_file: Path) -> subprocess.Popen[bytes]:
        """Start ``python -m agent`` connected to the hubs of replicas ``names``."""
        hubs: list[str] = []
        for name in names:
            hubs += ["--server", f"127.0.0.1:{self.quic_port(name)}"]
            hubs += ["--pin-sha256", self.fingerprint(name)]
        with (self.tmp / f"agent-{agent}.log").open("ab") as log:
            self.agents[agent] = subprocess.Popen(
                [sys.executable, "-m", "agent", "--name", agent, *hubs]
                + ["--token-file", str(token_file), "--work-root", str(self.tmp / f"work-{agent}")]
                + ["--heartbeat", "0.5", "--refused-retry", "1"]
                # CI runs the suite as root; a real agent refuses root unless told.
                + (["--allow-root"] if os.geteuid() == 0 else []),
                cwd=self.tmp,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self.agents[agent]

    def stop(self) -> None:
        for proc in [*self.procs.values(), *self.agents.values()]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [*self.procs.values(), *self.agents.values()]:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.agents:
            self._kill_leftover_steps()

    def _kill_leftover_steps(self) -> None:
        # Agents start steps in sessions of their own (they outlive a killed agent, as on a
        # real host); steps of these tests name the test's directory, so they are found.
        marker, ours = str(self.tmp).encode(), os.getpgid(0)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                if marker in (entry / "cmdline").read_bytes():
                    group = os.getpgid(int(entry.name))
                    if group != ours:
                        os.killpg(group, signal.SIGKILL)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.tmp.glob("*.log"))
        )

    def query(self, sql: str, *args: object) -> list[dict[str, object]]:
        with psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row) as conn:
            try:
                return list(conn.execute(sql, args).fetchall())
            except psycopg.errors.UndefinedTable:
                return []

    def runs(self, version: str) -> list[dict[str, object]]:
        return self.query(
            "SELECT id, project, env, state, detail, resumes, trigger, created_at FROM runs"
            " WHERE version = %s",
            version,
        )

    def wait(self, what: str, check, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while not check():
            for name, proc in self.procs.items():
                if proc.poll() is not None and proc.returncode != -signal.SIGKILL:
                    pytest.fail(f"replica {name} exited {proc.returncode}\n{self.logs()}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {what}\n{self.logs()}")
            time.sleep(0.2)


def owner_of(run: dict[str, object]) -> str:
    detail = run["detail"]
    return str((json.loads(detail) if isinstance(detail, str) else detail).get("owner", ""))
