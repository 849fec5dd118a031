"""Cron schedules: which slot is due (pure), and firing each slot exactly once (stored).

A schedule's *slots* are the instants its cron expression names in its time zone
(croniter + zoneinfo, so daylight-saving jumps follow the zone's rules). The table
``schedules`` keeps, per schedule id, the newest slot already handled (``last_slot``),
when it last fired (``last_run``), the next slot (``next_run``) and the outcome.

Exactly once per slot, across restarts and processes: a slot is *claimed* before
anything fires, by one atomic conditional update that moves ``last_slot`` only while it
is older than the slot (``reconciler.store.schedules``). Of several schedulers sharing
the database, only the one whose update changed the row fires; a restarted scheduler
finds the slot already claimed.

Missed slots (the server was down): ``due_slots`` only ever looks at the *newest* slot
not after ``now`` — never at each missed one — so

- ``run_once`` (default) fires that newest slot once, however many were missed;
- ``skip`` fires it only when it is on time (at most ``grace`` late), so after downtime
  nothing fires and the schedule waits for its next slot.

A schedule seen for the first time, or whose cron or time zone changed, starts from
its newest slot without firing it: adding ``0 2 * * *`` at noon does not deploy at once.
A claimed slot is never fired again, even when its action failed (the outcome is
stored for the API and the status page); the next slot tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from croniter import croniter

from reconciler.gitops import model
from reconciler.runs import Run, Trigger
from reconciler.store import schedules, triggers
from reconciler.store.database import Database

_log = logging.getLogger(__name__)

RUN_ONCE = "run_once"
SKIP = "skip"
DEFAULT_GRACE = timedelta(seconds=90)


def _stamp(at: datetime) -> str:
    # The store's format: slots are compared as strings there.
    return schedules.stamp(at)


def _parse(stamp: str) -> datetime:
    return schedules.parse_stamp(stamp)


def _instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The UTC instant of local wall time ``wall`` (naive) in ``zone``.

    A wall time that happens twice (the repeated hour of a fall-back day) is its first
    occurrence, so the slot is one instant and fires once; one that never happens (the
    skipped hour of a spring-forward day) is read with the offset before the jump,
    which puts it just after the jump, as cron does.
    """
    return wall.replace(tzinfo=zone, fold=0).astimezone(UTC)


def _wall(at: datetime, zone: ZoneInfo) -> datetime:
    return at.astimezone(zone).replace(tzinfo=None)


def newest_slot(now: datetime, cron: str, tz: str) -> datetime:
    """The newest slot of ``cron`` in zone ``tz`` that is not after ``now`` (in UTC).

    Slots are computed on the zone's wall clock, so daylight-saving days neither
    repeat a slot (fall back) nor lose one (spring forward).
    """
    zone = ZoneInfo(tz)
    # get_prev from an exact slot returns the slot before it; start just after now.
    walls = croniter(cron, _wall(now, zone) + timedelta(seconds=1))
    while True:
        found = _instant(walls.get_prev(datetime), zone)
        if found <= now:  # a skipped wall time read after the jump may lie ahead of now
            return found


def next_slot(after: datetime, cron: str, tz: str) -> datetime:
    """The first slot of ``cron`` in zone ``tz`` strictly after ``after`` (in UTC)."""
    zone = ZoneInfo(tz)
    walls = croniter(cron, _wall(after, zone))
    while True:
        found = _instant(walls.get_next(datetime), zone)
        if found > after:  # in the repeated hour, the wall clock's next slot already fired
            return found


def due_slots(
    now: datetime,
    last_slot: datetime | None,
    cron: str,
    tz: str,
    policy: str = RUN_ONCE,
    grace: timedelta = DEFAULT_GRACE,
) -> list[datetime]:
    """The slots to fire now: at most one, the newest one after ``last_slot``.

    ``last_slot`` None (never seen) fires nothing. ``policy`` is ``run_once`` or ``skip``
    (see the module docstring).
    """
    if policy not in (RUN_ONCE, SKIP):
        raise ValueError(f"missed-slot policy must be {RUN_ONCE!r} or {SKIP!r}, not {policy!r}")
    if last_slot is None:
        return []
    newest = newest_slot(now, cron, tz)
    if newest <= last_slot:
        return []
    if policy == SKIP and now - newest > grace:
        return []
    return [newest]


class ScheduleEngine(Protocol):
    """The part of ``EngineControl`` a scheduler uses."""

    @property
    def desired(self) -> model.DesiredState | None: ...

    def reconciled_elsewhere(self, project: str, env: str) -> str:
        """Replicas: the one that fires this environment's schedules if not this one."""
        ...

    async def deploy(
        self,
        project: str,
        env: str,
        version: str | None,
        *,
        actor: model.User | None,
        trigger: Trigger,
        force: bool = False,
        detail: dict[str, str] | None = None,
    ) -> Run: ...


def _spec(schedule: model.ScheduleTrigger) -> str:
    return f"{schedule.cron}|{schedule.timezone}"


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Scheduler:
    """Fires the schedules of the desired state, each slot once (see the module docstring)."""

    def __init__(
        self,
        db: Database,
        clock: Callable[[], datetime] = _utc_now,
        grace: timedelta = DEFAULT_GRACE,
        max_sleep: float = 30.0,
    ):
        self.store = schedules.ScheduleStore(db)
        self.records = triggers.TriggerRecords(db)
        self.clock = clock
        self.grace = grace
        self.max_sleep = max_sleep
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Look at the schedules again now (e.g. after the desired state changed)."""
        self._wake.set()

    async def run(self, engine: ScheduleEngine) -> None:
        """Tick until cancelled, sleeping until the next slot (at most ``max_sleep``)."""
        while True:
            try:
                await self.tick(engine)
            except Exception:  # noqa: BLE001 - one bad tick must not end the schedules
                _log.exception("schedule tick failed")
            self._wake.clear()
            delay = self._sleep_seconds(engine)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    def _sleep_seconds(self, engine: ScheduleEngine) -> float:
        desired = engine.desired
        declared = {
            s.id
            for p in (desired.projects.values() if desired else ())
            for s in p.schedules
            if s.enabled
        }
        # Rows of schedules removed from the config must not shorten the sleep.
        upcoming = [
            s.next_run for s in self.store.all().values() if s.id in declared and s.next_run
        ]
        if not upcoming:
            return self.max_sleep
        seconds = (_parse(min(upcoming)) - self.clock()).total_seconds()
        # A floor keeps a slot whose next_run another process has not advanced yet from
        # turning the loop into a busy wait.
        return min(max(seconds, 0.2), self.max_sleep)

    async def tick(self, engine: ScheduleEngine) -> list[tuple[str, datetime]]:
        """Fire every due slot once; the (schedule id, slot) pairs this process fired."""
        desired = engine.desired
        if desired is None:
            return []
        fired: list[tuple[str, datetime]] = []
        for project in desired.projects.values():
            for schedule in project.schedules:
                if not schedule.enabled or engine.reconciled_elsewhere(
                    schedule.project, schedule.target_env
                ):
                    continue  # disabled, or fired by the replica that holds the environment
                try:
                    slot = await self._tick_one(engine, schedule)
                except Exception:  # noqa: BLE001 - a bad cron of one schedule must not stop others
                    _log.exception("schedule %s failed", schedule.id)
                    continue
                if slot is not None:
                    fired.append((schedule.id, slot))
        return fired

    async def _tick_one(
        self, engine: ScheduleEngine, schedule: model.ScheduleTrigger
    ) -> datetime | None:
        now = self.clock()
        spec = _spec(schedule)
        state = self.store.get(schedule.id)
        if state is None or state.spec != spec:
            newest = newest_slot(now, schedule.cron, schedule.timezone)
            self.store.baseline(
                schedule.id, spec, newest, next_slot(now, schedule.cron, schedule.timezone)
            )
            return None
        last = _parse(state.last_slot)
        upcoming = next_slot(now, schedule.cron, schedule.timezone)
        due = due_slots(now, last, schedule.cron, schedule.timezone, schedule.missed, self.grace)
        if not due:
            newest = newest_slot(now, schedule.cron, schedule.timezone)
            if newest > last and self.store.claim(schedule.id, spec, newest, upcoming):
                # Missed under the skip policy: take the slot so it is not reconsidered.
                self._finish(
                    schedule,
                    newest,
                    now,
                    "skipped",
                    f"missed slot {_stamp(newest)} skipped (policy skip)",
                )
            elif state.next_run != _stamp(upcoming):
                self.store.set_next(schedule.id, upcoming)
            return None
        slot = due[-1]
        if not self.store.claim(schedule.id, spec, slot, upcoming):
            return None  # another process took this slot
        await self._fire(engine, schedule, slot, now)
        return slot

    async def _fire(
        self, engine: ScheduleEngine, schedule: model.ScheduleTrigger, slot: datetime, now: datetime
    ) -> None:
        if schedule.action != "deploy":
            self._finish(
                schedule, slot, now, "skipped", f"action {schedule.action!r} is not scheduled"
            )
            return
        try:
            run = await engine.deploy(
                schedule.project,
                schedule.target_env,
                None,
                actor=None,
                trigger=Trigger.SCHEDULE,
                detail={"schedule": schedule.id, "slot": _stamp(slot)},
            )
        except Exception as error:  # noqa: BLE001 - recorded for the operator; the next slot retries
            _log.warning("schedule %s: deploy failed: %s", schedule.id, error)
            self._finish(schedule, slot, now, "failed", f"{type(error).__name__}: {error}")
            return
        self._finish(schedule, slot, now, "success", f"run {run.id} started", run.id)

    def _finish(
        self,
        schedule: model.ScheduleTrigger,
        slot: datetime,
        now: datetime,
        status: str,
        reason: str,
        run_id: str = "",
    ) -> None:
        """Store a fired slot's outcome, and a trigger record like a webhook delivery's."""
        self.store.finish(
            schedule.id, now, status, "" if status == "success" else reason, run_id=run_id
        )
        self.records.add(
            now,
            schedule.id,
            status,
            reason,
            project=schedule.project,
            source="schedule",
            event="schedule",
            delivery_id=f"slot {_stamp(slot)}",
            run_id=run_id,
        )

    def describe(self, schedule: model.ScheduleTrigger) -> dict[str, Any]:
        """A schedule with its next and last run, for the API and the status page."""
        state = self.store.get(schedule.id)
        info: dict[str, Any] = {
            "id": schedule.id,
            "project": schedule.project,
            "name": schedule.name,
            "cron": schedule.cron,
            "timezone": schedule.timezone,
            "action": schedule.action,
            "target_env": schedule.target_env,
            "missed": schedule.missed,
            "enabled": schedule.enabled,
        }
        if state is not None and state.spec == _spec(schedule):
            info.update(state.as_dict())
        else:
            info.update(
                {
                    "last_slot": None,
                    "last_run": None,
                    "last_status": None,
                    "last_error": None,
                    "last_run_id": None,
                }
            )
            try:
                info["next_run"] = _stamp(next_slot(self.clock(), schedule.cron, schedule.timezone))
            except (ValueError, KeyError):
                info["next_run"] = None
        if not schedule.enabled:
            info["next_run"] = None
        return info
