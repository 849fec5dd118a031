"""Deployment history kept in Git: the state ref and notes.

- ``refs/quicflow/state``: one commit per finished run. Its tree holds one JSON file per
  project/environment (``<project>/<env>.json``, under the config subdirectory's path
  when the config lives in a subdirectory). ``version`` in a file only ever names a
  release that fully succeeded; failed attempts and pins are recorded beside it.
- ``refs/notes/quicflow``: each run's outcome as a line of the note on the config commit
  it applied, so ``git log --notes=quicflow`` shows what each change did.

Both are pushed to the config repo's remote when one is configured (``push=True``) and
fetched explicitly by readers; reading the state ref is how the planner learns what is
deployed. A fetch never loses what was recorded here and not pushed yet
(``GitRepository.integrate_history``): with ``push_history: false`` every record stays
local on top of origin's, and a push that failed is retried at every poll
(``push_pending``) until origin has it. ``status`` says how far behind origin is and why.

The state ref moves by compare-and-set: a batch is built on the state commit it read
and the ref moves only if it still points there. When another writer moved it first
(a second reconciler recording another environment), the batch is built again on the
new state and tried again. Pushes are fast-forwards only: when origin's state moved on,
origin's history is fetched and what origin lacks is replayed on top of it — origin's
records are never overwritten — and a push that still cannot land is reported in
``push_error``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from reconciler.errors import SourceError
from reconciler.gitops.planning import Attempt, DeployedRecord, Pin
from reconciler.gitops.repository import (
    NOTES_REF,
    STATE_REF,
    CommitInfo,
    GitRepository,
    PushRefused,
    PushRejected,
    RefMoved,
)

_log = logging.getLogger(__name__)
FORMAT = 1
SUCCEEDED = "succeeded"
#: How often a batch is rebuilt on a state ref another writer moved, here or on origin.
ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """What a finished run did, as history records it."""

    run_id: str
    project: str
    env: str
    config_commit: str
    version: str
    config_hash: str
    outcome: str  # succeeded | failed | rolled_back | cancelled | interrupted | pinned
    strategy: str = ""
    trigger: str = ""
    started_at: str = ""
    finished_at: str = ""
    image_digest: str | None = None
    targets: tuple[str, ...] = ()
    previous_version: str | None = None
    error: str = ""
    forced: bool = False
    pin: Pin | None = None
    color: str | None = None  # blue-green: the color it switched traffic to (None: did not)
    actor: str = ""  # who asked (a manual deploy, a force, a pin, a rollback); '' the system
    decisions: tuple[str, ...] = ()  # who decided its gates: "approved approval:qa by bob"
    recorded_again: bool = False  # the state ref had lost this run's record


@dataclass(frozen=True, slots=True)
class HistoryStatus:
    """Whether this reconciler's history reached origin: for the log, the page and /readyz."""

    pushing: bool  # push_history is on and there is a remote
    unpushed: int  # state commits origin lacks (recorded here only)
    push_error: str | None  # why the last push failed (None: it did not)
    failed_pushes: int  # pushes failed in a row (0 after one that worked)
    conflicts: tuple[str, ...] = ()  # environments origin and we both recorded (ours kept)

    @property
    def healthy(self) -> bool:
        """Nothing recorded here is missing on origin (or nothing is meant to be pushed)."""
        return not self.pushing or (self.push_error is None and self.unpushed == 0)

    @property
    def problem(self) -> str:
        """What an operator must know, in one sentence ('' when healthy)."""
        if self.healthy:
            return ""
        runs = f"{self.unpushed} run record{'s' if self.unpushed != 1 else ''}"
        why = f": {self.push_error}" if self.push_error else ""
        return f"{runs} not pushed to origin (tried {self.failed_pushes} times){why}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "pushing": self.pushing,
            "unpushed": self.unpushed,
            "push_error": self.push_error,
            "failed_pushes": self.failed_pushes,
            "conflicts": list(self.conflicts),
            "healthy": self.healthy,
        }


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One state commit that changed a project/environment, with the record it wrote."""

    commit: CommitInfo
    record: DeployedRecord | None


@dataclass(slots=True)
class _Cache:
    commit: str | None = None
    records: dict[tuple[str, str], DeployedRecord] = field(default_factory=dict)
    trees: dict[str, dict[tuple[str, str], DeployedRecord]] = field(default_factory=dict)


class History:
    """Reads and writes the deployment history of one config repo."""

    def __init__(self, repo: GitRepository, push: bool = False):
        self.repo = repo
        self.push = push
        self.push_error: str | None = None
        self.failed_pushes = 0
        self._cache = _Cache()

    # -- reading -----------------------------------------------------------------

    def state_commit(self) -> str | None:
        return self.repo.ref_target(STATE_REF)

    def deployed(self) -> tuple[str | None, dict[tuple[str, str], DeployedRecord]]:
        """(state commit, records) — reused while the state ref has not moved."""
        head = self.state_commit()
        cache = self._cache  # one snapshot: another thread may replace it meanwhile
        if head == cache.commit and head is not None:
            return head, cache.records
        records: dict[tuple[str, str], DeployedRecord] = {}
        trees: dict[str, dict[tuple[str, str], DeployedRecord]] = {}
        root = self._state_root(head) if head else None
        if root is not None:
            for project in self.repo.entries(root):
                if not project.is_tree:
                    continue
                # One subtree per project: unchanged projects reuse their parsed records.
                found = cache.trees.get(project.id)
                if found is None:
                    found = {}
                    for entry in self.repo.entries(project.id):
                        if entry.name.endswith(".json") and not entry.is_tree:
                            record = parse_record(self.repo.blob(entry.id))
                            if record is not None:
                                found[record.key] = record
                trees[project.id] = found
                records.update(found)
        self._cache = _Cache(head, records, trees)
        return head, records

    def record(self, project: str, env: str) -> DeployedRecord | None:
        return self.deployed()[1].get((project, env))

    def entries(self, project: str, env: str, limit: int | None = 50) -> Iterator[HistoryEntry]:
        """State commits that changed ``project/env``, newest first."""
        for commit, data in self.repo.file_history(STATE_REF, self._path(project, env), limit):
            yield HistoryEntry(commit, parse_record(data) if data is not None else None)

    def note(self, config_commit: str) -> str | None:
        return self.repo.read_note(config_commit, NOTES_REF)

    # -- writing -----------------------------------------------------------------

    def record_run(self, outcome: RunOutcome) -> str:
        """Write the run's state commit and note; push both when configured. Returns the state commit."""
        return self.record_runs([outcome])[0]

    def record_runs(self, outcomes: Sequence[RunOutcome]) -> list[str]:
        """Record finished runs in order: one state commit each, one ref update and one note
        write per config commit for the whole batch; push once. Returns the state commits."""
        with self.repo.lock:
            return self._record_and_push(outcomes)

    def _record_and_push(self, outcomes: Sequence[RunOutcome]) -> list[str]:
        state_commits = self._commit_locally(outcomes)
        if not self.push:
            return state_commits
        rewritten = self._push(f"{len(outcomes)} run(s)")
        return [rewritten.get(commit, commit) for commit in state_commits]

    def push_pending(self) -> bool:
        """Push what was recorded here and origin lacks (a failed push, retried at every
        poll); whether origin has everything now. Nothing to do when not pushing."""
        if not self.push or not self.repo.has_remote:
            return True
        with self.repo.lock:
            waiting = self.repo.unpushed(STATE_REF) + self.repo.unpushed(NOTES_REF)
            if not waiting and self.push_error is None:
                return True
            _log.info("pushing history recorded here that origin lacks (%d commits)", waiting)
            self._push("earlier run(s)")
        return self.push_error is None

    def _push(self, what: str) -> dict[str, str]:
        """Push the state ref and notes; on a refusal because origin moved on, take origin's
        history (ours replayed on top) and push again. The state commits it rewrote."""
        rewritten: dict[str, str] = {}
        for attempt in range(1, ATTEMPTS + 1):
            try:
                self.repo.push_history()
                if self.push_error is not None:
                    _log.warning(
                        "history pushed to origin again after %d failed pushes", self.failed_pushes
                    )
                self.push_error = None
                self.failed_pushes = 0
                return rewritten
            except PushRefused as exc:
                # Origin declined (a hook, a protected ref): pushing again now changes nothing.
                self.push_error = f"{exc} (kept here, pushed again at the next poll)"
                break
            except PushRejected as exc:
                # Origin's history moved on (another reconciler recorded there): take it and
                # replay ours on top, never overwrite it.
                _log.warning(
                    "origin's history moved on; recording %s on top of it (%d/%d): %s",
                    what,
                    attempt,
                    ATTEMPTS,
                    exc,
                )
                self.push_error = f"{exc} (origin's history was not overwritten)"
                try:
                    self.repo.fetch_history()
                except SourceError as fetch_error:
                    self.push_error = str(fetch_error)
                    break
                integrated = self.repo.integrations.get(STATE_REF)
                moved = dict(integrated.rewritten or {}) if integrated is not None else {}
                rewritten = {old: moved.get(new, new) for old, new in rewritten.items()}
                rewritten.update({old: new for old, new in moved.items() if old not in rewritten})
            except SourceError as exc:
                # Recorded locally all the same; pushed again at the next poll.
                self.push_error = str(exc)
                break
        self.failed_pushes += 1
        _log.warning("%s recorded in Git, but not pushed: %s", what, self.push_error)
        return rewritten

    def status(self) -> HistoryStatus:
        """Whether what this reconciler recorded reached origin (no network: as last seen)."""
        pushing = self.push and self.repo.has_remote
        integrated = self.repo.integrations.get(STATE_REF)
        return HistoryStatus(
            pushing=pushing,
            unpushed=self.repo.unpushed(STATE_REF) if pushing else 0,
            push_error=self.push_error if pushing else None,
            failed_pushes=self.failed_pushes,
            conflicts=integrated.conflicts if integrated is not None else (),
        )

    def _commit_locally(self, outcomes: Sequence[RunOutcome]) -> list[str]:
        """Write the batch on the state ref by compare-and-set (rebuilt when it moved) and
        add its note lines; the state commits."""
        for attempt in range(1, ATTEMPTS + 1):
            head, records = self.deployed()
            current = dict(records)
            changes: list[tuple[dict[str, bytes | None], str]] = []
            lines: dict[str, list[str]] = {}
            for outcome in outcomes:
                key = (outcome.project, outcome.env)
                previous = current.get(key)
                current[key] = next_record(previous, outcome)
                changes.append(
                    (
                        {self._path(outcome.project, outcome.env): render_record(current[key])},
                        _commit_message(outcome, previous),
                    )
                )
                lines.setdefault(outcome.config_commit, []).append(note_line(outcome, previous))
            try:
                state_commits = self.repo.commit_chain(STATE_REF, changes, base=head)
                break
            except RefMoved:
                # Another writer recorded first: read its state and build the batch on it.
                if attempt == ATTEMPTS:
                    raise
                time.sleep(0.05 * attempt)
        for config_commit, new_lines in lines.items():
            self._add_note_lines(config_commit, new_lines)
        return state_commits

    def _add_note_lines(self, config_commit: str, new_lines: Sequence[str]) -> None:
        """Append ``new_lines`` to the config commit's note, re-reading it when another
        writer changed the notes at the same moment (its lines are kept)."""
        for attempt in range(1, ATTEMPTS + 1):
            # The note is read at the notes commit the write is built on: a note another
            # writer adds in between makes the write fail, and it is read again.
            tip = self.repo.ref_target(NOTES_REF)
            existing = (self.repo.read_note(config_commit, at=tip) or "").rstrip("\n")
            have = existing.splitlines() if existing else []
            fresh = [line for line in new_lines if line not in have]
            if not fresh:
                return
            try:
                self.repo.write_note(config_commit, "\n".join(have + fresh) + "\n", base=tip)
                return
            except RefMoved:
                if attempt == ATTEMPTS:
                    raise
                time.sleep(0.05 * attempt)

    # -- paths -------------------------------------------------------------------

    def _path(self, project: str, env: str) -> str:
        prefix = f"{self.repo.subdir}/" if self.repo.subdir else ""
        return f"{prefix}{project}/{env}.json"

    def _state_root(self, commit: str) -> str | None:
        root = self.repo.root_tree_of_commit(commit)
        for part in [p for p in self.repo.subdir.split("/") if p]:
            entry = {e.name: e for e in self.repo.entries(root)}.get(part)
            if entry is None or not entry.is_tree:
                return None
            root = entry.id
        return root


def next_record(previous: DeployedRecord | None, outcome: RunOutcome) -> DeployedRecord:
    """The state file after ``outcome``: only a success (or a pin) changes the version."""
    if outcome.outcome == SUCCEEDED or outcome.pin is not None:
        return DeployedRecord(
            project=outcome.project,
            env=outcome.env,
            version=outcome.version,
            config_hash=outcome.config_hash,
            config_commit=outcome.config_commit,
            image_digest=outcome.image_digest,
            strategy=outcome.strategy,
            outcome=outcome.outcome,
            run_id=outcome.run_id,
            started_at=outcome.started_at,
            finished_at=outcome.finished_at,
            targets=outcome.targets,
            last_failure=None,
            pin=outcome.pin,
            color=outcome.color,
        )
    base = previous or DeployedRecord(outcome.project, outcome.env, None)
    failure = Attempt(outcome.version, outcome.config_hash, outcome.outcome, outcome.run_id)
    return DeployedRecord(
        project=base.project,
        env=base.env,
        version=base.version,
        config_hash=base.config_hash,
        config_commit=base.config_commit,
        image_digest=base.image_digest,
        strategy=base.strategy,
        outcome=base.outcome,
        run_id=base.run_id,
        started_at=base.started_at,
        finished_at=base.finished_at,
        targets=base.targets,
        last_failure=failure,
        pin=base.pin,
        # A failed run that switched traffic (then rolled back in place) names the color
        # serving now; one that never switched left the old color serving.
        color=outcome.color or base.color,
    )


def render_record(record: DeployedRecord) -> bytes:
    """The state file's bytes: stable, sorted JSON."""
    data: dict[str, Any] = {
        "format": FORMAT,
        "project": record.project,
        "environment": record.env,
        "version": record.version,
        "config_hash": record.config_hash,
        "config_commit": record.config_commit,
        "image_digest": record.image_digest,
        "strategy": record.strategy,
        "outcome": record.outcome,
        "run_id": record.run_id,
        "started_at": record.started_at,
        "finished_at": record.finished_at,
        "targets": list(record.targets),
        "last_failure": None
        if record.last_failure is None
        else {
            "version": record.last_failure.version,
            "config_hash": record.last_failure.config_hash,
            "outcome": record.last_failure.outcome,
            "run_id": record.last_failure.run_id,
        },
        "pin": None
        if record.pin is None
        else {
            "version": record.pin.version,
            "desired_version": record.pin.desired_version,
            "desired_hash": record.pin.desired_hash,
        },
    }
    if record.color is not None:
        # Only blue-green records have it: the others' files stay byte for byte as they were.
        data["color"] = record.color
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def parse_record(data: bytes) -> DeployedRecord | None:
    """A state file's record; None for a file this version cannot read."""
    try:
        raw: Mapping[str, Any] = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        return None
    failure = raw.get("last_failure")
    pin = raw.get("pin")
    return DeployedRecord(
        project=raw["project"],
        env=raw["environment"],
        version=raw.get("version"),
        config_hash=raw.get("config_hash", ""),
        config_commit=raw.get("config_commit", ""),
        image_digest=raw.get("image_digest"),
        strategy=raw.get("strategy", ""),
        outcome=raw.get("outcome", ""),
        run_id=raw.get("run_id", ""),
        started_at=raw.get("started_at", ""),
        finished_at=raw.get("finished_at", ""),
        targets=tuple(raw.get("targets", ())),
        last_failure=Attempt(
            failure["version"],
            failure["config_hash"],
            failure["outcome"],
            failure.get("run_id", ""),
        )
        if failure
        else None,
        pin=Pin(pin["version"], pin["desired_version"], pin["desired_hash"]) if pin else None,
        color=raw.get("color") or None,
    )


def note_line(outcome: RunOutcome, previous: DeployedRecord | None) -> str:
    """One line of the note on the config commit: what this run did."""
    before = (previous.version if previous else None) or "nothing"
    extra = []
    if outcome.strategy:
        extra.append(outcome.strategy)
    if outcome.targets:
        extra.append(f"{len(outcome.targets)} target{'s' if len(outcome.targets) != 1 else ''}")
    if outcome.trigger:
        extra.append(f"trigger {outcome.trigger}")
    if outcome.actor:
        extra.append(f"by {outcome.actor}")
    if outcome.forced:
        extra.append("forced outside release window")
    if outcome.pin is not None:
        extra.append(f"pinned to {outcome.pin.version}")
    extra.extend(outcome.decisions)
    if outcome.error:
        extra.append(f"error: {outcome.error.splitlines()[0][:200]}")
    return (
        f"quicflow run {outcome.run_id}: {outcome.project}/{outcome.env} {before} -> {outcome.version} "
        f"{outcome.outcome} at {outcome.finished_at} ({'; '.join(extra)})"
    )


def _commit_message(outcome: RunOutcome, previous: DeployedRecord | None) -> str:
    before = (previous.version if previous else None) or "nothing"
    lines = [
        f"{outcome.project}/{outcome.env}: {before} -> {outcome.version} {outcome.outcome}",
        "",
        f"Run: {outcome.run_id}",
        f"Config-Commit: {outcome.config_commit}",
        f"Trigger: {outcome.trigger or 'unknown'}",
        f"Strategy: {outcome.strategy}",
    ]
    if outcome.actor:
        lines.append(f"Actor: {outcome.actor}")
    lines.extend(f"Decision: {decision}" for decision in outcome.decisions)
    if outcome.forced:
        lines.append("Forced: outside release window")
    if outcome.pin is not None:
        lines.append(f"Pinned: {outcome.pin.version} until the environment changes in Git")
    if outcome.recorded_again:
        lines.append("Recorded-Again: the state ref had lost this run's record; not redeployed")
    if outcome.error:
        lines.append(f"Error: {outcome.error.splitlines()[0][:500]}")
    return "\n".join(lines) + "\n"
