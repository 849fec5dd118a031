"""Build records and artifacts: newest first, ties in time broken by write order, replacing."""

from __future__ import annotations

import dataclasses

from reconciler.builds import BuildRecord, BuildStatus, ImageArtifact
from reconciler.store import builds, database

SAME_SECOND = "2026-01-01T00:00:00Z"


def _build(build_id: str, project: str = "shop") -> BuildRecord:
    return BuildRecord(build_id, project, "1.0", BuildStatus.RUNNING, started_at=SAME_SECOND)


def _artifact(build_id: str, digest: str) -> ImageArtifact:
    return ImageArtifact(build_id, "shop", "1.0", "reg/shop:1.0", digest, 1, SAME_SECOND)


def test_builds_in_the_same_second_list_newest_written_first(db: database.Database) -> None:
    store = builds.BuildStore(db)
    for build_id in ("b-2", "b-1", "b-3"):
        store.insert(_build(build_id))
    store.insert(_build("b-4", project="blog"))
    assert [b.id for b in store.list("shop")] == ["b-3", "b-1", "b-2"]
    assert [b.id for b in store.list(limit=2)] == ["b-4", "b-3"]
    store.save(dataclasses.replace(_build("b-1"), status=BuildStatus.SUCCESS))
    assert {b.id for b in store.interrupted()} == {"b-2", "b-3", "b-4"}
    got = store.get("b-1")
    assert got is not None and got.status is BuildStatus.SUCCESS


def test_an_artifact_written_again_is_the_newest(db: database.Database) -> None:
    store = builds.BuildStore(db)
    store.insert(_build("b-1"))
    store.insert(_build("b-2"))
    store.add_artifact(_artifact("b-1", "sha256:1"))
    store.add_artifact(_artifact("b-2", "sha256:2"))
    latest = store.latest_artifact("shop", "1.0")
    assert latest is not None and latest.build_id == "b-2"
    store.add_artifact(_artifact("b-1", "sha256:1b"))
    latest = store.latest_artifact("shop")
    assert latest is not None and (latest.build_id, latest.digest) == ("b-1", "sha256:1b")
    assert store.latest_artifact("shop", "2.0") is None
    artifact = store.artifact("b-2")
    assert artifact is not None and artifact.digest == "sha256:2"
