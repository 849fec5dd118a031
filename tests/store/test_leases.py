"""Leases in the store: one holder at a time, renewals keep the token, takeovers raise it."""

from __future__ import annotations

from reconciler.store import database
from reconciler.store.leases import Leases


def test_a_lease_has_one_holder_until_it_expires(db: database.Database) -> None:
    leases = Leases(db)
    assert leases.take("app/prod", "a", now=100.0, ttl=10.0) == 1
    assert leases.take("app/prod", "b", now=105.0, ttl=10.0) is None  # a holds it
    assert leases.take("app/prod", "a", now=108.0, ttl=10.0) == 1  # renewed, same token
    assert leases.take("app/prod", "b", now=117.0, ttl=10.0) is None  # renewed until 118
    assert leases.take("app/prod", "b", now=118.5, ttl=10.0) == 2  # expired: b, a new token
    assert leases.take("app/prod", "a", now=119.0, ttl=10.0) is None
    held = leases.all()["app/prod"]
    assert (held.owner, held.token, held.expires_at) == ("b", 2, 128.5)


def test_a_released_lease_is_free_at_once_and_leave_drops_everything(
    db: database.Database,
) -> None:
    leases = Leases(db)
    for key in ("app/dev", "app/prod", "web/prod"):
        assert leases.take(key, "a", now=0.0, ttl=60.0) is not None
    leases.release(["app/dev"], "b")  # not b's: nothing happens
    assert leases.take("app/dev", "b", now=1.0, ttl=60.0) is None
    leases.release(["app/dev"], "a")
    assert leases.take("app/dev", "b", now=1.0, ttl=60.0) == 2
    leases.beat("a", 1.0)
    leases.beat("b", 1.0)
    assert leases.live(now=2.0, ttl=5.0) == ["a", "b"]
    leases.leave("a")
    assert leases.live(now=2.0, ttl=5.0) == ["b"]
    held = {k: lease.owner for k, lease in leases.all().items() if lease.expires_at > 2.0}
    assert held == {"app/dev": "b"}
    assert leases.take("web/prod", "b", now=2.0, ttl=60.0) == 2  # a's, expired on leaving


def test_heartbeats_older_than_the_ttl_are_not_live(db: database.Database) -> None:
    leases = Leases(db)
    leases.beat("a", 10.0)
    leases.beat("b", 30.0)
    assert leases.live(now=31.0, ttl=15.0) == ["b"]
