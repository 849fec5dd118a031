"""Benchmark: image build cold vs cached, and rolling 10 containers across agents in batches of 2.

Run as a plain script (not collected by pytest), after ``tests/docker_env.sh``::

    python tests/benchmarks/bench_docker.py [--containers 10] [--batch 2] [--local]

1. builds: the Builder checks out a real Git app repo, builds with BuildKit and pushes to
   the authenticated local registry. "cold" has a context no cache has seen (a fresh
   random file), "cached" rebuilds the same commit (every step CACHED), "one file
   changed" rebuilds after editing a file copied in the last step.
2. rolling: ``--containers`` agents (``python -m agent`` subprocesses over loopback QUIC,
   all on this machine's Docker daemon) each run one container of the app; the reconciler
   rolls them from one version to the next in batches of ``--batch`` — pull, stop the old
   container (``--init``: ~0.5 s, not the stop timeout), run the new digest, HTTP health
   check. ``--local`` uses local targets instead of agents.

Everything made is labelled ``quicflow.test=1`` and removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TESTS = REPO_ROOT / "tests"
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(TESTS))

from dockerenv import (  # noqa: E402
    commit_app,
    make_app_repo,
    registry_or_skip,
    remove_test_objects,
)
from gitrepos import ConfigRepo  # noqa: E402
from hub.conftest import Fleet  # noqa: E402
from releasing import free_ports  # noqa: E402

from reconciler.builder import docker_cli  # noqa: E402
from reconciler.builder.building import Builder, BuildRequest  # noqa: E402
from reconciler.credential import age, documents, sops  # noqa: E402
from reconciler.engine.agents import HubExecutor  # noqa: E402
from reconciler.engine.reconciling import Reconciler  # noqa: E402
from reconciler.gitops import model  # noqa: E402
from reconciler.gitops.repository import GitRepository  # noqa: E402
from reconciler.hub.server import Hub  # noqa: E402
from reconciler.log.store import LogStore  # noqa: E402
from reconciler.runs import RunState  # noqa: E402
from reconciler.store.sqlite import SQLiteDatabase as Database  # noqa: E402
from reconciler.targets.resolving import Executors  # noqa: E402


@dataclass(frozen=True)
class Login:
    username: str
    password: str
    token: str | None = None


async def bench_builds(registry, work: Path) -> tuple[str, dict[str, float]]:  # noqa: ANN001
    """Time cold, cached and one-file-changed builds; return the image repository."""
    app = make_app_repo(work / "app", registry.busybox)
    (app.path / "www" / "noise.bin").parent.mkdir(parents=True, exist_ok=True)
    # Fresh bytes: no cache on this daemon has seen this context, so the first build is cold.
    (app.path / "www" / "noise.bin").write_bytes(os.urandom(4 << 20))
    commit_app(app, "1.0")
    repository = f"{registry.address}/quicflow-bench/web-{secrets.token_hex(3)}"
    db = Database(work / "data" / "quicflow.db")
    builder = Builder(
        db,
        LogStore(db),
        work / "data",
        credentials=lambda name, project: Login(registry.username, registry.password),
        docker=docker_cli.DockerCli(registry.docker),
    )

    def request(version: str) -> BuildRequest:
        return BuildRequest(
            project="bench",
            version=version,
            build=model.BuildConfig(
                enabled=True,
                target_image=repository + ":{{ version }}",
                registry_credential="registry",
                args={"VERSION": version},
            ),
            repo=model.Repo(str(app.path)),
            labels={"quicflow.test": "1"},
        )

    figures: dict[str, float] = {}
    for label, version in (("cold", "1.0"), ("cached", "1.0")):
        record = await builder.build(request(version))
        assert record.status.value == "success", record.error
        figures[label] = record.duration or 0.0
        log = "\n".join(line.line for line in builder.logs.read(record.id, limit=100_000))
        figures[f"{label}_cached_steps"] = log.count("CACHED")
    app.write({"www/index.html": "changed\n"})
    commit_app(app, "2.0")
    record = await builder.build(request("2.0"))
    assert record.status.value == "success", record.error
    figures["one file changed"] = record.duration or 0.0
    await builder.close()
    db.close()
    return repository, figures


def _config(repository: str, registry, names: list[str], ports: list[int], version: str,  # noqa: ANN001
            recipient: str, batch: int, local: bool) -> dict[str, str]:  # fmt: skip
    plain = (
        "credentials:\n  registry:\n    type: username_password\n"
        f"    username: {registry.username}\n    password: {registry.password}\n"
    )
    if local:
        targets = "".join(
            f"  - {{local: {n}, port: {p}}}\n" for n, p in zip(names, ports, strict=True)
        )
        agents = ""
    else:
        targets = "".join(
            f"  - {{agent: {n}, port: {p}}}\n" for n, p in zip(names, ports, strict=True)
        )
        agents = "agents:\n" + "".join(f"  - {{name: {n}, address: 127.0.0.1}}\n" for n in names)
    return {
        "quicflow.yaml": f"users:\n  - {{username: alice, email: a@example.com}}\n{agents}",
        "projects/bench/credentials.sops.yaml": sops.encrypt_text(
            plain, [recipient], documents.RULES
        ),
        "projects/bench/project.yaml": f"""\
members: [{{user: alice, role: owner}}]
deploy:
  type: container
  container:
    image: "{repository}:{{{{ version }}}}"
    name: "quicflow-bench-{{{{ target }}}}"
    registry_credential: registry
    ports: ["8000:8000"]
    labels: {{quicflow.test: "1"}}
    stop_timeout: 5s
  health:
    http: {{path: /cgi-bin/healthz, port: 8000}}
    retries: 20
    interval: 100ms
strategy:
  type: rolling
  rolling: {{batch_size: {batch}}}
""",
        "projects/bench/environments/prod.yaml": f'version: "{version}"\ntargets:\n{targets}',
    }


async def bench_rolling(
    registry,
    repository: str,
    work: Path,
    count: int,
    batch: int,
    local: bool,  # noqa: ANN001
) -> dict[str, float]:
    """Time the first rollout and a 1.0 → 2.0 replacement of ``count`` containers."""
    names = [f"web-{i + 1}" for i in range(count)]
    ports = free_ports(count)
    identity, recipient = age.generate_identity()
    repo = ConfigRepo(work / "config")
    hub = None
    fleet = Fleet(work)
    executors = Executors()
    try:
        if not local:
            hub = Hub(work / "hub", port=0)
            await hub.start()
            for name in names:
                fleet.spawn(hub, name)
            await hub.wait_for_agents(names, timeout=60)
            executors = Executors(agents=HubExecutor(hub))
        figures: dict[str, float] = {}
        for label, version in (("first rollout", "1.0"), ("roll 1.0 -> 2.0", "2.0")):
            repo.commit(
                _config(repository, registry, names, ports, version, recipient, batch, local)
            )
            rec = Reconciler(
                GitRepository.open(repo.path),
                work / "data",
                executors=executors,
                environ={"SOPS_AGE_KEY": identity},
            )
            rec.hub = hub
            try:
                started = time.perf_counter()
                (run,) = (await rec.reconcile_once()).runs
                figures[label] = time.perf_counter() - started
                assert run.state is RunState.SUCCEEDED, run.error
            finally:
                await rec.close()
        return figures
    finally:
        fleet.cleanup()
        if hub is not None:
            await hub.stop()


def _check_docker() -> object:
    import pytest

    try:
        return registry_or_skip()
    except pytest.skip.Exception as exc:
        print(f"cannot benchmark: {exc}")
        sys.exit(2)


async def amain(args: argparse.Namespace) -> None:
    registry = _check_docker()
    work = Path(tempfile.mkdtemp(prefix="quicflow-bench-docker-"))
    try:
        repository, builds = await bench_builds(registry, work / "builds")
        print("builds (Builder: git checkout + BuildKit build + push to the local registry)")
        print(
            f"  cold                {builds['cold']:6.2f} s  ({builds['cold_cached_steps']:.0f} steps CACHED)"
        )
        print(
            f"  cached (unchanged)  {builds['cached']:6.2f} s  ({builds['cached_cached_steps']:.0f} steps CACHED)"
        )
        print(f"  one file changed    {builds['one file changed']:6.2f} s")
        print(f"  cold / cached       {builds['cold'] / builds['cached']:6.1f}x")
        where = "local targets" if args.local else "agents"
        rolling = await bench_rolling(
            registry, repository, work / "rolling", args.containers, args.batch, args.local
        )
        print(f"rolling {args.containers} containers across {where}, batches of {args.batch}")
        for label, seconds in rolling.items():
            print(f"  {label:18}  {seconds:6.2f} s")
        batches = -(-args.containers // args.batch)
        print(f"  per batch (replace) {rolling['roll 1.0 -> 2.0'] / batches:6.2f} s")
    finally:
        remove_test_objects(registry.docker)  # type: ignore[attr-defined]
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    """Parse arguments and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--containers", type=int, default=10)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--local", action="store_true", help="local targets instead of agents")
    asyncio.run(amain(parser.parse_args()))


if __name__ == "__main__":
    main()
