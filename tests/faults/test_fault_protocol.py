"""Fault injection on the control protocol: bytes that are not a valid frame fail the
child that sent them (ChildCrashed before READY, ChildDied after), which is torn down
like any other failure; the parent never buffers more than one frame's limit."""

from __future__ import annotations

import socket
import time

import anyio
import pytest
from procs import alive

import launch
from _launch_child import _api
from launch import ProcessSpec, ShutdownPolicy

pytestmark = pytest.mark.anyio

FAST = ShutdownPolicy(stop_timeout=2.0, term_timeout=2.0, kill_timeout=2.0)


def spec(target: str, name: str, method: str, **kwargs: object) -> ProcessSpec:
    return ProcessSpec(
        f"fault_protocol_targets:{target}", name=name, kwargs=kwargs, start_method=method
    )


@pytest.mark.parametrize("kind", ["garbage", "oversized", "unloadable", "unknown_kind"])
async def test_bytes_that_are_not_a_frame_crash_the_child(start_method: str, kind: str) -> None:
    specs = [
        spec("send_garbage", "bad", start_method, kind=kind),
        spec("serve", "ok", start_method),
    ]
    started = time.monotonic()
    with anyio.fail_after(30), pytest.raises(launch.LaunchFailed) as info:
        async with launch.open_group(specs, name="g", shutdown=FAST):
            pytest.fail("the block must not be entered")
    assert time.monotonic() - started < 20  # neither the body of a frame nor its 60 s sleep
    (leaf,) = info.value.exceptions
    assert type(leaf) is launch.ChildCrashed and leaf.name == "bad"
    assert "protocol error" in str(leaf) and leaf.phase == "handshake"
    assert leaf.pid is not None and not alive(leaf.pid)


async def test_a_protocol_error_after_ready_is_a_death(start_method: str) -> None:
    specs = [
        spec("send_garbage", "bad", start_method, kind="unknown_kind", ready=True),
        spec("serve", "ok", start_method),
    ]
    pids = []
    with anyio.fail_after(30), pytest.raises(launch.LaunchFailed) as info:
        async with launch.open_group(specs, name="g", shutdown=FAST) as group:
            pids = [child.pid for child in group.children]
            await anyio.sleep(25)
    assert pids, "the block was entered"
    (leaf,) = info.value.exceptions
    assert type(leaf) is launch.ChildDied and leaf.name == "bad"
    assert "protocol error" in str(leaf) and "'bogus'" in str(leaf)
    assert not any(alive(pid) for pid in pids)


def test_ready_refuses_a_payload_over_the_frame_limit() -> None:
    ours, theirs = socket.socketpair()
    theirs.settimeout(2.0)  # nobody reads `ours`: a payload sent in full would block
    _api._install(_api._Channel(theirs, "big"))
    try:
        with pytest.raises(ValueError, match="over the control protocol's limit"):
            launch.ready(b"x" * (64 << 20))
        launch.ready(b"x" * 1000)  # READY was not sent: a smaller payload still goes
        assert len(ours.recv(1 << 16)) > 1000
    finally:
        _api._install(None)
        ours.close()
        theirs.close()
