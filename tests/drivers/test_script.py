"""The ``script`` deploy type's ``workdir``: relative to the target's work dir, never the reconciler's.

A real config repo, a real reconciler, a local target; the reconciler runs from a
directory of its own, which must stay empty.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from gitrepos import ConfigRepo

from reconciler.engine.reconciling import Reconciler
from reconciler.gitops.repository import GitRepository
from reconciler.runs import RunState

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("absolute", [False, True])
async def test_the_deploy_script_runs_in_its_workdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, absolute: bool
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    work = tmp_path / "data" / "targets" / "app" / "prod" / "t1"
    workdir = str(tmp_path / "srv") if absolute else "releases/current"
    repo = ConfigRepo(tmp_path / "config")
    repo.commit(
        {
            "quicflow.yaml": "users:\n  - {username: bob, email: bob@example.com}\n",
            "projects/app/project.yaml": f"""\
members:
  - {{user: bob, role: owner}}
deploy:
  type: script
  script:
    workdir: "{workdir}"
    run: mkdir -p "$QUICFLOW_WORK_DIR"; pwd -P > "$QUICFLOW_WORK_DIR/ran-in"
""",
            "projects/app/environments/prod.yaml": 'version: "1.0"\ntargets:\n  - {local: t1}\n',
        }
    )
    rec = Reconciler(GitRepository.open(repo.path), tmp_path / "data")
    try:
        (run,) = (await rec.reconcile_once()).runs
    finally:
        await rec.close()
    assert run.state is RunState.SUCCEEDED, run.error
    expected = Path(workdir) if absolute else work / workdir
    assert (work / "ran-in").read_text().strip() == str(expected.resolve())
    assert list(elsewhere.iterdir()) == []
