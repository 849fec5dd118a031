"""Observing: what the agents' containers run, as the planner's live observations.

Pure: agents' status reports in, ``planning.Observation``s out; no I/O. A container is
paired with an environment by the labels the container driver sets (``quicflow.project``,
``quicflow.env``, ``quicflow.target``) and observed by the registry digest it was started
from (the ``quicflow.image`` label, ``repository@sha256:…``) — the digest the state ref
records. The report's own ``digest`` is the local image id, which never equals a
registry digest, so it is not used. Stopped containers (the copy a rolling deploy keeps
for rollback) and a blue-green environment's idle color are not what serves, so they
are not observed. Nor is a container on an agent the environment does not target (one
started by hand, or left from before its targets changed): only the environment's own
targets say whether it drifted.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping

from agent.protocol import StatusReport
from reconciler.gitops.planning import Observation
from reconciler.runs import Run

PROJECT = "quicflow.project"
ENV = "quicflow.env"
TARGET = "quicflow.target"
IMAGE = "quicflow.image"
COLOR = "quicflow.color"


def image_digest(reference: str) -> str | None:
    """The ``sha256:…`` digest of ``repository@sha256:…``, or None for a tag reference."""
    _, at, digest = reference.rpartition("@")
    return digest if at and digest.startswith("sha256:") else None


def live_colors(succeeded: Iterable[Run]) -> dict[tuple[str, str], str]:
    """The serving blue-green color of each environment: its newest succeeded run's.

    ``succeeded`` are succeeded runs, newest first.
    """
    colors: dict[tuple[str, str], str] = {}
    for run in succeeded:
        if run.detail.get("color"):
            colors.setdefault(run.key, str(run.detail["color"]))
    return colors


def observations(
    reports: Iterable[tuple[str, StatusReport | None]],
    targets: Callable[[str, str], Collection[str]],
    live_colors: Mapping[tuple[str, str], str] | None = None,
) -> list[Observation]:
    """Observations of the running, labelled containers in (agent name, report) pairs.

    ``targets(project, env)`` names the agents that environment targets; a container
    reported by any other agent is left out. ``live_colors`` names the serving color of
    blue-green environments; a colored container of another color is the idle one and
    is left out.
    """
    colors = live_colors or {}
    found = []
    for agent, report in reports:
        if report is None:
            continue
        for container in report.containers:
            labels = container.labels
            project, env = labels.get(PROJECT), labels.get(ENV)
            digest = image_digest(labels.get(IMAGE, ""))
            if not project or not env or digest is None or container.state != "running":
                continue
            if agent not in targets(project, env):
                continue
            color = labels.get(COLOR)
            if color and colors.get((project, env), color) != color:
                continue
            found.append(
                Observation(project, env, labels.get(TARGET) or agent, image_digest=digest)
            )
    return sorted(found, key=lambda o: (o.project, o.env, o.target))
