"""The VictoriaLogs sink against a stand-in over real HTTP (``tests/log/victoria.py``).

VictoriaLogs itself cannot be installed here, so the server is a FAKE that implements
the documented ``/insert/jsonline`` and ``/select/logsql/query`` endpoints: field
mapping, stream fields, tenant headers, gzip, escaping of filters, and an outage that
is spooled to disk and replayed with no loss and no duplicates.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from log.victoria import VictoriaLogsStandIn

from reconciler.log import records
from reconciler.log.queries import LogQuery
from reconciler.log.records import LogLine
from reconciler.log.settings import VictoriaLogsSettings
from reconciler.log.victorialogs import QueryFailed, VictoriaLogsSink

T0 = records.parse_time("2026-01-07T10:00:00.000000001Z")


def line(n: int, text: str | None = None, **fields: str) -> LogLine:
    values = {
        "run_id": "r-1",
        "project": "shop",
        "env": "prod",
        "stage": "deploy",
        "task": "app",
        "target": "web-1",
        "level": "info",
        **fields,
    }
    return LogLine(
        stream=values["run_id"],
        seq=n,
        at=records.format_ns(T0 + n),
        source=f"{values['target']}/deploy",
        channel="stdout",
        line=text if text is not None else f"line {n}",
        time_ns=T0 + n,
        id=n,
        **values,
    )


async def fast_sleep(seconds: float) -> None:
    await asyncio.sleep(min(seconds, 0.02))


@pytest.fixture
async def server() -> AsyncIterator[VictoriaLogsStandIn]:
    standin = VictoriaLogsStandIn().start()
    yield standin
    standin.stop()


def sink_for(url: str, spool: Path, **overrides: object) -> VictoriaLogsSink:
    settings = VictoriaLogsSettings(
        url=url,
        **{"batch_size": 100, "flush_interval": 0.05, "timeout": 2.0, **overrides},  # type: ignore[arg-type]
    )
    return VictoriaLogsSink(settings, spool, sleep=fast_sleep, jitter=lambda: 0.5)


async def wait_for(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_lines_arrive_with_fields_stream_tenant_and_gzip(
    server: VictoriaLogsStandIn, tmp_path: Path
) -> None:
    sink = sink_for(
        server.url, tmp_path, account_id="12", project_id="34", stream_fields=("project", "env")
    )
    sink.start()
    sink.write([line(1, "hello"), line(2, "world", level="error", target="web-2")])
    await sink.close()
    stored = server.store.all(("12", "34"))
    assert server.store.all() == []  # nothing in the default tenant
    assert [e["_msg"] for e in stored] == ["hello", "world"]
    first = stored[0]
    assert first["_time_ns"] == T0 + 1
    assert first["_stream"] == '{project="shop",env="prod"}'
    assert (first["run_id"], first["stage"], first["task"], first["target"]) == (
        "r-1",
        "deploy",
        "app",
        "web-1",
    )
    assert stored[1]["level"] == "error" and stored[1]["line_id"] == "2"
    insert = next(r for r in server.store.requests if r.path == "/insert/jsonline")
    assert insert.args == {
        "_msg_field": "message",
        "_time_field": "time",
        "_stream_fields": "project,env",
    }
    assert insert.headers["AccountID"] == "12" and insert.headers["ProjectID"] == "34"
    assert insert.headers["Content-Encoding"] == "gzip"


async def test_queries_escape_quotes_pipes_and_keywords(
    server: VictoriaLogsStandIn, tmp_path: Path
) -> None:
    tricky = 'say "hi" | limit 1 AND OR NOT (x) _time:5m \\ .* [a]'
    sink = sink_for(server.url, tmp_path, gzip=False)
    sink.start()
    sink.write(
        [
            line(1, f"before {tricky} after"),
            line(2, "say hi | limit 1"),
            line(3, f"{tricky}", target='web "3"'),
            line(4, "unrelated", level="error"),
        ]
    )
    await wait_for(lambda: sink.shipped == 4)
    found = await sink.query(LogQuery(text=tricky, newest_first=False))
    assert [x.seq for x in found] == [1, 3]
    assert found[0].line == f"before {tricky} after" and found[0].project == "shop"
    assert found[0].time_ns == T0 + 1 and found[0].id == 1
    assert [x.seq for x in await sink.query(LogQuery(target='web "3"'))] == [3]
    assert [x.seq for x in await sink.query(LogQuery(levels=("error",)))] == [4]
    assert [x.seq for x in await sink.query(LogQuery(projects=("other",)))] == []
    page = await sink.query(LogQuery(limit=2))  # newest first
    assert [x.seq for x in page] == [4, 3]
    rest = await sink.query(LogQuery(limit=2, after=(page[-1].time_ns, page[-1].id)))
    assert [x.seq for x in rest] == [2, 1]
    window = await sink.query(LogQuery(start_ns=T0 + 2, end_ns=T0 + 4, newest_first=False))
    assert [x.seq for x in window] == [2, 3]
    query = next(r for r in server.store.requests if r.path == "/select/logsql/query")
    assert query.headers["AccountID"] == "0"
    await sink.close()


async def test_an_outage_is_spooled_and_replayed_without_loss_or_duplicates(
    server: VictoriaLogsStandIn, tmp_path: Path
) -> None:
    port = server.port
    server.stop()
    sink = sink_for(server.url, tmp_path / "spool")
    sink.start()
    for n in range(0, 1000, 50):
        sink.write([line(i) for i in range(n + 1, n + 51)])
        await asyncio.sleep(0.01)
    await wait_for(lambda: sink.spool.lines + sink.queued == 1000 and sink.spool.lines > 0)
    assert sink.spool.size > 0 and sink.failures > 0 and sink.dropped == 0
    server.port = port
    server.start()  # back, on the same port
    await wait_for(lambda: sink.shipped == 1000)
    await sink.close()
    ids = [int(e["line_id"]) for e in server.store.all()]
    assert ids == list(range(1, 1001))  # every line once, in order
    assert sink.spool.size == 0 and not list((tmp_path / "spool").iterdir())


async def test_lines_spooled_at_shutdown_are_sent_by_the_next_process(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    first = sink_for(f"http://127.0.0.1:{port}", tmp_path / "spool")
    first.start()
    first.write([line(i) for i in range(1, 251)])
    await first.close(deadline=0.5)  # VictoriaLogs is away: everything goes to disk
    assert first.spool.lines == 250
    standin = VictoriaLogsStandIn(port).start()
    try:
        second = sink_for(standin.url, tmp_path / "spool")
        second.start()
        await wait_for(lambda: second.shipped == 250)
        await second.close()
        assert [int(e["line_id"]) for e in standin.store.all()] == list(range(1, 251))
    finally:
        standin.stop()


async def test_the_spool_is_bounded_and_counts_what_it_dropped(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink = sink_for(f"http://127.0.0.1:{port}", tmp_path, spool_max_bytes=40_000)
    sink.write([line(i, "x" * 200) for i in range(1, 2001)])  # far more than fits
    assert sink.spool.size <= 40_000 + 100 * 700
    await sink.close(deadline=0.2)
    assert sink.dropped > 0
    assert sink.dropped + sink.spool.lines == 2000


async def test_a_refused_batch_is_dropped_and_counted_not_retried_forever(
    server: VictoriaLogsStandIn, tmp_path: Path
) -> None:
    sink = sink_for(server.url.replace(str(server.port), str(server.port)) + "/nope", tmp_path)
    sink.start()
    sink.write([line(i) for i in range(1, 11)])
    await wait_for(lambda: sink.rejected == 10)
    await sink.close()
    assert sink.dropped == 10 and sink.spool.lines == 0


async def test_a_query_while_victorialogs_is_away_fails_clearly(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink = sink_for(f"http://127.0.0.1:{port}", tmp_path)
    with pytest.raises(QueryFailed, match="unreachable"):
        await sink.query(LogQuery(text="x"))
    await sink.close()
