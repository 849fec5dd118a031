"""A stand-in for VictoriaLogs: a FAKE, since no VictoriaLogs binary can be installed here.

It implements, over real HTTP on loopback, the two endpoints QUIC-Flow uses, as
VictoriaLogs documents them:

- ``POST /insert/jsonline``: newline-delimited JSON, optionally gzip-compressed
  (``Content-Encoding: gzip``); the query arguments ``_msg_field``, ``_time_field``
  and ``_stream_fields`` (falling back to ``_msg``/``_time`` and the default stream
  ``{}``); the tenant from the ``AccountID`` / ``ProjectID`` headers (default 0:0).
  A line's time may be RFC 3339 or a Unix timestamp; stored lines keep every other field
  as a string, like VictoriaLogs.
- ``POST|GET /select/logsql/query`` with ``query`` and ``limit``: a LogsQL subset —
  ``*``, exact filters ``f:="v"``, ``f:in("a","b")``, the substring/regexp filter
  ``~"re"`` on the message, phrase filters ``"text"``, ``_time:[a, b)`` / ``_time:>=a``
  / ``_time:<a`` ranges, ``f:<N`` / ``f:>N`` on numbers, ``AND``, ``OR``, ``NOT`` and
  parentheses, and the pipes ``| sort by (f [desc], …)`` and ``| limit N``. Answers are
  JSON lines with ``_msg``, ``_time`` (RFC 3339, ns), ``_stream`` and the fields.

It parses strings the way LogsQL does (double quotes with backslash escapes), so a value
QUIC-Flow escaped badly fails to parse here (400) or matches the wrong lines.
``stop()``/``start()`` take it away and bring it back on the same port, to test
outages; ``requests`` records what arrived (path, headers, args).
"""

from __future__ import annotations

import gzip
import http.server
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlparse

from reconciler.log import records

Filter = Callable[[dict[str, Any]], bool]


class LogsQLError(ValueError):
    pass


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    args: dict[str, str]
    lines: int = 0


@dataclass
class Store:
    """What the stand-in holds: lines per tenant, and every request seen."""

    lines: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def all(self, tenant: tuple[str, str] = ("0", "0")) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.lines.get(tenant, []))


def _time_of(value: Any) -> int:
    if isinstance(value, int | float) or (isinstance(value, str) and value.isdigit()):
        number = int(value)
        digits = len(str(number))
        return number * 10 ** max(0, 19 - digits) if digits <= 19 else number
    return records.parse_time(str(value))


def ingest(store: Store, body: bytes, args: dict[str, str], tenant: tuple[str, str]) -> int:
    msg_field = args.get("_msg_field", "_msg")
    time_field = args.get("_time_field", "_time")
    stream_fields = [f for f in args.get("_stream_fields", "").split(",") if f]
    taken = []
    for raw in body.splitlines():
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw)
        except ValueError:
            continue  # VictoriaLogs skips an invalid line and counts it
        message = entry.pop(msg_field, "")
        when = entry.pop(time_field, None)
        fields = {k: str(v) for k, v in entry.items()}
        stream = ",".join(f'{name}="{fields.get(name, "")}"' for name in stream_fields)
        taken.append(
            {
                "_msg": str(message),
                "_time_ns": _time_of(when) if when not in (None, "0", 0) else 0,
                "_stream": "{" + stream + "}",
                **fields,
            }
        )
    with store.lock:
        store.lines.setdefault(tenant, []).extend(taken)
    return len(taken)


# -- LogsQL --------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def error(self, what: str) -> LogsQLError:
        return LogsQLError(f"{what} at {self.pos} in {self.text!r}")

    def space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self, token: str) -> bool:
        self.space()
        return self.text.startswith(token, self.pos)

    def keyword(self, word: str) -> bool:
        self.space()
        end = self.pos + len(word)
        if self.text[self.pos : end].upper() == word and (
            end >= len(self.text) or not (self.text[end].isalnum() or self.text[end] == "_")
        ):
            self.pos = end
            return True
        return False

    def expect(self, token: str) -> None:
        if not self.peek(token):
            raise self.error(f"expected {token!r}")
        self.pos += len(token)

    def string(self) -> str:
        self.space()
        if self.pos >= len(self.text) or self.text[self.pos] != '"':
            raise self.error("expected a quoted string")
        end = self.pos + 1
        while end < len(self.text):
            if self.text[end] == "\\":
                end += 2
                continue
            if self.text[end] == '"':
                break
            end += 1
        else:
            raise self.error("unterminated string")
        try:
            value = json.loads(self.text[self.pos : end + 1])
        except ValueError:
            raise self.error("bad escape in string") from None
        self.pos = end + 1
        return str(value)

    def bare(self, stop: str = " \t\n()[],|") -> str:
        self.space()
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in stop:
            self.pos += 1
        if start == self.pos:
            raise self.error("expected a value")
        return self.text[start : self.pos]

    # or_expr := and_expr (OR and_expr)*
    def or_expr(self) -> Filter:
        terms = [self.and_expr()]
        while self.keyword("OR"):
            terms.append(self.and_expr())
        return terms[0] if len(terms) == 1 else (lambda e: any(t(e) for t in terms))

    def and_expr(self) -> Filter:
        terms = [self.unary()]
        while True:
            self.space()
            if self.pos >= len(self.text) or self.peek(")") or self.peek("|"):
                break
            save = self.pos
            if self.keyword("OR"):
                self.pos = save
                break
            self.keyword("AND")
            terms.append(self.unary())
        return terms[0] if len(terms) == 1 else (lambda e: all(t(e) for t in terms))

    def unary(self) -> Filter:
        if self.keyword("NOT") or self.peek("!"):
            if self.peek("!"):
                self.pos += 1
            inner = self.unary()
            return lambda e: not inner(e)
        if self.peek("("):
            self.pos += 1
            inner = self.or_expr()
            self.expect(")")
            return inner
        return self.filter()

    def filter(self) -> Filter:
        self.space()
        if self.peek("*"):
            self.pos += 1
            return lambda e: True
        if self.peek("~"):
            self.pos += 1
            pattern = re.compile(self.string())
            return lambda e: pattern.search(e["_msg"]) is not None
        if self.peek('"'):
            phrase = self.string()
            return lambda e: phrase in e["_msg"]
        name = self.bare(" \t\n()[],|:")
        self.expect(":")
        if name == "_time":
            return self.time_filter()
        if self.peek(":="):
            raise self.error("bad filter")
        if self.peek("="):
            self.pos += 1
            value = self.string()
            return lambda e: str(e.get(name, "")) == value
        if self.peek("in("):
            self.pos += 3
            values = set()
            if not self.peek(")"):
                values.add(self.string())
                while self.peek(","):
                    self.pos += 1
                    values.add(self.string())
            self.expect(")")
            return lambda e: str(e.get(name, "")) in values
        for op in ("<=", ">=", "<", ">"):
            if self.peek(op):
                self.pos += len(op)
                number = float(self.bare())
                return _compare(lambda e: float(e.get(name) or 0), op, number)
        value = self.string() if self.peek('"') else self.bare()
        return lambda e: value in str(e.get(name, ""))

    def time_filter(self) -> Filter:
        if self.peek("["):
            self.pos += 1
            start = records.parse_time(self.bare(" \t\n,"))
            self.expect(",")
            end = records.parse_time(self.bare(" \t\n)]"))
            self.space()
            closing = self.text[self.pos]
            if closing not in ")]":
                raise self.error("expected ) or ]")
            self.pos += 1
            if closing == ")":
                return lambda e: start <= e["_time_ns"] < end
            return lambda e: start <= e["_time_ns"] <= end
        for op in ("<=", ">=", "<", ">"):
            if self.peek(op):
                self.pos += len(op)
                moment = records.parse_time(self.bare())
                return _compare(lambda e: e["_time_ns"], op, moment)
        raise self.error("unsupported _time filter")


def _compare(get: Callable[[dict[str, Any]], float], op: str, value: float) -> Filter:
    return {
        "<": lambda e: get(e) < value,
        "<=": lambda e: get(e) <= value,
        ">": lambda e: get(e) > value,
        ">=": lambda e: get(e) >= value,
    }[op]


def run_query(lines: list[dict[str, Any]], query: str, limit: int | None) -> list[dict[str, Any]]:
    parser = _Parser(query)
    match = parser.or_expr()
    selected = [e for e in lines if match(e)]
    while parser.peek("|"):
        parser.pos += 1
        if parser.keyword("SORT"):
            if not parser.keyword("BY"):
                raise parser.error("expected by")
            parser.expect("(")
            keys: list[tuple[str, bool]] = []
            while True:
                name = parser.bare(" \t\n(),")
                descending = parser.keyword("DESC")
                keys.append((name, descending))
                if parser.peek(","):
                    parser.pos += 1
                    continue
                parser.expect(")")
                break
            for name, descending in reversed(keys):
                column = "_time_ns" if name == "_time" else name
                selected.sort(key=lambda e, c=column: _sortable(e.get(c)), reverse=descending)
        elif parser.keyword("LIMIT"):
            selected = selected[: int(parser.bare())]
        else:
            raise parser.error("unsupported pipe")
    parser.space()
    if parser.pos != len(query):
        raise parser.error("unexpected text")
    return selected[:limit] if limit else selected


def _sortable(value: Any) -> tuple[int, float | str]:
    if isinstance(value, int):
        return (0, value)
    try:
        return (0, float(value))
    except (TypeError, ValueError):
        return (1, str(value))


def answer(entry: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in entry.items() if k != "_time_ns"}
    out["_time"] = records.format_ns(entry["_time_ns"])
    return out


# -- the server -------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    store: Store
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _tenant(self) -> tuple[str, str]:
        return (self.headers.get("AccountID", "0"), self.headers.get("ProjectID", "0"))

    def _reply(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            raw = gzip.decompress(raw)
        return raw

    def _args(self, body: bytes | None = None) -> dict[str, str]:
        parsed = parse_qs(urlparse(self.path).query)
        if body and "form-urlencoded" in self.headers.get("Content-Type", ""):
            parsed.update(parse_qs(body.decode()))
        return {k: v[-1] for k, v in parsed.items()}

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        path = urlparse(self.path).path
        body = self._body()
        if path == "/insert/jsonline":
            args = self._args()
            count = ingest(self.store, body, args, self._tenant())
            self.store.requests.append(Request(path, dict(self.headers), args, count))
            self._reply(200, b"")
        elif path == "/select/logsql/query":
            self._query(self._args(body))
        else:
            self._reply(404, b"not found", "text/plain")

    def do_GET(self) -> None:  # noqa: N802
        if urlparse(self.path).path == "/select/logsql/query":
            self._query(self._args())
        else:
            self._reply(404, b"not found", "text/plain")

    def _query(self, args: dict[str, str]) -> None:
        self.store.requests.append(Request("/select/logsql/query", dict(self.headers), args))
        try:
            found = run_query(
                self.store.all(self._tenant()),
                args.get("query", ""),
                int(args["limit"]) if args.get("limit") else None,
            )
        except (LogsQLError, ValueError) as exc:
            self._reply(400, f"cannot parse query: {exc}".encode(), "text/plain")
            return
        body = "".join(json.dumps(answer(e)) + "\n" for e in found).encode()
        self._reply(200, body, "application/stream+json")


class VictoriaLogsStandIn:
    """The fake on 127.0.0.1, in a thread; ``url`` to point a sink at."""

    def __init__(self, port: int = 0):
        self.store = Store()
        self.port = port
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> VictoriaLogsStandIn:
        handler = type("Handler", (_Handler,), {"store": self.store})
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
