"""``quicflow init``: a new, valid config repo with one project to start from."""

from __future__ import annotations

from pathlib import Path

from reconciler.errors import QuicFlowError
from reconciler.gitops.repository import GitRepository, Identity

_GLOBAL = """\
# yaml-language-server: $schema=https://quicflow.dev/schemas/quicflow.schema.json
# Settings, users and notification channels of this config repo.
settings:
  poll_interval: 60s
  branch: main
users:
  - username: admin
    display_name: Administrator
    email: admin@example.com
    is_admin: true
"""

_PROJECT = """\
# yaml-language-server: $schema=https://quicflow.dev/schemas/project.schema.json
description: My first project
members:
  - {{user: admin, role: owner}}
variables:
  GREETING: hello
deploy:
  type: script
  script:
    run: |
      set -eu
      mkdir -p "$QUICFLOW_WORK_DIR"
      echo "$GREETING from {project} $QUICFLOW_VERSION" > "$QUICFLOW_WORK_DIR/release.txt"
strategy:
  type: rolling
  rolling: {{batch_size: 1}}
"""

_ENV = """\
# yaml-language-server: $schema=https://quicflow.dev/schemas/environment.schema.json
version: "0.1.0"
targets:
  - {{local: {env}-1}}
"""


def files(project: str) -> dict[str, bytes]:
    """The scaffold's files, path → content."""
    return {
        "quicflow.yaml": _GLOBAL.encode(),
        f"projects/{project}/project.yaml": _PROJECT.format(project=project).encode(),
        f"projects/{project}/environments/dev.yaml": _ENV.format(env="dev").encode(),
        f"projects/{project}/environments/prod.yaml": (
            _ENV.format(env="prod") + "protected: true\n"
        ).encode(),
    }


def scaffold(directory: Path, project: str) -> tuple[list[str], str | None]:
    """Write the scaffold into ``directory``; commit it when ``directory`` starts a new repo."""
    content = files(project)
    if directory.exists() and any(directory.iterdir()):
        raise QuicFlowError(f"{directory}: directory is not empty; choose a new one")
    if GitRepository.inside_repository(directory.parent if not directory.exists() else directory):
        directory.mkdir(parents=True, exist_ok=True)
        for path, data in content.items():
            target = directory / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return sorted(content), None
    directory.mkdir(parents=True, exist_ok=True)
    _, commit = GitRepository.create(
        directory,
        content,
        "Scaffold a QUIC-Flow config repo\n",
        Identity("quicflow init", "quicflow@localhost"),
    )
    return sorted(content), commit
