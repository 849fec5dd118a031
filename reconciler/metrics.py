"""Prometheus metrics of one reconciler process, served at ``GET /metrics``.

Everything here is read, never pushed from the code that does the work: ``Metrics``
subscribes to the engine's event bus for what happens to runs (counted once per run
when it ends, with the durations read back from the run store), and a collector reads
the rest from the stores and the hub at scrape time (builds, agents, commands in
flight, webhook and callback deliveries, reconcile timing, log lines and the spool).
The engine gains no counters of its own.

Metric names (all prefixed ``quicflow_``) are listed in the README with example alert
rules. Counters that come from store rows count what the store still holds: a
retention purge of old records can lower them, which Prometheus reads as a reset.
The registry is per ``Metrics``, so two reconcilers in one process (tests) never mix.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from reconciler.events import Event, EventType
from reconciler.runs import Run

CONTENT_TYPE = CONTENT_TYPE_LATEST
_ENDED = frozenset(
    {
        EventType.RUN_SUCCEEDED,
        EventType.RUN_FAILED,
        EventType.RUN_CANCELLED,
        EventType.RUN_SUPERSEDED,
        EventType.ROLLED_BACK,
    }
)
_STAGE_ENDED = {EventType.STAGE_SUCCEEDED: "succeeded", EventType.STAGE_FAILED: "failed"}
_RUN_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
_STAGE_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_PLAN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
#: Non-final delivery states: a ``queued`` record becomes its outcome later.
_PENDING_DELIVERY = frozenset({"queued"})
_REMEMBERED_RUNS = 10_000


def _seconds(start: str, end: str) -> float | None:
    try:
        first = dt.datetime.fromisoformat(start.replace("Z", "+00:00"))
        last = dt.datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max((last - first).total_seconds(), 0.0)


class Metrics:
    """The metrics of one engine (a ``Reconciler``): subscribe, then serve ``render()``."""

    def __init__(self, engine: Any, clock: Any = time.time):
        self.engine = engine
        self.clock = clock
        self.registry = CollectorRegistry(auto_describe=True)
        self.runs_started = Counter(
            "quicflow_runs_started",
            "Runs started, by project and environment.",
            ("project", "env"),
            registry=self.registry,
        )
        self.runs = Counter(
            "quicflow_runs",
            "Runs ended, by project, environment and final status.",
            ("project", "env", "status"),
            registry=self.registry,
        )
        self.run_duration = Histogram(
            "quicflow_run_duration_seconds",
            "How long a run took from start to end.",
            ("project", "env", "status"),
            buckets=_RUN_BUCKETS,
            registry=self.registry,
        )
        self.stage_duration = Histogram(
            "quicflow_stage_duration_seconds",
            "How long a pipeline stage took.",
            ("project", "env", "stage", "status"),
            buckets=_STAGE_BUCKETS,
            registry=self.registry,
        )
        self.plan_duration = Histogram(
            "quicflow_plan_duration_seconds",
            "How long planning took in a reconcile pass.",
            buckets=_PLAN_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StoreCollector(self))
        self._counted: OrderedDict[str, None] = OrderedDict()
        self._unsubscribe: Any = None
        self._passes_seen = 0

    def subscribe(self) -> None:
        """Start counting from the engine's bus."""
        if self._unsubscribe is None:
            self._unsubscribe = self.engine.bus.subscribe(self.on_event)

    def close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    async def on_event(self, event: Event) -> None:
        """Count what ``event`` says happened."""
        if event.type is EventType.RUN_STARTED:
            self.runs_started.labels(event.project, event.env).inc()
        elif event.type in _ENDED:
            run = self.engine.runs.get(event.run_id)
            if run is not None and run.state.is_final:
                self._ended(run)
        elif event.type in _STAGE_ENDED:
            self._stage_ended(event)

    def _ended(self, run: Run) -> None:
        if run.id in self._counted:  # a run ends once, whatever events say so
            return
        self._counted[run.id] = None
        if len(self._counted) > _REMEMBERED_RUNS:
            self._counted.popitem(last=False)
        status = run.state.value
        self.runs.labels(run.project, run.env, status).inc()
        took = _seconds(run.started_at or run.created_at, run.finished_at)
        if took is not None:
            self.run_duration.labels(run.project, run.env, status).observe(took)

    def _stage_ended(self, event: Event) -> None:
        key = f"stage:{event.stage}"
        step = next((s for s in self.engine.runs.steps(event.run_id) if s.key == key), None)
        if step is None or not step.started_at:
            return
        took = _seconds(step.started_at, step.finished_at or event.at)
        if took is not None:
            status = _STAGE_ENDED[event.type]
            self.stage_duration.labels(event.project, event.env, event.stage, status).observe(took)

    def observe_passes(self) -> None:
        """Take the plan times of reconcile passes finished since the last call."""
        timings = getattr(self.engine, "pass_timings", None)
        if timings is None:
            return
        for seconds in timings.take():
            self.plan_duration.observe(seconds)

    def render(self) -> bytes:
        """The exposition text of every metric."""
        self.observe_passes()
        return generate_latest(self.registry)


class _StoreCollector:
    """What the stores and the hub hold, read at scrape time."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # collected at scrape time only; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        engine = self.metrics.engine
        db = engine.db
        now = self.metrics.clock()
        yield from self._builds(db)
        yield from self._agents(getattr(engine, "hub", None), now)
        yield from self._deliveries(db)
        yield from self._reconcile(engine, now)
        yield from self._logs(engine)
        yield from self._history(engine)

    @staticmethod
    def _history(engine: Any) -> Iterator[Metric]:
        """Whether what this reconciler recorded in Git reached origin (push_history)."""
        history = getattr(engine, "history", None)
        if history is None:
            return
        status = history.status()
        unpushed = GaugeMetricFamily(
            "quicflow_history_unpushed_commits",
            "State commits recorded here that origin does not have (a failed history push).",
        )
        unpushed.add_metric((), status.unpushed)
        failures = GaugeMetricFamily(
            "quicflow_history_push_failures",
            "History pushes that failed in a row (0 once one succeeds; retried every poll).",
        )
        failures.add_metric((), status.failed_pushes if status.pushing else 0)
        yield unpushed
        yield failures

    @staticmethod
    def _builds(db: Any) -> Iterator[Metric]:
        builds = CounterMetricFamily(
            "quicflow_builds", "Image builds, by project and status.", labels=("project", "status")
        )
        running = GaugeMetricFamily("quicflow_builds_running", "Image builds running now.")
        count = 0
        for row in db.query(
            "SELECT project, status, COUNT(*) AS n FROM builds GROUP BY project, status"
        ):
            if row["status"] == "running":
                count += int(row["n"])
            else:
                builds.add_metric((row["project"], row["status"]), int(row["n"]))
        running.add_metric((), count)
        yield builds
        yield running

    @staticmethod
    def _agents(hub: Any, now: float) -> Iterator[Metric]:
        connected = GaugeMetricFamily("quicflow_agents_connected", "Agents connected to the hub.")
        age = GaugeMetricFamily(
            "quicflow_agent_heartbeat_age_seconds",
            "Seconds since each connected agent's last heartbeat.",
            labels=("agent",),
        )
        in_flight = GaugeMetricFamily(
            "quicflow_commands_in_flight", "Commands sent to agents, awaiting their result."
        )
        agents = hub.agents() if hub is not None else []
        connected.add_metric((), len(agents))
        for agent in agents:
            age.add_metric((agent.name,), max(now - agent.last_heartbeat, 0.0))
        in_flight.add_metric((), hub.commands_in_flight() if hub is not None else 0)
        yield connected
        yield age
        yield in_flight

    @staticmethod
    def _deliveries(db: Any) -> Iterator[Metric]:
        webhooks = CounterMetricFamily(
            "quicflow_webhook_deliveries",
            "Webhook and schedule deliveries recorded, by provider and result.",
            labels=("provider", "result"),
        )
        for row in db.query(
            "SELECT source, status, COUNT(*) AS n FROM trigger_records GROUP BY source, status"
        ):
            if row["status"] not in _PENDING_DELIVERY:
                webhooks.add_metric((row["source"] or "unknown", row["status"]), int(row["n"]))
        callbacks = CounterMetricFamily(
            "quicflow_callback_deliveries",
            "Callback (notification) delivery attempts, by callback and status.",
            labels=("callback", "status"),
        )
        for row in db.query(
            "SELECT callback, status, COUNT(*) AS n FROM alert_deliveries GROUP BY callback, status"
        ):
            callbacks.add_metric((row["callback"], row["status"]), int(row["n"]))
        yield webhooks
        yield callbacks

    @staticmethod
    def _reconcile(engine: Any, now: float) -> Iterator[Metric]:
        timings = getattr(engine, "pass_timings", None)
        last = timings.last_finished if timings is not None else None
        lag = GaugeMetricFamily(
            "quicflow_reconcile_lag_seconds",
            "Seconds since the last reconcile pass finished (grows while passes fail or hang).",
        )
        passes = CounterMetricFamily(
            "quicflow_reconcile_passes", "Reconcile passes finished by this process."
        )
        if last is not None:
            lag.add_metric((), max(now - last, 0.0))
        passes.add_metric((), timings.count if timings is not None else 0)
        yield lag
        yield passes

    @staticmethod
    def _logs(engine: Any) -> Iterator[Metric]:
        logs = engine.logs
        written = CounterMetricFamily(
            "quicflow_log_lines_written", "Log lines stored by this process."
        )
        written.add_metric((), logs.written)
        dropped = CounterMetricFamily(
            "quicflow_log_lines_dropped",
            "Log lines a sink lost (spool full, or refused by VictoriaLogs), by sink.",
            labels=("sink",),
        )
        spool = GaugeMetricFamily(
            "quicflow_log_spool_bytes", "Bytes waiting in a sink's on-disk spool.", labels=("sink",)
        )
        for sink in logs.sinks:
            dropped.add_metric((sink.name,), sink.dropped)
            spool.add_metric((sink.name,), getattr(getattr(sink, "spool", None), "size", 0))
        stored_lines, stored_bytes = logs.lines.usage()
        stored = GaugeMetricFamily(
            "quicflow_log_store_bytes", "Size of the lines in the local log store."
        )
        stored.add_metric((), stored_bytes)
        count = GaugeMetricFamily("quicflow_log_store_lines", "Lines in the local log store.")
        count.add_metric((), stored_lines)
        yield written
        yield dropped
        yield spool
        yield stored
        yield count
