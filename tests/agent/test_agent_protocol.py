"""The wire protocol: frame encoding, incremental decoding, limits and message round trips."""

from __future__ import annotations

import pytest

from agent import protocol
from agent.protocol import FrameKind


def test_frames_round_trip_when_fed_byte_by_byte() -> None:
    frames = [
        protocol.encode(FrameKind.HEARTBEAT, {"time": 1.5}),
        protocol.encode(FrameKind.OUTPUT, {"seq": 7, "stream": "stderr"}, b"\x00\xffbinary"),
        protocol.encode(FrameKind.ERROR, {"reason": "n\u00e4h"}),
    ]
    decoder = protocol.FrameDecoder()
    decoded = []
    for byte in b"".join(frames):
        decoded += decoder.feed(bytes([byte]))
    assert [f.kind for f in decoded] == [FrameKind.HEARTBEAT, FrameKind.OUTPUT, FrameKind.ERROR]
    assert decoded[1].meta == {"seq": 7, "stream": "stderr"}
    assert decoded[1].data == b"\x00\xffbinary"
    assert decoded[2].meta["reason"] == "n\u00e4h"
    assert decoder.pending == 0


def test_header_layout_is_version_kind_and_two_lengths() -> None:
    frame = protocol.encode(FrameKind.ACK, {"seq": 1}, b"xy")
    assert frame[0] == protocol.VERSION and frame[1] == FrameKind.ACK
    meta_length = int.from_bytes(frame[2:6], "big")
    assert int.from_bytes(frame[6:10], "big") == 2
    assert frame[10 : 10 + meta_length] == b'{"seq":1}' and frame.endswith(b"xy")


@pytest.mark.parametrize(
    "raw, message",
    [
        (bytes([2, 3, 0, 0, 0, 2, 0, 0, 0, 0]) + b"{}", "unsupported protocol version 2"),
        (bytes([1, 99, 0, 0, 0, 2, 0, 0, 0, 0]) + b"{}", "undecodable"),
        (bytes([1, 3, 0, 0, 0, 2, 0, 0, 0, 0]) + b"[]", "not a JSON object"),
        (bytes([1, 3, 0x7F, 0, 0, 0, 0, 0, 0, 0]), "size limits"),
    ],
)
def test_bad_frames_are_refused(raw: bytes, message: str) -> None:
    with pytest.raises(protocol.ProtocolError, match=message):
        protocol.FrameDecoder().feed(raw)


def test_exec_and_git_pull_requests_round_trip() -> None:
    request = protocol.ExecRequest(
        command_id="c1", argv=["echo", "hi"], env={"A": "1"}, cwd="/srv", timeout=2.5, stdin=b"in"
    )
    frame = protocol.FrameDecoder().feed(
        protocol.request_frame(request, resume_seq=4, attach_only=True)
    )[0]
    assert frame.kind is FrameKind.EXEC
    assert frame.meta["resume_seq"] == 4 and frame.meta["attach_only"] is True
    assert protocol.request_from_frame(frame) == request

    script = protocol.ExecRequest(command_id="c2", script="echo $A")
    frame = protocol.FrameDecoder().feed(protocol.request_frame(script))[0]
    assert protocol.request_from_frame(frame) == script
    assert protocol.request_from_frame(frame).stdin is None

    pull = protocol.GitPullRequest(
        "c3", "https://git.example/app.git", "v1.2", "app", "make restart"
    )
    frame = protocol.FrameDecoder().feed(protocol.request_frame(pull, cancel=True))[0]
    assert frame.kind is FrameKind.GIT_PULL and frame.meta["cancel"] is True
    assert protocol.request_from_frame(frame) == pull


@pytest.mark.parametrize(
    "kwargs",
    [
        {"command_id": "", "argv": ["true"]},
        {"command_id": "x"},
        {"command_id": "x", "argv": ["true"], "script": "true"},
        {"command_id": "x", "argv": "true"},
        {"command_id": "x", "argv": []},
    ],
)
def test_exec_request_needs_an_id_and_exactly_one_of_argv_or_script(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        protocol.ExecRequest(**kwargs)


def test_results_hello_and_status_round_trip() -> None:
    result = protocol.ExecResult("c", None, signal=9, duration=1.25, timed_out=True)
    assert protocol.result_from_meta(protocol.result_to_meta(result)) == result
    assert not result.ok and protocol.ExecResult("c", 0).ok

    hello = protocol.Hello("web-1", "tok", {"role": "web"}, "host", "Linux", "1.0", 15.0)
    assert protocol.hello_from_meta(protocol.hello_to_meta(hello)) == hello
    with pytest.raises(protocol.ProtocolError):
        protocol.hello_from_meta({"name": "x", "heartbeat": 0})

    report = protocol.StatusReport(
        10.0,
        (protocol.ProcessStatus("nginx", 12, "sleeping", 1.5, 4096),),
        (
            protocol.ContainerStatus("web", "nginx:1", "sha256:ab", "running", "healthy"),
            protocol.ContainerStatus(
                "shop-prod",
                "r/shop@sha256:cd",
                "sha256:ef",
                "running",
                None,
                {"quicflow.env": "prod"},
            ),
        ),
        ("note",),
    )
    assert protocol.status_from_meta(protocol.status_to_meta(report)) == report
    # A report from an agent that predates container labels still decodes.
    meta = protocol.status_to_meta(report)
    del meta["containers"][0]["labels"]
    assert protocol.status_from_meta(meta) == report


def test_status_detail_travels_and_older_or_larger_reports_still_decode() -> None:
    report = protocol.StatusReport(
        10.0,
        (protocol.ProcessStatus("nginx", 12, "sleeping", 1.5, 4096, started=5.0),),
        (
            protocol.ContainerStatus(
                "shop-prod", "r/shop:1", "sha256:ef", "running", "healthy",
                {"quicflow.version": "1.0"}, id="0123456789ab", started=7.5,
                cpu_percent=2.5, memory_bytes=1 << 20,
            ),
        ),
        processes_omitted=3,
    )  # fmt: skip
    assert protocol.status_from_meta(protocol.status_to_meta(report)) == report

    # An agent of the first release: no ids, times, container cpu/memory or omitted counts.
    old = {
        "time": 1.0,
        "processes": [
            {"name": "app", "pid": 7, "state": "running", "cpu_percent": 1, "memory_bytes": 2}
        ],
        "containers": [{"name": "web", "image": "i", "digest": None, "state": "running"}],
        "notes": [],
    }
    decoded = protocol.status_from_meta(old)
    assert decoded.processes == (protocol.ProcessStatus("app", 7, "running", 1.0, 2),)
    assert decoded.containers == (protocol.ContainerStatus("web", "i", None, "running"),)
    assert decoded.containers[0].memory_bytes is None and decoded.containers_omitted == 0

    # It also listed every container on the host, uncapped: the hub keeps the first ones.
    many = {**old, "containers": [{"name": f"c{i}"} for i in range(120)]}
    decoded = protocol.status_from_meta(many)
    assert len(decoded.containers) == protocol.MAX_STATUS_ENTRIES
    assert decoded.containers_omitted == 120 - protocol.MAX_STATUS_ENTRIES

    for bad in (
        {"processes": [["not", "an", "object"]]},
        {"containers": [{"name": "c", "labels": ["x"]}]},
        {"processes": [{"name": "p", "pid": "seven"}]},
    ):
        with pytest.raises(protocol.ProtocolError):
            protocol.status_from_meta(bad)


def test_deploy_type_and_instance_travel_and_default_for_older_peers() -> None:
    request = protocol.ExecRequest(command_id="c", argv=["true"], deploy_type="container")
    frame = protocol.FrameDecoder().feed(protocol.request_frame(request))[0]
    assert frame.meta["deploy_type"] == "container"
    assert protocol.request_from_frame(frame) == request
    # A hub that does not say what a command is for sends shell: "script".
    older = protocol.Frame(FrameKind.EXEC, {"command_id": "c", "script": "true"})
    assert protocol.request_from_frame(older).deploy_type == "script"
    with pytest.raises(ValueError, match="unknown deploy_type 'ssh'"):
        protocol.ExecRequest(command_id="c", argv=["true"], deploy_type="ssh")
    bad = protocol.Frame(FrameKind.EXEC, {"command_id": "c", "script": "x", "deploy_type": "ssh"})
    with pytest.raises(protocol.ProtocolError):
        protocol.request_from_frame(bad)

    hello = protocol.Hello("web-1", "t", {}, "h", "Linux", "1", 15.0, instance="ab12")
    assert protocol.hello_from_meta(protocol.hello_to_meta(hello)).instance == "ab12"
    meta = protocol.hello_to_meta(hello)
    del meta["instance"]
    assert protocol.hello_from_meta(meta).instance == ""
