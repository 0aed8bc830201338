"""The tests' side of a placed child: the core's handshake, minimally (also used by the
driver script of the driver-death test)."""

from __future__ import annotations

import pickle
from typing import Any

import anyio

import launch
from _launch_child._protocol import Failed, Ready, Stop
from launch._channel import ControlChannel
from launch._start.spawn import Spawned, build_boot
from launch.integrations.ray import RayProcess

GROUP = "g"
BOOT_S = 60.0  # a child's boot on 2 busy cores running a Ray cluster


class Remote:
    """A started child as the tests drive it: the core's handshake, minimally."""

    def __init__(self, spawned: Spawned, spec: launch.ProcessSpec) -> None:
        self.spawned = spawned
        self.spec = spec
        assert isinstance(spawned.process, RayProcess)
        self.process: RayProcess = spawned.process
        self.channel = ControlChannel(spawned.sock)
        self.messages: list[object] = []

    async def boot(self) -> Ready | Failed:
        """Send the boot frame; the READY or failure message."""
        await self.channel.send_frame(build_boot(self.spec, GROUP))
        with anyio.fail_after(BOOT_S):
            while (message := await self.channel.receive()) is not None:
                self.messages.append(message)
                if isinstance(message, Ready | Failed):
                    return message
        raise AssertionError(f"EOF before READY: {self.messages}")

    async def payload(self) -> Any:
        message = await self.boot()
        assert isinstance(message, Ready), message
        return pickle.loads(message.payload)

    async def exited(self, timeout: float = 15.0) -> int | None:
        with anyio.fail_after(timeout):
            await self.process.wait_exited()
        return self.process.reap()

    async def stop(self) -> int | None:
        self.channel.send_nowait(Stop())
        try:
            return await self.exited()
        finally:
            self.close()

    def close(self) -> None:
        self.channel.close()
        self.process.close()


def spec(target: str, name: str, **kwargs: Any) -> launch.ProcessSpec:
    return launch.ProcessSpec(target, name=name, kwargs=kwargs, ready_timeout=BOOT_S)
