"""Masking of secrets in log text: plain, base64 at any alignment, split across chunks."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys

import pytest

from reconciler.log import masking

SECRET = "hunter2-Pa55word!"
KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmU=\n-----END OPENSSH PRIVATE KEY-----\n"


@pytest.fixture
def masker() -> masking.Masker:
    return masking.Masker([SECRET, KEY, "ab"])


def test_plain_value(masker: masking.Masker) -> None:
    assert masker.mask(f"login with {SECRET} ok") == "login with *** ok"
    assert masker.mask(f"{SECRET}{SECRET}") == "******"
    assert masker.mask("nothing to hide") == "nothing to hide"


def test_too_short_values_are_not_masked(masker: masking.Masker) -> None:
    assert masker.mask("abc") == "abc"


@pytest.mark.parametrize("prefix", [b"", b"u", b"us", b"user:", b"Authorization: Basic "])
def test_base64_at_every_alignment(masker: masking.Masker, prefix: bytes) -> None:
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        blob = encode(prefix + SECRET.encode() + b"\n").decode()
        masked = masker.mask(f"token={blob}")
        assert "***" in masked
        # What is left of the blob, decoded at any offset, holds no 4 bytes of the secret.
        for leftover in masked.removeprefix("token=").split("***"):
            for decoded in _decodings(leftover):
                assert not any(SECRET[i : i + 4].encode() in decoded for i in range(len(SECRET)))


def _decodings(text: str) -> list[bytes]:
    out = []
    for start in range(4):
        chunk = text[start:]
        chunk = chunk[: len(chunk) // 4 * 4].replace("-", "+").replace("_", "/").replace("=", "A")
        out.append(base64.b64decode(chunk))
    return out


def test_plain_base64_of_value_is_fully_masked(masker: masking.Masker) -> None:
    encoded = base64.b64encode(SECRET.encode()).decode()
    assert masker.mask(f"x {encoded} y") == "x *** y"
    assert masker.mask(f"x {encoded.rstrip('=')} y") == "x *** y"


def test_multiline_value_and_its_lines_and_json(masker: masking.Masker) -> None:
    assert masker.mask(f"key:\n{KEY}done") == "key:\n***done"
    line = KEY.splitlines()[1]
    assert masker.mask(f"> {line}") == "> ***"
    assert KEY not in masker.mask(json.dumps({"key": KEY}))
    assert line not in masker.mask(json.dumps({"key": KEY}))


def test_repr_hides_secrets(masker: masking.Masker) -> None:
    assert SECRET not in repr(masker) and SECRET not in repr(masker.stream())


def test_split_over_two_writes(masker: masking.Masker) -> None:
    text = f"start {SECRET} mid {base64.b64encode(SECRET.encode()).decode()} end\n"
    for cut in range(len(text) + 1):
        stream = masker.stream()
        out = stream.feed(text[:cut])
        assert stream.pending <= masker.longest - 1
        out += stream.feed(text[cut:]) + stream.close()
        assert out == masker.mask(text), cut
        assert SECRET not in out


def test_many_small_writes(masker: masking.Masker) -> None:
    text = (f"line {SECRET}\n" * 5) + KEY
    stream = masker.stream()
    out = "".join(stream.feed(ch) for ch in text) + stream.close()
    assert out == masker.mask(text)
    assert SECRET not in out and "OPENSSH" not in out


def test_empty_masker_passes_through() -> None:
    masker = masking.Masker([])
    assert not masker
    stream = masker.stream()
    assert stream.feed("abc") == "abc" and stream.close() == ""


def test_script_output_is_masked_before_storage() -> None:
    """A real process prints the secret plainly, in base64 and split over two writes."""
    script = (
        "import base64, os, sys, time\n"
        "s = os.environ['DEPLOY_SECRET']\n"
        "print('plain', s, flush=True)\n"
        "print('b64', base64.b64encode(s.encode()).decode(), flush=True)\n"
        "sys.stdout.write('split ' + s[:5]); sys.stdout.flush(); time.sleep(0.05)\n"
        "sys.stdout.write(s[5:] + '\\n'); sys.stdout.flush()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        env={**os.environ, "DEPLOY_SECRET": SECRET},
    )
    stream = masking.Masker([SECRET]).stream()
    stored: list[str] = []  # stands in for the log sink
    chunks = 0
    while chunk := os.read(proc.stdout.fileno(), 8):
        chunks += 1
        stored.append(stream.feed(chunk.decode()))
    stored.append(stream.close())
    proc.stdout.close()
    assert proc.wait() == 0
    log = "".join(stored)
    assert chunks > 2
    assert log == "plain ***\nb64 ***\nsplit ***\n"
    assert SECRET not in log and base64.b64encode(SECRET.encode()).decode() not in log
