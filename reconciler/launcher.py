"""The ``quicflow`` executable: ``quicflow agent`` runs the agent without the reconciler.

An agent runs on every host, so what it loads is paid on every host. Through the full
command line (``reconciler.cli``), ``quicflow agent`` imported the whole reconciler --
engine, API, store, drivers, Git and Kubernetes clients: ~780 modules and 70 MiB before
it had connected -- to run a program that uses none of it (``agent`` never imports
``reconciler``; an import-linter contract keeps it so). Here ``agent`` goes straight to
``agent.cli``; every other command, and ``quicflow --help``, to ``reconciler.cli``.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Run ``quicflow`` with the arguments in ``sys.argv``."""
    arguments = sys.argv[1:]
    if arguments[:1] == ["agent"]:
        from agent import cli as agent_cli  # noqa: PLC0415 - the point of this module

        agent_cli.agent.main(args=arguments[1:], prog_name="quicflow agent")
        return
    from reconciler import cli  # noqa: PLC0415

    cli.main()
