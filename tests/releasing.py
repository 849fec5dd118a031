"""Helpers for release-engine tests: a config repo whose targets are real HTTP servers on loopback."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from pathlib import Path

from gitrepos import ConfigRepo

APP = Path(__file__).with_name("appserver.py")

DEPLOY = r"""
set -eu
d="${QUICFLOW_COLOR:-.}"; mkdir -p "$d"; cd "$d"
echo "$QUICFLOW_VERSION" >> deploys.log
echo "$QUICFLOW_VERSION" > version
if [ -f server.pid ]; then kill "$(cat server.pid)" 2>/dev/null || true; sleep 0.05; fi
rm -f unhealthy
for bad in $BAD_TARGETS; do
  if [ "$bad" = "$QUICFLOW_TARGET" ] && [ "$QUICFLOW_VERSION" = "$BAD_VERSION" ]; then touch unhealthy; fi
done
python3 "$APP_SERVER" "${QUICFLOW_PORT:-$QUICFLOW_TARGET_PORT}" > server.log 2>&1 < /dev/null &
echo $! > server.pid
echo "deployed $QUICFLOW_VERSION on $QUICFLOW_TARGET"
"""


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def project_yaml(
    strategy: str,
    bad_targets: str = "",
    bad_version: str = "none",
    pipeline: str = "",
    extra_vars: str = "",
) -> str:
    indented = "\n".join("      " + line for line in DEPLOY.strip().splitlines())
    return f"""\
members:
  - {{user: bob, role: owner}}
  - {{user: carol, role: developer}}
  - {{user: dave, role: viewer}}
variables:
  APP_SERVER: "{APP}"
  BAD_TARGETS: "{bad_targets}"
  BAD_VERSION: "{bad_version}"
{extra_vars}deploy:
  type: script
  timeout: 20s
  script:
    run: |
{indented}
    retire: |
      touch "retired-$QUICFLOW_COLOR"
      if [ -f "$QUICFLOW_COLOR/server.pid" ]; then kill "$(cat "$QUICFLOW_COLOR/server.pid")" 2>/dev/null || true; fi
  health:
    http: {{path: /healthz, port: 1}}
    retries: 15
    interval: 100ms
    timeout: 1s
strategy:
{strategy}
{pipeline}"""


def env_yaml(version: str, ports: list[int], extra: str = "") -> str:
    targets = "\n".join(f"  - {{local: t{i + 1}, port: {p}}}" for i, p in enumerate(ports))
    return f'version: "{version}"\ntargets:\n{targets}\n{extra}'


def make_repo(repo: ConfigRepo, users: str, project: str, env: str) -> str:
    return repo.commit(
        {
            "quicflow.yaml": users,
            "projects/app/project.yaml": project,
            "projects/app/environments/prod.yaml": env,
        }
    )


USERS = """\
users:
  - {username: alice, email: alice@example.com, is_admin: true}
  - {username: bob, email: bob@example.com}
  - {username: carol, email: carol@example.com}
  - {username: dave, email: dave@example.com}
"""


def versions(data: Path, targets: int, env: str = "prod") -> dict[str, str]:
    """The version each target serves now, read from its work dir."""
    out = {}
    for i in range(targets):
        f = data / "targets" / "app" / env / f"t{i + 1}" / "version"
        out[f"t{i + 1}"] = f.read_text().strip() if f.exists() else ""
    return out


def deploy_counts(data: Path, targets: int, env: str = "prod") -> dict[str, list[str]]:
    out = {}
    for i in range(targets):
        f = data / "targets" / "app" / env / f"t{i + 1}" / "deploys.log"
        out[f"t{i + 1}"] = f.read_text().split() if f.exists() else []
    return out


def stop_servers(data: Path) -> None:
    for pidfile in data.glob("targets/**/server.pid"):
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
