"""Alert records: the open alert of a key, folding repeats, digests waiting, history filters."""

from __future__ import annotations

from reconciler import notifications
from reconciler.store import alerts, database


def _alert(rule: str, project: str = "shop", mode: str = "immediate") -> notifications.NewAlert:
    return notifications.NewAlert(
        rule, "run_failed", "run_failed", mode, project, "prod", "1.0", "high", "t", "m", "", "r-1"
    )


def test_latest_fold_and_mark_sent_inside_one_transaction(db: database.Database) -> None:
    log = alerts.AlertLog(db)
    key = notifications.AlertKey("rule-1", "shop", "prod", "1.0")
    with db.transaction() as conn:
        assert log.latest(key, conn) is None
        first = log.insert(conn, _alert("rule-1"), 10.0)
        latest = log.latest(key, conn)
        assert latest is not None and latest.id == first
        log.fold_into(conn, first, notifications.Fold(10.0, 2, frozenset({"r-1", "r-2"})), "", 11.0)
        log.mark_sent(conn, [first], True, 12.0)
    record = log.latest(key)
    assert record is not None
    assert (record.count, record.run_ids, record.notified, record.sent_at) == (
        2,
        ("r-1", "r-2"),
        True,
        12.0,
    )


def test_waiting_digests_get_many_and_history(db: database.Database) -> None:
    log = alerts.AlertLog(db)
    with db.transaction() as conn:
        ids = [
            log.insert(conn, _alert("d", mode="digest"), 1.0),
            log.insert(conn, _alert("d", mode="digest", project="blog"), 2.0),
            log.insert(conn, _alert("i"), 3.0),
        ]
        log.mark_sent(conn, ids[:1], True, 4.0)
    assert [w.record for w in log.waiting()] == [ids[1]]
    assert [r.id for r in log.get_many([ids[2], ids[0], 999])] == [ids[2], ids[0]]
    assert [r.id for r in log.history()] == list(reversed(ids))
    assert [r.id for r in log.history(project="blog")] == [ids[1]]
    assert [r.id for r in log.history(1, 1, rule="d")] == [ids[0]]
