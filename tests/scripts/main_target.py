"""A callable target defined in ``__main__``: the child re-imports this script as
``__mp_main__`` (as multiprocessing does), so the guard below is needed."""

from __future__ import annotations

import os
import sys

import anyio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import launch
from launch._spec import START_METHODS


def work(x: int) -> None:
    launch.ready(x + 1)
    launch.wait_for_stop()


async def main() -> None:
    for method in START_METHODS:
        spec = launch.ProcessSpec(work, name="w", kwargs={"x": 41}, start_method=method)  # type: ignore[arg-type]
        async with launch.open_group([spec]) as group:
            print(method, group["w"].payload, flush=True)


if __name__ == "__main__":
    anyio.run(main)
