"""Build records and image artifacts, kept in the operational store (SQLite).

A build record follows one build from ``running`` to ``success``, ``failed`` or
``cancelled``; an image artifact is what a successful build leaves behind (the pushed
reference and its registry digest), which deploys and rollbacks name by digest.
"""

from __future__ import annotations

import builtins
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from reconciler.store.database import Database

_SCHEMA = [
    """
    CREATE TABLE builds (
        id TEXT PRIMARY KEY, project TEXT NOT NULL, version TEXT NOT NULL,
        commit_id TEXT NOT NULL DEFAULT '', status TEXT NOT NULL, image TEXT NOT NULL DEFAULT '',
        digest TEXT NOT NULL DEFAULT '', duration REAL, started_at TEXT NOT NULL,
        completed_at TEXT NOT NULL DEFAULT '', error TEXT NOT NULL DEFAULT '',
        actor TEXT NOT NULL DEFAULT '', builder TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX builds_by_project ON builds (project, started_at);
    CREATE TABLE image_artifacts (
        build_id TEXT PRIMARY KEY REFERENCES builds (id), project TEXT NOT NULL,
        version TEXT NOT NULL, image TEXT NOT NULL, digest TEXT NOT NULL,
        size INTEGER NOT NULL DEFAULT 0, created TEXT NOT NULL
    );
    CREATE INDEX artifacts_by_project ON image_artifacts (project, created)
    """,
]


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
        from reconciler.builder.dockerfiles import repository_of

        return f"{repository_of(self.image)}@{self.digest}"

    def as_dict(self) -> dict[str, Any]:
        """The artifact as JSON-ready data."""
        return {**asdict(self), "pinned": self.pinned}


class BuildStore:
    """Build records and artifacts in the operational database."""

    def __init__(self, db: Database):
        self.db = db
        db.migrate("builder", _SCHEMA)

    def insert(self, record: BuildRecord) -> None:
        """Store a new build record."""
        self.db.execute(
            "INSERT INTO builds (id, project, version, commit_id, status, image, digest, duration,"
            " started_at, completed_at, error, actor, builder)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            _row(record),
        )

    def save(self, record: BuildRecord) -> None:
        """Replace a build record with its new state."""
        self.db.execute(
            "UPDATE builds SET project = ?, version = ?, commit_id = ?, status = ?, image = ?,"
            " digest = ?, duration = ?, started_at = ?, completed_at = ?, error = ?, actor = ?,"
            " builder = ? WHERE id = ?",
            (*_row(record)[1:], record.id),
        )

    def get(self, build_id: str) -> BuildRecord | None:
        """The build record ``build_id``, or None."""
        rows = self.db.query("SELECT * FROM builds WHERE id = ?", (build_id,))
        return _record(rows[0]) if rows else None

    def list(self, project: str | None = None, limit: int = 50) -> list[BuildRecord]:
        """The latest builds (of a project), newest first."""
        if project is None:
            rows = self.db.query(
                "SELECT * FROM builds ORDER BY started_at DESC, rowid DESC LIMIT ?", (limit,)
            )
        else:
            rows = self.db.query(
                "SELECT * FROM builds WHERE project = ? ORDER BY started_at DESC, rowid DESC"
                " LIMIT ?",
                (project, limit),
            )
        return [_record(r) for r in rows]

    def add_artifact(self, artifact: ImageArtifact) -> None:
        """Record the image a build pushed."""
        self.db.execute(
            "INSERT OR REPLACE INTO image_artifacts VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                artifact.build_id,
                artifact.project,
                artifact.version,
                artifact.image,
                artifact.digest,
                artifact.size,
                artifact.created,
            ),
        )

    def artifact(self, build_id: str) -> ImageArtifact | None:
        """The artifact of a build, or None."""
        rows = self.db.query("SELECT * FROM image_artifacts WHERE build_id = ?", (build_id,))
        return _artifact(rows[0]) if rows else None

    def latest_artifact(self, project: str, version: str | None = None) -> ImageArtifact | None:
        """The newest artifact of a project (of one version), or None."""
        sql = "SELECT * FROM image_artifacts WHERE project = ?"
        params: list[Any] = [project]
        if version is not None:
            sql += " AND version = ?"
            params.append(version)
        rows = self.db.query(sql + " ORDER BY created DESC, rowid DESC LIMIT 1", params)
        return _artifact(rows[0]) if rows else None

    def interrupted(self) -> builtins.list[BuildRecord]:
        """Builds still marked running (their process died): to be marked failed at start."""
        rows = self.db.query("SELECT * FROM builds WHERE status = ?", (BuildStatus.RUNNING.value,))
        return [_record(r) for r in rows]


def _row(r: BuildRecord) -> tuple[Any, ...]:
    return (
        r.id,
        r.project,
        r.version,
        r.commit,
        r.status.value,
        r.image,
        r.digest,
        r.duration,
        r.started_at,
        r.completed_at,
        r.error,
        r.actor,
        r.builder,
    )


def _record(row: Any) -> BuildRecord:
    return BuildRecord(
        id=row["id"],
        project=row["project"],
        version=row["version"],
        status=BuildStatus(row["status"]),
        started_at=row["started_at"],
        commit=row["commit_id"],
        image=row["image"],
        digest=row["digest"],
        duration=row["duration"],
        completed_at=row["completed_at"],
        error=row["error"],
        actor=row["actor"],
        builder=row["builder"],
    )


def _artifact(row: Any) -> ImageArtifact:
    return ImageArtifact(
        row["build_id"],
        row["project"],
        row["version"],
        row["image"],
        row["digest"],
        row["size"],
        row["created"],
    )
