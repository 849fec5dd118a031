"""Where log lines go and how long they stay: ``settings.logs`` of quicflow.yaml, typed.

Pure, no I/O. The schema has checked the shapes; ``LogSettings.from_config`` applies
the defaults and reads sizes and durations::

    settings:
      logs:
        backend: local            # who answers queries: local | victorialogs
        retention: 14d            # the local store deletes lines older than this …
        max_size: 2GiB            # … and the oldest lines past this size
        victoria_logs:            # also ship every line here (both sinks run)
          url: http://victoria-logs:9428
          account_id: "0"         # tenant headers AccountID / ProjectID
          project_id: "0"
          stream_fields: [project, env]
          batch_size: 1000        # lines per request
          flush_interval: 1s      # at most this long before a partial batch is sent
          timeout: 10s
          spool_max_size: 256MiB  # on disk while VictoriaLogs is away; oldest dropped past it

The local store always keeps lines (live following and paging read it); with
``backend: victorialogs`` queries go to VictoriaLogs, which may keep them far longer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from reconciler.durations import parse_duration

DEFAULT_RETENTION = 14 * 86_400.0
DEFAULT_STREAM_FIELDS = ("project", "env")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_size(value: int | str) -> int:
    """Bytes for ``512MiB``, ``2GB``, ``1000``; ValueError for anything else."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"not a size: {value!r} (use e.g. 512MiB, 2GB or a number of bytes)")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "B").lower()])


@dataclass(frozen=True, slots=True)
class VictoriaLogsSettings:
    """Shipping to (and querying) one VictoriaLogs."""

    url: str
    account_id: str = "0"
    project_id: str = "0"
    stream_fields: tuple[str, ...] = DEFAULT_STREAM_FIELDS
    batch_size: int = 1000
    flush_interval: float = 1.0
    timeout: float = 10.0
    spool_max_bytes: int = 256 * 1024**2
    gzip: bool = True

    @property
    def base(self) -> str:
        return self.url.rstrip("/")


@dataclass(frozen=True, slots=True)
class LogSettings:
    """The log sinks and the local store's retention."""

    backend: str = "local"
    retention: float = DEFAULT_RETENTION  # seconds
    max_bytes: int | None = None
    victorialogs: VictoriaLogsSettings | None = None

    @classmethod
    def from_config(cls, raw: Mapping[str, Any] | None) -> LogSettings:
        """The settings of ``settings.logs`` (ValueError naming a field the schema let by)."""
        raw = raw or {}
        backend = str(raw.get("backend", "local"))
        vl_raw = raw.get("victoria_logs")
        victorialogs = _victorialogs(vl_raw) if vl_raw else None
        if backend == "victorialogs" and victorialogs is None:
            raise ValueError(
                "settings.logs.backend is victorialogs but settings.logs.victoria_logs.url is not set"
            )
        try:
            max_bytes = parse_size(raw["max_size"]) if raw.get("max_size") is not None else None
        except ValueError as exc:
            raise ValueError(f"settings.logs.max_size: {exc}") from None
        retention = parse_duration(raw.get("retention"), DEFAULT_RETENTION)
        return cls(backend, retention or DEFAULT_RETENTION, max_bytes, victorialogs)


def _victorialogs(raw: Mapping[str, Any]) -> VictoriaLogsSettings:
    def seconds(name: str, default: float) -> float:
        value = parse_duration(raw.get(name), default)
        return default if value is None else value

    fields: Sequence[str] = raw.get("stream_fields") or DEFAULT_STREAM_FIELDS
    try:
        spool = parse_size(raw.get("spool_max_size", 256 * 1024**2))
    except ValueError as exc:
        raise ValueError(f"settings.logs.victoria_logs.spool_max_size: {exc}") from None
    return VictoriaLogsSettings(
        url=str(raw["url"]),
        account_id=str(raw.get("account_id", "0")),
        project_id=str(raw.get("project_id", "0")),
        stream_fields=tuple(fields),
        batch_size=int(raw.get("batch_size", 1000)),
        flush_interval=seconds("flush_interval", 1.0),
        timeout=seconds("timeout", 10.0),
        spool_max_bytes=spool,
        gzip=bool(raw.get("gzip", True)),
    )
