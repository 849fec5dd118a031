"""``${NAME}`` in a variable's value: expanded over the merged set, or rejected clearly.

The pure rule (``merging``), what the builder makes of it at each level (environment,
task), and a real release whose script sees the expanded value. The loader's messages
for every kind of bad reference are in ``tests/cases/broken/variable-reference-*``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from gitrepos import ConfigRepo

from reconciler.engine.reconciling import Reconciler
from reconciler.gitops import building, merging, model
from reconciler.gitops.loading import Loader
from reconciler.gitops.repository import GitRepository
from reconciler.runs import RunState

Kind = merging.ReferenceProblemKind
SECRET = {"secret": "db", "field": "password"}


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"A": "x", "B": "${A}-y"}, {"A": "x", "B": "x-y"}),
        # Order of declaration does not matter; chains resolve.
        ({"C": "${B}/c", "B": "${A}/b", "A": "a"}, {"C": "a/b/c", "B": "a/b", "A": "a"}),
        # Non-string values are referenced as the engine passes them.
        (
            {"P": 8080, "D": True, "N": None, "U": "${P}:${D}:${N}"},
            {"P": 8080, "D": True, "N": None, "U": "8080:true:"},
        ),
        # $${ is a literal ${; a bare $NAME is left for the script's shell.
        ({"T": "$${HOME} and $HOME"}, {"T": "${HOME} and $HOME"}),
        # Only ``$${`` is special: a ``$`` before it stays.
        ({"A": "x", "T": "$$${A}"}, {"A": "x", "T": "$${A}"}),
        # Secrets stay references, untouched.
        ({"PW": SECRET, "A": "a"}, {"PW": SECRET, "A": "a"}),
        ({"E": "", "F": "${E}${E}"}, {"E": "", "F": ""}),
    ],
)
def test_references_expand(variables: dict[str, Any], expected: dict[str, Any]) -> None:
    assert merging.expand_variables(variables, building.is_secret_ref) == expected
    assert merging.reference_problems(variables, building.is_secret_ref) == []


@pytest.mark.parametrize(
    ("variables", "problems"),
    [
        ({"A": "${MISSING}"}, [("A", Kind.UNDEFINED)]),
        ({"A": "${PW}", "PW": SECRET}, [("A", Kind.SECRET)]),
        ({"A": "${QUICFLOW_VERSION}"}, [("A", Kind.BUILTIN)]),
        ({"A": "${quicflow_run_id}"}, [("A", Kind.BUILTIN)]),
        ({"A": "${A}"}, [("A", Kind.CYCLE)]),
        ({"A": "${B}", "B": "${C}", "C": "${A}"}, [(n, Kind.CYCLE) for n in "ABC"]),
        ({"A": "${X:-1}"}, [("A", Kind.SYNTAX)]),
        ({"A": "${1X}"}, [("A", Kind.SYNTAX)]),
        ({"A": "open ${B"}, [("A", Kind.SYNTAX)]),
        # Only the root of a problem is reported, not what refers to it.
        ({"A": "${MISSING}", "B": "${A}"}, [("A", Kind.UNDEFINED)]),
        # A chain into a cycle: the cycle's members, not the chain.
        ({"A": "${B}", "B": "${C}", "C": "${B}"}, [("B", Kind.CYCLE), ("C", Kind.CYCLE)]),
    ],
)
def test_bad_references_are_problems(
    variables: dict[str, Any], problems: list[tuple[str, Kind]]
) -> None:
    found = merging.reference_problems(variables, building.is_secret_ref)
    assert [(p.variable, p.kind) for p in found] == problems
    with pytest.raises(merging.VariableReferenceError) as caught:
        merging.expand_variables(variables, building.is_secret_ref)
    assert caught.value.problem == found[0]


def test_problem_messages_name_the_variable_and_the_way_out() -> None:
    (cycle,) = [
        p
        for p in merging.reference_problems({"A": "${B}", "B": "${A}"}, building.is_secret_ref)
        if p.variable == "A"
    ]
    assert cycle.message == "variable 'A' refers to itself: A → B → A"
    (secret,) = merging.reference_problems({"A": "${PW}", "PW": SECRET}, building.is_secret_ref)
    assert "use $PW in the script" in secret.message
    # The message never holds a secret's value: there is none to hold at load time, and
    # the reference is refused rather than resolved.
    assert "password" not in secret.message


# -- the builder at each level -----------------------------------------------------------

PROJECT: dict[str, Any] = {
    "members": [{"user": "bob", "role": "owner"}],
    "variables": {"HOST": "project.example", "URL": "http://${HOST}:${PORT}/", "PORT": 80},
    "deploy": {"type": "script", "script": {"run": "true"}},
    "pipeline": {
        "stages": [
            {
                "name": "s",
                "tasks": [
                    {"name": "t", "run": "x", "variables": {"HOST": "task.example"}},
                    {"name": "u", "uses": "deploy"},
                ],
            }
        ]
    },
}


def test_a_project_value_takes_the_lower_levels_variables() -> None:
    env = building.environment(
        "app", "prod", PROJECT, {"version": "1", "variables": {"PORT": 8443}}, model.Source("x")
    )
    assert env.variables["URL"] == "http://project.example:8443/"
    tasks = {t.name: t for s in env.pipeline.stages for t in s.tasks}
    # The task overrides HOST: its own merged set expands URL again, with its HOST.
    assert tasks["t"].variables["URL"] == "http://task.example:8443/"
    assert tasks["u"].variables["URL"] == "http://project.example:8443/"


def test_the_project_set_on_its_own_stays_as_written() -> None:
    project = building.project("app", PROJECT, {}, model.Source("x"))
    assert project.variables["URL"] == "http://${HOST}:${PORT}/"


def test_the_config_hash_follows_a_referenced_variable() -> None:
    one = building.environment("app", "prod", PROJECT, {"version": "1"}, model.Source("x"))
    other = building.environment(
        "app", "prod", PROJECT, {"version": "1", "variables": {"PORT": 81}}, model.Source("x")
    )
    assert one.variables["URL"] != other.variables["URL"]
    assert one.config_hash != other.config_hash


# -- through the loader and a real release -------------------------------------------------

USERS = "users:\n  - {username: bob, email: bob@example.com}\n"
RELEASE_PROJECT = """\
members:
  - {user: bob, role: owner}
variables:
  BASE: /srv/app
  RELEASES: "${BASE}/releases"
  CURRENT: "${RELEASES}/$${QUICFLOW_VERSION}"
deploy:
  type: script
  script:
    run: printf '%s\\n%s\\n' "$RELEASES" "$CURRENT" > seen
"""


@pytest.mark.integration
async def test_a_release_script_sees_the_expanded_values(tmp_path: Path) -> None:
    repo = ConfigRepo(tmp_path / "config")
    repo.commit(
        {
            "quicflow.yaml": USERS,
            "projects/app/project.yaml": RELEASE_PROJECT,
            "projects/app/environments/prod.yaml": 'version: "1.0"\nvariables:\n'
            "  BASE: /opt/prod\ntargets:\n  - {local: t1}\n",
        }
    )
    desired = Loader(GitRepository.open(repo.path)).load().raise_for_problems()
    env = desired.environment("app", "prod")
    assert env is not None and env.variables["RELEASES"] == "/opt/prod/releases"
    rec = Reconciler(GitRepository.open(repo.path), tmp_path / "data")
    try:
        (run,) = (await rec.reconcile_once()).runs
    finally:
        await rec.close()
    assert run.state is RunState.SUCCEEDED, run.error
    seen = (tmp_path / "data" / "targets" / "app" / "prod" / "t1" / "seen").read_text()
    # Expanded before the run; the escaped ${QUICFLOW_VERSION} reaches the script literally.
    assert seen.splitlines() == ["/opt/prod/releases", "/opt/prod/releases/${QUICFLOW_VERSION}"]
