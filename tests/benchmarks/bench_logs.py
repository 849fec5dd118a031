"""Benchmark: log lines/s into the local store and through SSE; query latency on 1,000,000 lines.

Run as a plain script (pytest does not collect it: no ``test_`` names)::

    python tests/benchmarks/bench_logs.py [--lines 1000000] [--runs 100] [--batch 500]
        [--sse-lines 200000] [--page 1000] [--queries 50]

The lines' text is made before each timer starts: what is timed is the store's work,
not the benchmark's random words. Each rate is wall-clock; the CPU time rate beside it
says how much of the gap was the machine being shared.

- **Write**: ``--lines`` lines across ``--runs`` runs through the real ``LogStore.append``
  (fields filled in, one transaction per batch of ``--batch``) into SQLite (WAL,
  ``synchronous=NORMAL``), then the time the background indexer takes to bring the
  trigram index up to date. Two floors, in the same run: plain ``INSERT`` of four
  columns into a table without indexes, and ``executemany`` of ready tuples into the
  real ``log_lines`` (its indexes, the stream counter) in one transaction per batch —
  the honest floor: what SQLite costs with no Python work per line.
- **SSE live**: once a client is connected over real HTTP (uvicorn on loopback,
  ``reconciler.streaming.log_events``, ``lines`` events of up to ``--page`` lines), a
  writer in the server's process appends ``--sse-lines`` lines; lines/s as received by
  the client (a separate process counting lines in the raw bytes), and a check that
  none was lost and the last event id is the last line's number.
- **SSE catch-up**: the same client reading a closed stream of ``--sse-lines`` lines
  from the start: the server side alone.
- **Query**: p50/p95 over ``--queries`` queries each of run + text, text across every
  run (index), and a time window, on the store the write phase filled.

Aims (DESIGN.md "Budgets"): ≥ 50,000 lines/s sustained; query p50 ≤ 50 ms for run + text.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from reconciler import streaming
from reconciler.log.queries import LogQuery
from reconciler.log.store import FOLLOW_PAGE, LogStore
from reconciler.store.sqlite import SQLiteDatabase

WORDS = [
    "deploy",
    "pulling",
    "image",
    "layer",
    "extracting",
    "sha256",
    "started",
    "container",
    "health",
    "check",
    "passed",
    "GET",
    "POST",
    "200",
    "cache",
    "hit",
    "miss",
]


def message(rnd: random.Random, k: int) -> str:
    text = " ".join(rnd.choice(WORDS) for _ in range(7)) + f" item={k}"
    return text + " connection refused" if k % 997 == 0 else text


def at(k: int) -> str:
    seconds, micro = divmod(k, 1000)
    return f"2026-01-07T{10 + seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}.{micro:06d}Z"


class Clock:
    """Wall and CPU seconds spent inside ``with clock:`` blocks, added up."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self) -> None:
        self._started = (time.perf_counter(), time.process_time())

    def __exit__(self, *_: object) -> None:
        self.wall += time.perf_counter() - self._started[0]
        self.cpu += time.process_time() - self._started[1]

    def rates(self, lines: int) -> str:
        return f"{lines / self.wall:,.0f} lines/s ({lines / self.cpu:,.0f} per CPU second)"


def entries(rnd: random.Random, first: int, count: int, source: str) -> list[tuple[str, ...]]:
    return [(at(k), source, "stdout", message(rnd, k)) for k in range(first, first + count)]


def write_phase(store: LogStore, lines: int, runs: int, batch: int) -> Clock:
    rnd = random.Random(1)
    clock = Clock()
    for k in range(0, lines, batch):
        made = entries(rnd, k, min(batch, lines - k), "web-1/deploy")
        with clock:
            store.append(f"r-{k // batch % runs}", made)
    return clock


def plain_floor(lines: int, batch: int) -> Clock:
    rnd = random.Random(1)
    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        conn = sqlite3.connect(Path(tmp) / "floor.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE t (stream TEXT, seq INTEGER, at TEXT, line TEXT)")
        for start in range(0, lines, batch):
            rows = [
                (f"r-{start % 100}", start + i, at(start + i), message(rnd, start + i))
                for i in range(batch)
            ]
            with clock:
                conn.execute("BEGIN")
                conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", rows)
                conn.execute("COMMIT")
        conn.close()
    return clock


_ROW = (
    "INSERT INTO log_lines (stream, seq, run_id, build_id, project, env, at, source, channel,"
    " line, time_ns, level, stage, task, target) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_COUNT = (
    "INSERT INTO log_streams (stream, closed, lines, bytes) VALUES (?, 0, ?, ?)"
    " ON CONFLICT (stream) DO UPDATE SET lines = log_streams.lines + excluded.lines,"
    " bytes = log_streams.bytes + excluded.bytes"
)


def schema_floor(lines: int, runs: int, batch: int) -> Clock:
    """``executemany`` of ready tuples into the real ``log_lines``, one transaction per batch."""
    rnd = random.Random(1)
    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        db = SQLiteDatabase(Path(tmp) / "quicflow.db")
        for k in range(0, lines, batch):
            stream = f"r-{k // batch % runs}"
            made = entries(rnd, k, min(batch, lines - k), "web-1")
            rows = [
                (stream, k + i + 1, stream, "", "", "", *entry, 10**18 + k + i, "info", "", "", "")
                for i, entry in enumerate(made)
            ]
            with clock, db.transaction() as conn:
                conn.execute("SELECT MAX(seq) FROM log_lines WHERE stream = ?", (stream,))
                conn.executemany(_ROW, rows)
                conn.execute(_COUNT, (stream, len(rows), 100 * len(rows)))
        db.close()
    return clock


def timed(run, count: int) -> tuple[float, float, int]:  # type: ignore[no-untyped-def]
    times = []
    found = 0
    for i in range(count):
        started = time.perf_counter()
        found = len(run(i))
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1], found


_CLIENT = r"""
import re, sys, time, httpx
# Every line's JSON object has a "seq" key (in a line's text a quote is escaped), and an
# event's id line is whole only between two newlines (JSON data holds none raw).
needle, ids, end = b'"seq":', re.compile(rb"\nid: (\d+)\n"), b"\nevent: end\n"
count, last, tail, started = 0, b"0", b"", None
with httpx.Client(timeout=60) as client, client.stream("GET", sys.argv[1]) as response:
    for chunk in response.iter_bytes():
        started = started or time.perf_counter()
        data = tail + chunk
        count += data.count(needle) - tail.count(needle)
        found = ids.findall(data)
        last = found[-1] if found else last
        if end in data:
            break
        tail = data[-32:]
print(count, time.perf_counter() - (started or time.perf_counter()), last.decode())
"""


async def sse_phase(count: int, batch: int, page: int, live: bool) -> tuple[Clock, int, int]:
    """(the client's wall and the server's CPU seconds, lines the client got, its last event id)."""
    rnd = random.Random(2)
    batches = [entries(rnd, k, min(batch, count - k), "web-1") for k in range(0, count, batch)]
    with tempfile.TemporaryDirectory() as tmp:
        db = SQLiteDatabase(Path(tmp) / "quicflow.db")
        store = LogStore(db)
        streams = streaming.Streams()
        engine = SimpleNamespace(logs=store)
        connected = asyncio.Event()

        async def follow(request: Request) -> Response:
            connected.set()
            return StreamingResponse(
                streaming.log_events(engine, "r-sse", 0, streams.closing, page=page),  # type: ignore[arg-type]
                media_type="text/event-stream",
            )

        async def writer() -> None:
            await connected.wait()  # sustained following: every line is written while followed
            for made in batches:
                store.append("r-sse", made)
                await asyncio.sleep(0)
            store.close_stream("r-sse")

        if not live:
            for made in batches:
                store.append("r-sse", made)
            store.close_stream("r-sse")
        app = Starlette(routes=[Route("/stream", follow)])
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/stream"
        # The client is a process of its own, as a browser or `quicflow logs -f` is: it
        # counts lines in the raw bytes, so its own parsing does not slow the server.
        cpu = time.process_time()
        client = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _CLIENT, url, stdout=asyncio.subprocess.PIPE
        )
        writing = asyncio.create_task(writer()) if live else None
        out, _ = await client.communicate()
        if writing is not None:
            await writing
        clock = Clock()
        clock.cpu = time.process_time() - cpu  # the server's and the writer's, not the client's
        received, seconds, last = out.decode().split()
        clock.wall = float(seconds)
        streams.close()
        server.should_exit = True
        await task
        sock.close()
        db.close()
        return clock, int(received), int(last)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--sse-lines", type=int, default=200_000)
    parser.add_argument(
        "--page", type=int, default=FOLLOW_PAGE, help="lines per SSE event, at most"
    )
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = SQLiteDatabase(Path(tmp) / "quicflow.db")
        store = LogStore(db)
        clock = write_phase(store, args.lines, args.runs, args.batch)
        print(
            f"write: {clock.rates(args.lines)} into the local store"
            f" ({args.lines:,} lines, {args.runs} runs)"
        )
        started = time.perf_counter()
        indexed = 0
        while count := store.lines.index(5000):
            indexed += count
        took = time.perf_counter() - started
        print(
            f"index: {indexed:,} lines in {took:.1f} s ({indexed / took:,.0f} lines/s, in the background)"
        )
        floor = schema_floor(args.lines, args.runs, args.batch)
        print(f"floor: {floor.rates(args.lines)} executemany of ready tuples into log_lines")
        plain = min(args.lines, 300_000)
        print(f"floor: {plain_floor(plain, args.batch).rates(plain)} plain INSERT, no index")
        q = args.queries
        p50, p95, n = timed(
            lambda i: store.search(
                LogQuery(run_id=f"r-{i % args.runs}", text="connection refused", limit=1000)
            ),
            q,
        )
        print(f"query run + text:     p50 {p50:.1f} ms, p95 {p95:.1f} ms ({n} lines)")
        p50, p95, n = timed(
            lambda i: store.search(LogQuery(text=f"item={(i * 7919) % args.lines} ", limit=100)), q
        )
        print(f"query text, all runs: p50 {p50:.1f} ms, p95 {p95:.1f} ms")
        p50, p95, n = timed(
            lambda i: store.search(LogQuery(text="connection refused", limit=100)), q
        )
        print(f"query common text:    p50 {p50:.1f} ms, p95 {p95:.1f} ms ({n} lines)")
        start_ns = store.search(LogQuery(limit=1, newest_first=False))[0].time_ns
        p50, p95, n = timed(
            lambda i: store.search(
                LogQuery(
                    start_ns=start_ns + i * 10**9, end_ns=start_ns + (i + 1) * 10**9, limit=1000
                )
            ),
            q,
        )
        print(f"query time window:    p50 {p50:.1f} ms, p95 {p95:.1f} ms ({n} lines)")
        db.close()
    for live, what in ((True, "written and received live"), (False, "caught up")):
        clock, received, last = asyncio.run(sse_phase(args.sse_lines, args.batch, args.page, live))
        lost = args.sse_lines - received
        print(
            f"sse {'live' if live else 'catch-up'}: {clock.rates(received)} {what} over HTTP"
            f" ({received:,} lines, {lost} lost, last id {last:,})"
        )


if __name__ == "__main__":
    main()
