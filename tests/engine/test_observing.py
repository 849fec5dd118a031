"""Drift from containers: agents' status reports → observations → the planner's drift.

The conversion is pure and tested on its own; then the real Reconciler plans over a
real config repo and state ref, with a stand-in for the hub's narrow read interface
(``agents()``, ``status(name)``) answering real ``StatusReport``s.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gitrepos import ConfigRepo
from releasing import USERS

from agent import protocol
from reconciler.engine import observing
from reconciler.engine.reconciling import Reconciler
from reconciler.gitops import planning
from reconciler.gitops.history import RunOutcome
from reconciler.gitops.repository import GitRepository

GOOD = "sha256:" + "1" * 64
OTHER = "sha256:" + "2" * 64


def _container(
    name: str,
    image: str,
    state: str = "running",
    env: str = "prod",
    target: str = "web-1",
    **more: str,
) -> protocol.ContainerStatus:
    labels = {
        "quicflow.project": "shop",
        "quicflow.env": env,
        "quicflow.target": target,
        "quicflow.image": image,
        **more,
    }
    return protocol.ContainerStatus(name, image, "sha256:" + "f" * 64, state, None, labels)


def _report(*containers: protocol.ContainerStatus) -> protocol.StatusReport:
    return protocol.StatusReport(time=0.0, containers=containers)


def test_running_labelled_containers_become_observations_by_their_registry_digest() -> None:
    report = _report(
        _container("shop-prod", f"registry.local/shop@{GOOD}"),
        _container("shop-prod-previous", f"registry.local/shop@{OTHER}", state="exited"),
        _container("shop-prod-tagged", "registry.local/shop:1.0", target="web-2"),
        protocol.ContainerStatus("unrelated", "busybox", None, "running"),
        _container("shop-stage-blue", f"r/shop@{OTHER}", env="stage", **{"quicflow.color": "blue"}),
        _container(
            "shop-stage-green", f"r/shop@{GOOD}", env="stage", **{"quicflow.color": "green"}
        ),
    )
    found = observing.observations(
        [("web-1", report), ("web-9", None)], _everyone, {("shop", "stage"): "green"}
    )
    assert found == [
        planning.Observation("shop", "prod", "web-1", image_digest=GOOD),
        planning.Observation("shop", "stage", "web-1", image_digest=GOOD),
    ]
    # Without knowing the live color, both colors are observed.
    assert len(observing.observations([("web-1", report)], _everyone)) == 3


def _everyone(project: str, env: str) -> set[str]:
    return {"web-1", "web-2"}


def test_a_container_counts_only_on_an_agent_its_environment_targets() -> None:
    prod = _container("shop-prod", f"r/shop@{OTHER}", target="web-1")
    targets = {("shop", "prod"): {"web-1"}}
    found = observing.observations(
        [("web-1", _report(prod)), ("web-2", _report(prod))],
        lambda project, env: targets.get((project, env), set()),
    )
    # web-2's copy is not prod's even though its labels (target included) say so.
    assert found == [planning.Observation("shop", "prod", "web-1", image_digest=OTHER)]


def test_image_digest_of_a_reference() -> None:
    assert observing.image_digest(f"127.0.0.1:5000/a/b@{GOOD}") == GOOD
    assert observing.image_digest("127.0.0.1:5000/a/b:1.0") is None
    assert observing.image_digest("") is None


@dataclass
class _Agent:
    name: str


class _HubStatus:
    """The hub's read side as the Reconciler uses it (``agents()``, ``status(name)``)."""

    def __init__(self, reports: dict[str, protocol.StatusReport]):
        self.reports = reports

    def agents(self) -> list[_Agent]:
        return [_Agent(name) for name in self.reports]

    def status(self, name: str) -> protocol.StatusReport | None:
        return self.reports.get(name)


async def test_the_reconciler_plans_drift_when_an_agent_runs_another_digest(
    tmp_path: Path,
) -> None:
    repo = ConfigRepo(tmp_path / "config")
    commit = repo.commit(
        {
            "quicflow.yaml": USERS + "agents:\n  - {name: web-1, address: 127.0.0.1}\n",
            "projects/shop/project.yaml": (
                "members: [{user: bob, role: owner}]\n"
                "deploy: {type: container, container: {image: 'r/shop:{{ version }}'}}\n"
            ),
            "projects/shop/environments/prod.yaml": 'version: "1.0"\ntargets: [{agent: web-1}]\n',
        }
    )
    engine = Reconciler(GitRepository.open(repo.path), tmp_path / "data")
    try:
        await engine.refresh()
        assert engine.desired is not None, engine.problems
        env = engine.desired.environment("shop", "prod")
        assert env is not None
        engine.history.record_run(
            RunOutcome(
                run_id="r-1",
                project="shop",
                env="prod",
                config_commit=commit,
                version="1.0",
                config_hash=env.config_hash,
                outcome="succeeded",
                image_digest=GOOD,
            )
        )
        assert engine.plan().actions[0].reason is planning.Reason.UNCHANGED  # no hub: no drift

        engine.hub = _HubStatus({"web-1": _report(_container("shop-prod", f"r/shop@{GOOD}"))})
        assert engine.plan().actions[0].reason is planning.Reason.UNCHANGED

        engine.hub = _HubStatus({"web-1": _report(_container("shop-prod", f"r/shop@{OTHER}"))})
        (action,) = engine.plan().actions
        assert (action.kind, action.reason) == (planning.ActionKind.DEPLOY, planning.Reason.DRIFT)
        assert "web-1" in action.detail
    finally:
        await engine.close()


async def test_only_agents_an_environment_targets_count_for_its_drift(tmp_path: Path) -> None:
    # prod targets web-1 by name, stage every agent labelled role=web (web-2 only).
    repo = ConfigRepo(tmp_path / "config")
    commit = repo.commit(
        {
            "quicflow.yaml": USERS
            + "agents:\n"
            + "  - {name: web-1, address: 127.0.0.1}\n"
            + "  - {name: web-2, address: 127.0.0.2, labels: {role: web}}\n",
            "projects/shop/project.yaml": (
                "members: [{user: bob, role: owner}]\n"
                "deploy: {type: container, container: {image: 'r/shop:{{ version }}'}}\n"
            ),
            "projects/shop/environments/prod.yaml": 'version: "1.0"\ntargets: [{agent: web-1}]\n',
            "projects/shop/environments/stage.yaml": (
                'version: "1.0"\ntargets: [{selector: {role: web}}]\n'
            ),
        }
    )
    engine = Reconciler(GitRepository.open(repo.path), tmp_path / "data")
    try:
        await engine.refresh()
        assert engine.desired is not None, engine.problems
        for name in ("prod", "stage"):
            env = engine.desired.environment("shop", name)
            assert env is not None
            engine.history.record_run(
                RunOutcome(
                    run_id=f"r-{name}",
                    project="shop",
                    env=name,
                    config_commit=commit,
                    version="1.0",
                    config_hash=env.config_hash,
                    outcome="succeeded",
                    image_digest=GOOD,
                )
            )

        def reasons() -> dict[str, planning.Reason]:
            return {a.env: a.reason for a in engine.plan().actions}

        # web-2 runs a container labelled shop/prod with another image -- a copy started by
        # hand, or left from before prod's targets changed: prod does not target web-2.
        engine.hub = _HubStatus(
            {
                "web-1": _report(_container("shop-prod", f"r/shop@{GOOD}")),
                "web-2": _report(
                    _container("shop-prod", f"r/shop@{OTHER}", target="web-2"),
                    _container("shop-stage", f"r/shop@{GOOD}", env="stage", target="web-2"),
                ),
            }
        )
        assert reasons() == {"prod": planning.Reason.UNCHANGED, "stage": planning.Reason.UNCHANGED}

        # Its containers count for stage, which targets it through the selector …
        engine.hub.reports["web-2"] = _report(
            _container("shop-stage", f"r/shop@{OTHER}", env="stage", target="web-2")
        )
        assert reasons() == {"prod": planning.Reason.UNCHANGED, "stage": planning.Reason.DRIFT}

        # … and web-1's containers, even labelled shop/stage, do not.
        engine.hub.reports["web-2"] = _report()
        engine.hub.reports["web-1"] = _report(
            _container("shop-stage", f"r/shop@{OTHER}", env="stage", target="web-1")
        )
        assert reasons() == {"prod": planning.Reason.UNCHANGED, "stage": planning.Reason.UNCHANGED}
    finally:
        await engine.close()
