"""Test helpers: real Git config repositories made with the git CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "config-repo"


def git(cwd: Path, *args: str, env: Mapping[str, str] | None = None) -> str:
    """Run git in ``cwd`` and return stdout (raises on failure)."""
    full_env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(cwd), **(env or {})}
    out = subprocess.run(
        ["git", *args], cwd=cwd, env=full_env, check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


class ConfigRepo:
    """A config repo on disk with helpers to commit files as a given author."""

    def __init__(self, path: Path):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        git(path, "init", "-q", "-b", "main")

    @classmethod
    def copy_of(cls, source: Path, path: Path) -> ConfigRepo:
        """A copy of the repo at ``source`` (work tree, history and refs) at ``path``."""
        shutil.copytree(source, path)
        repo = cls.__new__(cls)
        repo.path = path
        return repo

    def write(self, files: Mapping[str, str | None]) -> None:
        for name, content in files.items():
            target = self.path / name
            if content is None:
                if target.exists():
                    target.unlink()
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)

    def commit(
        self,
        files: Mapping[str, str | None] | None = None,
        message: str = "change",
        author: tuple[str, str] = ("Alice Admin", "alice@example.com"),
    ) -> str:
        """Write ``files`` (None deletes), commit everything, return the commit id."""
        self.write(files or {})
        name, email = author
        env = {
            "GIT_AUTHOR_NAME": name,
            "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": name,
            "GIT_COMMITTER_EMAIL": email,
        }
        git(self.path, "add", "-A")
        git(self.path, "commit", "-q", "--allow-empty", "-m", message, env=env)
        return git(self.path, "rev-parse", "HEAD")

    def read(self, name: str) -> str:
        return (self.path / name).read_text()


MINIMAL = {
    "quicflow.yaml": """\
users:
  - {username: alice, email: alice@example.com, is_admin: true}
  - {username: bob, email: bob@example.com}
  - {username: carol, email: carol@example.com}
  - {username: dave, email: dave@example.com}
agents:
  - {name: web-1, labels: {role: web}}
  - {name: web-2, labels: {role: web}}
""",
    "projects/app/project.yaml": """\
members:
  - {user: bob, role: owner}
  - {user: carol, role: developer}
  - {user: dave, role: viewer}
variables:
  LEVEL: project
deploy:
  type: script
  script: {run: "echo deploy"}
""",
    "projects/app/environments/dev.yaml": 'version: "1.0.0"\ntargets:\n  - {local: dev-1}\n',
    "projects/app/environments/prod.yaml": 'version: "1.0.0"\nprotected: true\ntargets:\n  - {agent: web-1}\n  - {agent: web-2}\n',
}
