"""One pipeline whose single stage needs device 0; two of these contend for it.

usage: device_stage.py LOCK_DIR OUT_JSON INIT_SECONDS
Writes the stage's spawn and READY times (time.monotonic(), one clock for every
process) to OUT_JSON once READY, then stops.
"""

from __future__ import annotations

import json
import os
import sys

import anyio

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import launch


async def main(lock_dir: str, out: str, init: float) -> None:
    spec = launch.PipelineSpec(
        [
            launch.StageSpec(
                "engine",
                [launch.ProcessSpec("targets:serve", name="engine-0", kwargs={"init": init})],
                devices=(0,),
            )
        ],
        lock_dir=lock_dir,
        device_lock_timeout=60,
    )
    async with launch.open_pipeline(spec) as running:
        child = running["engine"]["engine-0"]
        times = {"spawn_requested": child.times.spawn_requested, "ready": child.times.ready}
        with open(out, "w") as f:
            json.dump(times, f)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], float(sys.argv[3]))
