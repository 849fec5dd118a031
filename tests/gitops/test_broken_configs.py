"""The broken-config corpus: every case under ``tests/cases/broken/`` must be rejected.

Each case is a directory holding ``case.yaml``:

- ``description``: what is wrong, in words;
- ``base``: ``minimal`` (start from ``gitrepos.MINIMAL``) or ``none`` (an empty tree);
- ``files``: path → content; ``null`` deletes a file of the base;
- ``expect``: the problems the loader must report, in its (sorted) order. A string is
  an exact ``path:line:column: message (at json.path)``; a mapping
  ``{path, line, contains}`` pins the file and line and a part of the message, for
  cases where the rest is not worth freezing. The list is exhaustive: a problem
  that is not expected fails the case as much as a missing one does.
- ``xfail`` (optional): a known loader gap, with the reason. The case states the
  behaviour we want and is marked strictly expected-to-fail, so fixing the loader
  turns it into a failure that asks for the marker to be removed.

Every case is committed to a real Git repository on top of the minimal valid repo and
loaded twice: with a warm loader that has just loaded the valid parent commit (its
caches must not hide or invent problems) and with a cold one. Neither may raise.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from gitrepos import MINIMAL, ConfigRepo

from reconciler.errors import ConfigProblem
from reconciler.gitops.loading import Loader, LoadResult
from reconciler.gitops.repository import GitRepository

CASES_DIR = Path(__file__).resolve().parents[1] / "cases" / "broken"
CASE_KEYS = {"description", "base", "files", "expect", "xfail"}


@dataclass(frozen=True)
class Case:
    """One broken config repo and the problems it must produce."""

    name: str
    description: str
    files: dict[str, str]
    expect: list[str | dict[str, Any]]
    xfail: str | None


def load_case(directory: Path) -> Case:
    """Read and sanity-check one ``case.yaml`` (a malformed case is a test bug, say so)."""
    spec = yaml.safe_load((directory / "case.yaml").read_text(encoding="utf-8"))
    where = f"{directory.name}/case.yaml"
    assert isinstance(spec, dict), f"{where}: not a mapping"
    assert set(spec) <= CASE_KEYS, f"{where}: unknown keys {sorted(set(spec) - CASE_KEYS)}"
    assert spec.get("description"), f"{where}: needs a description"
    base = spec.get("base", "minimal")
    assert base in ("minimal", "none"), f"{where}: base must be 'minimal' or 'none'"
    files: dict[str, str] = dict(MINIMAL) if base == "minimal" else {}
    for path, content in (spec.get("files") or {}).items():
        if content is None:
            assert path in files, f"{where}: deletes {path!r}, which the base does not have"
            del files[path]
        else:
            assert isinstance(content, str), f"{where}: content of {path!r} must be a string"
            files[path] = content
    expect = spec.get("expect")
    assert isinstance(expect, list) and expect, f"{where}: expect must be a non-empty list"
    for entry in expect:
        assert isinstance(entry, str) or (
            isinstance(entry, dict) and set(entry) == {"path", "line", "contains"}
        ), f"{where}: bad expect entry {entry!r}"
    return Case(directory.name, spec["description"], files, expect, spec.get("xfail"))


def all_cases() -> list[Case]:
    return [load_case(d) for d in sorted(CASES_DIR.iterdir()) if (d / "case.yaml").is_file()]


def _param(case: Case) -> Any:
    marks = [pytest.mark.xfail(reason=case.xfail, strict=True)] if case.xfail else []
    return pytest.param(case, id=case.name, marks=marks)


def replace_tree(repo: ConfigRepo, files: dict[str, str], message: str) -> str:
    """Make the work tree hold exactly ``files`` and commit it (paths may turn file ↔ dir)."""
    for child in repo.path.iterdir():
        if child.name == ".git":
            continue
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()
    return repo.commit(files, message)


def matches(expected: str | dict[str, Any], problem: ConfigProblem) -> bool:
    if isinstance(expected, str):
        return str(problem) == expected
    return (
        problem.path == expected["path"]
        and problem.line == expected["line"]
        and expected["contains"] in str(problem)
    )


def load(loader: Loader, rev: str) -> LoadResult:
    try:
        return loader.load(rev)
    except Exception as exc:  # the point of the corpus: bad config never crashes the loader
        pytest.fail(f"the loader raised instead of reporting problems: {exc!r}")


@pytest.mark.parametrize("case", [_param(c) for c in all_cases()])
def test_broken_config_is_rejected_with_exact_problems(case: Case, tmp_path: Path) -> None:
    repo = ConfigRepo(tmp_path / "config")
    good = repo.commit(MINIMAL, "the minimal valid config")
    warm_loader = Loader(GitRepository.open(repo.path))
    assert load(warm_loader, good).ok, "the base of every case must be valid"
    bad = replace_tree(repo, case.files, case.description)

    result = load(Loader(GitRepository.open(repo.path)), bad)
    warm = load(warm_loader, bad)

    actual = [str(p) for p in result.problems]
    listing = "\n".join(actual) or "(no problems)"
    assert not result.ok and result.desired is None, f"{case.name} loaded as valid"
    assert result.problems == tuple(sorted(result.problems, key=ConfigProblem.sort_key))
    assert len(result.problems) == len(case.expect), f"expected {len(case.expect)}, got:\n{listing}"
    for expected, problem in zip(case.expect, result.problems, strict=True):
        assert matches(expected, problem), f"expected {expected!r}, got:\n{listing}"
    assert warm.problems == result.problems, "the warm loader's caches changed the verdict"


def test_corpus_is_large_and_distinct() -> None:
    cases = all_cases()
    assert len(cases) >= 40
    assert len({c.description for c in cases}) == len(cases), "two cases describe the same thing"
    assert len({tuple(sorted(c.files.items())) for c in cases}) == len(cases), "duplicate trees"


# -- the CLI contract: exit codes and stderr lines -----------------------------------------


def quicflow(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed ``quicflow`` script (or the module when it is not installed)."""
    script = Path(sys.executable).with_name("quicflow")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "reconciler"]
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_validate_reports_a_broken_repo_on_stderr_and_exits_1(tmp_path: Path) -> None:
    case = load_case(CASES_DIR / "several-errors-in-several-files")
    repo = ConfigRepo(tmp_path / "config")
    commit = repo.commit(case.files, "broken")
    out = quicflow("validate", "--repo", str(repo.path))
    assert out.returncode == 1, out.stderr
    assert out.stdout == ""
    assert out.stderr.splitlines() == [
        *case.expect,
        f"{len(case.expect)} problems at {commit[:10]}",
    ]


def test_validate_accepts_the_minimal_repo(tmp_path: Path) -> None:
    repo = ConfigRepo(tmp_path / "config")
    commit = repo.commit(MINIMAL, "valid")
    out = quicflow("validate", "--repo", str(repo.path))
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"valid: 1 projects, 2 environments at {commit[:10]}\n"
    assert out.stderr == ""


def test_validate_outside_git_fails_with_a_clear_message(tmp_path: Path) -> None:
    plain = tmp_path / "not-a-repo-dir"
    plain.mkdir()
    (plain / "quicflow.yaml").write_text(MINIMAL["quicflow.yaml"])
    out = quicflow("validate", "--repo", str(plain))
    assert out.returncode not in (0, 2)  # not valid, and not a usage error either
    assert f"{plain}: not inside a Git repository" in out.stderr
    assert "Traceback" not in out.stderr


def test_validate_rejects_an_unknown_option_as_a_usage_error(tmp_path: Path) -> None:
    out = quicflow("validate", "--no-such-option", cwd=tmp_path)
    assert out.returncode == 2
    assert "No such option" in out.stderr and "--no-such-option" in out.stderr
