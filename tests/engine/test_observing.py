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
        [("web-1", report), ("web-9", None)], {("shop", "stage"): "green"}
    )
    assert found == [
        planning.Observation("shop", "prod", "web-1", image_digest=GOOD),
        planning.Observation("shop", "stage", "web-1", image_digest=GOOD),
    ]
    # Without knowing the live color, both colors are observed.
    assert len(observing.observations([("web-1", report)])) == 3


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
