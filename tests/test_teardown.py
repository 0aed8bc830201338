"""The stop ladder in isolation, with stand-in children (no processes).

Under trio the grace periods pass in virtual time (the ``virtual_clock`` fixture: sound
here, nothing real happens); each step is recorded with the time it was taken, so that
the order (stop, then SIGTERM, then SIGKILL) and the wait before each are both checked.
"""

from __future__ import annotations

import signal

import anyio
import pytest
import trio.testing

from launch import ShutdownPolicy
from launch._teardown import teardown

pytestmark = pytest.mark.anyio

EARLY = 0.001  # asyncio may run a timer up to its clock's resolution early


class FakeChild:
    def __init__(self, name: str, *, ready: bool, dies_on: int | None, stop_ok: bool = False):
        self.name = name
        self.pid: int | None = 999_999
        self.ready = ready
        self.exiting = False
        self.dies_on = dies_on
        self.stop_ok = stop_ok
        self.events: list[str] = []
        self.times: list[float] = []  # when each event happened (anyio.current_time())
        self.exited = anyio.Event()
        self.abandoned = False

    @property
    def has_exited(self) -> bool:
        return self.exited.is_set()

    async def wait_exited(self) -> None:
        await self.exited.wait()

    def record(self, event: str) -> None:
        self.events.append(event)
        self.times.append(anyio.current_time())

    def request_stop(self) -> bool:
        self.record("stop")
        if self.stop_ok:
            self.exited.set()
        return True

    def send_signal(self, sig: int) -> None:
        self.record(signal.Signals(sig).name)
        if sig == self.dies_on:
            self.exited.set()

    def kill_group(self) -> None:
        self.record("KILLPG")
        if self.dies_on == signal.SIGKILL:
            self.exited.set()

    def abandon(self) -> None:
        self.abandoned = True


async def test_ladder_per_child_and_unkillable_reported(
    virtual_clock: trio.testing.MockClock | None,
) -> None:
    policy = ShutdownPolicy(stop_timeout=0.2, term_timeout=0.2, kill_timeout=0.2)
    polite = FakeChild("polite", ready=True, dies_on=None, stop_ok=True)
    unready = FakeChild("unready", ready=False, dies_on=signal.SIGTERM)
    stubborn = FakeChild("stubborn", ready=True, dies_on=signal.SIGKILL)
    stuck = FakeChild("stuck", ready=True, dies_on=None)  # like a process in state D
    children = [polite, unready, stubborn, stuck]
    began = anyio.current_time()
    with anyio.fail_after(policy.budget + 0.5):  # bounded: never waits on `stuck` forever
        unreaped = await teardown(children, policy)
    assert polite.events == ["stop"]
    assert unready.events == ["SIGTERM"]  # not ready: no cooperative stop, SIGTERM at once
    assert stubborn.events == ["stop", "SIGTERM", "KILLPG"]
    assert stuck.events == ["stop", "SIGTERM", "KILLPG"] and stuck.abandoned
    # each step only once the previous one's grace period is over
    stop, term, kill = (t - began for t in stubborn.times)
    assert stop < policy.stop_timeout - EARLY <= term
    assert term < policy.stop_timeout + policy.term_timeout - EARLY <= kill
    assert [(u.name, u.pid) for u in unreaped] == [("stuck", 999_999)]
    assert "survived SIGKILL" in str(unreaped[0])


async def test_teardown_is_shielded_from_outer_cancel(
    virtual_clock: trio.testing.MockClock | None,
) -> None:
    policy = ShutdownPolicy(stop_timeout=0.3, term_timeout=0.3, kill_timeout=0.3)
    child = FakeChild("c", ready=True, dies_on=signal.SIGKILL)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await teardown([child], policy)
    assert child.events == ["stop", "SIGTERM", "KILLPG"]


async def test_a_child_exiting_on_its_own_gets_stop_timeout_before_sigterm(
    virtual_clock: trio.testing.MockClock | None,
) -> None:
    """A child that reported its exception before READY keeps its own exit code if it
    exits within stop_timeout; one that does not is SIGTERMed like any other."""
    policy = ShutdownPolicy(stop_timeout=0.3, term_timeout=0.3, kill_timeout=0.3)
    leaving = FakeChild("leaving", ready=False, dies_on=signal.SIGTERM)
    lingering = FakeChild("lingering", ready=False, dies_on=signal.SIGTERM)
    leaving.exiting = lingering.exiting = True

    async def exit_soon() -> None:
        await anyio.sleep(0.05)
        leaving.exited.set()

    began = anyio.current_time()
    async with anyio.create_task_group() as tg:
        tg.start_soon(exit_soon)
        await teardown([leaving, lingering], policy)
    assert leaving.events == []
    assert lingering.events == ["SIGTERM"]
    assert lingering.times[0] - began >= policy.stop_timeout - EARLY
