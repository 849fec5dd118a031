"""The steps of a ``git_pull`` command: fetch a ref with the git CLI, check it out, restart.

Pure: turns a ``GitPullRequest`` into argv lists that ``executing`` runs one after the
other.  Values from the request are always separate argv elements, never spliced into a
shell string; only the operator's own ``restart_script`` goes to ``/bin/sh -c``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from agent import protocol


@dataclass(frozen=True, slots=True)
class Step:
    """One program to run as part of a command."""

    argv: tuple[str, ...]
    cwd: str | None = None
    announce: bool = False

    def display(self) -> str:
        """The command line as shown in the output, with credentials in URLs hidden."""
        return " ".join(_CREDENTIALS.sub(r"\1***@", part) for part in self.argv)


# user:password@ (or token@) in a URL, as in https://token@git.example/app.git
_CREDENTIALS = re.compile(r"(://)[^/@\s]+@")


def steps(request: protocol.GitPullRequest, work_dir: Path) -> list[Step]:
    """The git CLI steps (and optional restart) that bring ``request.directory`` to ``request.ref``."""
    for value, what in ((request.repo_url, "repo_url"), (request.ref, "ref")):
        # A leading dash would be read by git as an option.
        if value.startswith("-"):
            raise ValueError(f"{what} must not start with '-': {value!r}")
    directory = Path(request.directory)
    if not directory.is_absolute():
        directory = work_dir / directory
    target = str(directory)
    plan: list[Step] = []
    if not (directory / ".git").exists():
        plan.append(Step(("git", "init", "--quiet", "--", target), announce=True))
    plan += [
        Step(
            ("git", "-C", target, "fetch", "--quiet", "--prune", "--no-tags", "--end-of-options")
            + (request.repo_url, request.ref),
            announce=True,
        ),
        Step(
            ("git", "-C", target, "checkout", "--quiet", "--force", "--detach", "FETCH_HEAD"),
            announce=True,
        ),
        Step(("git", "-C", target, "rev-parse", "HEAD")),
    ]
    if request.restart_script:
        plan.append(Step(("/bin/sh", "-c", request.restart_script), cwd=target, announce=True))
    return plan


ENVIRONMENT = {
    # Never wait for a password prompt on a host nobody is watching.
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "/bin/false",
}
