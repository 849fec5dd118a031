"""The ``when:`` condition language: a small, safe expression language for pipelines.

User text is never handed to Python's ``eval``, ``compile`` or ``ast``: a hand-written
tokenizer and recursive-descent parser build an immutable tree of frozen nodes, and
``evaluate`` walks that tree over a context mapping. Nothing in an expression can call
Python, touch attributes of objects, loop or allocate without bound.

Grammar (lowest precedence first; keywords are lower case)::

    expression  := or_expr
    or_expr     := and_expr ( "or" and_expr )*
    and_expr    := not_expr ( "and" not_expr )*
    not_expr    := "not" not_expr | comparison
    comparison  := operand [ comp_op operand ]          # not chainable: a < b < c is an error
    comp_op     := "==" | "!=" | "<" | "<=" | ">" | ">=" | "in" | "not" "in"
    operand     := literal | list | call | name | "(" expression ")"
    list        := "[" [ expression ( "," expression )* [ "," ] ] "]"
    call        := IDENT "(" [ expression ( "," expression )* ] ")"
    name        := IDENT ( "." IDENT )*
    literal     := STRING | NUMBER | "true" | "false" | "null"
    STRING      := '…' | "…"            # escapes: \\ \' \" \n \t
    NUMBER      := [ "-" ] digits [ "." digits ]
    IDENT       := [A-Za-z_][A-Za-z0-9_]*

Names resolve in the context mapping: ``project``, ``env``, ``version``,
``previous_version``, ``trigger``, ``vars.NAME`` and anything else the engine puts
there. A dotted name looks up keys in nested mappings; a missing key (``vars.NOPE``)
is ``null``, not an error, so conditions can test ``vars.X != null``. A first name
missing from the context is an error (compiling with the allowed names catches it at
validate time), since it is a typo far more often than an intended null.

Functions: ``startswith(s, prefix)``, ``endswith(s, suffix)``, ``matches(s, glob)``
(fnmatch-style, case-sensitive). Each returns ``false`` when ``s`` is null.

Semantics, chosen to avoid surprises in release conditions:

- no implicit conversions: ``1 == "1"`` is false, ``true == 1`` is false;
- ``<``, ``<=``, ``>``, ``>=`` need two numbers or two strings, else an
  ``ExpressionError`` at evaluation;
- ``x in list`` tests membership, ``s in string`` substring, ``k in mapping`` a key;
  ``x in null`` is false (a missing list behaves as an empty one);
- ``and``, ``or``, ``not`` take booleans (``null`` counts as false) and short-circuit,
  so ``vars.N != null and vars.N > 3`` is safe; other operand types are an error,
  because the string ``"false"`` being true is exactly the bug a release gate must not
  have.

``compile_expression`` reports syntax errors, unknown functions, wrong argument
counts and — when given the allowed names — unknown names, as ``ExpressionError`` with
the 1-based column, so the config loader rejects a bad ``when:`` at validate time.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from reconciler import errors

#: Names every pipeline condition may use (the engine may add more built-ins).
STANDARD_NAMES: frozenset[str] = frozenset(
    {"project", "env", "version", "previous_version", "trigger", "vars"}
)

#: Longest expression accepted; conditions are one-liners, this only bounds the work.
MAX_LENGTH = 2000
#: Deepest nesting of parentheses, lists, calls and ``not`` accepted.
MAX_DEPTH = 50

_KEYWORDS = frozenset({"and", "or", "not", "in", "true", "false", "null"})
_COMPARISONS = frozenset({"==", "!=", "<", "<=", ">", ">=", "in", "not in"})
# ASCII only: str.isdigit()/isalpha() accept "²" or "é", which int() and users reject.
_DIGITS = frozenset("0123456789")
_NAME_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_NAME_CHARS = _NAME_START | _DIGITS
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t"}


class ExpressionError(errors.QuicFlowError):
    """A condition that cannot be parsed or evaluated; ``column`` is 1-based (0: unknown)."""

    def __init__(self, message: str, column: int = 0):
        self.message = message
        self.column = column
        super().__init__(f"{message} (at column {column})" if column else message)


# --------------------------------------------------------------------------- tree


@dataclass(frozen=True, slots=True)
class Literal:
    """A string, number, boolean or null written in the expression."""

    value: str | int | float | bool | None
    column: int


@dataclass(frozen=True, slots=True)
class ListNode:
    """A list literal ``[a, b, …]``."""

    items: tuple[Node, ...]
    column: int


@dataclass(frozen=True, slots=True)
class Name:
    """A (possibly dotted) name looked up in the context: ``vars.REGION``."""

    path: tuple[str, ...]
    column: int


@dataclass(frozen=True, slots=True)
class Call:
    """A call of one of the built-in functions."""

    function: str
    args: tuple[Node, ...]
    column: int


@dataclass(frozen=True, slots=True)
class Not:
    """Logical negation."""

    operand: Node
    column: int


@dataclass(frozen=True, slots=True)
class Logical:
    """``and`` / ``or`` with short-circuit evaluation."""

    op: str
    left: Node
    right: Node
    column: int


@dataclass(frozen=True, slots=True)
class Comparison:
    """One of ``== != < <= > >= in``, ``not in``."""

    op: str
    left: Node
    right: Node
    column: int


Node = Literal | ListNode | Name | Call | Not | Logical | Comparison


@dataclass(frozen=True, slots=True)
class Expression:
    """A compiled condition: its source text, its tree and the top-level names it reads."""

    text: str
    tree: Node
    names: frozenset[str]


# --------------------------------------------------------------------------- tokens


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "string", "number", "ident", "keyword", "op", "end"
    value: Any
    column: int


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        column = i + 1
        if char in " \t\r\n":
            i += 1
        elif char in "'\"":
            string, i = _read_string(text, i)
            tokens.append(_Token("string", string, column))
        elif char in _DIGITS or (char == "-" and i + 1 < n and text[i + 1] in _DIGITS):
            number, i = _read_number(text, i)
            tokens.append(_Token("number", number, column))
        elif char in _NAME_START:
            start = i
            while i < n and text[i] in _NAME_CHARS:
                i += 1
            word = text[start:i]
            tokens.append(_Token("keyword" if word in _KEYWORDS else "ident", word, column))
        elif text.startswith(("==", "!=", "<=", ">="), i):
            tokens.append(_Token("op", text[i : i + 2], column))
            i += 2
        elif char in "<>()[],.":
            tokens.append(_Token("op", char, column))
            i += 1
        else:
            raise ExpressionError(_unexpected_character_message(text, i), column)
    tokens.append(_Token("end", None, n + 1))
    return tokens


def _unexpected_character_message(text: str, i: int) -> str:
    # Hints for the operators people bring from other languages.
    two = text[i : i + 2]
    if two in ("&&", "||"):
        return f"unexpected {two!r}; use 'and' / 'or'"
    if text[i] == "=":
        return "unexpected '='; use '==' to compare"
    if text[i] == "!":
        return "unexpected '!'; use 'not' or '!='"
    return f"unexpected character {text[i]!r}"


def _read_string(text: str, i: int) -> tuple[str, int]:
    quote, start = text[i], i
    parts: list[str] = []
    i += 1
    while i < len(text):
        char = text[i]
        if char == quote:
            return "".join(parts), i + 1
        if char == "\\":
            escaped = text[i + 1] if i + 1 < len(text) else ""
            if escaped not in _ESCAPES:
                raise ExpressionError(f"unknown escape '\\{escaped}' in string", i + 1)
            parts.append(_ESCAPES[escaped])
            i += 2
        else:
            parts.append(char)
            i += 1
    raise ExpressionError("unterminated string", start + 1)


def _read_number(text: str, i: int) -> tuple[int | float, int]:
    start = i
    if text[i] == "-":
        i += 1
    while i < len(text) and text[i] in _DIGITS:
        i += 1
    is_float = i + 1 < len(text) and text[i] == "." and text[i + 1] in _DIGITS
    if is_float:
        i += 1
        while i < len(text) and text[i] in _DIGITS:
            i += 1
    if i < len(text) and (text[i] in _NAME_CHARS or text[i] == "."):
        # "1.2.3" or "3abc": almost always a version someone forgot to quote.
        end = i
        while end < len(text) and (text[end] in _NAME_CHARS or text[end] == "."):
            end += 1
        raise ExpressionError(
            f"malformed number {text[start:end]!r}; quote versions as strings", start + 1
        )
    literal = text[start:i]
    return (float(literal) if is_float else int(literal)), i


# --------------------------------------------------------------------------- parser

_FUNCTION_ARITY = {"startswith": 2, "endswith": 2, "matches": 2}


class _Parser:
    """Recursive descent over the token list; one method per grammar rule."""

    def __init__(self, tokens: list[_Token]):
        self.tokens = tokens
        self.position = 0
        self.depth = 0

    @property
    def current(self) -> _Token:
        return self.tokens[self.position]

    def _advance(self) -> _Token:
        token = self.tokens[self.position]
        self.position += 1
        return token

    def _at(self, kind: str, value: Any = None) -> bool:
        token = self.current
        return token.kind == kind and (value is None or token.value == value)

    def _expect_op(self, value: str, what: str) -> _Token:
        if not self._at("op", value):
            raise ExpressionError(
                f"expected {value!r} {what}, found {_describe(self.current)}", self.current.column
            )
        return self._advance()

    def _enter(self, column: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExpressionError(f"expression nested deeper than {MAX_DEPTH} levels", column)

    def parse(self) -> Node:
        node = self.expression()
        if not self._at("end"):
            raise ExpressionError(f"unexpected {_describe(self.current)}", self.current.column)
        return node

    def expression(self) -> Node:
        return self.or_expr()

    def or_expr(self) -> Node:
        node = self.and_expr()
        while self._at("keyword", "or"):
            column = self._advance().column
            node = Logical("or", node, self.and_expr(), column)
        return node

    def and_expr(self) -> Node:
        node = self.not_expr()
        while self._at("keyword", "and"):
            column = self._advance().column
            node = Logical("and", node, self.not_expr(), column)
        return node

    def not_expr(self) -> Node:
        if self._at("keyword", "not"):
            column = self._advance().column
            self._enter(column)
            operand = self.not_expr()
            self.depth -= 1
            return Not(operand, column)
        return self.comparison()

    def comparison(self) -> Node:
        left = self.operand()
        op_token = self._comparison_operator()
        if op_token is None:
            return left
        op, column = op_token
        right = self.operand()
        if self._comparison_operator(peek=True) is not None:
            raise ExpressionError(
                "comparisons cannot be chained; combine them with 'and'", self.current.column
            )
        return Comparison(op, left, right, column)

    def _comparison_operator(self, peek: bool = False) -> tuple[str, int] | None:
        token = self.current
        if token.kind == "op" and token.value in _COMPARISONS:
            if not peek:
                self._advance()
            return token.value, token.column
        if token.kind == "keyword" and token.value == "in":
            if not peek:
                self._advance()
            return "in", token.column
        if token.kind == "keyword" and token.value == "not":
            following = self.tokens[self.position + 1]
            if following.kind == "keyword" and following.value == "in":
                if not peek:
                    self.position += 2
                return "not in", token.column
        return None

    def operand(self) -> Node:
        token = self.current
        if token.kind in ("string", "number"):
            self._advance()
            return Literal(token.value, token.column)
        if token.kind == "keyword" and token.value in ("true", "false", "null"):
            self._advance()
            value = {"true": True, "false": False, "null": None}[token.value]
            return Literal(value, token.column)
        if self._at("op", "("):
            self._advance()
            self._enter(token.column)
            node = self.expression()
            self.depth -= 1
            self._expect_op(")", "to close the '(' at column " + str(token.column))
            return node
        if self._at("op", "["):
            return self.list_literal()
        if token.kind == "ident":
            if (
                self.tokens[self.position + 1].kind == "op"
                and self.tokens[self.position + 1].value == "("
            ):
                return self.call()
            return self.name()
        raise ExpressionError(f"expected a value, found {_describe(token)}", token.column)

    def list_literal(self) -> Node:
        opening = self._advance()
        self._enter(opening.column)
        items: list[Node] = []
        while not self._at("op", "]"):
            items.append(self.expression())
            if self._at("op", ","):
                self._advance()
            elif not self._at("op", "]"):
                raise ExpressionError(
                    f"expected ',' or ']' in list, found {_describe(self.current)}",
                    self.current.column,
                )
        self._advance()
        self.depth -= 1
        return ListNode(tuple(items), opening.column)

    def call(self) -> Node:
        name_token = self._advance()
        function = name_token.value
        if function not in _FUNCTION_ARITY:
            known = ", ".join(sorted(_FUNCTION_ARITY))
            raise ExpressionError(
                f"unknown function {function!r} (known: {known})", name_token.column
            )
        self._advance()  # "("
        self._enter(name_token.column)
        args: list[Node] = []
        if not self._at("op", ")"):
            args.append(self.expression())
            while self._at("op", ","):
                self._advance()
                args.append(self.expression())
        self._expect_op(")", f"to close the call of {function}()")
        self.depth -= 1
        if len(args) != _FUNCTION_ARITY[function]:
            raise ExpressionError(
                f"{function}() takes {_FUNCTION_ARITY[function]} arguments, got {len(args)}",
                name_token.column,
            )
        return Call(function, tuple(args), name_token.column)

    def name(self) -> Node:
        first = self._advance()
        path = [first.value]
        while self._at("op", "."):
            self._advance()
            segment = self.current
            if segment.kind not in ("ident", "keyword"):
                raise ExpressionError(
                    f"expected a name after '.', found {_describe(segment)}", segment.column
                )
            # Keywords are fine as keys: vars.in is the key "in", not the operator.
            self._advance()
            path.append(segment.value)
        return Name(tuple(path), first.column)


def _describe(token: _Token) -> str:
    if token.kind == "end":
        return "end of expression"
    if token.kind == "string":
        return f"string {token.value!r}"
    return repr(str(token.value))


def _names_in(node: Node, found: list[Name]) -> None:
    if isinstance(node, Name):
        found.append(node)
    elif isinstance(node, ListNode):
        for item in node.items:
            _names_in(item, found)
    elif isinstance(node, Call):
        for arg in node.args:
            _names_in(arg, found)
    elif isinstance(node, Not):
        _names_in(node.operand, found)
    elif isinstance(node, Logical | Comparison):
        _names_in(node.left, found)
        _names_in(node.right, found)


def compile_expression(text: str, names: Collection[str] | None = None) -> Expression:
    """Parse ``text``; with ``names``, also reject names whose first part is not in it."""
    if not isinstance(text, str):
        raise ExpressionError(f"a condition must be a string, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"condition longer than {MAX_LENGTH} characters")
    if not text.strip():
        raise ExpressionError("empty condition", 1)
    tree = _Parser(_tokenize(text)).parse()
    found: list[Name] = []
    _names_in(tree, found)
    if names is not None:
        for name in found:
            if name.path[0] not in names:
                known = ", ".join(sorted(names))
                raise ExpressionError(
                    f"unknown name {name.path[0]!r} (known: {known})", name.column
                )
    return Expression(text, tree, frozenset(name.path[0] for name in found))


# --------------------------------------------------------------------------- evaluation


def evaluate(expression: Expression | Node, context: Mapping[str, Any]) -> Any:
    """Evaluate a compiled expression (or a bare tree) over ``context``; returns its value."""
    tree = expression.tree if isinstance(expression, Expression) else expression
    return _evaluate(tree, context)


def is_true(expression: Expression | Node, context: Mapping[str, Any]) -> bool:
    """Evaluate a ``when:`` condition; it must yield a boolean (null counts as false)."""
    tree = expression.tree if isinstance(expression, Expression) else expression
    return _truth(_evaluate(tree, context), "the condition", tree.column)


def _evaluate(node: Node, context: Mapping[str, Any]) -> Any:
    if isinstance(node, Literal):
        return node.value
    if isinstance(node, Name):
        return _lookup(node, context)
    if isinstance(node, ListNode):
        return [_evaluate(item, context) for item in node.items]
    if isinstance(node, Not):
        return not _truth(_evaluate(node.operand, context), "'not'", node.column)
    if isinstance(node, Logical):
        left = _truth(_evaluate(node.left, context), f"'{node.op}'", node.column)
        # Short-circuit so a guard like `vars.X != null and vars.X > 1` is safe.
        if node.op == "and" and not left:
            return False
        if node.op == "or" and left:
            return True
        return _truth(_evaluate(node.right, context), f"'{node.op}'", node.column)
    if isinstance(node, Comparison):
        return _compare(node, _evaluate(node.left, context), _evaluate(node.right, context))
    if isinstance(node, Call):
        args = [_evaluate(arg, context) for arg in node.args]
        return _FUNCTIONS[node.function](node, *args)
    raise TypeError(f"not an expression node: {node!r}")  # pragma: no cover


def _lookup(node: Name, context: Mapping[str, Any]) -> Any:
    head = node.path[0]
    if head not in context:
        raise ExpressionError(f"unknown name {head!r}", node.column)
    value = context[head]
    for depth, key in enumerate(node.path[1:], start=1):
        if value is None:
            return None  # a missing parent makes the whole path missing
        if not isinstance(value, Mapping):
            parent = ".".join(node.path[:depth])
            raise ExpressionError(
                f"{parent} is {_type_name(value)}, it has no field {key!r}", node.column
            )
        value = value.get(key)
    return value


def _truth(value: Any, where: str, column: int) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    raise ExpressionError(
        f"{where} needs true, false or null, got {_describe_value(value)}", column
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _equal(left: Any, right: Any) -> bool:
    # Python says True == 1 and 1 == 1.0; only the second is intended here.
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left is right
    if _is_number(left) and _is_number(right):
        return bool(left == right)
    if isinstance(left, list | tuple) and isinstance(right, list | tuple):
        return len(left) == len(right) and all(map(_equal, left, right))
    if type(left) is not type(right) and not (isinstance(left, str) and isinstance(right, str)):
        return False
    return bool(left == right)


def _compare(node: Comparison, left: Any, right: Any) -> bool:
    op = node.op
    if op == "==":
        return _equal(left, right)
    if op == "!=":
        return not _equal(left, right)
    if op in ("in", "not in"):
        found = _contains(node, right, left)
        return found if op == "in" else not found
    comparable = (_is_number(left) and _is_number(right)) or (
        isinstance(left, str) and isinstance(right, str)
    )
    if not comparable:
        raise ExpressionError(
            f"cannot compare {_describe_value(left)} with {_describe_value(right)} using {op!r}",
            node.column,
        )
    if op == "<":
        return bool(left < right)
    if op == "<=":
        return bool(left <= right)
    if op == ">":
        return bool(left > right)
    return bool(left >= right)


def _contains(node: Comparison, container: Any, item: Any) -> bool:
    if container is None:
        return False
    if isinstance(container, str):
        if not isinstance(item, str):
            raise ExpressionError(
                f"'in' a string needs a string on the left, got {_type_name(item)}",
                node.column,
            )
        return item in container
    if isinstance(container, list | tuple):
        return any(_equal(item, element) for element in container)
    if isinstance(container, Mapping):
        return isinstance(item, str) and item in container
    raise ExpressionError(
        f"'in' needs a list, string or mapping on the right, got {_type_name(container)}",
        node.column,
    )


def _string_function(node: Call, value: Any, pattern: Any) -> tuple[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, str) or not isinstance(pattern, str):
        raise ExpressionError(
            f"{node.function}() needs two strings, got {_type_name(value)} and "
            f"{_type_name(pattern)}",
            node.column,
        )
    return value, pattern


def _startswith(node: Call, value: Any, prefix: Any) -> bool:
    pair = _string_function(node, value, prefix)
    return pair is not None and pair[0].startswith(pair[1])


def _endswith(node: Call, value: Any, suffix: Any) -> bool:
    pair = _string_function(node, value, suffix)
    return pair is not None and pair[0].endswith(pair[1])


def _matches(node: Call, value: Any, glob: Any) -> bool:
    pair = _string_function(node, value, glob)
    return pair is not None and fnmatch.fnmatchcase(pair[0], pair[1])


_FUNCTIONS: dict[str, Callable[..., bool]] = {
    "startswith": _startswith,
    "endswith": _endswith,
    "matches": _matches,
}


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__


def _describe_value(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value)
    shown = f"{text[:40]}…" if len(text) > 40 else text
    return f"{_type_name(value)} {shown}"
