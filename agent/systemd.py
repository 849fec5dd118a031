"""The systemd unit that runs the agent as a service (``quicflow agent --print-systemd-unit``).

Pure text: ``unit`` turns the agent's own command line into a unit file that runs it as an
unprivileged user, hands it the token through systemd credentials (the token file stays
root-only and never appears on a command line), restarts it when it dies, lets SIGTERM
finish running steps, and confines it to its work root with systemd's sandboxing.  The
file in ``examples/systemd/quicflow-agent.service`` is this function's output for the
documented example host.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePosixPath

SERVICE_USER = "quicflow"
STATE_DIRECTORY = PurePosixPath("/var/lib/quicflow-agent")
TOKEN_FILE = PurePosixPath("/etc/quicflow/agent-token")
CREDENTIAL = "agent-token"
# systemd's %d specifier: the directory holding the service's credentials.
TOKEN_ARGUMENT = f"%d/{CREDENTIAL}"
_PLAIN = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


def quote(argument: str) -> str:
    """One argument as systemd's ExecStart= reads it (specifiers and variables escaped)."""
    escaped = argument.replace("%", "%%").replace("$", "$$")
    if _PLAIN.match(escaped):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unit(
    command: Sequence[str],
    *,
    name: str,
    work_root: PurePosixPath = STATE_DIRECTORY,
    shutdown_grace: float = 30.0,
    user: str = SERVICE_USER,
    token_file: PurePosixPath = TOKEN_FILE,
    hubs: int = 1,
) -> str:
    """The unit file for the agent started as ``command`` (without ``--token-file``).

    ``hubs`` is how many hubs (reconciler replicas) the command connects to: each must
    know the agent's one token, which the install steps then say how to register.
    """
    exec_start = " ".join([*(quote(part) for part in command), "--token-file", TOKEN_ARGUMENT])
    if work_root == STATE_DIRECTORY or STATE_DIRECTORY in work_root.parents:
        places = f"StateDirectory={STATE_DIRECTORY.name}\nStateDirectoryMode=0750\n"
    else:
        places = f"ReadWritePaths={quote(str(work_root))}\n"
    # Room for running steps to finish on SIGTERM, then for their results to be sent.
    stop_timeout = int(shutdown_grace) + 15
    register = (
        f"#   # It serves {hubs} hubs (reconciler replicas), and each must know this one token:\n"
        f"#   # on every replica but the one that issued it, with that replica's data dir,\n"
        f"#   #   quicflow agent-token create {name} --token-file token-from-the-hub --data DATA\n"
        if hubs > 1
        else ""
    )
    return f"""\
# QUIC-Flow agent {name}: `quicflow agent --print-systemd-unit` printed this file.
#
# Install (as root):
#   useradd --system --home-dir {STATE_DIRECTORY} --shell /usr/sbin/nologin {user}
#   install -d -m 0700 {token_file.parent}
#   install -m 0600 token-from-the-hub {token_file}   # quicflow agent-token create {name}
{register}#   cp quicflow-agent.service /etc/systemd/system/ && systemctl daemon-reload
#   systemctl enable --now quicflow-agent && journalctl -u quicflow-agent -f
#
# Every deploy step runs as {user}, inside the work root, and may write only there.
# Deploys that need more: SupplementaryGroups=docker for container deploys (the docker
# group is root-equivalent), ReadWritePaths= for directories a script must change.

[Unit]
Description=QUIC-Flow agent {name}
Wants=network-online.target
After=network-online.target

[Service]
Type=exec
User={user}
Group={user}
# The token file stays root-only; systemd hands the agent a private copy ({TOKEN_ARGUMENT}).
LoadCredential={CREDENTIAL}:{token_file}
ExecStart={exec_start}
{places}Restart=always
RestartSec=5
# SIGTERM to the agent alone: it lets running steps finish, reports them, then exits.
KillMode=mixed
TimeoutStopSec={stop_timeout}
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
LockPersonality=yes
#SupplementaryGroups=docker

[Install]
WantedBy=multi-user.target
"""
