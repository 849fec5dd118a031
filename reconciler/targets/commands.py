"""The vocabulary every driver and executor speaks: target refs, command results, executors.

A leaf of the targets layer: plain frozen values and a protocol; no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

OutputHandler = Callable[[str, str], None]  # (channel, text chunk)


@dataclass(frozen=True, slots=True)
class TargetRef:
    """One concrete target of a run."""

    name: str
    kind: str  # local | agent
    address: str = "127.0.0.1"
    port: int | None = None
    work_dir: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CommandResult:
    """How one command ended on its target."""

    exit_code: int | None
    duration: float
    timed_out: bool = False
    cancelled: bool = False
    signal: int | None = None
    error: str = ""
    # The command was not started by this call: an earlier reconciler process started it
    # with the same command id, and this result is that process's (adopted while it ran,
    # or recorded when it ended).
    adopted: bool = False
    # The target went away while the command ran and did not come back in time: whether
    # it still runs is unknown (``errors.AgentLost``); ``Settling.settle`` finds out.
    lost: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.cancelled and not self.lost


class Executor(Protocol):
    """Runs a command on one target, streaming its output."""

    async def run(
        self,
        target: TargetRef,
        command_id: str,
        script: str,
        env: Mapping[str, str],
        timeout: float | None,
        on_output: OutputHandler,
        cwd: str | None = None,
    ) -> CommandResult: ...


@runtime_checkable
class Settling(Protocol):
    """An executor whose commands can be ``lost`` with their target and collected later."""

    async def settle(self, target: TargetRef, command_id: str, timeout: float) -> CommandResult:
        """How lost ``command_id`` ended, once the target reports it within ``timeout`` s
        (else a result still ``lost``)."""
        ...
