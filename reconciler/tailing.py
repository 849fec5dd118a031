"""``quicflow logs RUN [-f] [--grep TEXT]``: a run's (or build's) log from a running server.

It asks the server's HTTP API, like ``quicflow agents --api``: ``--api URL`` (or
``QUICFLOW_API``, default ``http://127.0.0.1:8080``) with a token from ``--token-file``
or ``QUICFLOW_TOKEN``. Without ``-f`` it prints the stored log (the streamed export,
``GET /api/release/logs/{id}/export``) and exits. With ``-f`` it follows like
``kubectl logs -f``: every stored line, then new ones as they are written, until the
run ends (the server's ``end`` event) or Ctrl-C. The server sends many lines to a
``lines`` event, the event's id the last line's number; a dropped connection is
resumed with ``Last-Event-ID``, so no line is lost or printed twice. ``--grep`` keeps
the lines containing the text (case-sensitive). Lines print as ``[source] text`` (``--timestamps``
puts the time first); errors go to stderr with a non-zero exit.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import httpx

API_VARIABLE = "QUICFLOW_API"
TOKEN_VARIABLE = "QUICFLOW_TOKEN"
DEFAULT_API = "http://127.0.0.1:8080"
PREFIX = "/api/release"
RECONNECT_DELAY = 1.0
MAX_RECONNECTS = 30


def _format(line: dict[str, Any], timestamps: bool) -> str:
    source = f"[{line.get('source')}] " if line.get("source") else ""
    stamp = f"{line.get('at', '')} " if timestamps else ""
    return f"{stamp}{source}{line.get('line', '')}"


def _refusal(response: httpx.Response, stream_id: str) -> click.ClickException:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:200] or response.reason_phrase
    if response.status_code == 404:
        return click.ClickException(f"no run or build {stream_id!r} that you may see")
    if response.status_code == 401:
        return click.ClickException(
            f"the server wants a token: --token-file or {TOKEN_VARIABLE} ({message})"
        )
    return click.ClickException(f"HTTP {response.status_code}: {message}")


def _sse(response: httpx.Response) -> Iterator[tuple[str, str, str]]:
    """(id, event, data) of each event of a text/event-stream."""
    event_id = event = ""
    data: list[str] = []
    for raw in response.iter_lines():
        if not raw:
            if data or event:
                yield event_id, event or "message", "\n".join(data)
            event, data = "", []
            continue
        if raw.startswith(":"):
            continue
        name, _, value = raw.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            event_id = value
        elif name == "event":
            event = value
        elif name == "data":
            data.append(value)


def print_log(client: httpx.Client, stream_id: str, grep: str | None, timestamps: bool) -> None:
    """The stored log of ``stream_id``, printed."""
    params = {"format": "ndjson", **({"filter": grep} if grep else {})}
    with client.stream("GET", f"{PREFIX}/logs/{stream_id}/export", params=params) as response:
        if response.status_code != 200:
            response.read()
            raise _refusal(response, stream_id)
        for raw in response.iter_lines():
            if raw.strip():
                click.echo(_format(json.loads(raw), timestamps))


def follow_log(
    client: httpx.Client,
    stream_id: str,
    grep: str | None,
    timestamps: bool,
    sleep: Any = time.sleep,
) -> None:
    """Print ``stream_id``'s lines as they come until it ends (resuming on a dropped connection)."""
    paths = [f"{PREFIX}/runs/{stream_id}/logs/stream", f"{PREFIX}/builds/{stream_id}/logs/stream"]
    last = "0"
    failures = 0
    while True:
        try:
            with client.stream(
                "GET", paths[0], headers={"Last-Event-ID": last}, timeout=httpx.Timeout(10, read=60)
            ) as response:
                if response.status_code == 404 and len(paths) > 1:
                    paths.pop(0)  # not a run: a build, or nothing
                    continue
                if response.status_code != 200:
                    response.read()
                    raise _refusal(response, stream_id)
                del paths[1:]
                for event_id, event, data in _sse(response):
                    failures = 0
                    if event == "end":
                        return
                    if event != "lines":
                        continue
                    lines = json.loads(data)
                    shown = [
                        _format(line, timestamps)
                        for line in lines
                        if grep is None or grep in str(line.get("line", ""))
                    ]
                    if shown:
                        click.echo("\n".join(shown))
                    # The event's id is its last line's number: where a resumed stream starts.
                    last = event_id or (str(lines[-1].get("seq", last)) if lines else last)
            reason = "the server closed the stream"  # before the end: it is restarting
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
        failures += 1
        if failures > MAX_RECONNECTS:
            raise click.ClickException(f"lost the server: {reason}")
        click.echo(f"{reason}; resuming after line {last}", err=True)
        sleep(RECONNECT_DELAY)


@click.command("logs")
@click.argument("stream_id", metavar="RUN")
@click.option("-f", "--follow", is_flag=True, help="Follow new lines until the run ends.")
@click.option("--grep", default=None, help="Only lines containing this text (case-sensitive).")
@click.option("--timestamps", is_flag=True, help="Put each line's time first.")
@click.option(
    "--api",
    "api_url",
    default=None,
    metavar="URL",
    help=f"The running server (default ${API_VARIABLE} or {DEFAULT_API}).",
)
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help=f"File holding an API token (quicflow token create USER); else ${TOKEN_VARIABLE}.",
)
def logs_command(
    stream_id: str,
    follow: bool,
    grep: str | None,
    timestamps: bool,
    api_url: str | None,
    token_file: Path | None,
) -> None:
    """Print a run's (or build's) log; with -f, follow it like 'kubectl logs -f'."""
    url = (api_url or os.environ.get(API_VARIABLE) or DEFAULT_API).rstrip("/")
    token = token_file.read_text().strip() if token_file else os.environ.get(TOKEN_VARIABLE, "")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        try:
            if follow:
                follow_log(client, stream_id, grep, timestamps)
            else:
                print_log(client, stream_id, grep, timestamps)
        except httpx.TransportError as exc:
            raise click.ClickException(f"cannot reach {url}: {exc}") from None
        except KeyboardInterrupt:
            pass
