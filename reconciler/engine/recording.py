"""Recording runs that ended in the Git history (the state ref and its notes), batched.

Each run that ended — succeeded, failed, rolled back or cancelled — becomes one state
commit. Runs that end while a batch is being written join the next batch: one state
commit each, but one ref update and one note write per batch, so many environments
finishing at once do not queue for the ref one by one. A failed write is logged, never
raised: the run has ended either way, and the next pass plans from what Git says.

Once a batch is written, the claims its runs held on their environments
(``claiming``) are released: another reconciler that then claims one finds the state
commit already there and has nothing to redo.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

from reconciler.engine.claiming import Claimer
from reconciler.engine.running import Outcome
from reconciler.errors import QuicFlowError
from reconciler.gitops import model, planning
from reconciler.gitops.history import History, RunOutcome
from reconciler.runs import Decision, Run, RunState

_log = logging.getLogger(__name__)

#: The run states the history records (interrupted runs are replaced, waiting runs go on).
RECORDED = frozenset(
    {RunState.SUCCEEDED, RunState.FAILED, RunState.ROLLED_BACK, RunState.CANCELLED}
)


def decision_lines(decisions: Iterable[Decision]) -> tuple[str, ...]:
    """Who decided the run's gates, as history records it: ``approved approval:qa by bob``
    (with the decision's comment, when there is one, on the same line)."""
    out = []
    for d in decisions:
        verb = "approved" if d.approved else "rejected"
        if d.gate.startswith("promote:"):
            verb = "promoted" if d.approved else "rejected promotion"
        line = f"{verb} {d.gate} by {d.user}" + (f" at {d.at}" if d.at else "")
        comment = " ".join(d.comment.split())[:200]  # one line, whatever was typed
        out.append(line + (f': "{comment}"' if comment else ""))
    return tuple(out)


def outcome_of(
    run: Run,
    env: model.Environment,
    outcome: Outcome,
    recorded_again: bool = False,
    decisions: Iterable[Decision] = (),
) -> RunOutcome:
    """What history records of ``run``, which ended with ``outcome`` (``decisions``: those
    people took on its gates)."""
    pin = None
    if run.detail.get("pin") and outcome.state is RunState.SUCCEEDED:
        pin = planning.Pin(
            run.version,
            str(run.detail["pin_desired_version"]),
            str(run.detail["pin_desired_hash"]),
        )
    digest = run.detail.get("image_digest")
    # Blue-green: the color traffic was switched to; None when it never switched, so the
    # color the state ref names as serving stays what it was.
    color = None
    if env.strategy.type is model.StrategyType.BLUE_GREEN and outcome.result.get("switched"):
        color = str(outcome.result.get("color") or run.detail.get("color") or "") or None
    return RunOutcome(
        run_id=run.id,
        project=run.project,
        env=run.env,
        config_commit=run.config_commit,
        version=run.version,
        config_hash=run.config_hash,
        outcome=outcome.state.value,
        strategy=run.strategy,
        trigger=run.trigger.value,
        started_at=run.started_at,
        finished_at=run.finished_at,
        targets=outcome.touched or tuple(t.label for t in env.targets),
        previous_version=run.previous_version,
        error=outcome.error,
        forced=run.forced,
        pin=pin,
        image_digest=str(digest) if digest else None,
        color=color,
        actor=run.actor,
        decisions=decision_lines(decisions),
        recorded_again=recorded_again,
    )


class HistoryWriter:
    """Writes ended runs to ``history`` in batches; ``record`` returns once its run is written."""

    def __init__(
        self,
        history: History,
        claims: Claimer | None = None,
        decisions: Callable[[str], Iterable[Decision]] | None = None,
    ):
        self.history = history
        self.claims = claims
        self.decisions = decisions  # the decisions taken on a run's gates (the run store)
        self._pending: list[tuple[RunOutcome, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def record(self, run: Run, env: model.Environment, outcome: Outcome) -> None:
        """Record ``run`` (ended with ``outcome``) in the next batch and wait for it."""
        done = asyncio.get_running_loop().create_future()
        decided = self.decisions(run.id) if self.decisions is not None else ()
        self._pending.append((outcome_of(run, env, outcome, decisions=decided), done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        await done

    async def rerecord(self, run: Run, env: model.Environment) -> None:
        """Record again ``run``, which succeeded, after the state ref lost its record."""
        outcome = Outcome(RunState.SUCCEEDED, result=run.detail, touched=())
        done = asyncio.get_running_loop().create_future()
        decided = self.decisions(run.id) if self.decisions is not None else ()
        again = outcome_of(run, env, outcome, recorded_again=True, decisions=decided)
        self._pending.append((again, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        await done

    async def _write(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await asyncio.to_thread(self.history.record_runs, [outcome for outcome, _ in batch])
            except QuicFlowError as exc:
                ids = ", ".join(outcome.run_id for outcome, _ in batch)
                _log.error("could not record run(s) %s in Git: %s", ids, exc)
            finally:
                if self.claims is not None:
                    for outcome, _ in batch:
                        try:
                            await self.claims.release(
                                (outcome.project, outcome.env), outcome.run_id
                            )
                        except QuicFlowError as exc:
                            _log.warning(
                                "could not release the claim of %s: %s", outcome.run_id, exc
                            )
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)
