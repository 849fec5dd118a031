"""Keeping the log store in shape in the background: index, retention, sinks.

``LogUpkeep.run`` is one task beside the server. Every ``index_every`` seconds it
brings the local store's text index up to date in small batches (a search never waits
for it: lines the index has not taken in yet are scanned); every ``prune_every``
seconds it deletes lines older than ``settings.logs.retention`` and then the oldest
lines past ``max_size``, a batch at a time so writers are never held long. It also
(re)configures the sinks whenever the config repo's ``settings.logs`` change: a
VictoriaLogs sink is started when ``victoria_logs`` is set and
``features.victoria_logs`` is true, and stopped (its queue spooled) when it no longer is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from reconciler.log.settings import LogSettings
from reconciler.log.store import LogStore
from reconciler.log.victorialogs import VictoriaLogsSink

_log = logging.getLogger(__name__)
INDEX_BATCH = 500
PRUNE_BATCH = 5000
#: What the config repo says: (``settings.logs``, ``features.victoria_logs``), or None
#: while no valid desired state is loaded.
SettingsSource = Callable[[], tuple[Mapping[str, Any], bool] | None]


class LogUpkeep:
    """Index, retention and sink configuration of one LogStore."""

    def __init__(
        self,
        logs: LogStore,
        spool_dir: Path,
        settings: SettingsSource | None = None,
        *,
        clock: Callable[[], int] = time.time_ns,
        index_every: float = 0.5,
        prune_every: float = 60.0,
    ):
        self.logs = logs
        self.spool_dir = Path(spool_dir)
        self.source = settings
        self.clock = clock
        self.index_every = index_every
        self.prune_every = prune_every
        self.pruned = 0
        self._applied: tuple[Any, ...] | None = None

    @property
    def victorialogs(self) -> VictoriaLogsSink | None:
        """The VictoriaLogs sink running now, if any."""
        for sink in self.logs.sinks:
            if isinstance(sink, VictoriaLogsSink):
                return sink
        return None

    async def apply(self, raw: Mapping[str, Any], victoria_enabled: bool) -> None:
        """Use these settings from now on (starting or stopping the VictoriaLogs sink)."""
        key = (repr(sorted(raw.items(), key=lambda kv: kv[0])), victoria_enabled)
        if key == self._applied:
            return
        self._applied = key
        try:
            settings = LogSettings.from_config(raw)
        except ValueError as exc:
            _log.error("log settings not applied: %s", exc)
            return
        wanted = settings.victorialogs if victoria_enabled else None
        if settings.victorialogs is not None and not victoria_enabled:
            _log.warning(
                "settings.logs.victoria_logs is set but features.victoria_logs is false: "
                "lines are not shipped to VictoriaLogs"
            )
        if settings.backend == "victorialogs" and wanted is None:
            settings = LogSettings("local", settings.retention, settings.max_bytes, None)
        current = self.victorialogs
        if current is not None and (wanted is None or current.settings != wanted):
            self.logs.sinks.remove(current)
            await current.close()
            current = None
        if wanted is not None and current is None:
            sink = VictoriaLogsSink(wanted, self.spool_dir / "victorialogs")
            sink.start()
            self.logs.sinks.append(sink)
            _log.info("shipping log lines to VictoriaLogs at %s", wanted.base)
        self.logs.settings = settings

    def index(self) -> int:
        """Bring the text index up to date; how many lines it took in."""
        total = 0
        while True:
            count = self.logs.lines.index(INDEX_BATCH)
            total += count
            if count < INDEX_BATCH:
                return total

    def prune(self) -> int:
        """Delete what retention says is due; how many lines."""
        settings = self.logs.settings
        cutoff = self.clock() - int(settings.retention * 1_000_000_000)
        deleted = 0
        while (count := self.logs.lines.prune_before(cutoff, PRUNE_BATCH)) > 0:
            deleted += count
        if settings.max_bytes is not None:
            while True:
                _, used = self.logs.lines.usage()
                count = self.logs.lines.prune_oldest(used - settings.max_bytes, PRUNE_BATCH)
                if count == 0:
                    break
                deleted += count
        self.pruned += deleted
        if deleted:
            _log.info("log retention deleted %d lines", deleted)
        return deleted

    async def refresh(self) -> None:
        """Apply the config repo's settings if they changed."""
        found = self.source() if self.source is not None else None
        if found is not None:
            await self.apply(*found)

    async def run(self, stop: asyncio.Event) -> None:
        """Index, prune and follow the settings until ``stop`` is set; then close the sinks."""
        last_prune = 0.0
        try:
            while not stop.is_set():
                try:
                    await self.refresh()
                    while self.logs.lines.index(INDEX_BATCH) == INDEX_BATCH:
                        await asyncio.sleep(0)  # writers go between batches
                    if time.monotonic() - last_prune >= self.prune_every:
                        last_prune = time.monotonic()
                        self.prune()
                except Exception:  # noqa: BLE001 - the store may be away for a moment
                    _log.exception("log upkeep failed; trying again")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.index_every)
        finally:
            await self.logs.close()
