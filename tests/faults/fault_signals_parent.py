"""A real parent holding a group whose children ignore SIGTERM and the cooperative stop,
so that its teardown must escalate to SIGKILL; the signal tests interrupt it.

usage: fault_signals_parent.py trio|asyncio|blocking
Prints one JSON line with the children's pids once all are READY, then waits.

usage: fault_signals_parent.py startup trio|asyncio
Starts a group whose READY would take 30 s and prints "starting"; on Ctrl-C, prints
the repr of what ``open_group`` raised.
"""

from __future__ import annotations

import json
import sys
import time

import anyio

import launch
from launch._spec import START_METHODS
from launch.testing import misbehaving

POLICY = launch.ShutdownPolicy(stop_timeout=0.5, term_timeout=0.5, kill_timeout=1.0)
SPECS = [
    misbehaving("ignore_sigterm", name=method, start_method=method)  # type: ignore[arg-type]
    for method in START_METHODS
]


def report(children: tuple[launch.Child, ...]) -> None:
    print(json.dumps([child.pid for child in children]), flush=True)


async def hold() -> None:
    async with launch.open_group(SPECS, shutdown=POLICY) as group:
        report(group.children)
        await anyio.sleep_forever()


async def interrupted_startup() -> None:
    slow = [misbehaving("slow_start", name="slow", seconds=30.0)]
    print("starting", flush=True)
    try:
        async with launch.open_group(slow, shutdown=POLICY):
            pass
    except BaseException as exc:
        print(f"raised {exc!r}", flush=True)
        raise


def main(mode: str) -> None:
    if mode == "startup":
        anyio.run(interrupted_startup, backend=sys.argv[2])
        return
    if mode == "blocking":
        with launch.start_group(SPECS, shutdown=POLICY) as group:
            report(group.children)
            while True:
                time.sleep(1)
    anyio.run(hold, backend=mode)


if __name__ == "__main__":
    main(sys.argv[1])
