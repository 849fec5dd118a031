"""The one error hierarchy of QUIC-Flow; each class carries its handling policy.

- ``ConfigError``: the config repo is wrong; report every problem, keep the last good state.
- ``TemporaryError(delay)``: try again after at least ``delay`` seconds (network, busy
  target); a pipeline task's ``retries`` wait that long before the next attempt.
- ``AgentLost``: an agent went away mid-command and did not come back in time; whether
  the command still runs is unknown, so nothing may change that target until it reports.
- ``PermanentError``: retrying will not help; fail the step and say why.
- ``PermissionDenied``: the actor's role does not allow the action.

User-facing messages name the file, field, header or target at fault.  This module is a
leaf: anything may import it and it imports nothing of ours.
"""

from __future__ import annotations

from dataclasses import dataclass


class QuicFlowError(Exception):
    """Base of every error QUIC-Flow raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One problem in the config repo, located as precisely as we can."""

    path: str
    message: str
    line: int = 0
    column: int = 0
    json_path: str = "$"

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.message} (at {self.json_path})"

    def sort_key(self) -> tuple[str, int, int, str, str]:
        return (self.path, self.line, self.column, self.json_path, self.message)


class ConfigError(QuicFlowError):
    """The config repo (at some commit) is invalid; ``problems`` lists all that was found."""

    def __init__(self, problems: list[ConfigProblem] | tuple[ConfigProblem, ...]):
        self.problems = tuple(sorted(problems, key=ConfigProblem.sort_key))
        super().__init__("\n".join(str(p) for p in self.problems) or "invalid configuration")


class SourceError(QuicFlowError):
    """The config repo cannot be read at all (not a Git repo, unknown revision, fetch failed)."""


class TemporaryError(QuicFlowError):
    """A failure worth retrying after ``delay`` seconds."""

    def __init__(self, message: str, delay: float = 5.0):
        super().__init__(message)
        self.delay = delay


class AgentLost(TemporaryError):
    """An agent went away while running a command and did not come back in time.

    The command's fate is unknown -- it may still be running on the host -- so nothing
    may change that target (a rollback least of all) until the agent reports back.
    """

    def __init__(self, message: str, agent: str, command_id: str, delay: float = 5.0):
        super().__init__(message, delay)
        self.agent = agent
        self.command_id = command_id


class PermanentError(QuicFlowError):
    """A failure that retrying will not fix."""


class PermissionDenied(QuicFlowError):
    """The actor's role on the project does not allow the action."""


class CredentialError(QuicFlowError):
    """A credential cannot be read, decrypted or verified; the message names the file or record."""
