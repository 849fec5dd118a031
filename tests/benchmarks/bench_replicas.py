"""Reconciling N project/envs on 1 vs 3 ``serve`` replicas sharing PostgreSQL, and takeover.

    python tests/benchmarks/bench_replicas.py [--envs 1000] [--ttl 5]

Needs the throwaway cluster (``bash tests/postgres_env.sh start``). Each project/env has
one local target whose deploy task is ``true``-like (appends a line to a counter), so
the figure is the engine's own cost: plan, run, step records, state commits. For each
replica count it prints the time from the commit of the config to every project/env
succeeded, and that the work was spread; then it SIGKILLs one of the 3 replicas with a
release running and prints how long the others took to hold all of its leases.

On 2 cores the 3 replicas compete for the same CPU as the one replica does, so the ratio
shows coordination overhead and sharing, not what 3 machines would give.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS), str(TESTS.parent)]

from gitrepos import ConfigRepo  # noqa: E402
from postgres import fresh_dsn  # noqa: E402
from releasing import USERS  # noqa: E402
from replicas import Replicas, owner_of  # noqa: E402

PER_PROJECT = 10


def files(envs: int, counters: Path, version: str) -> dict[str, str]:
    out = {}
    for i in range(envs):
        project, env = f"p{i // PER_PROJECT:03}", f"e{i % PER_PROJECT}"
        out[f"projects/{project}/project.yaml"] = (
            "members:\n  - {user: bob, role: owner}\ndeploy:\n  type: script\n  script:\n"
            f'    run: echo "$QUICFLOW_VERSION" >> "{counters}/$QUICFLOW_PROJECT.$QUICFLOW_ENV"\n'
        )
        out[f"projects/{project}/environments/{env}.yaml"] = (
            f'version: "{version}"\ntargets:\n  - {{local: t1}}\n'
        )
    return out


def done(replicas: Replicas, version: str) -> int:
    rows = replicas.query(
        "SELECT count(DISTINCT project || '/' || env) AS n FROM runs"
        " WHERE version = %s AND state = 'succeeded'",
        version,
    )
    return int(rows[0]["n"]) if rows else 0  # type: ignore[call-overload]


def one_round(root: Path, envs: int, count: int, ttl: float) -> dict[str, float]:
    dsn = fresh_dsn()
    counters = root / "counters"
    counters.mkdir(parents=True)
    repo = ConfigRepo(root / "config")
    repo.commit({"quicflow.yaml": USERS + "settings:\n  poll_interval: 1s\n"})
    replicas = Replicas(root, dsn, repo, ttl)
    names = "abc"[:count]
    figures: dict[str, float] = {}
    try:
        for name in names:
            replicas.start(name)
        replicas.wait(
            "replicas up", lambda: len(replicas.query("SELECT owner FROM replicas")) == count, 120
        )
        started = time.monotonic()
        repo.commit(files(envs, counters, "1.0"), message=f"{envs} project/envs")
        replicas.wait("1.0 everywhere", lambda: done(replicas, "1.0") == envs, 1800)
        figures["reconcile_s"] = time.monotonic() - started
        owners = Counter(owner_of(r) for r in replicas.runs("1.0"))
        figures["spread_min"] = min(owners.values())
        figures["spread_max"] = max(owners.values())
        if count > 1:
            repo.commit(files(envs, counters, "2.0"), message="release 2.0")
            replicas.wait(
                "2.0 running",
                lambda: bool(replicas.query("SELECT 1 FROM runs WHERE version = '2.0'")),
                300,
            )
            victim = replicas.procs[names[0]]
            owner = next(
                str(r["owner"])
                for r in replicas.query("SELECT owner FROM replicas")
                if str(r["owner"]).split(":")[1] == str(victim.pid)
            )
            held = {
                r["key"] for r in replicas.query("SELECT key FROM leases WHERE owner = %s", owner)
            }
            os.kill(victim.pid, signal.SIGKILL)
            killed = time.monotonic()
            victim.wait()

            def taken() -> bool:
                now = time.time()
                rows = replicas.query("SELECT key, owner, expires_at FROM leases")
                return all(
                    r["owner"] != owner and float(r["expires_at"]) > now  # type: ignore[arg-type]
                    for r in rows
                    if r["key"] in held
                )

            replicas.wait("takeover", taken, 20 * ttl)
            figures["takeover_s"] = time.monotonic() - killed
            figures["leases_taken"] = len(held)
            replicas.wait("2.0 everywhere", lambda: done(replicas, "2.0") == envs, 1800)
    finally:
        replicas.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, default=1000)
    parser.add_argument("--ttl", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="quicflow-bench-replicas-") as tmp:
        for count in (1, 3):
            figures = one_round(Path(tmp) / f"r{count}", args.envs, count, args.ttl)
            shown = ", ".join(
                f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()
            )
            print(f"{args.envs} project/envs on {count} replica(s): {shown}", flush=True)


if __name__ == "__main__":
    main()
