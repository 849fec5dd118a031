"""Branch filter globs: ``*`` stays within a path segment, ``**`` crosses ``/``."""

from __future__ import annotations

import pytest

from reconciler.rules.branches import compile_glob, matches, pattern_problems


@pytest.mark.parametrize(
    ("pattern", "branch", "expected"),
    [
        ("main", "main", True),
        ("main", "main2", False),
        ("main", "xmain", False),
        ("main", "Main", False),  # case-sensitive, like Git
        ("release/*", "release/1.2", True),
        ("release/*", "release/", True),
        ("release/*", "release/1.2/hotfix", False),
        ("release/*", "release", False),
        ("release/*", "releases/1.2", False),
        ("release/**", "release/1.2", True),
        ("release/**", "release/1.2/hotfix", True),
        ("release/**", "release", False),
        ("**", "anything/at/all", True),
        ("*", "main", True),
        ("*", "feature/x", False),
        ("**/hotfix", "hotfix", True),
        ("**/hotfix", "release/1.2/hotfix", True),
        ("**/hotfix", "release/hotfix-2", False),
        ("a/**/b", "a/b", True),
        ("a/**/b", "a/x/b", True),
        ("a/**/b", "a/x/y/b", True),
        ("a/**/b", "a/xb", False),
        ("feature-**", "feature-a/b", True),
        ("v?.*", "v1.2", True),
        ("v?.*", "v12.2", False),
        ("v?", "v/", False),  # ? never matches /
        ("v[0-9].*", "v3.1", True),
        ("v[0-9].*", "vx.1", False),
        ("v[!0-9]*", "vx", True),
        ("v[!0-9]*", "v1", False),
        ("v[^0-9]*", "vx", True),
        ("a[!x]b", "a/b", False),  # a negated set does not match / either
        ("[]x]", "]", True),
        ("[]x]", "x", True),
        ("[!]]", "a", True),
        ("[!]]", "]", False),
        ("release/1.2", "release/1x2", False),  # '.' is literal
        ("a+b", "a+b", True),
        ("(x)|y", "(x)|y", True),
        ("(x)|y", "y", False),
        ("a\\*", "a*", True),
        ("a\\*", "ab", False),
        ("[\\]", "\\", True),
        ("main", "main\n", False),  # anchored at the very end
        ("dependabot/**", "dependabot/npm_and_yarn/lodash-4.17.21", True),
    ],
)
def test_glob(pattern: str, branch: str, expected: bool) -> None:
    assert (compile_glob(pattern).match(branch) is not None) is expected
    assert matches([pattern], branch) is expected


@pytest.mark.parametrize(
    ("patterns", "branch", "expected"),
    [
        (["main", "release/*"], "release/2", True),
        (["main", "release/*"], "main", True),
        (["main", "release/*"], "develop", False),
        ([], "main", False),  # no patterns match nothing; "no filter" is the caller's call
        (("main",), "main", True),
    ],
)
def test_matches_any(patterns: list[str], branch: str, expected: bool) -> None:
    assert matches(patterns, branch) is expected


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "non-empty string"),
        ("release/[0-9", "'[' at position 9 is never closed"),
        ("[", "'[' at position 1 is never closed"),
        ("[]", "never closed"),
        ("[!]", "never closed"),
        ("a***", "use '*' or '**', not '***'"),
        ("a\\", "trailing '\\' escapes nothing"),
        ("[z-a]", "bad character range"),
    ],
)
def test_invalid_patterns(pattern: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        compile_glob(pattern)
    assert message in str(caught.value)


def test_pattern_problems_lists_each_bad_pattern() -> None:
    problems = pattern_problems(["main", "release/[", "", None, ["x"]])
    assert [p.split(":")[0] for p in problems] == ["[1]", "[2]", "[3]", "[4]"]
    assert pattern_problems(["main", "release/*", "**"]) == []


def test_compiled_patterns_are_cached() -> None:
    assert compile_glob("release/*") is compile_glob("release/*")
