"""Leases in the store: one holder at a time, renewals keep the token, takeovers raise it."""

from __future__ import annotations

from reconciler.engine.sharding import Shards
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


def test_a_pass_that_outlived_its_lease_does_not_start_work_on_it(db: database.Database) -> None:
    """``Shards.confirm``: what a pass decided under a lease another replica took since is void."""
    clock = {"now": 100.0}
    a = Shards(Leases(db), "a", ttl=3.0, clock=lambda: clock["now"])
    b = Shards(Leases(db), "b", ttl=3.0, clock=lambda: clock["now"])
    a.claim(["app/prod"])
    assert a.owned == {"app/prod"}
    clock["now"] = 101.0
    assert a.confirm("app", "prod") == ""  # still a's: renewed for a full period
    assert Leases(db).all()["app/prod"].expires_at == 104.0

    clock["now"] = 104.5  # a's pass stalled past the lease; b takes the key over
    b.leases.beat("b", clock["now"])
    assert Leases(db).take("app/prod", "b", clock["now"], 3.0) == 2
    why = a.confirm("app", "prod")
    assert "changed hands" in why and "held by b" in why
    assert "app/prod" not in a.owned
    assert Leases(db).all()["app/prod"].owner == "b"  # confirm never takes it back


def test_a_lease_freed_and_retaken_meanwhile_is_stale_too(db: database.Database) -> None:
    clock = {"now": 0.0}
    a = Shards(Leases(db), "a", ttl=3.0, clock=lambda: clock["now"])
    a.claim(["app/dev"])
    Leases(db).release(["app/dev"], "a")  # as a hand-over would
    assert Leases(db).take("app/dev", "b", 1.0, 3.0) == 2
    Leases(db).release(["app/dev"], "b")
    clock["now"] = 2.0
    assert "changed hands" in a.confirm("app", "dev")  # free again, but not under a's token
    assert a.tokens["app/dev"] == 3
