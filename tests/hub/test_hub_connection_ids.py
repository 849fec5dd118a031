"""The hub's index of QUIC connection ids: a connection that ends takes exactly its own ids.

``_ConnectionIds`` replaces aioquic's plain dict inside the hub's server so that
dropping an ended connection costs what it holds, not a walk over every agent's ids.
Protocols here are stand-in objects: only their identity matters to the index.
"""

from __future__ import annotations

from typing import Any, cast

from reconciler.hub.server import _ConnectionIds, _Server


def test_ids_are_indexed_per_connection_and_reassigned_ids_move() -> None:
    a, b = cast(Any, object()), cast(Any, object())
    ids = _ConnectionIds()
    ids[b"a1"], ids[b"a2"], ids[b"b1"] = a, a, b
    assert ids.of == {a: {b"a1", b"a2"}, b: {b"b1"}}
    ids[b"a2"] = b  # an id now routes to another connection
    assert ids.of == {a: {b"a1"}, b: {b"b1", b"a2"}}
    del ids[b"a1"]
    assert a not in ids.of and dict(ids) == {b"b1": b, b"a2": b}
    ids.clear()
    assert not ids and not ids.of


def test_an_ended_connection_takes_its_ids_and_leaves_the_others() -> None:
    server = _Server.__new__(_Server)  # the map alone: no socket, no configuration
    server._protocols = _ConnectionIds()
    ended, live = cast(Any, object()), cast(Any, object())
    for n in range(8):
        server._protocols[b"e%d" % n] = ended
        server._protocols[b"l%d" % n] = live
    server._connection_terminated(ended)
    assert set(server._protocols) == {b"l%d" % n for n in range(8)}
    assert ended not in server._protocols.of
    server._connection_terminated(ended)  # twice: nothing left to drop, no error
    assert len(server._protocols) == 8
