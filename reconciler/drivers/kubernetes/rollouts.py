"""Reading a rollout: is a Deployment done, still going, or stuck; are its pods well.

Pure functions of the objects the API server returns. ``judge`` follows ``kubectl
rollout status`` (the Deployment controller's documented status contract): nothing is
known until ``status.observedGeneration`` reaches ``metadata.generation``; a
``Progressing`` condition with reason ``ProgressDeadlineExceeded`` is a failed rollout;
otherwise it is complete once every replica is updated and available and no old
replica is left. ``pod_problems`` finds crash loops, image pull failures and restarts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

_WAITING_FAILURES = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


class Phase(StrEnum):
    PROGRESSING = "progressing"
    COMPLETE = "complete"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self is not Phase.PROGRESSING


@dataclass(frozen=True, slots=True)
class RolloutStatus:
    phase: Phase
    message: str


def _condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for condition in obj.get("status", {}).get("conditions") or []:
        if condition.get("type") == kind:
            return condition  # type: ignore[no-any-return]
    return None


def judge(deployment: Mapping[str, Any]) -> RolloutStatus:
    """Where the rollout of ``deployment`` stands."""
    name = deployment.get("metadata", {}).get("name", "?")
    status = deployment.get("status") or {}
    generation = int(deployment.get("metadata", {}).get("generation") or 0)
    if int(status.get("observedGeneration") or 0) < generation:
        return RolloutStatus(Phase.PROGRESSING, f"waiting for {name}'s spec to be observed")
    progressing = _condition(deployment, "Progressing")
    if progressing is not None and progressing.get("reason") == "ProgressDeadlineExceeded":
        return RolloutStatus(
            Phase.FAILED,
            f"ProgressDeadlineExceeded: {progressing.get('message') or name + ' made no progress'}",
        )
    wanted = int(deployment.get("spec", {}).get("replicas", 1))
    updated = int(status.get("updatedReplicas") or 0)
    total = int(status.get("replicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    if updated < wanted:
        return RolloutStatus(
            Phase.PROGRESSING, f"{updated} of {wanted} new replicas of {name} are updated"
        )
    if total > updated:
        return RolloutStatus(
            Phase.PROGRESSING, f"{total - updated} old replicas of {name} are pending termination"
        )
    if available < updated:
        return RolloutStatus(
            Phase.PROGRESSING, f"{available} of {updated} updated replicas of {name} are available"
        )
    return RolloutStatus(Phase.COMPLETE, f"{name}: {available} of {wanted} replicas available")


def pod_problems(
    pods: Iterable[Mapping[str, Any]], container: str, restart_limit: int
) -> list[str]:
    """What is wrong with the pods' ``container``: crash loops, pull errors, too many restarts."""
    problems = []
    for pod in pods:
        pod_name = pod.get("metadata", {}).get("name", "?")
        statuses: Sequence[Mapping[str, Any]] = pod.get("status", {}).get("containerStatuses") or []
        for status in statuses:
            if status.get("name") != container:
                continue
            waiting = (status.get("state") or {}).get("waiting") or {}
            restarts = int(status.get("restartCount") or 0)
            if waiting.get("reason") in _WAITING_FAILURES:
                problems.append(
                    f"pod {pod_name}: {waiting['reason']} (restarts {restarts})"
                    + (f": {waiting['message']}" if waiting.get("message") else "")
                )
            elif restarts > restart_limit:
                problems.append(
                    f"pod {pod_name}: container {container} restarted {restarts} times "
                    f"(restart_limit {restart_limit})"
                )
    return problems


def ready_pods(pods: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The pods whose Ready condition is True (and that are not being deleted)."""
    found = []
    for pod in pods:
        if pod.get("metadata", {}).get("deletionTimestamp"):
            continue
        for condition in pod.get("status", {}).get("conditions") or []:
            if condition.get("type") == "Ready" and condition.get("status") == "True":
                found.append(pod)
    return found


def running_digest(pods: Iterable[Mapping[str, Any]], container: str) -> str | None:
    """The ``sha256:…`` digest the pods' ``container`` runs, when every pod reports the same."""
    seen = set()
    for pod in pods:
        for status in pod.get("status", {}).get("containerStatuses") or []:
            if status.get("name") == container:
                image_id = str(status.get("imageID") or "")
                _, at, digest = image_id.rpartition("@")
                seen.add(digest if at and digest.startswith("sha256:") else None)
    return seen.pop() if len(seen) == 1 else None
