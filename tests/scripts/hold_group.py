"""Runs a real group and holds it: the signal tests kill or interrupt this process.

usage: hold_group.py BACKEND INIT_SECONDS
Prints one JSON line with the children's pids once all are READY, then sleeps.
"""

from __future__ import annotations

import json
import os
import sys

import anyio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import launch


async def main(init: float) -> None:
    specs = [
        launch.ProcessSpec("targets:serve", name=m, kwargs={"init": init}, start_method=m)  # type: ignore[arg-type]
        for m in ("spawn", "forkserver", "fork")
    ]
    print("starting", flush=True)
    async with launch.open_group(specs, name="held") as group:
        import launch._start.forkserver as fs

        pids = {c.name: c.pid for c in group.children}
        print(json.dumps({"children": pids, "forkserver": fs.FORKSERVER.pid}), flush=True)
        await anyio.sleep_forever()


if __name__ == "__main__":
    anyio.run(main, float(sys.argv[2]), backend=sys.argv[1])
