"""Runs, their keyed steps and approval decisions in the operational store."""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from reconciler.runs import Decision, Run, RunState, Step, StepStatus, Trigger
from reconciler.store import database, paging, rows

_RUNS = paging.Query("runs", order=("seq DESC",))
_STEPS = paging.Query("steps", order=("ord",))
_DECISIONS = paging.Query("decisions")
_PUT_STEP = (
    "INSERT INTO steps (run_id, key, status, started_at, finished_at, attempts, result, error, ord)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?,"
    " (SELECT COALESCE(MAX(ord), 0) + 1 FROM steps WHERE run_id = ?))"
    " ON CONFLICT (run_id, key) DO UPDATE SET status = excluded.status,"
    " started_at = excluded.started_at, finished_at = excluded.finished_at,"
    " attempts = excluded.attempts, result = excluded.result, error = excluded.error"
)

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

    def __init__(self, db: database.Database):
        self.db = db

    # -- runs ----------------------------------------------------------------------

    def create(self, run: Run) -> Run:
        with self.db.transaction() as conn:
            seq = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 AS next FROM runs").fetchone()[
                "next"
            ]
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
        row = _RUNS.equal("id", run_id).first(self.db)
        return _run(row) if row else None

    def list(
        self,
        project: str | None = None,
        env: str | None = None,
        states: Sequence[RunState] | None = None,
        trigger: str | None = None,
        limit: int = 50,
        offset: int = 0,
        *,
        projects: Sequence[str] | None = None,
        triggers: Sequence[str] | None = None,
    ) -> tuple[list[Run], int]:
        """Runs newest first with the total count, filtered (``projects``/``triggers``:
        any of these; None: no filter)."""
        found, total = (
            _RUNS.equal("project", project or None)
            .among("project", projects)
            .equal("env", env or None)
            .among("state", [s.value for s in states] if states else None)
            .equal("trigger", trigger or None)
            .among("trigger", triggers)
            .page(self.db, limit, offset)
        )
        return [_run(r) for r in found], total

    def active(self) -> builtins.list[Run]:
        """Runs not yet final, oldest first."""
        waiting = [s.value for s in RunState if not s.is_final]
        found = _RUNS.ordered("seq").among("state", waiting).rows(self.db)
        return [_run(r) for r in found]

    def resumable(self) -> builtins.list[Run]:
        """Interrupted runs that are still the latest of their project/environment: the
        next pass resumes them (unless Git moved on), oldest first."""
        found = _RUNS.ordered("seq").among("state", [RunState.INTERRUPTED.value]).rows(self.db)
        runs = [_run(r) for r in found]
        return [r for r in runs if (latest := self.latest(r.project, r.env)) and latest.id == r.id]

    def latest(self, project: str, env: str) -> Run | None:
        row = _RUNS.equal("project", project).equal("env", env).first(self.db)
        return _run(row) if row else None

    # -- steps ---------------------------------------------------------------------

    def step(self, run_id: str, key: str) -> Step | None:
        row = _STEPS.equal("run_id", run_id).equal("key", key).first(self.db)
        return _step(row) if row else None

    def steps(self, run_id: str) -> builtins.list[Step]:
        return [_step(r) for r in _STEPS.equal("run_id", run_id).rows(self.db)]

    def put_step(self, step: Step) -> Step:
        """Insert or update a step in one statement; a step keeps its first position."""
        self.db.write(_PUT_STEP, _step_values(step))
        return step

    def carry_over(
        self, from_run: str, to_run: str, steps: Iterable[Step], decisions: Iterable[Decision]
    ) -> int:
        """Carry ``steps`` and ``decisions`` of an interrupted run into its successor.

        Which still hold is the caller's rule (``reconciler.runs.carried_over``);
        decisions keep who decided and when. One transaction: all or nothing.
        """
        copied = 0
        with self.db.transaction() as conn:
            for step in steps:
                marks: dict[str, Any] = {"resumed_from": from_run}
                if step.status is StepStatus.RUNNING:
                    # In flight when its process died: the run that issued its commands.
                    marks["in_flight_of"] = step.result.get("in_flight_of") or from_run
                carried = replace(step, run_id=to_run, result={**step.result, **marks})
                conn.execute(_PUT_STEP, _step_values(carried))
                copied += 1
            for d in decisions:
                conn.execute(
                    'INSERT INTO decisions (run_id, gate, approved, "user", at, comment)'
                    " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, gate) DO NOTHING",
                    (to_run, d.gate, int(d.approved), d.user, d.at, d.comment),
                )
        return copied

    def decisions(self, run_id: str) -> builtins.list[Decision]:
        """Every decision taken on the gates of ``run_id``."""
        return [
            rows.into(Decision, r, approved=bool(r["approved"]))
            for r in _DECISIONS.equal("run_id", run_id).rows(self.db)
        ]

    # -- decisions -----------------------------------------------------------------

    def decide(self, decision: Decision) -> bool:
        """Record a decision; False when the gate was already decided (first one wins)."""
        inserted = self.db.execute(
            'INSERT INTO decisions (run_id, gate, approved, "user", at, comment)'
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (run_id, gate) DO NOTHING",
            (
                decision.run_id,
                decision.gate,
                int(decision.approved),
                decision.user,
                decision.at,
                decision.comment,
            ),
        )
        return inserted == 1

    def decision(self, run_id: str, gate: str) -> Decision | None:
        row = _DECISIONS.equal("run_id", run_id).equal("gate", gate).first(self.db)
        return rows.into(Decision, row, approved=bool(row["approved"])) if row else None


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


def _run(row: database.Row) -> Run:
    return rows.into(
        Run,
        row,
        trigger=Trigger(row["trigger"]),
        state=RunState(row["state"]),
        forced=bool(row["forced"]),
        detail=json.loads(row["detail"]),
    )


def _step(row: database.Row) -> Step:
    return rows.into(Step, row, status=StepStatus(row["status"]), result=json.loads(row["result"]))


def _step_values(step: Step) -> tuple[Any, ...]:
    return (
        step.run_id,
        step.key,
        step.status.value,
        step.started_at,
        step.finished_at,
        step.attempts,
        json.dumps(dict(step.result), sort_keys=True),
        step.error,
        step.run_id,
    )
