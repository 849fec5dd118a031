"""Log upkeep: sinks follow settings.logs, lines reach VictoriaLogs with their scope, retention runs.

VictoriaLogs is the stand-in of ``tests/log/victoria.py`` (a FAKE: no binary here).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from log.victoria import VictoriaLogsStandIn

from reconciler.log import scopes
from reconciler.log.queries import LogQuery
from reconciler.log.store import LogStore
from reconciler.log.upkeep import LogUpkeep
from reconciler.log.victorialogs import VictoriaLogsSink
from reconciler.store.sqlite import SQLiteDatabase


async def test_settings_start_and_stop_the_victorialogs_sink(tmp_path: Path) -> None:
    standin = VictoriaLogsStandIn().start()
    db = SQLiteDatabase(tmp_path / "quicflow.db")
    try:
        db.execute(
            "INSERT INTO runs (id, project, env, version, config_commit, config_hash, trigger,"
            " state, created_at, seq) VALUES ('r-1', 'shop', 'prod', '1.0', 'c', 'h', 'manual',"
            " 'running', 't', 1)"
        )
        logs = LogStore(db)
        upkeep = LogUpkeep(logs, tmp_path / "spool")
        raw = {
            "backend": "victorialogs",
            "victoria_logs": {"url": standin.url, "flush_interval": "50ms"},
        }
        await upkeep.apply(raw, victoria_enabled=False)  # the feature is off: nothing ships
        assert upkeep.victorialogs is None and logs.settings.backend == "local"
        await upkeep.apply(raw, victoria_enabled=True)
        sink = upkeep.victorialogs
        assert isinstance(sink, VictoriaLogsSink) and logs.settings.backend == "victorialogs"
        with scopes.entered("task:deploy/app"), scopes.entered("deploy:web-1"):
            logs.append("r-1", [("2026-01-07T10:00:00Z", "web-1/deploy", "stderr", "ERROR boom")])
        for _ in range(200):
            if sink.shipped:
                break
            await asyncio.sleep(0.02)
        (shipped,) = standin.store.all()
        assert (shipped["project"], shipped["env"], shipped["run_id"]) == ("shop", "prod", "r-1")
        assert (shipped["stage"], shipped["task"], shipped["target"], shipped["level"]) == (
            "deploy",
            "app",
            "web-1",
            "error",
        )
        backend, found = await logs.query(LogQuery(text="boom"))
        assert backend == "victorialogs" and [x.line for x in found] == ["ERROR boom"]
        await upkeep.apply({"backend": "local"}, victoria_enabled=True)
        assert upkeep.victorialogs is None and logs.sinks == []
        backend, found = await logs.query(LogQuery(text="boom"))
        assert backend == "local" and found[0].task == "app"
    finally:
        standin.stop()
        db.close()


def test_prune_applies_retention_by_age_then_by_size(tmp_path: Path) -> None:
    db = SQLiteDatabase(tmp_path / "quicflow.db")
    try:
        logs = LogStore(db)
        day = 86_400 * 1_000_000_000
        now = 100 * day
        upkeep = LogUpkeep(logs, tmp_path / "spool", clock=lambda: now)
        logs.append("old", [("1970-01-80T00:00:00Z", "s", "stdout", "x")])  # not a date: now
        db.execute("UPDATE log_lines SET time_ns = ?", (now - 20 * day,))
        logs.append(
            "new", [("2026-01-07T10:00:00Z", "s", "stdout", f"line {i}") for i in range(10)]
        )
        db.execute("UPDATE log_lines SET time_ns = ? WHERE stream = 'new'", (now - day,))
        asyncio.run(upkeep.apply({"retention": "14d", "max_size": 600}, False))
        assert upkeep.prune() == 1 + 5  # the 20-day-old line, then the oldest past 600 bytes
        assert [x.line for x in logs.read("new")] == [f"line {i}" for i in range(5, 10)]
        assert logs.read("old") == [] and upkeep.pruned == 6
    finally:
        db.close()
