"""Build records and image artifacts in the operational store: ``builds``, ``image_artifacts``.

Both are listed newest first by time, ties broken by ``seq``, a number each row takes
when it is written (an artifact written again takes a new one, as a replaced row would).
"""

from __future__ import annotations

import builtins
from typing import Any

from reconciler import builds
from reconciler.store import database, paging, rows

_BUILDS = paging.Query("builds", order=("started_at DESC", "seq DESC"))
_ARTIFACTS = paging.Query("image_artifacts", order=("created DESC", "seq DESC"))


class BuildStore:
    """Build records and artifacts in the operational database."""

    def __init__(self, db: database.Database):
        self.db = db

    def insert(self, record: builds.BuildRecord) -> None:
        """Store a new build record."""
        self.db.execute(
            "INSERT INTO builds (id, project, version, commit_id, status, image, digest, duration,"
            " started_at, completed_at, error, actor, builder, seq)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
            " (SELECT COALESCE(MAX(seq), 0) + 1 FROM builds))",
            _row(record),
        )

    def save(self, record: builds.BuildRecord) -> None:
        """Replace a build record with its new state."""
        self.db.execute(
            "UPDATE builds SET project = ?, version = ?, commit_id = ?, status = ?, image = ?,"
            " digest = ?, duration = ?, started_at = ?, completed_at = ?, error = ?, actor = ?,"
            " builder = ? WHERE id = ?",
            (*_row(record)[1:], record.id),
        )

    def get(self, build_id: str) -> builds.BuildRecord | None:
        """The build record ``build_id``, or None."""
        row = _BUILDS.equal("id", build_id).first(self.db)
        return _record(row) if row else None

    def list(self, project: str | None = None, limit: int = 50) -> list[builds.BuildRecord]:
        """The latest builds (of a project), newest first."""
        return [_record(r) for r in _BUILDS.equal("project", project).rows(self.db, limit)]

    def add_artifact(self, artifact: builds.ImageArtifact) -> None:
        """Record the image a build pushed (replacing what that build recorded before)."""
        self.db.execute(
            "INSERT INTO image_artifacts (build_id, project, version, image, digest, size, created,"
            " seq) VALUES (?, ?, ?, ?, ?, ?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM image_artifacts))"
            " ON CONFLICT (build_id) DO UPDATE SET project = excluded.project,"
            " version = excluded.version, image = excluded.image, digest = excluded.digest,"
            " size = excluded.size, created = excluded.created, seq = excluded.seq",
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

    def artifact(self, build_id: str) -> builds.ImageArtifact | None:
        """The artifact of a build, or None."""
        row = _ARTIFACTS.equal("build_id", build_id).first(self.db)
        return _artifact(row) if row else None

    def latest_artifact(
        self, project: str, version: str | None = None
    ) -> builds.ImageArtifact | None:
        """The newest artifact of a project (of one version), or None."""
        row = _ARTIFACTS.equal("project", project).equal("version", version).first(self.db)
        return _artifact(row) if row else None

    def interrupted(self) -> builtins.list[builds.BuildRecord]:
        """Builds still marked running (their process died): to be marked failed at start."""
        query = _BUILDS.equal("status", builds.BuildStatus.RUNNING.value)
        return [_record(r) for r in query.rows(self.db)]


def _row(r: builds.BuildRecord) -> tuple[Any, ...]:
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


def _record(row: database.Row) -> builds.BuildRecord:
    return rows.into(
        builds.BuildRecord,
        row,
        status=builds.BuildStatus(row["status"]),
        commit=row["commit_id"],
    )


def _artifact(row: database.Row) -> builds.ImageArtifact:
    return rows.into(builds.ImageArtifact, row)
