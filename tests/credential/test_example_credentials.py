"""The example config repo's credentials are real SOPS files that the demo age key opens."""

from __future__ import annotations

from pathlib import Path

from gitrepos import EXAMPLE, ConfigRepo

from reconciler.credential import age, documents
from reconciler.gitops.loading import Loader
from reconciler.gitops.repository import GitRepository

KEY = EXAMPLE.parent / "demo-age-key.txt"


def test_every_example_credentials_file_decrypts_and_matches_the_loader(
    example_repo: ConfigRepo,
) -> None:
    identities = age.identities_from_env({"SOPS_AGE_KEY_FILE": str(KEY)})
    desired = Loader(GitRepository.open(example_repo.path)).load().raise_for_problems()
    files = sorted(EXAMPLE.rglob("credentials.sops.yaml"))
    assert len(files) == 4
    for path in files:
        rel = path.relative_to(EXAMPLE).as_posix()
        scope = documents.scope_for_path(rel)
        creds = documents.load_credentials(
            path.read_text(), rel, scope, identities, backend="native"
        )
        assert creds
        for cred in creds.values():
            info = desired.credential_for(cred.info.name, scope.project)
            assert info is not None and info.type == cred.info.type.value
            assert any(v for v in cred.secret_values())


def test_a_plain_secret_in_a_credentials_file_is_refused(
    config_repo: ConfigRepo, minimal_files: dict[str, str], tmp_path: Path
) -> None:
    files = dict(minimal_files)
    files["credentials.sops.yaml"] = (
        "credentials:\n  db: {type: username_password, password: hunter2}\n"
    )
    config_repo.commit(files)
    result = Loader(GitRepository.open(config_repo.path)).load()
    assert not result.ok
    (problem,) = result.problems
    assert (problem.path, problem.line, problem.json_path) == (
        "credentials.sops.yaml",
        2,
        "$.credentials.db.password",
    )
    assert "a plain value must never be committed" in problem.message
    assert "hunter2" not in str(problem)
