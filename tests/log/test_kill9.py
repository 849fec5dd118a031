"""No acknowledged log line is lost when the writing process is killed with SIGKILL.

A real child process appends batches through ``LogStore`` to a real SQLite store and
prints the last sequence number once ``append`` returned (the acknowledgement); the
test kills it with SIGKILL mid-stream, reopens the store and finds every acknowledged
line, in order, with its text.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from reconciler.store.sqlite import SQLiteDatabase

WRITER = textwrap.dedent(
    """
    import sys
    from reconciler.log.store import LogStore
    from reconciler.store.sqlite import SQLiteDatabase

    logs = LogStore(SQLiteDatabase(sys.argv[1]))
    n = 0
    while True:
        batch = [("2026-01-07T10:00:00Z", "web-1/deploy", "stdout", f"line {n + i}") for i in range(50)]
        n += len(batch)
        last = logs.append("r-1", batch)
        print(last, flush=True)
    """
)


def test_kill_9_mid_write_loses_no_acknowledged_line(tmp_path: Path) -> None:
    path = tmp_path / "quicflow.db"
    SQLiteDatabase(path).close()  # migrated before the writer starts
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    acknowledged = 0
    try:
        assert child.stdout is not None
        for raw in child.stdout:
            acknowledged = int(raw)
            if acknowledged >= 20_000:
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    db = SQLiteDatabase(path)
    try:
        rows = db.query("SELECT seq, line FROM log_lines WHERE stream = 'r-1' ORDER BY seq")
        assert len(rows) >= acknowledged >= 20_000
        assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
        assert all(r["line"] == f"line {r['seq'] - 1}" for r in rows)
        assert db.query("PRAGMA integrity_check")[0][0] == "ok"
    finally:
        db.close()
