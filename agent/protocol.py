"""The QUIC-Flow wire protocol spoken between the hub and its agents (version 1).

Both sides import this module: the agent directly, the hub from ``reconciler.hub``.  It is
pure data and encoding -- no I/O, no aioquic -- so it can be tested on its own.

Encoding
--------
Every QUIC stream carries a sequence of frames.  A frame is a fixed 10-byte header followed
by a JSON object ("meta") and an opaque byte payload ("data")::

    offset  size  field
    0       1     version      protocol version, currently 1; a peer refuses other versions
    1       1     kind         a ``FrameKind`` value
    2       4     meta_length  big-endian length of the meta JSON (at most 1 MiB)
    6       4     data_length  big-endian length of the payload (at most 16 MiB)
    10      M     meta         UTF-8 JSON object; fields per kind below
    10+M    D     data         raw bytes: output chunk bytes, exec stdin; empty otherwise

Binary payloads travel raw (never base64) so that live output costs one copy per hop.

Streams
-------
- The agent opens the first client-initiated bidirectional stream, the *control stream*:
  ``HELLO`` -> ``WELCOME`` or ``ERROR`` (then the hub closes the connection); afterwards
  ``HEARTBEAT`` from the agent, ``STATUS`` from the agent and ``CANCEL`` from the hub.
  The hub answers each heartbeat with one of its own unless the HELLO said
  ``answer_heartbeats: false``: then the QUIC ACK of the heartbeat is the answer (both
  ends count any packet the peer sent as a sign of life), which spares the hub a frame
  and the agent's ACK of it -- a third of the hub's packets on an idle fleet.
- The hub opens one bidirectional stream per command: ``EXEC`` or ``GIT_PULL`` (carrying
  ``command_id``, ``resume_seq`` and ``attach_only``); the agent answers with ``OUTPUT``
  frames (``seq`` counts from 0 per command, ``stream`` is ``stdout`` or ``stderr``) and one
  ``EXIT`` frame, then ends the stream.  The hub acknowledges output with ``ACK`` frames
  (``seq`` = highest seq received); the agent keeps unacknowledged chunks (a bounded
  window) and stops reading the command's pipes while the window is full -- that is the
  flow control, and it lets a re-attached command replay what the hub never received.
- Command ids give exactly-once effect: an ``EXEC`` whose id the agent already knows
  re-attaches to the running command or returns the stored result; ``attach_only`` asks
  the agent never to start the command (used by the hub after a reconnect).

Meta fields by kind
-------------------
HELLO      version, name, token, labels{}, hostname, os, agent_version, heartbeat,
           instance (random per agent process: the same agent on a new connection),
           answer_heartbeats (optional, default true)
WELCOME    hub_version, heartbeat
HEARTBEAT  time
EXEC       command_id, argv[] | script, env{}, cwd, timeout, deploy_type, resume_seq,
           attach_only, cancel (data = stdin, has_stdin)
GIT_PULL   command_id, repo_url, ref, directory, restart_script, env{}, timeout,
           resume_seq, attach_only, cancel
OUTPUT     seq, stream (data = output bytes)
ACK        seq
EXIT       command_id, exit_code, signal, duration, timed_out, cancelled, error
CANCEL     command_id
STATUS     time, processes[{name,pid,state,cpu_percent,memory_bytes,started}],
           containers[{name,id,image,digest,state,health,started,cpu_percent,
           memory_bytes,labels{}}], processes_omitted, containers_omitted, notes[]
           (at most ``MAX_STATUS_ENTRIES`` of each list; fields added after the
           first release are optional, so either side may be the older one)
ERROR      reason, code ("auth", "protocol", "revoked", "replaced", "duplicate", "shutdown")

``cwd`` of EXEC and ``directory`` of GIT_PULL are relative to the agent's work root (or
absolute inside it); ``deploy_type`` says what the command is for (``script`` -- shell
written in the config repo --, ``git_pull``, ``container``), and an agent may accept only
some (``DEPLOY_TYPES``).  GIT_PULL is always ``git_pull``.
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

_T = TypeVar("_T")

VERSION = 1
ALPN = "quicflow/1"
HEADER = struct.Struct(">BBII")
MAX_META = 1 << 20
MAX_DATA = 16 << 20
# Output is cut into chunks of at most this many bytes: large enough to amortise frame
# overhead, small enough that one command cannot hog a connection.
MAX_CHUNK = 64 * 1024
# Processes and containers per STATUS report: the hub keeps every agent's latest report
# in memory, so a host running hundreds of containers must not cost it hundreds of KB.
MAX_STATUS_ENTRIES = 50
# What an EXEC may be for.  ``script`` is shell from the config repo; the others are the
# fixed programs of their deploy type, with config values only in the environment.
DEPLOY_TYPES = ("script", "git_pull", "container")
# Error codes after which retrying with the same token cannot succeed.
PERMANENT_REFUSALS = frozenset({"auth", "revoked"})
# The QUIC application error code of the hub's close when too many connections from one
# address are still to say HELLO: come back later, nothing is wrong with this agent.
CLOSE_BUSY = 0x207


class ProtocolError(Exception):
    """The peer sent something that is not a valid version-1 frame."""


class FrameKind(enum.IntEnum):
    """Message kinds of protocol version 1."""

    HELLO = 1
    WELCOME = 2
    HEARTBEAT = 3
    EXEC = 4
    GIT_PULL = 5
    OUTPUT = 6
    ACK = 7
    EXIT = 8
    CANCEL = 9
    STATUS = 10
    ERROR = 11


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame: its kind, JSON meta and raw payload."""

    kind: FrameKind
    meta: Mapping[str, Any]
    data: bytes = b""


def encode(kind: FrameKind, meta: Mapping[str, Any], data: bytes = b"") -> bytes:
    """Encode one frame (header, meta JSON, payload) as bytes."""
    meta_bytes = json.dumps(meta, separators=(",", ":")).encode()
    if len(meta_bytes) > MAX_META or len(data) > MAX_DATA:
        raise ProtocolError(f"frame too large: meta {len(meta_bytes)} B, data {len(data)} B")
    return b"".join((HEADER.pack(VERSION, kind, len(meta_bytes), len(data)), meta_bytes, data))


class FrameDecoder:
    """Incremental decoder: feed it stream bytes as they arrive, get whole frames back."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> list[Frame]:
        """Add received bytes; return every frame now complete (possibly none)."""
        buffer = self._buffer
        buffer += chunk
        frames: list[Frame] = []
        offset = 0
        while len(buffer) - offset >= HEADER.size:
            version, kind, meta_length, data_length = HEADER.unpack_from(buffer, offset)
            if version != VERSION:
                raise ProtocolError(f"unsupported protocol version {version} (we speak {VERSION})")
            if meta_length > MAX_META or data_length > MAX_DATA:
                raise ProtocolError("frame exceeds the size limits")
            end = offset + HEADER.size + meta_length + data_length
            if len(buffer) < end:
                break
            meta_start = offset + HEADER.size
            try:
                frame_kind = FrameKind(kind)
                meta = json.loads(bytes(buffer[meta_start : meta_start + meta_length]))
            except (ValueError, UnicodeDecodeError) as error:
                raise ProtocolError(f"undecodable frame: {error}") from error
            if not isinstance(meta, dict):
                raise ProtocolError("frame meta is not a JSON object")
            frames.append(Frame(frame_kind, meta, bytes(buffer[meta_start + meta_length : end])))
            offset = end
        if offset:
            del buffer[:offset]
        return frames

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buffer)


# --- commands and results -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExecRequest:
    """Run a program (``argv``) or a shell script (``script``, run as ``/bin/sh -c``)."""

    command_id: str
    argv: Sequence[str] | None = None
    script: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    timeout: float | None = None
    stdin: bytes | None = None
    deploy_type: str = "script"

    def __post_init__(self) -> None:
        if not self.command_id:
            raise ValueError("command_id must not be empty")
        if self.deploy_type not in DEPLOY_TYPES:
            raise ValueError(
                f"unknown deploy_type {self.deploy_type!r}: one of {', '.join(DEPLOY_TYPES)}"
            )
        if (self.argv is None) == (self.script is None):
            raise ValueError("give exactly one of argv or script")
        if self.argv is not None:
            if isinstance(self.argv, str) or not self.argv:
                raise ValueError("argv must be a non-empty list of strings")
            object.__setattr__(self, "argv", tuple(self.argv))
        object.__setattr__(self, "env", dict(self.env))


@dataclass(frozen=True, slots=True)
class GitPullRequest:
    """Fetch ``ref`` of ``repo_url`` into ``directory``, check it out, then run ``restart_script``."""

    command_id: str
    repo_url: str
    ref: str
    directory: str
    restart_script: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    timeout: float | None = None

    def __post_init__(self) -> None:
        if not self.command_id:
            raise ValueError("command_id must not be empty")
        if not self.repo_url or not self.ref or not self.directory:
            raise ValueError("repo_url, ref and directory are required")
        object.__setattr__(self, "env", dict(self.env))


Request = ExecRequest | GitPullRequest


@dataclass(frozen=True, slots=True)
class ExecResult:
    """How a command ended; ``error`` says why it did not run to an exit code, if so."""

    command_id: str
    exit_code: int | None
    signal: int | None = None
    duration: float = 0.0
    timed_out: bool = False
    cancelled: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the command ran and exited with status 0."""
        return self.exit_code == 0 and self.error is None


@dataclass(frozen=True, slots=True)
class ProcessStatus:
    """One watched process as seen in /proc."""

    name: str
    pid: int | None
    state: str
    cpu_percent: float = 0.0
    memory_bytes: int = 0  # resident set size
    started: float | None = None  # epoch seconds


@dataclass(frozen=True, slots=True)
class ContainerStatus:
    """One container as reported by the local Docker daemon."""

    name: str
    image: str
    digest: str | None  # the local image id, not a registry digest
    state: str
    health: str | None = None
    # The container's quicflow.* labels (project, env, target, image…): drift detection
    # pairs containers with environments by them.
    labels: Mapping[str, str] = field(default_factory=dict)
    id: str = ""  # short (12 hex digits)
    started: float | None = None  # epoch seconds; None when it never ran
    # From the container's cgroup; None where the host does not expose it to the agent.
    cpu_percent: float | None = None
    memory_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class StatusReport:
    """An agent's host status at one moment."""

    time: float
    processes: tuple[ProcessStatus, ...] = ()
    containers: tuple[ContainerStatus, ...] = ()
    notes: tuple[str, ...] = ()
    # How many more were found than the report lists (``MAX_STATUS_ENTRIES``).
    processes_omitted: int = 0
    containers_omitted: int = 0


@dataclass(frozen=True, slots=True)
class Hello:
    """The agent's introduction, sent first on the control stream."""

    name: str
    token: str
    labels: Mapping[str, str]
    hostname: str
    os: str
    agent_version: str
    heartbeat: float
    instance: str = ""
    # False: the QUIC ACK of a heartbeat is answer enough (see "Streams" above).
    answer_heartbeats: bool = True


# --- meta <-> dataclass -----------------------------------------------------------------


def request_frame(
    request: Request, *, resume_seq: int = 0, attach_only: bool = False, cancel: bool = False
) -> bytes:
    """Encode an EXEC or GIT_PULL frame for ``request``."""
    control = {"resume_seq": resume_seq, "attach_only": attach_only, "cancel": cancel}
    if isinstance(request, ExecRequest):
        meta = {
            "command_id": request.command_id,
            "argv": list(request.argv) if request.argv is not None else None,
            "script": request.script,
            "env": dict(request.env),
            "cwd": request.cwd,
            "timeout": request.timeout,
            "deploy_type": request.deploy_type,
            "has_stdin": request.stdin is not None,
            **control,
        }
        return encode(FrameKind.EXEC, meta, request.stdin or b"")
    meta = {
        "command_id": request.command_id,
        "repo_url": request.repo_url,
        "ref": request.ref,
        "directory": request.directory,
        "restart_script": request.restart_script,
        "env": dict(request.env),
        "timeout": request.timeout,
        **control,
    }
    return encode(FrameKind.GIT_PULL, meta)


def request_from_frame(frame: Frame) -> Request:
    """Decode the request carried by an EXEC or GIT_PULL frame."""
    meta = frame.meta
    try:
        if frame.kind is FrameKind.EXEC:
            return ExecRequest(
                command_id=str(meta["command_id"]),
                argv=meta.get("argv"),
                script=meta.get("script"),
                env=_string_map(meta.get("env") or {}),
                cwd=meta.get("cwd"),
                timeout=meta.get("timeout"),
                stdin=frame.data if meta.get("has_stdin") else None,
                deploy_type=str(meta.get("deploy_type") or "script"),
            )
        if frame.kind is FrameKind.GIT_PULL:
            return GitPullRequest(
                command_id=str(meta["command_id"]),
                repo_url=str(meta["repo_url"]),
                ref=str(meta["ref"]),
                directory=str(meta["directory"]),
                restart_script=meta.get("restart_script"),
                env=_string_map(meta.get("env") or {}),
                timeout=meta.get("timeout"),
            )
    except (KeyError, TypeError, ValueError) as error:
        raise ProtocolError(f"bad {frame.kind.name} frame: {error}") from error
    raise ProtocolError(f"{frame.kind.name} is not a command frame")


def result_to_meta(result: ExecResult) -> dict[str, Any]:
    """The EXIT frame meta for ``result``."""
    return {
        "command_id": result.command_id,
        "exit_code": result.exit_code,
        "signal": result.signal,
        "duration": result.duration,
        "timed_out": result.timed_out,
        "cancelled": result.cancelled,
        "error": result.error,
    }


def result_from_meta(meta: Mapping[str, Any]) -> ExecResult:
    """Decode an EXIT frame meta (or a stored result)."""
    try:
        return ExecResult(
            command_id=str(meta["command_id"]),
            exit_code=meta.get("exit_code"),
            signal=meta.get("signal"),
            duration=float(meta.get("duration") or 0.0),
            timed_out=bool(meta.get("timed_out")),
            cancelled=bool(meta.get("cancelled")),
            error=meta.get("error"),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ProtocolError(f"bad EXIT frame: {error}") from error


def hello_to_meta(hello: Hello) -> dict[str, Any]:
    """The HELLO frame meta."""
    return {
        "version": VERSION,
        "name": hello.name,
        "token": hello.token,
        "labels": dict(hello.labels),
        "hostname": hello.hostname,
        "os": hello.os,
        "agent_version": hello.agent_version,
        "heartbeat": hello.heartbeat,
        "instance": hello.instance,
        "answer_heartbeats": hello.answer_heartbeats,
    }


def hello_from_meta(meta: Mapping[str, Any]) -> Hello:
    """Decode a HELLO frame meta."""
    try:
        heartbeat = float(meta.get("heartbeat", 15.0))
        if not 0.05 <= heartbeat <= 3600:
            raise ValueError("heartbeat out of range")
        return Hello(
            name=str(meta["name"]),
            token=str(meta.get("token") or ""),
            labels=_string_map(meta.get("labels") or {}),
            hostname=str(meta.get("hostname") or ""),
            os=str(meta.get("os") or ""),
            agent_version=str(meta.get("agent_version") or ""),
            heartbeat=heartbeat,
            instance=str(meta.get("instance") or ""),
            answer_heartbeats=meta.get("answer_heartbeats", True) is not False,
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ProtocolError(f"bad HELLO frame: {error}") from error


def status_to_meta(report: StatusReport) -> dict[str, Any]:
    """The STATUS frame meta."""
    return {
        "time": report.time,
        "processes": [
            {
                "name": p.name,
                "pid": p.pid,
                "state": p.state,
                "cpu_percent": p.cpu_percent,
                "memory_bytes": p.memory_bytes,
                "started": p.started,
            }
            for p in report.processes
        ],
        "containers": [
            {
                "name": c.name,
                "id": c.id,
                "image": c.image,
                "digest": c.digest,
                "state": c.state,
                "health": c.health,
                "started": c.started,
                "cpu_percent": c.cpu_percent,
                "memory_bytes": c.memory_bytes,
                "labels": dict(c.labels),
            }
            for c in report.containers
        ],
        "processes_omitted": report.processes_omitted,
        "containers_omitted": report.containers_omitted,
        "notes": list(report.notes),
    }


def status_from_meta(meta: Mapping[str, Any]) -> StatusReport:
    """Decode a STATUS frame meta (at most ``MAX_STATUS_ENTRIES`` of each list are kept)."""
    try:
        # An agent of an earlier release lists every container, not only ours, and
        # without a cap: the hub keeps the first entries and counts the rest.
        processes = list(meta.get("processes") or ())
        containers = list(meta.get("containers") or ())
        return StatusReport(
            time=float(meta.get("time") or 0.0),
            processes=tuple(
                ProcessStatus(
                    name=str(p["name"]),
                    pid=None if p.get("pid") is None else int(p["pid"]),
                    state=str(p.get("state") or "unknown"),
                    cpu_percent=float(p.get("cpu_percent") or 0.0),
                    memory_bytes=int(p.get("memory_bytes") or 0),
                    started=_optional(float, p.get("started")),
                )
                for p in processes[:MAX_STATUS_ENTRIES]
            ),
            containers=tuple(
                ContainerStatus(
                    name=str(c["name"]),
                    image=str(c.get("image") or ""),
                    digest=_optional(str, c.get("digest")),
                    state=str(c.get("state") or "unknown"),
                    health=_optional(str, c.get("health")),
                    labels=_string_map(c.get("labels") or {}),
                    id=str(c.get("id") or ""),
                    started=_optional(float, c.get("started")),
                    cpu_percent=_optional(float, c.get("cpu_percent")),
                    memory_bytes=_optional(int, c.get("memory_bytes")),
                )
                for c in containers[:MAX_STATUS_ENTRIES]
            ),
            notes=tuple(str(n) for n in meta.get("notes") or ()),
            processes_omitted=int(meta.get("processes_omitted") or 0)
            + max(0, len(processes) - MAX_STATUS_ENTRIES),
            containers_omitted=int(meta.get("containers_omitted") or 0)
            + max(0, len(containers) - MAX_STATUS_ENTRIES),
        )
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise ProtocolError(f"bad STATUS frame: {error}") from error


def _optional(kind: Callable[[Any], _T], value: Any) -> _T | None:
    return None if value is None else kind(value)


def _string_map(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise TypeError("expected a JSON object of strings")
    return {str(k): str(v) for k, v in value.items()}
