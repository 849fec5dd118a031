"""Build records and image artifacts: the values ``reconciler.store.builds`` keeps.

A leaf of the import graph (standard library only), below the store and the builder.

A build record follows one build from ``running`` to ``success``, ``failed`` or
``cancelled``; an image artifact is what a successful build leaves behind (the pushed
reference and its registry digest), which deploys and rollbacks name by digest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any


class BuildStatus(StrEnum):
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        """Whether the build has ended."""
        return self is not BuildStatus.RUNNING


@dataclass(frozen=True, slots=True)
class BuildRecord:
    """One build, as the API and status page show it."""

    id: str
    project: str
    version: str
    status: BuildStatus
    started_at: str
    commit: str = ""
    image: str = ""
    digest: str = ""
    duration: float | None = None
    completed_at: str = ""
    error: str = ""
    actor: str = ""
    builder: str = ""  # buildkit | classic

    def as_dict(self) -> dict[str, Any]:
        """The record as JSON-ready data."""
        return {**asdict(self), "status": self.status.value}


@dataclass(frozen=True, slots=True)
class ImageArtifact:
    """An image a build pushed: reference, registry digest, size."""

    build_id: str
    project: str
    version: str
    image: str
    digest: str
    size: int
    created: str

    @property
    def pinned(self) -> str:
        """The reference pinned by digest (``repo@sha256:…``), what deploys pull."""
        return f"{repository_of(self.image)}@{self.digest}"

    def as_dict(self) -> dict[str, Any]:
        """The artifact as JSON-ready data."""
        return {**asdict(self), "pinned": self.pinned}


def repository_of(image: str) -> str:
    """An image reference without its tag or digest (``host:5000/a/b:1`` → ``host:5000/a/b``)."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name
