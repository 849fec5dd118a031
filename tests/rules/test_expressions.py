"""The ``when:`` condition language: parse, validate names, evaluate, fail clearly."""

from __future__ import annotations

import dataclasses

import pytest

from reconciler.rules import expressions
from reconciler.rules.expressions import (
    STANDARD_NAMES,
    ExpressionError,
    compile_expression,
    evaluate,
    is_true,
)

CONTEXT = {
    "project": "shop",
    "env": "prod",
    "version": "1.4.2",
    "previous_version": None,
    "trigger": "webhook",
    "vars": {"REGION": "eu-west", "REPLICAS": 3, "RATIO": 0.5, "CANARY": True, "nested": {}},
    "branch": "release/1.4",
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # literals
        ("'x'", "x"),
        ('"x"', "x"),
        ("'it\\'s'", "it's"),
        ('"a\\\\b\\n"', "a\\b\n"),
        ("42", 42),
        ("-7", -7),
        ("2.5", 2.5),
        ("true", True),
        ("false", False),
        ("null", None),
        ("[1, 'a', null]", [1, "a", None]),
        ("[]", []),
        ("[1, 2,]", [1, 2]),
        # names
        ("project", "shop"),
        ("vars.REGION", "eu-west"),
        ("vars.MISSING", None),
        ("vars.MISSING.deeper", None),
        ("vars.nested.x", None),
        ("previous_version", None),
        ("branch", "release/1.4"),
        # comparisons
        ("env == 'prod'", True),
        ("env != 'prod'", False),
        ("vars.REPLICAS > 2", True),
        ("vars.REPLICAS >= 3", True),
        ("vars.REPLICAS < 3", False),
        ("vars.REPLICAS <= 3.0", True),
        ("vars.RATIO < 1", True),
        ("version > '1.10'", True),  # strings compare as strings: versions need care
        ("'b' > 'a'", True),
        # no implicit conversions
        ("1 == '1'", False),
        ("true == 1", False),
        ("1 == 1.0", True),
        ("null == null", True),
        ("previous_version == null", True),
        ("vars.MISSING == null", True),
        ("[1, 'a'] == [1, 'a']", True),
        ("[1] == [true]", False),
        # membership
        ("env in ['staging', 'prod']", True),
        ("env not in ['staging', 'prod']", False),
        ("1 in [true]", False),
        ("'west' in vars.REGION", True),
        ("'REGION' in vars", True),
        ("'NOPE' in vars", False),
        ("'x' in vars.MISSING", False),
        ("'x' not in vars.MISSING", True),
        # logic, precedence, short-circuit
        ("true and false", False),
        ("true or false", True),
        ("not false", True),
        ("not not true", True),
        ("null or true", True),
        ("not null", True),
        ("false and 1 < 'x'", False),
        ("true or 1 < 'x'", True),
        ("vars.MISSING != null and vars.MISSING > 1", False),
        ("true or false and false", True),
        ("(true or false) and false", False),
        ("not env == 'dev'", True),
        ("vars.CANARY and trigger == 'webhook'", True),
        # functions
        ("startswith(branch, 'release/')", True),
        ("endswith(version, '.2')", True),
        ("matches(branch, 'release/*')", True),
        ("matches(branch, 'hotfix/*')", False),
        ("matches(version, '1.[0-4].*')", True),
        ("startswith(vars.MISSING, 'x')", False),
        ("not startswith(project, 'sh')", False),
    ],
)
def test_evaluates(text: str, expected: object) -> None:
    result = evaluate(compile_expression(text, CONTEXT.keys()), CONTEXT)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    ("text", "message", "column"),
    [
        ("", "empty condition", 1),
        ("   ", "empty condition", 1),
        ("env ==", "expected a value, found end of expression", 7),
        ("env = 'prod'", "use '==' to compare", 5),
        ("a && b", "use 'and' / 'or'", 3),
        ("!a", "use 'not'", 1),
        ("a # b", "unexpected character '#'", 3),
        ("'abc", "unterminated string", 1),
        ("'a\\qb'", "unknown escape", 3),
        ("version == 1.2.3", "malformed number '1.2.3'", 12),
        ("(env == 'x'", "expected ')'", 12),
        ("env == 'x')", "unexpected ')'", 11),
        ("[1, 2", "expected ',' or ']'", 6),
        ("[1 2]", "expected ',' or ']'", 4),
        ("a < b < c", "cannot be chained", 7),
        ("env == 'a' 'b'", "unexpected string 'b'", 12),
        ("vars.", "expected a name after '.'", 6),
        ("vars.1", "expected a name after '.'", 6),
        ("eval('1')", "unknown function 'eval'", 1),
        ("__import__('os')", "unknown function '__import__'", 1),
        ("startswith(env)", "takes 2 arguments, got 1", 1),
        ("matches(env, 'a', 'b')", "takes 2 arguments, got 3", 1),
        ("not", "expected a value", 4),
        ("and", "expected a value", 1),
        ("env in", "expected a value", 7),
        ("True", "unknown name 'True'", 1),
        ("enviroment == 'prod'", "unknown name 'enviroment'", 1),
        ("env == 'prod' and projet == 'x'", "unknown name 'projet'", 19),
        ("startswith(brnch, 'x')", "unknown name 'brnch'", 12),
    ],
)
def test_rejects_at_compile_time(text: str, message: str, column: int) -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_expression(text, STANDARD_NAMES)
    assert message in caught.value.message
    assert caught.value.column == column
    assert f"column {column}" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("vars.REPLICAS < 'ten'", "cannot compare an integer 3 with a string 'ten' using '<'"),
        ("env > 1", "cannot compare a string 'prod' with an integer 1 using '>'"),
        ("vars.MISSING > 1", "cannot compare null with an integer 1"),
        ("true >= false", "cannot compare a boolean True"),
        ("[1] < [2]", "cannot compare a list"),
        ("vars.REGION and true", "'and' needs true, false or null, got a string 'eu-west'"),
        ("not vars.REPLICAS", "'not' needs true, false or null, got an integer 3"),
        ("1 in 'abc'", "'in' a string needs a string on the left"),
        ("'a' in 3", "'in' needs a list, string or mapping on the right, got an integer"),
        ("startswith(vars.REPLICAS, 'x')", "startswith() needs two strings"),
        ("env.name == 'x'", "env is a string, it has no field 'name'"),
        ("undeclared == 1", "unknown name 'undeclared'"),
    ],
)
def test_type_errors_at_evaluation(text: str, message: str) -> None:
    expression = compile_expression(text)  # no name list: the error must come at evaluation
    with pytest.raises(ExpressionError) as caught:
        evaluate(expression, CONTEXT)
    assert message in str(caught.value)
    assert caught.value.column >= 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("env == 'prod'", True),
        ("env == 'dev'", False),
        ("vars.MISSING", False),  # null is false
        ("vars.CANARY", True),
    ],
)
def test_is_true(text: str, expected: bool) -> None:
    assert is_true(compile_expression(text), CONTEXT) is expected


def test_is_true_rejects_non_boolean_results() -> None:
    with pytest.raises(ExpressionError, match="the condition needs true, false or null"):
        is_true(compile_expression("vars.REGION"), CONTEXT)


def test_compiled_expression_is_immutable_and_lists_names() -> None:
    expression = compile_expression("env == 'prod' and startswith(vars.A, project)")
    assert expression.names == frozenset({"env", "vars", "project"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        expression.text = "true"  # type: ignore[misc]
    # evaluate also accepts the bare tree
    assert evaluate(expression.tree, {"env": "prod", "vars": {}, "project": "x"}) is False


def test_keywords_are_usable_as_keys_after_a_dot() -> None:
    expression = compile_expression("vars.in == 1 and vars.not == 2")
    assert evaluate(expression, {"vars": {"in": 1, "not": 2}}) is True


def test_python_syntax_is_not_code() -> None:
    # Attribute access and dunder names are just missing mapping keys, never Python.
    expression = compile_expression("vars.__class__ == null and project.__len__ == null")
    with pytest.raises(ExpressionError, match="project is a string"):
        evaluate(expression, {"vars": {}, "project": "shop"})
    assert evaluate(compile_expression("vars.__class__"), {"vars": {}}) is None


@pytest.mark.parametrize(
    "text",
    [
        "(" * (expressions.MAX_DEPTH + 1) + "true" + ")" * (expressions.MAX_DEPTH + 1),
        "not " * (expressions.MAX_DEPTH + 1) + "true",
        "[" * (expressions.MAX_DEPTH + 1) + "]" * (expressions.MAX_DEPTH + 1),
    ],
)
def test_nesting_is_bounded(text: str) -> None:
    with pytest.raises(ExpressionError, match="nested deeper than"):
        compile_expression(text)


def test_length_is_bounded() -> None:
    with pytest.raises(ExpressionError, match="longer than"):
        compile_expression("true or " * 300 + "true")


def test_non_string_condition_is_rejected() -> None:
    with pytest.raises(ExpressionError, match="must be a string"):
        compile_expression(True)  # type: ignore[arg-type]


def test_unicode_letters_are_not_names() -> None:
    with pytest.raises(ExpressionError, match="unexpected character 'é'"):
        compile_expression("é == 1")
    with pytest.raises(ExpressionError, match="unexpected character '²'"):
        compile_expression("²")
