"""The crash-point sweep over container targets, on the real Docker daemon.

As ``test_crash_sweep.py`` does for script targets: a traced rolling release of 2.0
over two local container targets lists every write of a step outcome; then, for each
write, a world of its own (its own container names, ports and label, since all worlds
share this machine's daemon) is released again by a real ``quicflow apply`` that
SIGKILLs itself before the write, after it, or in the middle of the ``docker`` script
the step runs, and a second ``apply`` resumes. After each kill point:

- the state ref never claims a version a target's container does not run;
- after the restart every target runs 2.0 and the state ref says so;
- no step ran twice: Docker's own event log shows at most one container created from
  2.0 per recorded deploy of each target;
- nothing is left behind: no process of either ``apply``, and no container of the world
  but each target's and its kept ``-previous``.
"""

from __future__ import annotations

import concurrent.futures
import json
import secrets
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from drivers.conftest import images  # noqa: F401 - the pushed test images (session)
from engine.test_crash_sweep import (
    apply,
    config_repo,
    kill_points,
    leftovers,
    recorded_deploys,
)
from gitrepos import ConfigRepo, git
from releasing import USERS, free_ports

from reconciler.credential import age, documents, sops
from reconciler.store.database import Database
from reconciler.store.runs import RunStore

pytestmark = pytest.mark.integration

TARGETS = ("t1", "t2")
ENV_FILE = "projects/web/environments/prod.yaml"


@dataclass
class World:
    """One world: a config repo naming its own containers, its data dir, Docker's view."""

    root: Path
    docker: str
    tag: str  # names its containers (sweep-<tag>-t1) and labels them (sweep.world=<tag>)
    ports: list[int]
    environ: dict[str, str]
    started: float = 0.0

    @property
    def repo(self) -> Path:
        return self.root / "config"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def container(self, target: str) -> str:
        return f"sweep-{self.tag}-{target}"

    def runs_version(self, target: str) -> str | None:
        """The version the target's container runs (None: none is running)."""
        out = subprocess.run(
            [self.docker, "container", "inspect", self.container(target)],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            return None
        (found,) = json.loads(out.stdout)
        if not found["State"]["Running"]:
            return None
        return str(found["Config"]["Labels"].get("quicflow.version"))

    def state_version(self) -> str | None:
        try:
            text = git(self.repo, "show", "refs/quicflow/state:web/prod.json")
        except subprocess.CalledProcessError:
            return None
        return str(json.loads(text)["version"])

    def created(self, version: str) -> Counter[str]:
        """Containers Docker created from ``version`` for this world, by target."""
        out = subprocess.run(
            [self.docker, "events", "--since", f"{self.started:.3f}"]
            + ["--until", f"{time.time():.3f}", "--filter", "type=container"]
            + ["--filter", "event=create", "--filter", f"label=sweep.world={self.tag}"]
            + ["--format", "{{json .Actor.Attributes}}"],
            capture_output=True,
            text=True,
            check=True,
        )
        found: Counter[str] = Counter()
        for line in out.stdout.splitlines():
            labels = json.loads(line)
            if labels.get("quicflow.version") == version:
                found[labels.get("quicflow.target", "")] += 1
        return found

    def containers(self) -> set[str]:
        out = subprocess.run(
            [self.docker, "ps", "-a", "--filter", f"label=sweep.world={self.tag}"]
            + ["--format", "{{.Names}}"],
            capture_output=True,
            text=True,
            check=True,
        )
        return set(out.stdout.split())

    def remove(self) -> None:
        names = self.containers()
        if names:
            subprocess.run([self.docker, "rm", "-f", *names], capture_output=True)


def project_yaml(repository: str, tag: str) -> str:
    return f"""\
members:
  - {{user: bob, role: owner}}
deploy:
  type: container
  timeout: 60s
  container:
    image: "{repository}:{{{{ version }}}}"
    name: sweep-{tag}
    registry_credential: registry
    ports: ["8000:8000"]
    labels: {{quicflow.test: "1", sweep.world: "{tag}"}}
    restart_policy: "no"
    stop_timeout: 1s
strategy:
  type: rolling
  rolling: {{batch_size: 1}}
"""


def env_yaml(version: str, ports: list[int]) -> str:
    targets = "".join(
        f"  - {{local: {t}, port: {p}}}\n" for t, p in zip(TARGETS, ports, strict=True)
    )
    return f'version: "{version}"\ntargets:\n{targets}'


def released(root: Path, images: dict) -> World:  # noqa: F811 - the fixture's value
    """A world of its own where 1.0 runs on both targets."""
    registry = images["registry"]
    identity, recipient = age.generate_identity()
    plain = (
        "credentials:\n  registry:\n    type: username_password\n"
        f"    username: {registry.username}\n    password: {registry.password}\n"
    )
    world = World(
        root, registry.docker, secrets.token_hex(4), free_ports(2), {"SOPS_AGE_KEY": identity}
    )
    world.started = time.time()
    ConfigRepo(world.repo).commit(
        {
            "quicflow.yaml": USERS,
            "projects/web/project.yaml": project_yaml(images["repository"], world.tag),
            "projects/web/credentials.sops.yaml": sops.encrypt_text(
                plain, [recipient], documents.RULES
            ),
            ENV_FILE: env_yaml("1.0", world.ports),
        }
    )
    first = apply(world, **world.environ)  # type: ignore[arg-type]
    assert first.returncode == 0, first.stdout + first.stderr
    assert {t: world.runs_version(t) for t in TARGETS} == {"t1": "1.0", "t2": "1.0"}
    return world


def in_a_container(pid: int) -> bool:
    """Whether ``pid`` runs inside a Docker container — a descendant of a containerd
    shim (the targets' own processes are meant to outlive ``apply``; they see the data
    dir through their variables)."""
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        name, _, rest = stat.partition("(")[2].rpartition(")")
        if name.startswith("containerd-shim"):
            return True
        pid = int(rest.split()[1])  # fields after the name: state, ppid, …
    return False


def orphans(world: World, within: float = 5.0) -> list[int]:
    """Processes of either ``apply`` still running (the containers' own not counted)."""
    deadline = time.monotonic() + within
    while True:
        found = [pid for pid in leftovers(world) if not in_a_container(pid)]  # type: ignore[arg-type]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def release(world: World) -> None:
    config_repo(world.repo).commit({ENV_FILE: env_yaml("2.0", world.ports)}, message="2.0")


def deploys_recorded(world: World) -> Counter[str]:
    """Deploys of 2.0 the world's run store records as done, by target."""
    db = Database.open(world.data)
    try:
        store = RunStore(db)
        runs, _ = store.list("web", "prod", limit=20)
        return recorded_deploys(store, runs, "2.0")
    finally:
        db.close()


def test_every_kill_point_of_a_container_rollout_resumes_and_git_tells_the_truth(
    tmp_path: Path,
    images: dict,  # noqa: F811 - the fixture
) -> None:
    traced = released(tmp_path / "traced", images)
    release(traced)
    trace = tmp_path / "trace.tsv"
    outcome = apply(traced, QUICFLOW_TEST_TRACE=str(trace), **traced.environ)  # type: ignore[arg-type]
    assert outcome.returncode == 0, outcome.stdout + outcome.stderr
    traced.remove()
    points = kill_points(trace)
    assert len(points) >= 8, points

    def sweep(number: int, point: str) -> None:
        world = released(tmp_path / f"kill-{number}", images)
        try:
            release(world)
            killed = apply(world, QUICFLOW_TEST_CRASH=point, **world.environ)  # type: ignore[arg-type]
            assert killed.returncode == -9, (point, killed.stdout + killed.stderr)
            claimed = world.state_version()
            serving = {t: world.runs_version(t) for t in TARGETS}
            assert claimed == "1.0" or set(serving.values()) == {claimed}, (point, serving)

            resumed = apply(world, **world.environ)  # type: ignore[arg-type]
            assert resumed.returncode == 0, (point, resumed.stdout + resumed.stderr)
            assert not orphans(world), (point, "orphaned processes")
            serving = {t: world.runs_version(t) for t in TARGETS}
            assert (world.state_version(), set(serving.values())) == ("2.0", {"2.0"}), (
                point,
                serving,
            )
            created, allowed = world.created("2.0"), deploys_recorded(world)
            for target in TARGETS:
                assert created[target] <= allowed[target], (point, target, created, allowed)
            expected = {world.container(t) for t in TARGETS}
            expected |= {f"{name}-previous" for name in expected}
            assert world.containers() <= expected, (point, world.containers())
        finally:
            world.remove()

    # Worlds are independent (names, ports, labels of their own): a few at once.
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        for done in [pool.submit(sweep, n, point) for n, point in enumerate(points)]:
            done.result()
    print(f"\ncontainers, rolling: {len(points)} kill points")
