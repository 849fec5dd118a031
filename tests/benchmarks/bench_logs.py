"""Benchmark: log lines/s into the local store and through SSE; query latency on 1,000,000 lines.

Run as a plain script (pytest does not collect it: no ``test_`` names)::

    python tests/benchmarks/bench_logs.py [--lines 1000000] [--runs 100] [--batch 500]
        [--sse-lines 200000] [--queries 50]

- **Write**: ``--lines`` lines across ``--runs`` runs through the real ``LogStore.append``
  (fields filled in, one transaction per batch of ``--batch``) into SQLite, then the
  time the background indexer takes to bring the trigram index up to date. The floor
  is plain ``INSERT`` of the same rows into a table without indexes, in the same run.
- **SSE**: a writer appends ``--sse-lines`` lines while a client follows the stream
  over real HTTP (uvicorn on loopback, ``reconciler.streaming.log_events``); lines/s
  as received, and a check that none was lost.
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
from reconciler.log.store import LogStore
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


def write_phase(store: LogStore, lines: int, runs: int, batch: int) -> float:
    rnd = random.Random(1)
    started = time.perf_counter()
    k = 0
    while k < lines:
        for run in range(runs):
            if k >= lines:
                break
            entries = [
                (at(k + i), "web-1/deploy", "stdout", message(rnd, k + i)) for i in range(batch)
            ]
            store.append(f"r-{run}", entries)
            k += batch
    return k / (time.perf_counter() - started)


def floor_phase(lines: int, batch: int) -> float:
    rnd = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp:
        conn = sqlite3.connect(Path(tmp) / "floor.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE t (stream TEXT, seq INTEGER, at TEXT, line TEXT)")
        started = time.perf_counter()
        for start in range(0, lines, batch):
            rows = [
                (f"r-{start % 100}", start + i, at(start + i), message(rnd, start + i))
                for i in range(batch)
            ]
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO t VALUES (?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
        rate = lines / (time.perf_counter() - started)
        conn.close()
    return rate


def timed(run, count: int) -> tuple[float, float, int]:  # type: ignore[no-untyped-def]
    times = []
    found = 0
    for i in range(count):
        started = time.perf_counter()
        found = len(run(i))
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1], found


_CLIENT = """
import sys, time, httpx
needle, tail, count = b"event: line", b"", 0
with httpx.Client(timeout=60) as client, client.stream("GET", sys.argv[1]) as response:
    started = None
    for chunk in response.iter_bytes():
        started = started or time.perf_counter()
        data = tail + chunk
        count += data.count(needle)
        end = data.rfind(b"event: end")
        tail = data[-(len(needle) - 1):]
        if end != -1:
            break
print(count, time.perf_counter() - (started or time.perf_counter()))
"""


async def sse_phase(count: int, batch: int) -> tuple[float, int]:
    with tempfile.TemporaryDirectory() as tmp:
        db = SQLiteDatabase(Path(tmp) / "quicflow.db")
        store = LogStore(db)
        streams = streaming.Streams()
        engine = SimpleNamespace(logs=store)

        async def follow(request: Request) -> Response:
            return StreamingResponse(
                streaming.log_events(engine, "r-sse", 0, streams.closing),  # type: ignore[arg-type]
                media_type="text/event-stream",
            )

        app = Starlette(routes=[Route("/stream", follow)])
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            await asyncio.sleep(0.01)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/stream"
        received = 0

        async def writer() -> None:
            rnd = random.Random(2)
            for start in range(0, count, batch):
                store.append(
                    "r-sse",
                    [
                        (at(start + i), "web-1", "stdout", message(rnd, start + i))
                        for i in range(batch)
                    ],
                )
                await asyncio.sleep(0)
            store.close_stream("r-sse")

        # The client is a process of its own, as a browser or `quicflow logs -f` is: it
        # counts events in the raw bytes, so its own parsing does not slow the server.
        client = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _CLIENT,
            url,
            stdout=asyncio.subprocess.PIPE,
        )
        started = time.perf_counter()
        writing = asyncio.create_task(writer())
        out, _ = await client.communicate()
        await writing
        received, seconds = out.decode().split()
        received, elapsed = int(received), float(seconds)
        rate = received / elapsed if elapsed else 0.0
        del started
        streams.close()
        server.should_exit = True
        await task
        sock.close()
        db.close()
        return rate, received


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--sse-lines", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = SQLiteDatabase(Path(tmp) / "quicflow.db")
        store = LogStore(db)
        rate = write_phase(store, args.lines, args.runs, args.batch)
        print(
            f"write: {rate:,.0f} lines/s into the local store ({args.lines:,} lines, {args.runs} runs)"
        )
        started = time.perf_counter()
        indexed = 0
        while count := store.lines.index(5000):
            indexed += count
        took = time.perf_counter() - started
        print(
            f"index: {indexed:,} lines in {took:.1f} s ({indexed / took:,.0f} lines/s, in the background)"
        )
        print(
            f"floor: {floor_phase(min(args.lines, 300_000), args.batch):,.0f} lines/s plain INSERT, no index"
        )
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
    rate, received = asyncio.run(sse_phase(args.sse_lines, args.batch))
    lost = args.sse_lines - received
    print(
        f"sse: {rate:,.0f} lines/s written and received over HTTP ({received:,} lines, {lost} lost)"
    )


if __name__ == "__main__":
    main()
