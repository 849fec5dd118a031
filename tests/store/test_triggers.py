"""Trigger records: claimed delivery ids, duplicates recorded as such, listing with a total."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from reconciler.store import database, triggers

AT = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_delivery_id_is_claimed_once_until_released(db: database.Database) -> None:
    records = triggers.TriggerRecords(db)
    assert records.claim_delivery("shop.gh", "d-1", AT)
    assert not records.claim_delivery("shop.gh", "d-1", AT)
    assert records.claim_delivery("blog.gh", "d-1", AT)
    records.release_delivery("shop.gh", "d-1")
    assert records.claim_delivery("shop.gh", "d-1", AT)


def test_claim_and_add_records_a_repeat_as_a_duplicate(db: database.Database) -> None:
    records = triggers.TriggerRecords(db)
    assert records.claim_and_add(AT, "shop.gh", "d-1", "skipped", "filtered", project="shop")[
        0
    ] == ("filtered")
    reason, record_id = records.claim_and_add(AT, "shop.gh", "d-1", "skipped", "filtered")
    assert reason == "duplicate delivery d-1: already handled"
    record = records.get(record_id)
    assert record is not None and (record.status, record.reason) == (triggers.DUPLICATE, reason)


def test_list_filters_pages_and_counts(db: database.Database) -> None:
    records = triggers.TriggerRecords(db)
    for i, project in enumerate(["shop", "blog", "shop"]):
        records.add(AT, f"{project}.gh", "success" if i else "failed", project=project)
    found, total = records.list(limit=1, offset=1)
    assert [r.project for r in found] == ["blog"] and total == 3
    assert records.list(projects=["shop"])[1] == 2
    assert records.list(projects=[]) == ([], 0)
    assert records.list(trigger_id="shop.gh", status="failed")[1] == 1
    assert records.list(status="")[1] == 3  # '' means no filter


def test_an_unknown_field_is_refused(db: database.Database) -> None:
    with pytest.raises(ValueError, match="no column evil"):
        triggers.TriggerRecords(db).add(AT, "shop.gh", "success", evil="x")
