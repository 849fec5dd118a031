"""The loader over real Git repositories: commits, caching, remotes and subdirectories."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
from gitrepos import ConfigRepo, git

from reconciler.errors import SourceError
from reconciler.gitops.loading import Loader
from reconciler.gitops.repository import GitRepository


def test_loads_the_example_repo(example_repo: ConfigRepo) -> None:
    result = Loader(GitRepository.open(example_repo.path)).load()
    assert result.problems == ()
    desired = result.raise_for_problems()
    assert set(desired.projects) == {"billing", "catalog", "docs-site", "shop"}
    assert all(len(p.environments) >= 3 for p in desired.projects.values())
    prod = desired.environment("shop", "prod")
    assert prod is not None and prod.protected and prod.strategy.type == "canary"
    assert dict(prod.deploy.spec["resources"]) == {"cpus": 2, "memory": "1g"}


def test_reads_the_commit_not_the_working_copy(
    config_repo: ConfigRepo, minimal_files: dict[str, str]
) -> None:
    first = config_repo.commit(minimal_files)
    config_repo.commit(
        {"projects/app/environments/dev.yaml": 'version: "2.0.0"\ntargets: [{local: d}]\n'}
    )
    # An uncommitted, broken edit in the work tree must not be seen.
    config_repo.write({"projects/app/environments/dev.yaml": "version: [broken\n"})
    loader = Loader(GitRepository.open(config_repo.path))
    head = loader.load("HEAD").raise_for_problems()
    old = loader.load(first).raise_for_problems()
    assert head.environment("app", "dev").version == "2.0.0"  # type: ignore[union-attr]
    assert old.environment("app", "dev").version == "1.0.0"  # type: ignore[union-attr]
    assert old.commit == first


def test_one_file_commit_reparses_one_file(
    config_repo: ConfigRepo, minimal_files: dict[str, str]
) -> None:
    files = dict(minimal_files)
    for i in range(5):
        files[f"projects/p{i}/project.yaml"] = files["projects/app/project.yaml"]
        files[f"projects/p{i}/environments/dev.yaml"] = f'version: "{i}"\ntargets: [{{local: d}}]\n'
    config_repo.commit(files)
    loader = Loader(GitRepository.open(config_repo.path))
    loader.load().raise_for_problems()
    parsed, built = loader.stats.parsed_files, loader.stats.built_projects
    assert built == 6

    config_repo.commit(
        {"projects/p3/environments/dev.yaml": 'version: "9"\ntargets: [{local: d}]\n'}
    )
    desired = loader.load().raise_for_problems()
    assert loader.stats.parsed_files - parsed == 1
    assert loader.stats.built_projects - built == 1
    assert desired.environment("p3", "dev").version == "9"  # type: ignore[union-attr]
    # Untouched projects are the very same objects.
    again = loader.load().raise_for_problems()
    assert again.projects["p1"] is desired.projects["p1"]


def test_a_commit_outside_the_config_costs_nothing(
    tmp_path: Path, minimal_files: dict[str, str]
) -> None:
    repo = ConfigRepo(tmp_path / "mono")
    repo.commit(
        {f"deploy/{k}": v for k, v in minimal_files.items()} | {"src/main.py": "print(1)\n"}
    )
    loader = Loader(GitRepository.open(repo.path / "deploy"))
    first = loader.load().raise_for_problems()
    parsed = loader.stats.parsed_files
    second_commit = repo.commit({"src/main.py": "print(2)\n"})
    second = loader.load().raise_for_problems()
    assert loader.stats.parsed_files == parsed
    assert second.commit == second_commit and second.projects is first.projects


def test_invalid_commit_keeps_problems_and_previous_commit_still_loads(
    config_repo: ConfigRepo, minimal_files: dict[str, str]
) -> None:
    good = config_repo.commit(minimal_files)
    config_repo.commit({"projects/app/environments/dev.yaml": "version: 1.10\n"})
    loader = Loader(GitRepository.open(config_repo.path))
    bad = loader.load()
    assert not bad.ok
    assert [str(p) for p in bad.problems] == [
        "projects/app/environments/dev.yaml:1:10: expected string, got number 1.1 "
        "(quote versions: 1.10 unquoted reads as the number 1.1) (at $.version)"
    ]
    assert loader.load(good).ok


def test_not_a_repository_is_a_clear_error(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(SourceError, match="not inside a Git repository"):
        GitRepository.open(plain)
    with pytest.raises(SourceError, match="no such directory"):
        GitRepository.open(tmp_path / "missing")


def test_unknown_revision_is_a_clear_error(
    config_repo: ConfigRepo, minimal_files: dict[str, str]
) -> None:
    config_repo.commit(minimal_files)
    with pytest.raises(SourceError, match="unknown revision 'nope'"):
        Loader(GitRepository.open(config_repo.path)).load("nope")


def test_missing_subdirectory_is_a_problem(
    config_repo: ConfigRepo, minimal_files: dict[str, str]
) -> None:
    config_repo.commit({f"cfg/{k}": v for k, v in minimal_files.items()})
    (config_repo.path / "other").mkdir()
    result = Loader(GitRepository.open(config_repo.path / "other")).load()
    assert not result.ok
    assert "config directory 'other' does not exist" in result.problems[0].message


def test_remote_over_file_url_is_mirrored_and_refetched(
    tmp_path: Path, config_repo: ConfigRepo, minimal_files: dict[str, str]
) -> None:
    config_repo.commit(minimal_files)
    url = f"file://{config_repo.path}"
    cache = tmp_path / "cache"
    mirror = GitRepository.open(url, cache_dir=cache)
    loader = Loader(mirror)
    assert loader.load("main").raise_for_problems().environment("app", "dev").version == "1.0.0"  # type: ignore[union-attr]

    config_repo.commit(
        {"projects/app/environments/dev.yaml": 'version: "1.5.0"\ntargets: [{local: d}]\n'}
    )
    mirror.fetch()
    assert loader.load("main").raise_for_problems().environment("app", "dev").version == "1.5.0"  # type: ignore[union-attr]
    # Reopening reuses the cached clone.
    assert len(list(cache.iterdir())) == 1
    assert GitRepository.open(url, cache_dir=cache).resolve("main") == mirror.resolve("main")


def test_remote_url_may_name_a_subdirectory(tmp_path: Path, minimal_files: dict[str, str]) -> None:
    repo = ConfigRepo(tmp_path / "mono")
    repo.commit({f"ops/quicflow/{k}": v for k, v in minimal_files.items()})
    mirror = GitRepository.open(f"file://{repo.path}//ops/quicflow", cache_dir=tmp_path / "cache")
    assert mirror.subdir == "ops/quicflow"
    assert Loader(mirror).load("main").ok


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_remote_over_git_daemon(
    tmp_path: Path, config_repo: ConfigRepo, minimal_files: dict[str, str]
) -> None:
    config_repo.commit(minimal_files)
    served = tmp_path / "served"
    served.mkdir()
    git(tmp_path, "clone", "-q", "--bare", str(config_repo.path), str(served / "config.git"))
    port = _free_port()
    daemon = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            "--export-all",
            "--listen=127.0.0.1",
            f"--port={port}",
            f"--base-path={served}",
            str(served),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        mirror = GitRepository.open(
            f"git://127.0.0.1:{port}/config.git", cache_dir=tmp_path / "cache"
        )
        desired = Loader(mirror).load("main").raise_for_problems()
        assert set(desired.projects) == {"app"}
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)


def test_fetch_failure_names_the_remote_without_credentials(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as info:
        GitRepository.open(
            "https://user:s3cret-token@127.0.0.1:9/none.git", cache_dir=tmp_path / "c"
        )
    assert "s3cret-token" not in str(info.value)
    assert "https://127.0.0.1:9/none.git" in str(info.value)


# -- smaller holes (issue 17, item 8) -----------------------------------------------------

ENV = "projects/app/environments/dev.yaml"


def _problems(repo: ConfigRepo) -> list[str]:
    result = Loader(GitRepository.open(repo.path)).load("HEAD")
    return [str(p) for p in result.problems]


def test_a_huge_config_file_is_refused_without_being_parsed(
    config_repo: ConfigRepo, minimal_files: dict[str, str]
) -> None:
    """A 50 MB environment file once took 17 s and 470 MB to load; now it is not parsed."""
    huge = 'version: "1.0.0"\ntargets:\n  - {local: dev-1}\nvariables:\n' + "".join(
        f"  V{i}: {'x' * 60}\n" for i in range(40_000)
    )
    config_repo.commit({**minimal_files, ENV: huge})
    loader = Loader(GitRepository.open(config_repo.path))
    result = loader.load("HEAD")
    assert [str(p) for p in result.problems] == [
        f"{ENV}:1:1: file is 2.7 MiB; a config file may be at most 1 MiB (at $)"
    ]
    assert not result.ok


def test_bytes_that_are_not_utf8_are_reported_at_their_line(
    config_repo: ConfigRepo, minimal_files: dict[str, str]
) -> None:
    config_repo.commit(minimal_files)
    (config_repo.path / ENV).write_bytes(
        b'version: "1.0.0"\ntargets:\n  - {local: dev-1}\nvariables:\n  NAME: caf\xe9\n'
    )
    config_repo.commit()
    (problem,) = _problems(config_repo)
    assert problem.startswith(f"{ENV}:5:12: not UTF-8 text: byte 0xe9 at line 5 column 12")


def test_a_merge_key_then_an_override_follows_yaml_1_1(
    config_repo: ConfigRepo, minimal_files: dict[str, str]
) -> None:
    """``<<: *base`` then a key of base: the key written in the mapping wins (as in
    docker-compose files); a key written twice in one mapping is still refused."""
    project = minimal_files["projects/app/project.yaml"].replace(
        "variables:\n  LEVEL: project\n",
        "variables:\n  <<: {LEVEL: base, REGION: eu}\n  LEVEL: project\n",
    )
    config_repo.commit({**minimal_files, "projects/app/project.yaml": project})
    desired = Loader(GitRepository.open(config_repo.path)).load("HEAD").raise_for_problems()
    env = desired.environment("app", "dev")
    assert env is not None
    assert (env.variables["LEVEL"], env.variables["REGION"]) == ("project", "eu")

    twice = project.replace("  LEVEL: project\n", "  LEVEL: project\n  LEVEL: again\n")
    config_repo.commit({"projects/app/project.yaml": twice})
    (problem,) = _problems(config_repo)
    assert "duplicate key 'LEVEL' (first at line" in problem


def test_a_url_without_a_branch_reads_the_remote_s_default_branch(tmp_path: Path) -> None:
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    git(upstream, "init", "-q", "-b", "trunk")
    repo = ConfigRepo.__new__(ConfigRepo)
    repo.path = upstream
    from gitrepos import MINIMAL

    repo.commit(dict(MINIMAL))
    mirror = GitRepository.open(f"file://{upstream}", cache_dir=tmp_path / "cache")
    assert mirror.default_branch == "trunk"
    desired = Loader(mirror).load().raise_for_problems()  # HEAD: the remote's default branch
    assert desired.settings.branch == "trunk"  # bumps and reverts go there too


def test_token_create_with_a_url_gives_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    git(upstream, "init", "-q", "-b", "trunk")
    (upstream / "quicflow.yaml").write_text("users: []\n")
    git(upstream, "add", "-A")
    git(upstream, "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-qm", "x")
    import os
    import sys

    from gitrepos import ROOT

    out = subprocess.run(
        [sys.executable, "-m", "reconciler", "token", "create", "alice"]
        + ["--repo", f"file://{upstream}", "--data", str(tmp_path / "data")],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "Traceback" not in out.stderr
    assert "the config repo is invalid" in out.stderr or "unknown user" in out.stderr
