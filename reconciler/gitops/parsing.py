"""YAML parsing for config files: strict, fast, and able to say where a value is.

- libyaml (``CSafeLoader``) does the scanning, so parsing thousands of files is cheap.
- Booleans follow YAML 1.2 (only true/false), so ``restart_policy: no`` stays the
  string "no" instead of silently becoming False.
- A duplicate key is an error (plain PyYAML keeps the last one without a word). Merge
  keys follow YAML 1.1: ``<<: *base`` then ``key: value`` overrides what ``base`` set,
  as in ``docker-compose`` files; only a key written twice in one mapping is refused.
- Text must be UTF-8; a byte that is not is reported at its line and column.
- ``locate`` finds the line and column of a JSON path by composing the text again;
  it runs only when there is a problem to report.

Pure: works on text, does no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

try:
    _BaseLoader: type = yaml.CSafeLoader
except AttributeError:  # libyaml missing: the pure-Python loader is correct, only slower
    _BaseLoader = yaml.SafeLoader


class _StrictLoader(_BaseLoader):  # type: ignore[misc,valid-type]
    """SafeLoader with YAML 1.2 booleans and duplicate-key detection."""


_StrictLoader.yaml_implicit_resolvers = {  # type: ignore[attr-defined]
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in _BaseLoader.yaml_implicit_resolvers.items()  # type: ignore[attr-defined]
}
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _construct_mapping(loader: Any, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, yaml.Node] = {}
    # Duplicates are looked for among the keys written in this mapping, before merge keys
    # are expanded: a key written after ``<<: *base`` overrides base's (YAML 1.1).
    for key_node, _ in node.value:
        if key_node.tag == _MERGE_TAG:
            continue
        # Scalar keys are compared by their resolved text without constructing them
        # twice (this runs for every mapping of every file); others are constructed.
        if isinstance(key_node, yaml.ScalarNode):
            key: Any = (key_node.tag, key_node.value)
        else:
            key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"duplicate key {_shown(key_node, key)!r} (first at line {seen[key].start_mark.line + 1})",
                key_node.start_mark,
            )
        seen[key] = key_node
    loader.flatten_mapping(node)  # merged keys first, so the mapping's own keys win
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


def _shown(key_node: yaml.Node, key: Any) -> Any:
    return key_node.value if isinstance(key_node, yaml.ScalarNode) else key


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


@dataclass(frozen=True, slots=True)
class SyntaxProblem:
    """A YAML syntax error at a position (1-based)."""

    line: int
    column: int
    message: str


def parse(text: bytes | str) -> Any:
    """Parse one YAML document; raise SyntaxProblem-bearing ValueError on bad YAML."""
    if isinstance(text, bytes):
        raw = text
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
            raise YamlSyntaxError(
                SyntaxProblem(
                    line,
                    column,
                    f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at line {line} column "
                    f"{column} ({exc.reason}); save the file as UTF-8",
                )
            ) from None
        text = text.removeprefix("\ufeff")
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        column = mark.column + 1 if mark else 0
        problem = exc.problem or "invalid YAML"
        if exc.context and "duplicate key" not in problem:
            problem = f"{exc.context}: {problem}" if exc.context not in problem else problem
        raise YamlSyntaxError(
            SyntaxProblem(line, column, f"YAML syntax error: {problem}")
        ) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(SyntaxProblem(0, 0, f"YAML syntax error: {exc}")) from None
    except UnicodeDecodeError as exc:
        raise YamlSyntaxError(SyntaxProblem(0, 0, f"not UTF-8 text: {exc.reason}")) from None


class YamlSyntaxError(ValueError):
    """Raised by ``parse``; carries the located problem."""

    def __init__(self, problem: SyntaxProblem):
        super().__init__(problem.message)
        self.problem = problem


def locate(text: bytes | str, path: Sequence[str | int], at_key: bool = False) -> tuple[int, int]:
    """1-based (line, column) of the node at ``path``; the deepest existing ancestor if absent.

    With ``at_key`` the position of the mapping key itself is returned (used for
    "unknown key" problems, where the key is what is wrong).
    """
    try:
        node = yaml.compose(text, Loader=_StrictLoader)  # noqa: S506
    except yaml.YAMLError:
        return (0, 0)
    if node is None:
        return (1, 1)
    mark = node.start_mark
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if key_node.value == str(part) or (
                    isinstance(part, int) and key_node.value == str(part)
                ):
                    mark = key_node.start_mark if (last and at_key) else value_node.start_mark
                    node = value_node
                    break
            else:
                return (mark.line + 1, mark.column + 1)
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
            mark = node.start_mark
        else:
            break
    return (mark.line + 1, mark.column + 1)


def json_path(parts: Sequence[str | int]) -> str:
    """``$.a.b[0].c`` for a path; keys that are not identifiers are quoted."""
    out = "$"
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", part):
            out += f".{part}"
        else:
            out += f"[{part!r}]"
    return out
