"""Fault injection on launch's forkserver: its death (the OOM killer, a stray kill) is
detected, its children are reported honestly and torn down, and the next forkserver
child starts a fresh server that imports the preloads requested so far."""

from __future__ import annotations

import os
import select
import signal
from collections.abc import Iterator

import anyio
import pytest
from procs import alive

import launch
from launch import ProcessSpec, ShutdownPolicy
from launch._start.forkserver import FORKSERVER

pytestmark = pytest.mark.anyio

FAST = ShutdownPolicy(stop_timeout=2.0, term_timeout=2.0, kill_timeout=2.0)


@pytest.fixture
def fresh_forkserver() -> Iterator[None]:
    """A forkserver of this test's own (its preloads and its death stay here)."""
    FORKSERVER.stop()
    yield
    FORKSERVER.stop()


def spec(target: str, name: str, **kwargs: object) -> ProcessSpec:
    return ProcessSpec(
        f"fault_protocol_targets:{target}", name=name, kwargs=kwargs, start_method="forkserver"
    )


async def kill_forkserver() -> int:
    """SIGKILL launch's forkserver and wait until it is dead; its pid."""
    server = FORKSERVER.pid
    assert server is not None
    os.kill(server, signal.SIGKILL)
    with anyio.fail_after(5):
        while alive(server):
            await anyio.sleep(0.01)
    return server


def exited(pidfd: int) -> bool:
    return bool(select.select([pidfd], [], [], 0)[0])


async def test_children_of_a_dead_forkserver_are_reported_and_torn_down(
    fresh_forkserver: None,
) -> None:
    pidfds: dict[str, int] = {}
    server = -1
    try:
        with anyio.fail_after(30), pytest.raises(launch.LaunchFailed) as info:
            async with launch.open_group(
                [spec("serve", "a"), spec("serve", "b")], name="fs", shutdown=FAST
            ) as group:
                pidfds = {c.name: os.pidfd_open(c.pid) for c in group.children if c.pid}
                server = await kill_forkserver()
                # Its children may go with it (they watched it) or run on (they watch
                # this process): "a" dies now in any case, "b" is left to the teardown.
                try:
                    signal.pidfd_send_signal(pidfds["a"], signal.SIGKILL)
                except ProcessLookupError:  # it went with its server
                    pass
                await anyio.sleep(25)
        leaves = info.value.exceptions
        assert leaves and {leaf.name for leaf in leaves} <= {"a", "b"}
        for leaf in leaves:
            assert type(leaf) is launch.ChildDied
            if leaf.exitcode is None:  # nothing can know it: no made-up exit code
                text = str(leaf)
                assert "exit status unknown" in text, text
                assert f"launch's forkserver (pid {server}), was killed by SIGKILL" in text
            else:  # this process is its subreaper, and reaped it
                assert leaf.name == "b" or leaf.exitcode == -signal.SIGKILL
        assert all(exited(pidfd) for pidfd in pidfds.values()), "a child was left running"
        assert all(c.state is launch.ChildState.EXITED for c in group.children)
        assert all(c.exitcode != 255 for c in group.children)
    finally:
        for pidfd in pidfds.values():
            os.close(pidfd)

    # the next forkserver group gets a fresh server
    with anyio.fail_after(30):
        async with launch.open_group([spec("serve", "c")], name="again", shutdown=FAST):
            assert FORKSERVER.pid not in (None, server)


async def test_a_forkserver_killed_between_groups_is_replaced_with_its_preloads(
    fresh_forkserver: None,
) -> None:
    launch.prewarm(preload=["colorsys"])
    loaded = spec("report_loaded", "a", names=["colorsys"])
    with anyio.fail_after(30):
        async with launch.open_group([loaded], name="before", shutdown=FAST) as group:
            assert group["a"].payload == {"colorsys": True}
    server = await kill_forkserver()
    with anyio.fail_after(30):
        async with launch.open_group([loaded], name="after", shutdown=FAST) as group:
            assert FORKSERVER.pid not in (None, server)
            assert group["a"].payload == {"colorsys": True}  # imported again by the new one
        assert group["a"].exitcode == 0
