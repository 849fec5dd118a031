"""The schemas: the compiled fast check agrees with jsonschema on every file we have."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from reconciler.gitops import parsing, schemas

ROOT = Path(__file__).resolve().parents[2]


def _kind(path: str) -> str | None:
    if path.endswith("quicflow.yaml"):
        return "quicflow"
    if path.endswith("credentials.sops.yaml"):
        return "credentials"
    if path.endswith("project.yaml"):
        return "project"
    if "/environments/" in path or path.startswith("environments/"):
        return "environment"
    return None


def _documents() -> list[tuple[str, str, object]]:
    docs = []
    for path in sorted((ROOT / "examples" / "config-repo").rglob("*.yaml")):
        kind = _kind(path.as_posix())
        if kind:
            docs.append((path.relative_to(ROOT).as_posix(), kind, parsing.parse(path.read_text())))
    for case in sorted((ROOT / "tests" / "cases" / "broken").glob("*/case.yaml")):
        spec = yaml.safe_load(case.read_text())
        for name, text in (spec.get("files") or {}).items():
            kind = _kind(name)
            if kind is None or text is None:
                continue
            try:
                data = parsing.parse(text)
            except parsing.YamlSyntaxError:
                continue
            docs.append((f"{case.parent.name}:{name}", kind, {} if data is None else data))
    return docs


DOCUMENTS = _documents()


def test_there_are_enough_documents_to_compare() -> None:
    assert len(DOCUMENTS) >= 80
    assert {kind for _, kind, _ in DOCUMENTS} == set(schemas.KINDS)


@pytest.mark.parametrize(("name", "kind", "document"), DOCUMENTS, ids=[d[0] for d in DOCUMENTS])
def test_fast_check_agrees_with_jsonschema(name: str, kind: str, document: object) -> None:
    assert schemas.is_valid(kind, document) == schemas.validator(kind).is_valid(document)


def test_every_ref_is_inlined() -> None:
    for kind in schemas.KINDS:
        assert "$ref" not in str(schemas.validator(kind).schema)
