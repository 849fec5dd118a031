"""Benchmark: signed GitHub push webhooks per second on one uvicorn worker, and webhook → run latency.

Run as a plain script (pytest does not collect it: no ``test_`` names)::

    python tests/benchmarks/bench_webhooks.py [--duration 10] [--connections 32]
        [--deliveries 50] [--repeat 2] [--configs plain,uvloop] [--profile]

Needs ``wrk`` (``apt-get install -y wrk``); ``uvloop`` and ``httptools`` (pip) for the
second configuration, which is skipped with a note when they are missing.

It builds a real config repo (git) with one project whose GitHub webhook secret is in a
SOPS ``credentials.sops.yaml`` encrypted for a fresh age identity, and serves, one at a
time, each as its own ``python -m uvicorn … --workers 1`` process on loopback
(``webhook_apps.py``):

- the floor: a bare Starlette endpoint that only checks the HMAC of the body;
- the full path: QUIC-Flow's app (``create_app``) over the real ``Reconciler`` —
  find the trigger, read its secret through the credential manager (cached), verify the
  signature, claim the delivery id, parse the push, apply the trigger's filters, write
  the trigger record.

Throughput: ``wrk`` posts the same signed push body to both (one signature computed
once; a Lua counter gives every request its own ``X-GitHub-Delivery``, since the full
path drops repeated ids). The push is to ``main`` and the trigger only takes
``release/*``, so the full path runs verify + claim + parse + record and answers
"skipped" without starting a run; the records are counted afterwards to prove it. Each
configuration (plain: asyncio + h11; uvloop: uvloop + httptools) runs both servers at
once and measures them in turns, floor then full, ``--repeat`` times, and prints every
rate, the best of each and their ratio (aim: full ≥ 50% of the floor).

Latency: ``--deliveries`` signed pushes to ``main`` on a trigger that does deploy,
one after another, each with its own commit and delivery id, each waiting for its run
to finish before the next: webhook sent → 202 answer carrying the ``run_id``, and sent →
the run's ``created_at`` (wall clock, same machine); p50/p95 (aim: p50 ≤ 50 ms).

``--profile`` runs the full-path server under cProfile (slower: its rates then mean
little) and prints where its time goes, by cumulative and by own time.

Reference (DESIGN.md, this 2-core machine): floor ~2,300/s plain, ~6,800/s uvloop+httptools.
Every process it starts (uvicorn, wrk) is ended by pid, also on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import pstats
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tests"))

import httpx  # noqa: E402
from gitrepos import ConfigRepo  # noqa: E402

from reconciler.auth.tokens import TokenStore  # noqa: E402
from reconciler.credential import age, documents, sops  # noqa: E402
from reconciler.store.database import Database  # noqa: E402
from reconciler.trigger import signatures  # noqa: E402

SECRET = "bench-hook-secret-" + secrets.token_hex(8)
SKIP_TRIGGER = "app.release"  # takes release/* only: a push to main is recorded as skipped
DEPLOY_TRIGGER = "app.push"  # takes main: a push to main starts a run
FLOOR_PATH = "/hook"
RATIO_AIM = 0.5
LATENCY_AIM_MS = 50.0
START_TIMEOUT = 60.0
RUN_TIMEOUT = 60.0

CONFIG_FILES = {
    "quicflow.yaml": """\
users:
  - {username: alice, email: alice@example.com, is_admin: true}
""",
    "projects/app/project.yaml": """\
description: the webhook benchmark's project
members:
  - {user: alice, role: owner}
deploy:
  type: script
  script: {run: "true"}
triggers:
  webhooks:
    - {name: push, source: github, secret: hook, branches: [main], events: [push], action: deploy, target_env: dev}
    - {name: release, source: github, secret: hook, branches: ["release/*"], events: [push, tag], action: deploy, target_env: dev}
""",
    "projects/app/environments/dev.yaml": 'version: "1.0.0"\ntargets:\n  - {local: dev-1}\n',
}

CONFIGURATIONS = {
    "plain": ("asyncio + h11", ["--loop", "asyncio", "--http", "h11"]),
    "uvloop": ("uvloop + httptools", ["--loop", "uvloop", "--http", "httptools"]),
}


def push_body(sha: str) -> bytes:
    """A GitHub push of ``sha`` to main, shaped like GitHub's (trimmed) payload."""
    commit = {
        "id": sha,
        "tree_id": hashlib.sha1(sha.encode()).hexdigest(),
        "distinct": True,
        "message": "Ship the webhook benchmark",
        "timestamp": "2026-11-29T10:00:00Z",
        "url": f"https://github.com/octo/app/commit/{sha}",
        "author": {"name": "Ada", "email": "ada@example.com", "username": "ada"},
        "committer": {"name": "Ada", "email": "ada@example.com", "username": "ada"},
        "added": [],
        "removed": [],
        "modified": ["README.md"],
    }
    payload = {
        "ref": "refs/heads/main",
        "before": "17c497ccc7cca9c2f735aa07e9e3813060ce9a6a",
        "after": sha,
        "created": False,
        "deleted": False,
        "forced": False,
        "compare": f"https://github.com/octo/app/compare/17c497ccc7cc...{sha[:12]}",
        "commits": [commit],
        "head_commit": commit,
        "repository": {
            "id": 35129377,
            "name": "app",
            "full_name": "octo/app",
            "private": False,
            "html_url": "https://github.com/octo/app",
            "clone_url": "https://github.com/octo/app.git",
            "default_branch": "main",
        },
        "pusher": {"name": "ada", "email": "ada@example.com"},
        "sender": {"login": "ada", "id": 21031067, "type": "User"},
    }
    return json.dumps(payload).encode()


def signed_headers(body: bytes, delivery: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": signatures.github_signature(body, SECRET),
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(
    process: subprocess.Popen[Any], name: str, how: signal.Signals = signal.SIGTERM
) -> None:
    """End ``process`` (by its pid): ``how`` (SIGTERM), then SIGKILL after 10 s."""
    if process.poll() is None:
        process.send_signal(how)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            print(f"warning: {name} ignored SIGTERM; killing it", file=sys.stderr)
            process.kill()
            process.wait()


@dataclass
class Bench:
    """The shared setup: temp dir, config repo, age identity."""

    base: Path
    repo: Path
    identity: str


def make_setup(base: Path) -> Bench:
    """A config repo with the webhook secret in a SOPS file for a fresh age identity."""
    identity, recipient = age.generate_identity()
    tree = sops.encrypt_tree(
        {"credentials": {"hook": {"type": "access_token", "token": SECRET}}},
        [recipient],
        documents.RULES,
    )
    repo = ConfigRepo(base / "config")
    repo.commit(
        {**CONFIG_FILES, "projects/app/credentials.sops.yaml": sops.dump_yaml(tree)},
        message="webhook benchmark config",
    )
    return Bench(base, repo.path, identity)


@contextlib.contextmanager
def uvicorn_server(
    bench: Bench, factory: str, options: list[str], data: Path | None, profile: Path | None = None
) -> Iterator[str]:
    """Serve ``webhook_apps:<factory>`` with one uvicorn worker; yield its base URL."""
    port = free_port()
    env = {
        **os.environ,
        "QF_BENCH_SECRET": SECRET,
        "QF_BENCH_REPO": str(bench.repo),
        "QF_BENCH_DATA": str(data or bench.base / "unused"),
        "SOPS_AGE_KEY": bench.identity,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    log = bench.base / f"uvicorn-{factory}-{port}.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [
                sys.executable, *(["-m", "cProfile", "-o", str(profile)] if profile else []),
                "-m", "uvicorn", f"webhook_apps:{factory}", "--factory",
                "--app-dir", str(HERE), "--host", "127.0.0.1", "--port", str(port),
                "--workers", "1", "--no-access-log", "--log-level", "warning",
                "--lifespan", "on", *options,
            ],
            env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"uvicorn {factory} exited: {log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn {factory} did not answer in {START_TIMEOUT:.0f} s")
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield url
    finally:
        # uvicorn re-raises the signal once it has shut down; under cProfile, SIGINT's
        # KeyboardInterrupt still lets the profile be written, SIGTERM would not.
        stop_process(process, f"uvicorn {factory}", signal.SIGINT if profile else signal.SIGTERM)


def wrk_script(bench: Bench, path: str, body: bytes, prefix: str) -> Path:
    """A wrk Lua script posting ``body`` (signed once) with a unique delivery id per request."""
    text = body.decode()
    assert "]==]" not in text and "\n" not in text
    script = bench.base / f"wrk-{prefix}.lua"
    script.write_text(
        f"""\
-- generated by bench_webhooks.py: one signed body, a delivery id per request
wrk.method = "POST"
wrk.body = [==[{text}]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-GitHub-Event"] = "push"
wrk.headers["X-Hub-Signature-256"] = "{signatures.github_signature(body, SECRET)}"

local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

local counter = 0
function request()
  counter = counter + 1
  wrk.headers["X-GitHub-Delivery"] = "{prefix}-" .. tostring(tid) .. "-" .. counter
  return wrk.format(nil, "{path}")
end
"""
    )
    return script


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rate: float
    bad: int  # non-2xx answers
    errors: str  # socket errors, as wrk reports them

    def describe(self) -> str:
        extra = f", {self.bad} non-2xx" if self.bad else ""
        extra += f", socket errors: {self.errors}" if self.errors else ""
        return f"{self.rate:8,.0f} req/s ({self.requests:,} in {self.seconds:.1f} s{extra})"


def run_wrk(script: Path, url: str, arguments: argparse.Namespace, duration: float) -> WrkResult:
    """Run wrk against ``url`` for ``duration`` seconds and parse its summary."""
    argv = [
        "wrk", "-t", str(arguments.threads), "-c", str(arguments.connections),
        "-d", f"{max(1, round(duration))}s", "--timeout", "10s", "-s", str(script), url,
    ]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = process.communicate(timeout=duration + 60)
    finally:
        stop_process(process, "wrk")
    if process.returncode:
        raise RuntimeError(f"wrk failed: {output}")
    total = re.search(r"(\d+) requests in ([\d.]+)(m?s)", output)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if total is None or rate is None:
        raise RuntimeError(f"cannot read wrk's output: {output}")
    seconds = float(total.group(2)) / (1000 if total.group(3) == "ms" else 1)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: (.*)", output)
    return WrkResult(
        int(total.group(1)),
        seconds,
        float(rate.group(1)),
        int(bad.group(1)) if bad else 0,
        errors.group(1).strip() if errors else "",
    )


def throughput(
    bench: Bench, url: str, path: str, name: str, arguments: argparse.Namespace, warm: bool
) -> WrkResult:
    """Warm up (when ``warm``), then measure ``url + path`` with wrk."""
    body = push_body("1481a2de7b2a7d02428ad93446ab166be7793fbb")
    if warm and arguments.warmup:
        run_wrk(wrk_script(bench, path, body, f"warm-{name}"), url, arguments, arguments.warmup)
    script = wrk_script(bench, path, body, f"run-{name}")
    return run_wrk(script, url, arguments, arguments.duration)


def record_counts(data: Path) -> dict[str, int]:
    """Trigger records by outcome ('skipped: branch filter' is the expected one)."""
    connection = sqlite3.connect(f"file:{data / 'quicflow.db'}?mode=ro", uri=True, timeout=30)
    try:
        rows = connection.execute(
            "SELECT status, reason LIKE 'branch %matches none%', count(*) FROM trigger_records"
            " GROUP BY 1, 2"
        ).fetchall()
    finally:
        connection.close()
    return {
        f"{status}{': branch filter' if filtered else ''}": count
        for status, filtered, count in rows
    }


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def queued_run(client: httpx.Client, auth: dict[str, str], record_id: int) -> str:
    """The run a queued delivery became, once its record names it."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        listed = client.get(
            "/api/release/triggers/records", params={"trigger": DEPLOY_TRIGGER}, headers=auth
        ).json()["items"]
        record = next((r for r in listed if r["id"] == record_id), None)
        if record is not None and record["run_id"]:
            return str(record["run_id"])
        if record is not None and record["status"] not in ("queued", "success"):
            raise RuntimeError(f"queued delivery ended {record['status']}: {record['reason']}")
        time.sleep(0.01)
    raise RuntimeError(f"queued delivery {record_id} never started a run")


def latency(url: str, token: str, count: int) -> tuple[list[float], list[float], int]:
    """Send ``count`` deploying pushes one after another; ms to the 202 and to created_at."""
    answered: list[float] = []
    created: list[float] = []
    retries = 0
    with httpx.Client(base_url=url, timeout=30) as client:
        for index in range(count):
            body = push_body(secrets.token_hex(20))
            headers = signed_headers(body, f"latency-{index}-{uuid.uuid4()}")
            path = f"/api/release/webhooks/{DEPLOY_TRIGGER}/trigger"
            sent_wall = time.time()
            sent = time.perf_counter()
            answer = client.post(path, content=body, headers=headers)
            elapsed = time.perf_counter() - sent
            auth = {"Authorization": f"Bearer {token}"}
            if answer.status_code == 202 and answer.json().get("status") == "queued":
                # The previous run had not left the engine yet: the push waits behind it
                # and its record names the run once it starts. Not a latency sample.
                retries += 1
                run_id = queued_run(client, auth, answer.json()["record"])
            elif answer.status_code != 202 or "run_id" not in answer.json():
                raise RuntimeError(f"delivery {index}: {answer.status_code} {answer.text}")
            else:
                run_id = answer.json()["run_id"]
                answered.append(elapsed * 1000)
            run = client.get(f"/api/release/runs/{run_id}", headers=auth).json()
            if run_id == answer.json().get("run_id"):
                created.append((parse_time(run["created_at"]) - sent_wall) * 1000)
            deadline = time.monotonic() + RUN_TIMEOUT
            while run["state"] not in ("succeeded", "failed", "cancelled", "interrupted"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"run {run_id} still {run['state']} after {RUN_TIMEOUT} s")
                time.sleep(0.01)
                run = client.get(f"/api/release/runs/{run_id}", headers=auth).json()
            if run["state"] != "succeeded":
                raise RuntimeError(f"run {run_id} ended {run['state']}")
    return answered, created, retries


def print_profile(path: Path) -> None:
    """The top of a cProfile dump, by cumulative and by own time."""
    if not path.exists():
        print(f"  (no profile written at {path})")
        return
    for order in ("cumulative", "tottime"):
        print(f"  --- full-path server profile, by {order} ---")
        pstats.Stats(str(path), stream=sys.stdout).sort_stats(order).print_stats(30)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def available_configurations(wanted: list[str]) -> list[str]:
    found = []
    for name in wanted:
        if name not in CONFIGURATIONS:
            raise SystemExit(f"unknown configuration {name!r}: {', '.join(CONFIGURATIONS)}")
        missing = [m for m in ("uvloop", "httptools") if importlib.util.find_spec(m) is None]
        if name == "uvloop" and missing:
            print(
                f"[{name}] skipped: {' and '.join(missing)} not installed (pip install uvloop httptools)"
            )
            continue
        found.append(name)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per server")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--deliveries", type=int, default=50, help="latency: deploying pushes")
    parser.add_argument("--repeat", type=int, default=2, help="throughput runs per server")
    parser.add_argument("--configs", default="plain,uvloop")
    parser.add_argument("--profile", action="store_true", help="profile the full-path server")
    arguments = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the servers and wrk are still ended.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    configurations = available_configurations(arguments.configs.split(","))
    print(
        f"one uvicorn worker per server; wrk -t{arguments.threads} -c{arguments.connections}, "
        f"{arguments.duration:.0f} s per run after {arguments.warmup:.0f} s of warm-up; "
        f"body {len(push_body('0' * 40))} bytes; {os.cpu_count()} cores"
    )
    summary = []
    with tempfile.TemporaryDirectory(prefix="quicflow-webhooks-") as temporary:
        bench = make_setup(Path(temporary))
        for name in configurations:
            label, options = CONFIGURATIONS[name]
            floors: list[WrkResult] = []
            fulls: list[WrkResult] = []
            data = bench.base / f"data-{name}"
            database = Database.open(data)
            token = TokenStore(database).create("alice")
            database.close()
            profile = bench.base / f"full-{name}.prof" if arguments.profile else None
            # Both servers up, measured in turns: load from elsewhere on the machine then
            # falls on both alike. An idle server costs nothing.
            with (
                uvicorn_server(bench, "floor_app", options, None) as floor_url,
                uvicorn_server(bench, "full_app", options, data, profile) as full_url,
            ):
                full_path = f"/api/release/webhooks/{SKIP_TRIGGER}/trigger"
                for attempt in range(arguments.repeat):
                    warm = attempt == 0
                    floors.append(throughput(bench, floor_url, FLOOR_PATH, f"floor-{name}-{attempt}", arguments, warm))  # fmt: skip
                    fulls.append(throughput(bench, full_url, full_path, f"full-{name}-{attempt}", arguments, warm))  # fmt: skip
                counts = record_counts(data)
                answered, created, retries = latency(full_url, token, arguments.deliveries)
            floor = max(floors, key=lambda result: result.rate)
            full = max(fulls, key=lambda result: result.rate)
            ratio = full.rate / floor.rate
            print(f"[{name}: {label}]")
            for turn, (floor_run, full_run) in enumerate(zip(floors, fulls, strict=True)):
                print(f"  turn {turn + 1}: floor (bare Starlette, HMAC only)        {floor_run.describe()}")  # fmt: skip
                print(f"          full path (verify, claim, parse, record) {full_run.describe()}")  # fmt: skip
            print(
                f"  full / floor, best of each: {full.rate:,.0f} / {floor.rate:,.0f} = {ratio:.1%} (aim ≥ {RATIO_AIM:.0%}: "
                f"{'met' if ratio >= RATIO_AIM else 'NOT met'})"
            )
            print(
                "  full-path trigger records: "
                + ", ".join(f"{count:,} {status}" for status, count in sorted(counts.items()))
            )
            p50 = statistics.median(answered)
            print(
                f"  webhook → run started, {len(answered)} deploying pushes one at a time: "
                f"202 with run_id p50 {p50:.1f} ms, p95 {percentile(answered, 0.95):.1f} ms, "
                f"max {max(answered):.1f} ms; sent → run created_at p50 "
                f"{statistics.median(created):.1f} ms, p95 {percentile(created, 0.95):.1f} ms"
                + (f" ({retries} retries: previous run still in the engine)" if retries else "")
            )
            print(
                f"  latency aim p50 ≤ {LATENCY_AIM_MS:.0f} ms: "
                f"{'met' if p50 <= LATENCY_AIM_MS else 'NOT met'}"
            )
            summary.append((name, floor.rate, full.rate, ratio, p50))
            if profile is not None:
                print_profile(profile)
    print("summary (best of --repeat):")
    print(
        f"  {'config':<8} {'floor req/s':>12} {'full req/s':>12} {'full/floor':>10} {'p50 ms':>8}"
    )
    for name, floor_rate, full_rate, ratio, p50 in summary:
        print(f"  {name:<8} {floor_rate:>12,.0f} {full_rate:>12,.0f} {ratio:>10.1%} {p50:>8.1f}")


if __name__ == "__main__":
    main()
