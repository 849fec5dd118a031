"""Schedule state in the operational store: the ``schedules`` table.

Per schedule id: the newest slot already handled (``last_slot``), the next slot
(``next_run``), when it last fired and how that went. Times are stored in one fixed UTC
format (``stamp``), so slots compare correctly as strings in SQL; that comparison is
what makes ``claim`` atomic: of several schedulers sharing the database, only the one
whose conditional update changed the row has the slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from reconciler.store import database, paging, rows

_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_SCHEDULES = paging.Query("schedules")


def stamp(at: datetime) -> str:
    """``at`` as the stored UTC text."""
    return at.astimezone(UTC).strftime(_FORMAT)


def parse_stamp(text: str) -> datetime:
    """A stored UTC text as an aware datetime."""
    return datetime.strptime(text, _FORMAT).replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class ScheduleState:
    """What the store knows about one schedule (times as UTC ISO strings, '' if none)."""

    id: str
    spec: str
    last_slot: str
    next_run: str
    last_run: str
    last_status: str
    last_error: str
    last_run_id: str

    def as_dict(self) -> dict[str, str | None]:
        """The state as the API shows it."""
        return {
            "last_slot": self.last_slot or None,
            "next_run": self.next_run or None,
            "last_run": self.last_run or None,
            "last_status": self.last_status or None,
            "last_error": self.last_error or None,
            "last_run_id": self.last_run_id or None,
        }


class ScheduleStore:
    """The ``schedules`` table: slots claimed, next and last runs, outcomes."""

    def __init__(self, db: database.Database):
        self.db = db

    def get(self, schedule_id: str) -> ScheduleState | None:
        """The state of one schedule, if it was ever seen."""
        row = _SCHEDULES.equal("id", schedule_id).first(self.db)
        return _state(row) if row else None

    def all(self) -> dict[str, ScheduleState]:
        """Every stored schedule state by id."""
        return {r["id"]: _state(r) for r in _SCHEDULES.rows(self.db)}

    def baseline(self, schedule_id: str, spec: str, slot: datetime, next_run: datetime) -> None:
        """Start (or restart, after a cron change) a schedule at ``slot`` without firing it."""
        self.db.execute(
            "INSERT INTO schedules (id, spec, last_slot, next_run) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET spec = excluded.spec, last_slot = excluded.last_slot,"
            " next_run = excluded.next_run WHERE schedules.spec != excluded.spec",
            (schedule_id, spec, stamp(slot), stamp(next_run)),
        )

    def claim(self, schedule_id: str, spec: str, slot: datetime, next_run: datetime) -> bool:
        """Atomically take ``slot``; True for exactly one caller per slot."""
        changed = self.db.execute(
            "UPDATE schedules SET last_slot = ?, next_run = ? WHERE id = ? AND spec = ? AND last_slot < ?",
            (stamp(slot), stamp(next_run), schedule_id, spec, stamp(slot)),
        )
        return changed == 1

    def set_next(self, schedule_id: str, next_run: datetime) -> None:
        """Store when the schedule fires next."""
        self.db.execute(
            "UPDATE schedules SET next_run = ? WHERE id = ?", (stamp(next_run), schedule_id)
        )

    def finish(
        self, schedule_id: str, at: datetime, status: str, error: str = "", run_id: str = ""
    ) -> None:
        """Record the outcome of a claimed slot; only a slot that ran moves ``last_run``."""
        if status == "skipped":
            self.db.execute(
                "UPDATE schedules SET last_status = ?, last_error = ? WHERE id = ?",
                (status, error, schedule_id),
            )
            return
        self.db.execute(
            "UPDATE schedules SET last_run = ?, last_status = ?, last_error = ?, last_run_id = ? WHERE id = ?",
            (stamp(at), status, error, run_id, schedule_id),
        )


def _state(row: database.Row) -> ScheduleState:
    return rows.into(ScheduleState, row)
