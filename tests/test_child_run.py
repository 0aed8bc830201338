"""One child's run driven through its starter seam, with no process: a fake ``Spawned``
whose control socket the test speaks for the child; and the typed protocol's shape checks."""

from __future__ import annotations

import pickle
import socket
import time
from collections.abc import Mapping
from typing import Any

import anyio
import pytest

import launch
from _launch_child._protocol import (
    Boot,
    Booted,
    ErrorReport,
    Failed,
    Phase,
    ProtocolError,
    Ready,
    check_child_message,
    encode,
    split_frames,
    take_frame,
)
from launch._run import ChildRun
from launch._spec import START_METHODS
from launch._start import spawn
from launch._start.process import ProcessHandle

pytestmark = pytest.mark.anyio

OFFSET = 100.0  # the fake child's host clock runs this far ahead of ours


class FakeProcess(ProcessHandle):
    """A remote process as a placement backend would hand it over; never signalled."""

    def __init__(self) -> None:
        self.pid = 999_999
        self.gone = anyio.Event()

    async def wait_exited(self) -> None:
        await self.gone.wait()

    def reap(self) -> int:
        self.returncode = 0
        return 0

    def send_signal(self, sig: int) -> None:
        self.gone.set()

    def kill_group(self) -> None:
        self.gone.set()


class FakeRemote:
    """The far end of the control socket, speaking for a child on a host whose
    ``time.monotonic()`` is ``OFFSET`` ahead."""

    def __init__(self) -> None:
        self.ours, self.theirs = socket.socketpair()
        self.process = FakeProcess()
        self.started = time.monotonic()

    async def starter(
        self, spec: launch.ProcessSpec, group: str, overlay: Mapping[str, str] | None
    ) -> spawn.Spawned:
        return spawn.Spawned(
            self.process,
            self.ours,
            lock_wait_s=0.0,
            spawned_at=time.monotonic(),
            node="node-a",
            clock_offset=OFFSET,
        )

    def say(self, *messages: object) -> None:
        """Send ``messages`` to the parent, as the child would."""
        for message in messages:
            self.theirs.sendall(encode(message))

    def at(self, seconds: float) -> float:
        """``seconds`` after the start, on the child host's clock."""
        return self.started + seconds + OFFSET

    def boot_frame(self) -> Boot:
        self.theirs.settimeout(5.0)
        buf = bytearray()
        while (frame := take_frame(buf)) is None:
            buf += self.theirs.recv(1 << 16)
        assert isinstance(frame, Boot)
        return frame


def make_run(remote: FakeRemote, failures: list[launch.ChildFailed]) -> ChildRun:
    spec = launch.ProcessSpec("targets:serve", name="remote", ready_timeout=10.0)
    return ChildRun(spec, "g", declare=failures.append, starter=remote.starter)


async def test_a_remote_childs_times_are_shifted_by_its_clock_offset() -> None:
    remote = FakeRemote()
    failures: list[launch.ChildFailed] = []
    run = make_run(remote, failures)
    child = run.child
    remote.say(
        Booted(remote.at(1.0)),
        Phase("load_model", remote.at(2.0)),
        Ready(pickle.dumps({"port": 5555}), remote.at(3.0)),
    )
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run.supervise)
            with anyio.fail_after(10):
                await run.start()
            assert remote.boot_frame().name == "remote"
            assert not failures
            assert child.state is launch.ChildState.READY and child.payload == {"port": 5555}
            assert child.node == "node-a"
            assert child.times.booted == pytest.approx(remote.started + 1.0)
            ((phase, phase_at),) = child.times.phases
            assert phase == "load_model" and phase_at == pytest.approx(remote.started + 2.0)
            assert child.times.ready == pytest.approx(remote.started + 3.0)
            remote.theirs.close()
            remote.process.gone.set()
    finally:
        remote.theirs.close()
    assert child.state is launch.ChildState.EXITED and child.exitcode == 0
    (died,) = failures  # it exited after READY, with no teardown running
    assert type(died) is launch.ChildDied


async def test_a_remote_childs_failure_is_dated_by_its_report_on_our_clock() -> None:
    remote = FakeRemote()
    failures: list[launch.ChildFailed] = []
    run = make_run(remote, failures)
    report = ErrorReport(
        type_name="RuntimeError",
        message="boom",
        traceback="Traceback ...\nRuntimeError: boom\n",
        phase="load_model",
        ready=False,
        at=remote.at(5.0),
    )
    remote.say(Booted(remote.at(1.0)), Failed(report))
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run.supervise)
            with anyio.fail_after(10):
                await run.start()
            (crashed,) = failures
            assert type(crashed) is launch.ChildCrashed
            assert crashed.failed_at == pytest.approx(remote.started + 5.0)
            assert crashed.remote_type == "RuntimeError" and crashed.phase == "load_model"
            assert run.child.exiting
            remote.theirs.close()
            remote.process.gone.set()
    finally:
        remote.theirs.close()
    assert len(failures) == 1  # its exit before READY is no second failure


def test_the_start_table_covers_every_start_method() -> None:
    assert set(spawn.METHODS) == set(START_METHODS)


def _report(**change: Any) -> ErrorReport:
    fields: dict[str, Any] = {
        "type_name": "E",
        "message": "m",
        "traceback": "t",
        "phase": None,
        "ready": False,
        "at": 1.0,
    }
    return ErrorReport(**{**fields, **change})


@pytest.mark.parametrize(
    ("message", "words"),
    [
        (("bogus", 1), "unknown kind 'bogus'"),
        (("phase", "p", 1.0), "unknown kind 'phase'"),  # the old positional tuples
        ({"at": 1.0}, "unknown type 'dict'"),
        (Phase(name=3, at=1.0), "'name' is a int"),  # type: ignore[arg-type]
        (Ready(payload="not bytes", at=1.0), "'payload' is a str"),  # type: ignore[arg-type]
        (Failed(_report(at="soon")), "'at' is a str"),  # would break the root-cause order
        (Failed(_report(traceback=None)), "'traceback' is a NoneType"),
        (Failed(report="text"), "'report' is a str"),  # type: ignore[arg-type]
    ],
)
def test_a_message_of_the_wrong_kind_or_shape_is_refused(message: object, words: str) -> None:
    with pytest.raises(ProtocolError, match=words):
        check_child_message(message)


def test_a_message_missing_a_field_is_refused() -> None:
    booted = Booted(1.0)
    object.__delattr__(booted, "at")  # what a hostile pickle can build
    with pytest.raises(ProtocolError, match="no 'at'"):
        check_child_message(booted)


def test_a_frame_holding_none_is_refused() -> None:
    buf = bytearray(encode(None))
    with pytest.raises(ProtocolError, match="None"):
        split_frames(buf)


def test_typed_messages_round_trip() -> None:
    messages = [Booted(1.0), Phase("p", 2.0), Ready(b"x", 3.0), Failed(_report())]
    buf = bytearray(b"".join(encode(message) for message in messages))
    assert [check_child_message(frame) for frame in split_frames(buf)] == messages
