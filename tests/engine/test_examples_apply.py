"""``quicflow apply`` on the shipped example config repo: its script projects really release.

The example repo is copied into a fresh Git repository and applied by a real
``python -m reconciler apply`` subprocess with the demo age key, so billing's SOPS
credentials decrypt for real. billing/dev and billing/staging deploy to local targets;
billing/prod waits — for its release window (Mon–Thu 09:00–17:00 Europe/Berlin) or,
inside it, for an approval — and the output says which. The outcomes are then read back
from Git exactly as an engineer would: ``git notes`` on the applied commit and ``git
log`` of the state ref. Projects this process cannot run (containers and agents without
a hub, Kubernetes while the example turns it off) are reported as skipped and do not
fail the pass.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from gitrepos import ROOT, ConfigRepo, git

pytestmark = pytest.mark.integration

AGE_KEY = ROOT / "examples" / "demo-age-key.txt"
AGENTS_MISSING = "its targets are agents and no QUIC hub runs in this process"
SKIPPED = {
    # The example turns Kubernetes off: the demo never reaches for a cluster by default.
    "catalog": ("deploy type 'kubernetes' is turned off (settings.features.kubernetes)",),
    # Containers run on agents: without a hub, whichever of the two is checked first.
    "shop": ("deploy type 'container' is not available", AGENTS_MISSING),
    "docs-site": (AGENTS_MISSING,),
}


def apply(
    repo: Path, data: Path, *extra: str, first_on_path: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SOPS_") and not k.startswith("QUIC_FLOW_")
    }
    env.update(
        PYTHONPATH=os.pathsep.join(str(p) for p in (first_on_path, ROOT) if p is not None),
        SOPS_AGE_KEY_FILE=str(AGE_KEY),
        XDG_CONFIG_HOME=str(data.parent / "xdg"),  # no key from the developer's home
    )
    return subprocess.run(
        [sys.executable, "-m", "reconciler", "apply", "--repo", str(repo), "--data", str(data)]
        + list(extra),
        cwd=data.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def lines_about(output: str, key: str) -> list[str]:
    return [line for line in output.splitlines() if f" {key} " in f" {line} "]


def test_apply_releases_the_example_script_project(
    example_repo: ConfigRepo, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    commit = git(example_repo.path, "rev-parse", "HEAD")
    result = apply(example_repo.path, data, "--only", "billing")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout

    (dev,) = lines_about(out, "billing/dev")
    (staging,) = lines_about(out, "billing/staging")
    (prod,) = lines_about(out, "billing/prod")
    assert dev.endswith("(nothing) -> 1.4.0: succeeded")
    assert staging.endswith("(nothing) -> 1.3.2: succeeded")
    # prod waits for a person or a clock, whichever applies at the moment the test runs.
    assert "waiting_window (release window closed; opens 20" in prod or (
        "waiting_approval" in prod and "quicflow approve r-" in prod
    ), prod
    assert not any(p in out for p in SKIPPED)  # --only billing: nothing else is looked at

    targets = data / "targets" / "billing"
    assert (targets / "dev" / "dev-1" / "releases" / "current").read_text() == "1.4.0\n"
    for name in ("staging-1", "staging-2"):
        assert (targets / "staging" / name / "releases" / "current").read_text() == "1.3.2\n"
    assert not (targets / "prod").exists()

    # History in the example repo itself: one note line per finished run, one state commit each.
    note = git(example_repo.path, "notes", "--ref=quicflow", "show", commit).splitlines()
    assert len(note) == 2
    assert any("billing/dev nothing -> 1.4.0 succeeded" in line for line in note)
    assert any("billing/staging nothing -> 1.3.2 succeeded" in line for line in note)
    state = git(example_repo.path, "log", "--format=%s", "refs/quicflow/state").splitlines()
    assert sorted(state) == [
        "billing/dev: nothing -> 1.4.0 succeeded",
        "billing/staging: nothing -> 1.3.2 succeeded",
    ]
    shown = git(example_repo.path, "log", "--notes=quicflow", "-1", commit)
    assert "billing/staging nothing -> 1.3.2 succeeded" in shown

    # Without --only: the rest is reported as skipped, nothing fails, nothing is redeployed.
    everything = apply(example_repo.path, data)
    assert everything.returncode == 0, everything.stdout + everything.stderr
    out = everything.stdout
    skipped = [
        line.removeprefix("skipped ") for line in out.splitlines() if line.startswith("skipped ")
    ]
    for project, reason in SKIPPED.items():
        mine = [line for line in skipped if line.startswith(f"{project}/")]
        assert mine and all(any(r in line for r in reason) for line in mine), (project, out)
    assert sorted(line.split(":")[0] for line in skipped) == sorted(
        f"{project}/{env}"
        for project, envs in (
            ("catalog", ("dev", "staging", "prod")),
            ("docs-site", ("dev", "staging", "prod")),
            ("shop", ("dev", "staging", "perf", "prod")),
        )
        for env in envs
    )
    assert lines_about(out, "billing/dev") == [] and lines_about(out, "billing/staging") == []
    (still,) = lines_about(out, "billing/prod")
    assert still.split()[0] == prod.split()[0]  # the same waiting run, not a new one
    assert git(example_repo.path, "log", "--format=%s", "refs/quicflow/state").splitlines() == state


# Put first on PYTHONPATH, this makes ``import kubernetes`` fail as it does where the
# ``quicflow[kubernetes]`` extra is not installed (a simulation: the package is here).
NO_KUBERNETES = """\
import sys


class _NoKubernetes:
    def find_spec(self, name, path=None, target=None):
        if name == "kubernetes" or name.startswith("kubernetes."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, _NoKubernetes())
"""


def test_without_the_kubernetes_extra_the_example_runs_and_says_what_is_missing(
    example_repo: ConfigRepo, tmp_path: Path
) -> None:
    blocker = tmp_path / "no-kubernetes"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(NO_KUBERNETES)
    # The README's `pip install -e .` has no kubernetes client: the engine must not need it
    # to import, and a Kubernetes environment turned on is skipped, saying what to install.
    config = (example_repo.path / "quicflow.yaml").read_text()
    turned_on = config.replace("kubernetes: false", "kubernetes: true", 1)
    assert turned_on != config
    example_repo.commit({"quicflow.yaml": turned_on}, message="turn kubernetes on")
    data = tmp_path / "data"
    result = apply(example_repo.path, data, "--only", "catalog", first_on_path=blocker)
    assert result.returncode == 0, result.stdout + result.stderr
    skipped = [line for line in result.stdout.splitlines() if line.startswith("skipped catalog/")]
    assert skipped and all("pip install 'quicflow[kubernetes]'" in s for s in skipped), (
        result.stdout
    )
    assert "Traceback" not in result.stdout + result.stderr
