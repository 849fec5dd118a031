"""Runs, their keyed steps and approval decisions in the operational store."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from reconciler.runs import Decision, Run, RunState, Step, StepStatus, Trigger
from reconciler.store.database import Database

_SCHEMA = [
    """
    CREATE TABLE runs (
        id TEXT PRIMARY KEY, project TEXT NOT NULL, env TEXT NOT NULL, version TEXT NOT NULL,
        config_commit TEXT NOT NULL, config_hash TEXT NOT NULL, trigger TEXT NOT NULL,
        state TEXT NOT NULL, previous_version TEXT, actor TEXT NOT NULL DEFAULT '',
        strategy TEXT NOT NULL DEFAULT '', created_at TEXT NOT NULL, started_at TEXT NOT NULL DEFAULT '',
        finished_at TEXT NOT NULL DEFAULT '', error TEXT NOT NULL DEFAULT '', forced INTEGER NOT NULL DEFAULT 0,
        resumes TEXT NOT NULL DEFAULT '', detail TEXT NOT NULL DEFAULT '{}', seq INTEGER NOT NULL
    );
    CREATE INDEX runs_by_env ON runs (project, env, seq);
    CREATE INDEX runs_by_state ON runs (state);
    CREATE TABLE steps (
        run_id TEXT NOT NULL REFERENCES runs(id), key TEXT NOT NULL, status TEXT NOT NULL,
        started_at TEXT NOT NULL DEFAULT '', finished_at TEXT NOT NULL DEFAULT '',
        attempts INTEGER NOT NULL DEFAULT 0, result TEXT NOT NULL DEFAULT '{}', error TEXT NOT NULL DEFAULT '',
        ord INTEGER NOT NULL, PRIMARY KEY (run_id, key)
    );
    CREATE TABLE decisions (
        run_id TEXT NOT NULL REFERENCES runs(id), gate TEXT NOT NULL, approved INTEGER NOT NULL,
        user TEXT NOT NULL, at TEXT NOT NULL, comment TEXT NOT NULL DEFAULT '', PRIMARY KEY (run_id, gate)
    )
    """,
]

_RUN_COLUMNS = (
    "id",
    "project",
    "env",
    "version",
    "config_commit",
    "config_hash",
    "trigger",
    "state",
    "previous_version",
    "actor",
    "strategy",
    "created_at",
    "started_at",
    "finished_at",
    "error",
    "forced",
    "resumes",
    "detail",
)


class RunStore:
    """Reads and writes runs, steps and decisions."""

    def __init__(self, db: Database):
        self.db = db
        db.migrate("runs", _SCHEMA)

    # -- runs ----------------------------------------------------------------------

    def create(self, run: Run) -> Run:
        with self.db.transaction() as conn:
            seq = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM runs").fetchone()[0]
            conn.execute(
                f"INSERT INTO runs ({', '.join(_RUN_COLUMNS)}, seq) VALUES ({', '.join('?' * len(_RUN_COLUMNS))}, ?)",
                (*_run_values(run), seq),
            )
        return run

    def save(self, run: Run) -> Run:
        sets = ", ".join(f"{c} = ?" for c in _RUN_COLUMNS[1:])
        with self.db.transaction() as conn:
            conn.execute(f"UPDATE runs SET {sets} WHERE id = ?", (*_run_values(run)[1:], run.id))
        return run

    def update(self, run: Run, **changes: Any) -> Run:
        return self.save(replace(run, **changes))

    def get(self, run_id: str) -> Run | None:
        rows = self.db.query("SELECT * FROM runs WHERE id = ?", (run_id,))
        return _run(rows[0]) if rows else None

    def list(
        self,
        project: str | None = None,
        env: str | None = None,
        states: Sequence[RunState] | None = None,
        trigger: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[Run], int]:
        """Runs newest first with the total count, filtered."""
        where, params = [], []
        if project:
            where.append("project = ?")
            params.append(project)
        if env:
            where.append("env = ?")
            params.append(env)
        if states:
            where.append(f"state IN ({', '.join('?' * len(states))})")
            params += [s.value for s in states]
        if trigger:
            where.append("trigger = ?")
            params.append(trigger)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        total = self.db.query(f"SELECT COUNT(*) FROM runs {clause}", params)[0][0]
        rows = self.db.query(
            f"SELECT * FROM runs {clause} ORDER BY seq DESC LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return [_run(r) for r in rows], total

    def active(self) -> list[Run]:
        """Runs not yet final, oldest first."""
        final = [s.value for s in RunState if s.is_final]
        rows = self.db.query(
            f"SELECT * FROM runs WHERE state NOT IN ({', '.join('?' * len(final))}) ORDER BY seq",
            final,
        )
        return [_run(r) for r in rows]

    def latest(self, project: str, env: str) -> Run | None:
        rows = self.db.query(
            "SELECT * FROM runs WHERE project = ? AND env = ? ORDER BY seq DESC LIMIT 1",
            (project, env),
        )
        return _run(rows[0]) if rows else None

    # -- steps ---------------------------------------------------------------------

    def step(self, run_id: str, key: str) -> Step | None:
        rows = self.db.query("SELECT * FROM steps WHERE run_id = ? AND key = ?", (run_id, key))
        return _step(rows[0]) if rows else None

    def steps(self, run_id: str) -> list[Step]:
        return [
            _step(r)
            for r in self.db.query("SELECT * FROM steps WHERE run_id = ? ORDER BY ord", (run_id,))
        ]

    def put_step(self, step: Step) -> Step:
        """Insert or update a step in one statement; a step keeps its first position."""
        self.db.write(
            "INSERT INTO steps (run_id, key, status, started_at, finished_at, attempts, result, error, ord)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?,"
            " (SELECT COALESCE(MAX(ord), 0) + 1 FROM steps WHERE run_id = ?))"
            " ON CONFLICT (run_id, key) DO UPDATE SET status = excluded.status,"
            " started_at = excluded.started_at, finished_at = excluded.finished_at,"
            " attempts = excluded.attempts, result = excluded.result, error = excluded.error",
            (
                step.run_id,
                step.key,
                step.status.value,
                step.started_at,
                step.finished_at,
                step.attempts,
                json.dumps(dict(step.result), sort_keys=True),
                step.error,
                step.run_id,
            ),
        )
        return step

    def copy_done_steps(self, from_run: str, to_run: str, prefixes: Sequence[str]) -> int:
        """Carry finished steps (keys starting with ``prefixes``) of an interrupted run into its successor."""
        copied = 0
        for step in self.steps(from_run):
            if step.status.is_done and any(step.key.startswith(p) for p in prefixes):
                self.put_step(
                    replace(step, run_id=to_run, result={**step.result, "resumed_from": from_run})
                )
                copied += 1
        return copied

    # -- decisions -----------------------------------------------------------------

    def decide(self, decision: Decision) -> bool:
        """Record a decision; False when the gate was already decided (first one wins)."""
        try:
            self.db.execute(
                "INSERT INTO decisions VALUES (?, ?, ?, ?, ?, ?)",
                (
                    decision.run_id,
                    decision.gate,
                    int(decision.approved),
                    decision.user,
                    decision.at,
                    decision.comment,
                ),
            )
        except sqlite3.IntegrityError:
            return False
        return True

    def decision(self, run_id: str, gate: str) -> Decision | None:
        rows = self.db.query(
            "SELECT * FROM decisions WHERE run_id = ? AND gate = ?", (run_id, gate)
        )
        if not rows:
            return None
        r = rows[0]
        return Decision(
            r["run_id"], r["gate"], bool(r["approved"]), r["user"], r["at"], r["comment"]
        )


def _run_values(run: Run) -> tuple[Any, ...]:
    return (
        run.id,
        run.project,
        run.env,
        run.version,
        run.config_commit,
        run.config_hash,
        run.trigger.value,
        run.state.value,
        run.previous_version,
        run.actor,
        run.strategy,
        run.created_at,
        run.started_at,
        run.finished_at,
        run.error,
        int(run.forced),
        run.resumes,
        json.dumps(dict(run.detail), sort_keys=True),
    )


def _run(row: sqlite3.Row) -> Run:
    return Run(
        id=row["id"],
        project=row["project"],
        env=row["env"],
        version=row["version"],
        config_commit=row["config_commit"],
        config_hash=row["config_hash"],
        trigger=Trigger(row["trigger"]),
        state=RunState(row["state"]),
        previous_version=row["previous_version"],
        actor=row["actor"],
        strategy=row["strategy"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        error=row["error"],
        forced=bool(row["forced"]),
        resumes=row["resumes"],
        detail=json.loads(row["detail"]),
    )


def _step(row: sqlite3.Row) -> Step:
    return Step(
        row["run_id"],
        row["key"],
        StepStatus(row["status"]),
        row["started_at"],
        row["finished_at"],
        row["attempts"],
        json.loads(row["result"]),
        row["error"],
    )
