"""Reconciler replicas as real processes on one PostgreSQL schema (tests, benchmarks).

``Replicas(tmp, dsn, repo, ttl).start(name)`` runs ``python -m reconciler serve`` with a
data dir of its own, ``QUICFLOW_STORE`` set to ``dsn`` and leases of ``ttl`` seconds;
``query`` reads the shared store, ``wait`` polls a condition while watching that no
replica died unexpectedly (a SIGKILLed one is expected).
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

import psycopg
import pytest
from gitrepos import ROOT, ConfigRepo
from psycopg.rows import dict_row


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Replicas:
    def __init__(self, tmp: Path, dsn: str, repo: ConfigRepo, ttl: float = 3.0):
        self.tmp, self.dsn, self.repo, self.ttl = tmp, dsn, repo, ttl
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> None:
        data = self.tmp / f"data-{name}"
        with (self.tmp / f"{name}.log").open("ab") as log:
            self.procs[name] = self._spawn(data, log)

    def _spawn(self, data: Path, log: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "reconciler", "serve", "--repo", str(self.repo.path)]
            + ["--data", str(data), "--http", f"127.0.0.1:{free_port()}"]
            + ["--quic", f"127.0.0.1:{free_port()}"],
            cwd=self.tmp,
            env={
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "QUICFLOW_STORE": self.dsn,
                "QUICFLOW_LEASE_TTL": str(self.ttl),
            },
            stdout=log,  # type: ignore[arg-type]
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

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
